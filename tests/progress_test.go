package tests

// Issue 4: one display for the whole run (bars on a terminal, plain lines
// otherwise) and a machine-readable summary whose byte counts agree with
// the registry's.

import (
	"bytes"
	"fmt"
	"net/http"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/herd-project/herd/progress"
	"github.com/herd-project/herd/pull"
	"github.com/herd-project/herd/tests/internal/testimage"
	"github.com/herd-project/herd/tests/internal/testregistry"
)

// ttyHerd is `herd pull` running as a separate process (the test binary
// acting as herd) whose standard error is a pseudo-terminal, so herd draws
// its bars there; standard output is a pipe.
type ttyHerd struct {
	cmd    *exec.Cmd
	term   *terminal
	stdout bytes.Buffer
}

func (e *env) startOnTerminal(cols, rows int, args ...string) *ttyHerd {
	e.t.Helper()
	h := &ttyHerd{cmd: e.herdCommand([]string{"TERM=xterm"}, args...), term: openTerminal(e.t, cols, rows)}
	h.cmd.Stdout, h.cmd.Stderr = &h.stdout, h.term.pts
	if err := h.cmd.Start(); err != nil {
		e.t.Fatalf("starting herd: %v", err)
	}
	h.term.pts.Close() // the child has it; the terminal closes when the child is gone
	e.t.Cleanup(func() {
		if h.cmd.ProcessState == nil {
			_ = h.cmd.Process.Kill()
			_ = h.cmd.Wait()
		}
	})
	return h
}

// wait waits for herd to exit and returns its exit status and everything it
// wrote on the terminal.
func (h *ttyHerd) wait(t *testing.T) (int, []byte) {
	t.Helper()
	code := exitCode(t, h.cmd.Wait())
	return code, h.term.wait(t)
}

// imageLines finds the line of each image on a screen: a line that starts
// with the image's name. Any other non-empty line must start with one of
// others, and no image may have two lines.
func imageLines(t *testing.T, what string, screen []string, names []string, others ...string) map[string]string {
	t.Helper()
	found := map[string]string{}
	for _, line := range screen {
		if line == "" {
			continue
		}
		matched := false
		for _, n := range names {
			if strings.HasPrefix(line, n+" ") {
				if _, dup := found[n]; dup {
					t.Errorf("%s: %s has two lines:\n%s", what, n, strings.Join(screen, "\n"))
				}
				found[n] = line
				matched = true
			}
		}
		for _, o := range others {
			matched = matched || strings.HasPrefix(line, o)
		}
		if !matched {
			t.Errorf("%s: line %q is neither an image's line nor expected (a wrapped or stale line?):\n%s", what, line, strings.Join(screen, "\n"))
		}
	}
	return found
}

// progressImages pushes n small images sharing a base layer, in gzip and zstd.
func progressImages(e *env, prefix string, n int) []testimage.Pushed {
	var images []testimage.Pushed
	for i := range n {
		comp := []string{"gzip", "zstd"}[i%2]
		img := testimage.Image{Layers: []testimage.Layer{baseLayer, testimage.RandomLayer(int64(400+i), 4, 16*kib)}}
		images = append(images, e.push(fmt.Sprintf("%s%d:1", prefix, i), img, comp))
	}
	return images
}

