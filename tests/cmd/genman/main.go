// Command genman writes herd's man pages into the directory it is given
// (make man: ../man).
package main

import (
	"fmt"
	"os"

	"github.com/herd-project/herd/tests/internal/manpages"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: genman DIR")
		os.Exit(2)
	}
	if err := manpages.Generate(os.Args[1]); err != nil {
		fmt.Fprintln(os.Stderr, "genman:", err)
		os.Exit(1)
	}
}
