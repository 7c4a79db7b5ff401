// Command herd pulls many container images at once into containers/storage.
package main

import (
	"os"
	"runtime/debug"

	"go.podman.io/storage/pkg/reexec"

	"github.com/herd-project/herd/cmd"
)

func main() {
	// containers/storage re-executes this binary to apply layers in a
	// chroot; that child must run its own code, not herd's.
	if reexec.Init() {
		return
	}
	// Most of herd's heap is big pointer-free buffers that live as long as
	// one layer's pull (a zstd window of 8 MiB and a 2 MiB copy buffer per
	// zstd:chunked layer being written, its TOC), so marking it is cheap
	// while Go's default pacing (GOGC=100) lets the heap grow to twice what
	// is live before collecting. At 40 a pull of 16 zstd:chunked images
	// peaks ~25% lower for ~2% more CPU, and no slower. $GOGC still wins.
	if _, set := os.LookupEnv("GOGC"); !set {
		debug.SetGCPercent(gcPercent)
	}
	os.Exit(cmd.Execute(os.Args[1:], cmd.IO{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr}))
}

// gcPercent is herd's GOGC unless the environment sets one.
const gcPercent = 40
