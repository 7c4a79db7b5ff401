package cmd

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"

	"github.com/spf13/cobra"
)

// version and commit are stamped by make build (-ldflags -X); a plain
// go build leaves them as they are here.
var (
	version = "dev"
	commit  = "unknown"
)

// Version is herd's version, as `herd version` prints it and as the
// User-Agent and the JSON summary carry it.
func Version() string { return version }

// versionText is what `herd version` and `herd --version` print: herd's
// version and commit, the Go toolchain, and the containers/image and
// containers/storage versions built in (from the binary's build info).
func versionText() string {
	var b strings.Builder
	fmt.Fprintf(&b, "herd version %s\ncommit: %s\ngo: %s %s/%s\n", version, commit, runtime.Version(), runtime.GOOS, runtime.GOARCH)
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, dep := range info.Deps {
			switch dep.Path {
			case "go.podman.io/image/v5":
				fmt.Fprintf(&b, "containers/image: %s\n", dep.Version)
			case "go.podman.io/storage":
				fmt.Fprintf(&b, "containers/storage: %s\n", dep.Version)
			}
		}
	}
	return b.String()
}

func newVersionCommand(stdio IO) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print herd's version and the versions of the libraries it is built with",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			_, err := fmt.Fprint(stdio.Stdout, versionText())
			return err
		},
		ValidArgsFunction: cobra.NoFileCompletions,
	}
}
