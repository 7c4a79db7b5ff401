// Command launcher starts the benchmark's contenders; see package
// bench/launcher. `make bench` builds it to bin/bench-launcher.
package main

import (
	"os"

	"github.com/herd-project/herd/tests/bench/launcher"
)

func main() {
	os.Exit(launcher.Main(os.Stdin, os.Stdout))
}