// Issue 4, test 1: on a terminal herd draws one mpb display for the whole
// run: while it runs, one line per image in flight above a total line, and
// nothing else (no line wrapped, none left behind); at the end one final
// line per image with its state and short ID, and the total.
func TestTerminalDisplay(t *testing.T) {
	// Throttled so that the pull spans several frames.
	e := newEnv(t, testregistry.Options{BandwidthLimit: 256 * kib})
	images := progressImages(e, "tty", 4)
	const cols, rows = 80, 40
	h := e.startOnTerminal(cols, rows, refs(images...)...)
	code, raw := h.wait(t)
	if code != 0 {
		t.Fatalf("herd exited %d; terminal:\n%s", code, raw)
	}
	names := refs(images...)
	ids := strings.Fields(h.stdout.String())
	if len(ids) != len(images) {
		t.Fatalf("stdout has %d image IDs, want %d: %q", len(ids), len(images), h.stdout.String())
	}

	frames, final := screens(t, raw, cols, rows)
	if len(frames) < 3 {
		t.Errorf("herd drew %d frames in a throttled pull; want the display redrawn as it goes", len(frames))
	}
	states := map[string]int{}
	liveLine := regexp.MustCompile(`^(\S+) +(\d+)/(\d+) +\S+ (queued|fetching|waiting for \S+|committing|retrying \(attempt \d+\)|done [0-9a-f]{12}|failed) +\[[=>-]*\]$`)
	for i, f := range frames {
		what := fmt.Sprintf("frame %d", i)
		imageLines(t, what, f, names, "total: ")
		if f[len(f)-1] == "" || !strings.HasPrefix(f[len(f)-1], "total: ") {
			t.Errorf("%s: the last line is not the total line:\n%s", what, strings.Join(f, "\n"))
		}
		for _, line := range f {
			if strings.HasSuffix(line, "\x00") {
				t.Errorf("%s: line %q is wider than the terminal", what, line)
			}
			if m := liveLine.FindStringSubmatch(line); m != nil {
				states[strings.Fields(m[4])[0]]++
			}
		}
	}
	t.Logf("live lines seen, by state: %v", states)
	if states["fetching"] == 0 {
		t.Errorf("no frame showed an image fetching, with its bar")
	}

	lines := imageLines(t, "final screen", final, names, "total: ")
	for i, n := range names {
		want := regexp.MustCompile(`^` + regexp.QuoteMeta(n) + ` +2/2 +\S+ done ` + ids[i][:12] + ` in \S+$`)
		if !want.MatchString(lines[n]) {
			t.Errorf("final line of %s is %q, want it to say 2/2 layers and done %s", n, lines[n], ids[i][:12])
		}
	}
	last := final[len(final)-1]
	if !strings.HasPrefix(last, fmt.Sprintf("total: %d/%d done · ", len(images), len(images))) {
		t.Errorf("the last line is %q, want the total line with %d/%d done", last, len(images), len(images))
	}
	if strings.Contains(strings.Join(final, "\n"), "[") {
		t.Errorf("a bar was left on the final screen:\n%s", strings.Join(final, "\n"))
	}
	t.Logf("final screen:\n%s", strings.Join(final, "\n"))
}

// Issue 4: interrupted on a terminal by SIGINT or SIGTERM, herd stops
// drawing cleanly, says so, and exits 130 or 143: the finished image keeps
// its line, the interrupted one is reported failed with the reason, and the
// warning about the signal is printed above the bars, not through them.
func TestTerminalInterrupted(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		name := map[syscall.Signal]string{syscall.SIGINT: "SIGINT", syscall.SIGTERM: "SIGTERM"}[sig]
		t.Run(name, func(t *testing.T) {
			e := newEnv(t, testregistry.Options{})
			done := e.push("tty-done:1", testimage.Image{Layers: []testimage.Layer{ownLayer(61)}}, "gzip")
			held := e.push("tty-held:1", testimage.Image{Layers: []testimage.Layer{ownLayer(62)}}, "gzip")
			requested := e.holdBlob(held.Layers[0].Digest)
			const cols, rows = 80, 30
			h := e.startOnTerminal(cols, rows, done.Ref, held.Ref)
			select {
			case <-requested:
			case <-time.After(60 * time.Second):
				t.Fatal("the held blob was never requested")
			}
			// Signal once the finished image's line, "done <short ID>", is on
			// the terminal (the total line's "N/M done" is there from the start).
			finished := "done " + done.ConfigDigest.Encoded()[:12]
			for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
				shown := strings.Contains(h.term.written(), finished)
				if shown {
					break
				}
			}
			_ = h.cmd.Process.Signal(sig)
			code, raw := h.wait(t)
			if code != 128+int(sig) {
				t.Fatalf("exit status %d after %s, want %d; terminal:\n%s", code, name, 128+int(sig), raw)
			}
			frames, final := screens(t, raw, cols, rows)
			others := []string{"total: ", "herd: interrupted by " + name, "time="}
			for i, f := range frames {
				imageLines(t, fmt.Sprintf("frame %d", i), f, []string{done.Ref, held.Ref}, others...)
				if !strings.HasPrefix(f[len(f)-1], "total: ") {
					t.Errorf("frame %d: the last line is not the total line:\n%s", i, strings.Join(f, "\n"))
				}
			}
			screen := strings.Join(final, "\n")
			t.Logf("final screen:\n%s", screen)
			lines := imageLines(t, "final screen", final, []string{done.Ref, held.Ref}, others...)
			if !strings.Contains(lines[done.Ref], " done ") {
				t.Errorf("the finished image's line is %q, want it done", lines[done.Ref])
			}
			if !strings.Contains(lines[held.Ref], "failed: ") || !strings.Contains(lines[held.Ref], "interrupted") {
				t.Errorf("the interrupted image's line is %q, want it failed as interrupted", lines[held.Ref])
			}
			if !strings.Contains(screen, name+": cancelling all pulls") {
				t.Errorf("the warning about the signal is not on the screen")
			}
			if !strings.HasPrefix(final[len(final)-1], "herd: interrupted by "+name) {
				t.Errorf("the last line is %q, want herd's word that it was interrupted", final[len(final)-1])
			}
			if !strings.Contains(screen, "total: 1/2 done, 1 failed") {
				t.Errorf("no total line saying 1 of 2 done and 1 failed")
			}
		})
	}
}

