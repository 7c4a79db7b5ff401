// Package cmd holds herd's cobra commands and their option structs.
package cmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"

	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
)

// Exit statuses, as podman uses them.
const (
	ExitOK     = 0
	ExitFailed = 1   // one or more images were not pulled
	ExitUsage  = 2   // bad command, flags or arguments (a malformed reference, no image)
	ExitStart  = 125 // herd could not start: configuration, storage, policy
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
// exit status. SIGINT and SIGTERM cancel the run: every pull stops, the
// run's temporary files are removed, the images already pulled are reported
// as usual, and herd returns 130 or 143. What was committed stays in the
// store, so running the same command again resumes. A second signal exits
// at once; the next run sweeps what that leaves in the temporary directory.
func Execute(args []string, stdio IO) int {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var got atomic.Value
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	finished := make(chan struct{})
	defer close(finished)
	go func() {
		select {
		case s := <-sigs:
			got.Store(s)
			logrus.Warnf("%s: cancelling all pulls (again to exit at once)", signalName(s))
			cancel()
		case <-finished:
			return
		}
		select {
		case s := <-sigs:
			fmt.Fprintf(stdio.Stderr, "herd: %s again: exiting now\n", signalName(s))
			os.Exit(exitSignal + int(s.(syscall.Signal)))
		case <-finished:
		}
	}()

	code := ExecuteContext(ctx, args, stdio)
	if s, ok := got.Load().(os.Signal); ok {
		fmt.Fprintf(stdio.Stderr, "herd: interrupted by %s; images reported as pulled are complete, and running the same command again resumes the rest, reusing every layer already committed\n", signalName(s))
		return exitSignal + int(s.(syscall.Signal))
	}
	return code
}

// signalName is "SIGINT" rather than Go's "interrupt".
func signalName(s os.Signal) string {
	if n := unix.SignalName(s.(syscall.Signal)); n != "" {
		return n
	}
	return s.String()
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
	case errors.As(err, &usageError{}) || strings.HasPrefix(err.Error(), "unknown command "):
		// cobra's unknown-command error has no type of its own.
		fmt.Fprintf(stdio.Stderr, "Error: %v\nSee '%s --help'.\n", err, commandPath(root, args))
		return ExitUsage
	default:
		fmt.Fprintf(stdio.Stderr, "Error: %v\n", err)
		return ExitStart
	}
}

// commandPath names the subcommand args would run, for the usage hint.
func commandPath(root *cobra.Command, args []string) string {
	if c, _, err := root.Find(args); err == nil && c != nil {
		return c.CommandPath()
	}
	return root.CommandPath()
}

// stdLogToDebug passes the standard logger's lines to logrus at debug level.
type stdLogToDebug struct{}

func (stdLogToDebug) Write(p []byte) (int, error) {
	logrus.Debug(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

type globalOptions struct {
	logLevel string
}

// RootCommand returns herd's command tree with its flags, for tools outside
// this module that document it (man pages) from the commands themselves.
func RootCommand() *cobra.Command {
	return newRootCommand(IO{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr})
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
			// net/http logs through the standard logger what a registry does
			// wrong on an idle connection ("Unsolicited response received on
			// idle HTTP channel": a Content-Length shorter than the body).
			// herd already reports the failed transfer itself, naming the
			// image; the line is for debugging.
			log.SetFlags(0)
			log.SetOutput(stdLogToDebug{})
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
	root.AddCommand(newPullCommand(stdio), newVersionCommand(stdio))
	root.Version = version
	root.SetVersionTemplate(versionText())
	// cobra's completion command takes a shell as a subcommand; anything
	// else (herd completion tcsh) is an unknown command, not a help screen.
	root.InitDefaultCompletionCmd()
	for _, c := range root.Commands() {
		if c.Name() == "completion" {
			c.RunE = func(c *cobra.Command, args []string) error {
				if len(args) > 0 {
					return usageErrorf("no completion for shell %q: herd completes bash, zsh, fish and powershell", args[0])
				}
				return c.Help()
			}
		}
	}
	return root
}
