package tests

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/herd-project/herd/progress"
	"github.com/herd-project/herd/pull"
)

// A failure whose text spans lines, as containers/storage reports a full
// disk from the process that applies a layer.
const (
	failingName = "registry.example.com/team/app:v1"
	diskFull    = "pulling " + failingName + ": writing blob: processing tar file(write /usr/lib/big: no space left on device):\n  exit status 1\n"
)

// failingRun feeds d an image that fails with diskFull beside one that is
// pulled.
func failingRun(d progress.Display) {
	ok := &pull.Result{Inputs: []string{"registry.example.com/team/ok:v1"}, Reference: "registry.example.com/team/ok:v1",
		Layers: []pull.Layer{{Digest: digest.FromString("ok"), Size: 10}}}
	bad := &pull.Result{Inputs: []string{failingName}, Reference: failingName,
		Layers: []pull.Layer{{Digest: digest.FromString("bad"), Size: 10}}}
	for i, r := range []*pull.Result{ok, bad} {
		d.Observe(pull.Event{Kind: pull.EventResolved, Image: i, Result: r, Time: time.Now()})
	}
	ok.ImageID, ok.Names, ok.Duration = strings.Repeat("ab", 32), ok.Inputs, time.Second
	d.Observe(pull.Event{Kind: pull.EventImageDone, Image: 0, Result: ok, Time: time.Now()})
	bad.Err, bad.Duration = errors.New(diskFull), time.Second
	d.Observe(pull.Event{Kind: pull.EventImageDone, Image: 1, Result: bad, Time: time.Now()})
	d.Close()
}

// wantFailureLine checks that the failure is printed on one line that names
// the image, with its text folded, and that no line has part of it alone.
func wantFailureLine(t *testing.T, lines []string) {
	t.Helper()
	found := 0
	for _, line := range lines {
		if strings.Contains(line, "exit status 1") || strings.Contains(line, "no space left") {
			found++
			if !strings.Contains(line, "app:v1") || !strings.Contains(line, "no space left on device):; exit status 1") {
				t.Errorf("line %q: want the image's name and the whole error on one line", line)
			}
		}
	}
	if found != 1 {
		t.Errorf("%d lines tell of the failure, want 1:\n%s", found, strings.Join(lines, "\n"))
	}
}

func TestPlainErrorOnOneLine(t *testing.T) {
	var out bytes.Buffer
	failingRun(progress.NewPlain(&out))
	t.Logf("plain display:\n%s", out.String())
	wantFailureLine(t, strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n"))
	for _, line := range strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n") {
		if !strings.HasPrefix(line, "registry.example.com/team/") && !strings.HasPrefix(line, "total: ") {
			t.Errorf("line %q does not start with an image's name", line)
		}
	}
}

func TestTerminalErrorOnOneLine(t *testing.T) {
	const cols, rows = 250, 10 // wide enough that the failure line does not wrap
	_, fs := onTerminal(t, cols, rows, failingRun)
	final := fs[len(fs)-1]
	t.Logf("final screen:\n%s", strings.Join(final, "\n"))
	wantFailureLine(t, final)
}

func TestSummaryErrorOnOneLine(t *testing.T) {
	s := progress.NewSummary([]*pull.Result{{Inputs: []string{failingName}, Err: errors.New(diskFull)}}, time.Second)
	if got, want := s.Images[0].Error, "pulling "+failingName+": writing blob: processing tar file(write /usr/lib/big: no space left on device):; exit status 1"; got != want {
		t.Errorf("summary error %q, want %q", got, want)
	}
}