// Issue 4, test 2: off a terminal herd writes plain lines: no escape code,
// every line names its image, except the last, the run's total.
func TestPlainDisplay(t *testing.T) {
	e := newEnv(t, testregistry.Options{})
	images := progressImages(e, "plain", 3)
	missing := e.reg.Host + "/plain-missing:1"
	names := append(refs(images...), missing)

	check := func(what string, r run, wantBlob string) {
		t.Helper()
		t.Logf("%s: herd said:\n%s", what, r.stderr)
		if r.code != 1 {
			t.Errorf("%s: exit status %d, want 1 (one image is missing)", what, r.code)
		}
		if strings.Contains(r.stderr, "\x1b") {
			t.Errorf("%s: standard error holds escape codes", what)
		}
		lines := strings.Split(strings.TrimSuffix(r.stderr, "\n"), "\n")
		for _, line := range lines[:len(lines)-1] {
			named := false
			for _, n := range names {
				named = named || strings.HasPrefix(line, n+": ")
			}
			if !named {
				t.Errorf("%s: line %q does not start with the name of its image", what, line)
			}
		}
		if want := fmt.Sprintf("total: %d pulled, 1 failed, ", len(images)); !strings.HasPrefix(lines[len(lines)-1], want) {
			t.Errorf("%s: last line %q, want it to start %q", what, lines[len(lines)-1], want)
		}
		if !strings.Contains(r.stderr, missing+": failed: ") {
			t.Errorf("%s: no line says %s failed", what, missing)
		}
		ids := strings.Fields(r.stdout)
		for i, p := range images {
			for _, want := range []string{
				p.Ref + ": resolved to " + p.Ref + "@" + p.ManifestDigest.String(),
				p.Ref + ": blob " + p.Layers[1].Digest.Encoded()[:12] + ": " + wantBlob,
				p.Ref + ": pulled " + ids[i][:12],
			} {
				if !strings.Contains(r.stderr, want) {
					t.Errorf("%s: no line says %q", what, want)
				}
			}
		}
	}
	first := e.herd(names...)
	check("first run", first, "fetched ")
	check("second run", e.herd(names...), "reused")

	// --quiet: the image IDs alone on standard output, as podman pull -q,
	// and on standard error only what failed.
	q := e.herd(append([]string{"--quiet"}, names...)...)
	if q.code != 1 || q.stdout != first.stdout || len(strings.Fields(q.stdout)) != len(images) {
		t.Errorf("--quiet: exit %d, stdout %q; want 1 and the %d image IDs, as without it (%q)", q.code, q.stdout, len(images), first.stdout)
	}
	if want := "Error: pulling " + missing + ": "; !strings.HasPrefix(q.stderr, want) || strings.Count(q.stderr, "\n") != 1 {
		t.Errorf("--quiet: stderr %q, want one line starting %q", q.stderr, want)
	}
}

