// Command plaincopy is the benchmark's baseline program; see package
// bench/plaincopy. `make bench` builds it to bin/bench-plaincopy.
package main

import (
	"os"

	"go.podman.io/storage/pkg/reexec"

	"github.com/herd-project/herd/tests/bench/plaincopy"
)

func main() {
	// containers/storage re-executes this binary to apply layers.
	if reexec.Init() {
		return
	}
	os.Exit(plaincopy.Main(os.Args[1:], os.Stdout, os.Stderr))
}
