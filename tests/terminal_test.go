package tests

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/herd-project/herd/progress"
	"github.com/herd-project/herd/pull"
)

// 30 images with long names on an 80x16 terminal stay readable: the live
// area never outgrows the terminal (images beyond it are counted on the
// total line), no live line wraps, names are cut from the left, and every
// image gets exactly one final line.
func TestTerminalManyImagesFit(t *testing.T) {
	const cols, rows, n = 80, 16, 30
	const failing = 17
	name := func(i int) string { return fmt.Sprintf("registry.example.com/platform-team/service-%02d:v1.2.3", i) }
	out, fs := onTerminal(t, cols, rows, func(d progress.Display) {
		blob := func(i, l int) digest.Digest { return digest.FromString(fmt.Sprintf("layer %d of %d", l, i)) }
		results := make([]*pull.Result, n)
		for i := range n {
			r := &pull.Result{Inputs: []string{name(i)}, Reference: name(i), Digest: digest.FromString(name(i))}
			for l := range 3 {
				r.Layers = append(r.Layers, pull.Layer{Digest: blob(i, l), Size: 100_000})
			}
			results[i] = r
			d.Observe(pull.Event{Kind: pull.EventResolved, Image: i, Result: r, Time: time.Now()})
		}
		// Six images at a time, as --jobs would have it; each layer read in 5
		// steps, the bottom layer of odd images waited for from the image before
		// for 10.
		next := 0
		active := map[int]int{} // image → layer in flight
		steps := map[int]int{}
		for len(active) > 0 || next < n {
			for len(active) < 6 && next < n {
				active[next] = 0
				next++
			}
			for i, l := range active {
				b := blob(i, l)
				if i%2 == 1 && l == 0 && steps[i] == 0 {
					d.Observe(pull.Event{Kind: pull.EventLayerWaiting, Image: i, Blob: b, Owner: name(i - 1)})
				}
				if steps[i] == 0 && !(i%2 == 1 && l == 0) {
					d.Observe(pull.Event{Kind: pull.EventLayerStarted, Image: i, Blob: b, Size: 100_000})
				}
				steps[i]++
				if !(i%2 == 1 && l == 0) {
					d.Observe(pull.Event{Kind: pull.EventLayerRead, Image: i, Blob: b, Bytes: 20_000, Size: 100_000})
				}
				if steps[i] < 5 || i%2 == 1 && l == 0 && steps[i] < 10 { // a wait spans a refresh or more
					continue
				}
				how := pull.Fetched
				if i%2 == 1 && l == 0 {
					how = pull.Waited
				}
				d.Observe(pull.Event{Kind: pull.EventLayerDone, Image: i, Blob: b, How: how, Bytes: 100_000, Size: 100_000})
				steps[i] = 0
				if l < 2 && i != failing {
					active[i] = l + 1
					continue
				}
				r := results[i]
				r.Duration = 300 * time.Millisecond
				if i == failing {
					r.Err = errors.New("pulling " + name(i) + ": reading blob " + b.String() + ": fetching blob: received unexpected HTTP status: 500 Internal Server Error")
				} else {
					r.ImageID = strings.Repeat(fmt.Sprintf("%02d", i), 32)
					r.BytesFetched = 300_000
				}
				d.Observe(pull.Event{Kind: pull.EventImageDone, Image: i, Result: r, Time: time.Now()})
				delete(active, i)
			}
			time.Sleep(20 * time.Millisecond)
		}
		d.Close()
	})
	if len(fs) < 5 {
		t.Fatalf("%d frames drawn; want the display redrawn as the run goes", len(fs))
	}
	live := regexp.MustCompile(`^…(\S+) +\d/3 +\S+ (queued|fetching|waiting for …?\S+|committing|done \d+|failed) +\[[=>-]+\]$`)
	sawHidden, most := false, 0
	states := map[string]int{}
	for k, f := range fs {
		screen := strings.Join(f, "\n")
		last := f[len(f)-1]
		if !strings.HasPrefix(last, "total: ") {
			t.Fatalf("frame %d: the last line is not the total line:\n%s", k, screen)
		}
		sawHidden = sawHidden || strings.Contains(last, " more ·")
		if strings.Contains(last, "…") {
			t.Errorf("frame %d: the total line was cut: %q", k, last)
		}
		seen := map[string]bool{}
		count := 0
		for _, line := range f {
			if strings.HasSuffix(line, "\x00") && !strings.Contains(line, " failed: ") {
				t.Errorf("frame %d: line %q is wider than the terminal", k, line)
			}
			if !strings.HasSuffix(line, "]") {
				continue
			}
			m := live.FindStringSubmatch(line)
			if m == nil {
				t.Errorf("frame %d: line %q is not an image's line as expected", k, line)
				continue
			}
			if seen[m[1]] {
				t.Errorf("frame %d: two lines for %s:\n%s", k, m[1], screen)
			}
			seen[m[1]] = true
			states[strings.Fields(m[2])[0]]++
			count++
		}
		most = max(most, count)
		if count > rows-2 {
			t.Errorf("frame %d: %d image lines on a %d-row terminal:\n%s", k, count, rows, screen)
		}
	}
	t.Logf("at most %d image lines at once; a frame early on:\n%s\nfinal screen:\n%s", most, strings.Join(fs[len(fs)/3], "\n"), strings.Join(fs[len(fs)-1], "\n"))
	if most < rows-2 {
		t.Errorf("at most %d image lines at once, with 30 images on %d rows: the terminal was not used", most, rows)
	}
	t.Logf("image lines by state: %v", states)
	for _, st := range []string{"queued", "fetching", "waiting"} {
		if states[st] == 0 {
			t.Errorf("no line showed an image %s", st)
		}
	}
	if !sawHidden {
		t.Error("the total line never counted the images without a line")
	}
	text := string(out)
	for i := range n {
		var final *regexp.Regexp
		if i == failing {
			final = regexp.MustCompile(regexp.QuoteMeta(fmt.Sprintf("service-%02d:v1.2.3", i)) + ` +1/3 +\S+ failed: pulling .*500 Internal Server Error\r\n`)
		} else {
			final = regexp.MustCompile(regexp.QuoteMeta(fmt.Sprintf("service-%02d:v1.2.3", i)) + ` +3/3 +\S+ done ` + strings.Repeat(fmt.Sprintf("%02d", i), 6) + ` in 300ms\r\n`)
		}
		if got := len(final.FindAllString(text, -1)); got != 1 {
			t.Errorf("%s: %d final lines, want 1 (%s)", name(i), got, final)
		}
	}
	if last := fs[len(fs)-1]; !strings.HasPrefix(last[len(last)-1], "total: 29/30 done, 1 failed · ") {
		t.Errorf("final total line %q, want 29/30 done, 1 failed", last[len(last)-1])
	}
}