// Issue 4, test 3: the JSON summary parses; each layer says how it was
// obtained, fetched (or partial) on the first run and reused on the
// second; and the bytes it reports fetched are what the registry served,
// blob by blob, and in total up to the configs it does not count as layers.
func TestJSONSummaryMatchesRegistry(t *testing.T) {
	e := newEnv(t, testregistry.Options{})
	images := progressImages(e, "json", 3)
	big := testimage.RandomLayer(410, 30, 32*kib)
	chunked := e.push("json-chunked:1", testimage.Image{Layers: []testimage.Layer{big}}, "zstd:chunked")
	similar := e.push("json-similar:1", testimage.Image{Layers: []testimage.Layer{testimage.SimilarLayer(big, 411, 3)}}, "zstd:chunked")
	all := append(images, chunked)
	e.reg.ResetCounters()

	// checkBytes compares every layer's fetched bytes with the registry's count.
	checkBytes := func(what string, s progress.Summary) {
		t.Helper()
		served := e.reg.Served()
		var layers, configs, framing int64
		for _, img := range s.Images {
			var sum int64
			for _, l := range img.Layers {
				sum += l.Fetched
				switch l.How {
				case "fetched":
					if l.Fetched != served[l.Digest] {
						t.Errorf("%s: %s layer %s: summary says %d bytes fetched, the registry served %d", what, img.Inputs[0], l.Digest, l.Fetched, served[l.Digest])
					}
				case "partial":
					// The registry also sends the multipart framing of the
					// ranges, about 100 bytes a part.
					t.Logf("%s: %s partial layer of %d bytes: %d fetched, %d served", what, img.Inputs[0], l.Size, l.Fetched, served[l.Digest])
					if l.Fetched == 0 || l.Fetched > served[l.Digest] || served[l.Digest] > servedOnceBound("zstd:chunked", l.Fetched) {
						t.Errorf("%s: %s partial layer %s: summary says %d bytes fetched, the registry served %d", what, img.Inputs[0], l.Digest, l.Fetched, served[l.Digest])
					}
					framing += served[l.Digest] - l.Fetched
				case "reused", "waited":
					if l.Fetched != 0 {
						t.Errorf("%s: %s layer %s %s, yet %d bytes fetched", what, img.Inputs[0], l.Digest, l.How, l.Fetched)
					}
				default:
					t.Errorf("%s: %s layer %s: how %q", what, img.Inputs[0], l.Digest, l.How)
				}
			}
			layers += sum
			configs += img.Fetched - sum // the config blob
		}
		var wantConfigs int64
		for _, p := range append(all, similar) {
			wantConfigs += served[p.ConfigDigest]
		}
		if configs != wantConfigs {
			t.Errorf("%s: the summary counts %d config bytes beyond the layers, the registry served %d config bytes", what, configs, wantConfigs)
		}
		// Every byte the registry served is in the summary, framing aside.
		total := e.reg.TotalBlobBytes()
		t.Logf("%s: summary %d bytes fetched (%d layers + %d configs), registry served %d (%d of it multipart framing)", what, s.Totals.Fetched, layers, configs, total, framing)
		if s.Totals.Fetched != layers+configs || total != s.Totals.Fetched+framing {
			t.Errorf("%s: summary total %d bytes fetched, the registry served %d", what, s.Totals.Fetched, total)
		}
	}

	s, r := e.summary(refs(all...)...)
	if r.code != 0 || s.Totals.OK != len(all) || s.Totals.Failed != 0 {
		t.Fatalf("first run: exit %d, %d ok, %d failed\n%s", r.code, s.Totals.OK, s.Totals.Failed, r.stderr)
	}
	for i, img := range s.Images {
		p := all[i]
		if img.Reference != p.Ref || img.Digest != p.ManifestDigest.String() || img.ImageID != p.ConfigDigest.Encoded() ||
			img.Attempts != 1 || img.Error != "" || img.DurationSeconds <= 0 || len(img.Layers) != len(p.Layers) {
			t.Errorf("first run: summary of %s is %+v", p.Ref, img)
		}
		for j, l := range img.Layers {
			if l.Digest != p.Layers[j].Digest || l.Size != p.Layers[j].Size {
				t.Errorf("first run: %s layer %d is %s (%d bytes), want %s (%d)", p.Ref, j, l.Digest, l.Size, p.Layers[j].Digest, p.Layers[j].Size)
			}
		}
	}
	checkBytes("first run", s)
	checkServedOnce(t, e, "gzip", images, s, "first run")

	e.reg.ResetCounters()
	s, r = e.summary(refs(append(all, similar)...)...)
	if r.code != 0 {
		t.Fatalf("second run: exit %d\n%s", r.code, r.stderr)
	}
	var reused int64
	for i, img := range s.Images[:len(all)] {
		for _, l := range img.Layers {
			if l.How != "reused" {
				t.Errorf("second run: %s layer %s is %q, want reused", all[i].Ref, l.Digest, l.How)
			}
			reused += l.Size
		}
		if img.Reused != sumSizes(img.Layers) {
			t.Errorf("second run: %s reusedBytes %d, want the sum of its layers", all[i].Ref, img.Reused)
		}
	}
	if l := s.Images[len(all)].Layers[0]; l.How != "partial" {
		t.Errorf("second run: the layer similar to one in the store was %q, want partial", l.How)
	} else if img := s.Images[len(all)]; img.Reused != l.Size-l.Fetched {
		t.Errorf("second run: %s reusedBytes %d, want %d (its layer's size less what was fetched)", similar.Ref, img.Reused, l.Size-l.Fetched)
	} else {
		reused += l.Size - l.Fetched
	}
	if s.Totals.Reused != reused {
		t.Errorf("second run: totals.reusedBytes %d, want %d", s.Totals.Reused, reused)
	}
	checkBytes("second run", s)
	if n := e.layerBytes(all...); n != 0 {
		t.Errorf("second run: the registry served %d bytes of layers already in the store", n)
	}
}

