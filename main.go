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
	// peaks ~30% lower, and 64 gzip images ~25% lower, no slower; a gzip
	// pull of a few images spends ~6% more CPU (GOGC=100 only for gzip-only
	// runs was measured too: it saved that, and cost the 64 images their
	// memory). A soft memory limit did no better for 16 images and took
	// 1.2x the time for 64, whose live heap outgrew it. $GOGC still wins.
	if _, set := os.LookupEnv("GOGC"); !set {
		debug.SetGCPercent(gcPercent)
	}
	os.Exit(cmd.Execute(os.Args[1:], cmd.IO{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr}))
}

// gcPercent is herd's GOGC unless the environment sets one.
const gcPercent = 40
