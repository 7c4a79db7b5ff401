// Package cmd holds herd's cobra commands and their option structs.
package cmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"

	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"
)

// Exit statuses, as podman uses them.
const (
	ExitOK     = 0
	ExitFailed = 1 // one or more images were not pulled
	ExitUsage  = 2 // bad flags or arguments
	exitSignal = 128
)

// usageError marks errors in how herd was called (exit status 2).
type usageError struct{ error }

func usageErrorf(format string, args ...any) error {
	return usageError{fmt.Errorf(format, args...)}
}

// failedError marks a run that went through but left images unpulled: the
// failures were already reported, so only the exit status remains.
type failedError struct{ n int }

func (e failedError) Error() string { return fmt.Sprintf("%d image(s) failed", e.n) }

// IO is where a herd invocation reads and writes; tests run herd in-process
// with their own.
type IO struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
}

// Execute runs herd with args (without the program name) and returns its
// exit status. SIGINT and SIGTERM cancel the run; herd then returns 130 or 143.
func Execute(args []string, stdio IO) int {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var got atomic.Value
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	go func() {
		select {
		case s := <-sigs:
			got.Store(s)
			logrus.Warnf("%v: cancelling all pulls", s)
			cancel()
		case <-ctx.Done():
		}
	}()

	code := ExecuteContext(ctx, args, stdio)
	if s, ok := got.Load().(os.Signal); ok {
		return exitSignal + int(s.(syscall.Signal))
	}
	return code
}

// ExecuteContext runs herd until it finishes or ctx is cancelled, and
// returns its exit status; it installs no signal handlers.
func ExecuteContext(ctx context.Context, args []string, stdio IO) int {
	root := newRootCommand(stdio)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	var fe failedError
	switch {
	case err == nil:
		return ExitOK
	case errors.As(err, &fe):
		return ExitFailed
	case errors.As(err, &usageError{}):
		fmt.Fprintf(stdio.Stderr, "Error: %v\nSee '%s --help'.\n", err, commandPath(root, args))
		return ExitUsage
	default:
		fmt.Fprintf(stdio.Stderr, "Error: %v\n", err)
		return ExitFailed
	}
}

// commandPath names the subcommand args would run, for the usage hint.
func commandPath(root *cobra.Command, args []string) string {
	if c, _, err := root.Find(args); err == nil && c != nil {
		return c.CommandPath()
	}
	return root.CommandPath()
}

type globalOptions struct {
	logLevel string
}

func newRootCommand(stdio IO) *cobra.Command {
	g := &globalOptions{}
	root := &cobra.Command{
		Use:   "herd",
		Short: "Pull many container images at once into containers/storage",
		Long: `herd pulls many container images in one process, in parallel, into the
containers/storage store that podman, buildah and CRI-O use. A blob that several
images need is fetched once per run, and every layer is committed as soon as it
lands, so later images reuse it.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(c *cobra.Command, _ []string) error {
			level, err := logrus.ParseLevel(g.logLevel)
			if err != nil {
				return usageErrorf("--log-level %q: %v", g.logLevel, err)
			}
			logrus.SetLevel(level)
			logrus.SetOutput(stdio.Stderr)
			return nil
		},
	}
	root.SetIn(stdio.Stdin)
	root.SetOut(stdio.Stdout)
	root.SetErr(stdio.Stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", "warn", "log messages at or above `LEVEL`: trace, debug, info, warn, error, fatal, panic")
	_ = root.RegisterFlagCompletionFunc("log-level", cobra.FixedCompletions(
		[]string{"trace", "debug", "info", "warn", "error", "fatal", "panic"}, cobra.ShellCompDirectiveNoFileComp))
	root.AddCommand(newPullCommand(stdio))
	return root
}
