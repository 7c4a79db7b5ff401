// Package progress shows what a run is doing, fed by pull.Events (never by
// parsing text): bars on a terminal (Terminal), plain lines for logs and CI
// (Plain), and the machine-readable summary (Summary).
package progress

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/docker/go-units"

	"github.com/herd-project/herd/pull"
)

// Display consumes a run's events.
type Display interface {
	// Observe is a pull.Observer: called from many goroutines, and pulls
	// wait while it runs, so it must not block for long.
	Observe(pull.Event)
	// Close is called once after the run, to flush and draw the final state.
	Close()
}

// Discard shows nothing.
type Discard struct{}

func (Discard) Observe(pull.Event) {}
func (Discard) Close()             {}

// Plain writes one line per event that matters, each starting with the
// name of its image as the user gave it, with no escape codes: for CI logs
// and pipes. The last line, written by Close, is the run's total and
// starts with "total:". Bytes read are not reported as they arrive: a log
// needs the outcome of each blob, not its progress.
type Plain struct {
	mu     sync.Mutex
	w      io.Writer
	start  time.Time
	names  map[int]string
	totals Totals // of the images finished, as the summary counts them
}

// NewPlain returns a Plain display writing to w.
func NewPlain(w io.Writer) *Plain {
	return &Plain{w: w, start: time.Now(), names: map[int]string{}}
}

func (p *Plain) Observe(e pull.Event) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if e.Result != nil {
		p.names[e.Image] = e.Result.Name()
	}
	name := p.names[e.Image]
	switch e.Kind {
	case pull.EventResolved:
		r := e.Result
		platform := ""
		if r.Platform != "" {
			platform = " for " + r.Platform
		}
		layers := "layers"
		if len(r.Layers) == 1 {
			layers = "layer"
		}
		resolved := r.Reference + "@" + r.Digest.String()
		if strings.Contains(r.Reference, "@") { // pulled by digest: it names itself
			resolved = r.Reference
		}
		fmt.Fprintf(p.w, "%s: resolved to %s%s, %d %s: pulling\n", name, resolved, platform, len(r.Layers), layers)
	case pull.EventLayerWaiting:
		if e.Similar != "" {
			fmt.Fprintf(p.w, "%s: blob %s: waiting for %s, which is fetching %s, a layer with files in common\n", name, shortDigest(e.Blob), e.Owner, shortDigest(e.Similar))
			break
		}
		fmt.Fprintf(p.w, "%s: blob %s: waiting for %s, which is fetching it\n", name, shortDigest(e.Blob), e.Owner)
	case pull.EventLayerDone:
		switch e.How {
		case pull.Fetched:
			fmt.Fprintf(p.w, "%s: blob %s: fetched %s of %s\n", name, shortDigest(e.Blob), size(e.Bytes), size(e.Size))
		case pull.Waited:
			fmt.Fprintf(p.w, "%s: blob %s: reused after another pull fetched it\n", name, shortDigest(e.Blob))
		default:
			fmt.Fprintf(p.w, "%s: blob %s: %s\n", name, shortDigest(e.Blob), e.How)
		}
	case pull.EventRetrying:
		// containers/common's retry package already logged one line for it,
		// naming the image and the cause; one is enough.
	case pull.EventImageDone:
		r := e.Result
		p.totals.add(r)
		if r.Failed() {
			fmt.Fprintf(p.w, "%s: failed: %s\n", name, OneLine(r.Err))
			return
		}
		if r.Present {
			fmt.Fprintf(p.w, "%s: already present as %s (%s): not pulled (--policy)\n", name, shortID(r.ImageID), strings.Join(r.Names, ", "))
			return
		}
		fmt.Fprintf(p.w, "%s: pulled %s (%s) in %s: %s\n", name, shortID(r.ImageID), strings.Join(r.Names, ", "),
			r.Duration.Round(time.Millisecond), layersByHow(r))
	}
}

func (p *Plain) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, "total: %d pulled, %d failed, %s fetched, %s reused in %s\n", p.totals.OK, p.totals.Failed,
		size(p.totals.Fetched), size(p.totals.Reused), time.Since(p.start).Round(time.Millisecond))
}

// layersByHow ends a pulled image's line: its layers counted by how they
// were obtained, and the bytes fetched.
func layersByHow(r *pull.Result) string {
	counts := map[pull.How]int{}
	for _, l := range r.Layers {
		counts[l.How]++
	}
	var parts []string
	for _, how := range []pull.How{pull.Fetched, pull.Partial, pull.Waited, pull.Reused} {
		if counts[how] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", counts[how], how))
		}
	}
	if len(parts) == 0 {
		parts = append(parts, "no layers")
	}
	return fmt.Sprintf("%s; %s fetched", strings.Join(parts, ", "), size(r.BytesFetched))
}

// OneLine is err's text on one line, its lines joined with "; ": every
// line herd prints must start with the image's name, and some errors (from
// the process containers/storage re-executes to apply a layer, a full disk
// among them) carry a newline.
func OneLine(err error) string {
	var parts []string
	for _, line := range strings.FieldsFunc(err.Error(), func(r rune) bool { return r == '\n' || r == '\r' }) {
		if line = strings.TrimSpace(line); line != "" {
			parts = append(parts, line)
		}
	}
	return strings.Join(parts, "; ")
}

// size formats a byte count the way podman and docker do.
func size(n int64) string { return units.HumanSize(float64(n)) }

// shortDigest is the first 12 hex digits of a digest, as podman shows blobs.
func shortDigest(d fmt.Stringer) string {
	s := d.String()
	if i := strings.IndexByte(s, ':'); i >= 0 && len(s) > i+13 {
		return s[i+1 : i+13]
	}
	return s
}

// shortID is an image ID as podman lists it.
func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
