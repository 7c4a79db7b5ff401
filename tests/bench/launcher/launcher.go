// Package launcher starts the benchmark's contenders and reads their CPU time
// and peak RSS. It is a program of its own (bench/cmd/launcher) that imports
// nothing but the standard library, for the reason below.
package launcher

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime/debug"
	"strings"
	"syscall"
	"time"
)

// Peak RSS comes from the rusage wait4 returns, and Linux starts a new
// program's peak at the peak of the process that forked it (exec records
// the old address space's high-water mark; Go forks with CLONE_VM, so that
// is the parent's). Started straight from the benchmark, every contender
// would report at least the benchmark's own peak (hundreds of MiB after
// generating layers; ~45 MiB of mapped binary even at rest). So the
// benchmark starts contenders through this small program, which returns its
// heap to the kernel, resets its own high-water mark (/proc/self/clear_refs,
// "5") and reports what is left as the floor below which a peak cannot be
// read (a few MiB). It also times the contenders, so wall time excludes its
// own start-up.

// Cmd is one process to start.
type Cmd struct {
	Path string   `json:"path"`
	Args []string `json:"args"`
	Env  []string `json:"env"`
	// Stdout, when set, is a file that gets the process's standard output
	// (herd's JSON summary); otherwise it is kept with standard error for
	// the failure report.
	Stdout string `json:"stdout,omitempty"`
}

// Result is what the launcher reports: wall time from the first start
// to the last exit, each process's figures, and the RSS floor.
type Result struct {
	Wall  time.Duration `json:"wall"`
	Floor int64         `json:"floor"` // bytes
	Procs []Proc        `json:"procs"`
	Err   string        `json:"error,omitempty"`
}

type Proc struct {
	CPU    time.Duration `json:"cpu"`
	RSS    int64         `json:"rss"` // bytes
	Err    string        `json:"error,omitempty"`
	Output string        `json:"output,omitempty"` // the last lines, on failure
}

// Main reads []Cmd as JSON on stdin, runs them all at once and writes a
// Result as JSON on stdout.
func Main(stdin io.Reader, stdout io.Writer) int {
	res := launch(stdin)
	if err := json.NewEncoder(stdout).Encode(res); err != nil {
		return 1
	}
	return 0
}

func launch(stdin io.Reader) Result {
	var cmds []Cmd
	if err := json.NewDecoder(stdin).Decode(&cmds); err != nil {
		return Result{Err: fmt.Sprintf("launcher: reading commands: %v", err)}
	}
	debug.FreeOSMemory()
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		return Result{Err: fmt.Sprintf("launcher: resetting its peak RSS: %v", err)}
	}
	res := Result{Floor: highWater()}
	execs := make([]*exec.Cmd, len(cmds))
	outs := make([]*bytes.Buffer, len(cmds))
	for i, c := range cmds {
		cmd := exec.Command(c.Path, c.Args...)
		cmd.Env = c.Env
		outs[i] = &bytes.Buffer{}
		cmd.Stdout, cmd.Stderr = outs[i], outs[i]
		if c.Stdout != "" {
			f, err := os.Create(c.Stdout)
			if err != nil {
				return Result{Err: fmt.Sprintf("launcher: %v", err)}
			}
			defer f.Close()
			cmd.Stdout = f
		}
		// Killing the benchmark kills the contenders too.
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		execs[i] = cmd
	}
	start := time.Now()
	for i, cmd := range execs {
		if err := cmd.Start(); err != nil {
			for _, started := range execs[:i] {
				_ = started.Process.Kill()
				_ = started.Wait()
			}
			return Result{Err: fmt.Sprintf("starting %s: %v", cmd.Path, err)}
		}
	}
	res.Procs = make([]Proc, len(execs))
	for i, cmd := range execs {
		err := cmd.Wait()
		p := &res.Procs[i]
		if err != nil {
			p.Err = fmt.Sprintf("%s: %v", cmd.Path, err)
			p.Output = LastLines(outs[i].String(), 5)
		}
		if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
			p.CPU = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
			p.RSS = ru.Maxrss << 10 // KiB on Linux
		}
	}
	res.Wall = time.Since(start)
	return res
}

// highWater is this process's peak RSS in bytes (VmHWM), 0 if unknown.
func highWater() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			var kib int64
			if _, err := fmt.Sscanf(strings.TrimSpace(rest), "%d kB", &kib); err == nil {
				return kib << 10
			}
		}
	}
	return 0
}

// LastLines returns the last n lines of s on one line.
func LastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}
