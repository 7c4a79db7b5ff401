// Command herd pulls many container images at once into containers/storage.
package main

import (
	"os"

	"go.podman.io/storage/pkg/reexec"

	"github.com/herd-project/herd/cmd"
)

func main() {
	// containers/storage re-executes this binary to apply layers in a
	// chroot; that child must run its own code, not herd's.
	if reexec.Init() {
		return
	}
	os.Exit(cmd.Execute(os.Args[1:], cmd.IO{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr}))
}