// Issue 11: the JSON summary says when things happened to each layer, in
// seconds from the run's start and in order: a fetched layer queued,
// started, ended its fetch and was committed; a layer another image was
// fetching was waited for, then was in the store. The registry holds the
// shared blob back a while, so that the second image's lookup finds the
// first one's fetch under way.
func TestJSONSummaryLayerTimings(t *testing.T) {
	e := newEnv(t, testregistry.Options{})
	a := e.push("timed-a:1", testimage.Image{Layers: []testimage.Layer{baseLayer, ownLayer(61)}}, "gzip")
	b := e.push("timed-b:1", testimage.Image{Layers: []testimage.Layer{baseLayer, ownLayer(62)}}, "gzip")
	shared := a.Layers[0].Digest
	var once sync.Once
	e.reg.SetBlobHook(func(w http.ResponseWriter, req *http.Request, d digest.Digest) bool {
		if d == shared {
			once.Do(func() { time.Sleep(300 * time.Millisecond) })
		}
		return false // then served as usual
	})
	s, r := e.summary("-j", "4", a.Ref, b.Ref)
	if r.code != 0 {
		t.Fatalf("herd pull exited %d\n%s", r.code, r.stderr)
	}
	ordered := func(what string, times ...float64) {
		t.Helper()
		for i, v := range times {
			if v <= 0 || v > s.Totals.WallSeconds || (i > 0 && v < times[i-1]) {
				t.Errorf("%s: times %v are not in order within the run's %.3fs", what, times, s.Totals.WallSeconds)
				return
			}
		}
	}
	waited := 0
	for _, img := range s.Images {
		for _, l := range img.Layers {
			what := img.Inputs[0] + " layer " + l.Digest.String()
			switch l.How {
			case pull.Fetched:
				ordered(what, l.Queued, l.FetchStart, l.FetchEnd, l.Committed)
				if l.Digest == shared && l.FetchEnd-l.FetchStart < 0.3 {
					t.Errorf("%s: fetched from %.3fs to %.3fs, though the registry held it back 0.3s", what, l.FetchStart, l.FetchEnd)
				}
			case pull.Waited:
				waited++
				ordered(what, l.Queued, l.WaitStart, l.WaitEnd, l.Committed)
			default:
				t.Errorf("%s was %q; want it fetched or waited for", what, l.How)
			}
		}
	}
	if waited != 1 {
		t.Errorf("%d layers were waited for, want 1 (the shared one, by the second image)\n%s", waited, r.stderr)
	}
}
