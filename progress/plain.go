// Package progress shows what a run is doing: plain lines for logs and CI,
// and reports. It is fed by pull.Events, never by parsing text.
package progress

import (
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/docker/go-units"

	"github.com/herd-project/herd/pull"
)

// Display consumes a run's events.
type Display interface {
	Observe(pull.Event)
	// Close is called once after the run, to flush and draw the final state.
	Close()
}

// Discard shows nothing.
type Discard struct{}

func (Discard) Observe(pull.Event) {}
func (Discard) Close()             {}

// Plain writes one line per event that matters, each naming its image, with
// no escape codes: for CI logs and pipes.
type Plain struct {
	mu     sync.Mutex
	w      io.Writer
	names  map[int]string
	ok     int
	failed int
	bytes  int64
}

// NewPlain returns a Plain display writing to w.
func NewPlain(w io.Writer) *Plain {
	return &Plain{w: w, names: map[int]string{}}
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
		fmt.Fprintf(p.w, "%s: resolved to %s@%s, %d layers\n", name, r.Reference, r.Digest, len(r.Layers))
	case pull.EventLayerWaiting:
		fmt.Fprintf(p.w, "%s: blob %s: waiting for %s, which is fetching it\n", name, short(e.Blob), e.Owner)
	case pull.EventLayerDone:
		switch e.How {
		case pull.Fetched:
			fmt.Fprintf(p.w, "%s: blob %s: fetched %s\n", name, short(e.Blob), units.HumanSize(float64(e.Bytes)))
		case pull.Waited:
			fmt.Fprintf(p.w, "%s: blob %s: reused after another pull fetched it\n", name, short(e.Blob))
		default:
			fmt.Fprintf(p.w, "%s: blob %s: %s\n", name, short(e.Blob), e.How)
		}
	case pull.EventImageDone:
		r := e.Result
		if r.Failed() {
			p.failed++
			fmt.Fprintf(p.w, "%s: failed: %v\n", name, r.Err)
			return
		}
		p.ok++
		p.bytes += r.Fetched
		fmt.Fprintf(p.w, "%s: pulled %s (%s) in %s: %s\n", name, shortID(r.ImageID), strings.Join(r.Names, ", "),
			r.Duration.Round(1e6), layerSummary(r))
	}
}

func (p *Plain) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, "%d pulled, %d failed, %s fetched\n", p.ok, p.failed, units.HumanSize(float64(p.bytes)))
}

// layerSummary counts layers by how they were obtained.
func layerSummary(r *pull.Result) string {
	counts := map[string]int{}
	for _, l := range r.Layers {
		counts[l.How]++
	}
	var parts []string
	for _, how := range []string{pull.Fetched, pull.Partial, pull.Waited, pull.Reused} {
		if counts[how] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", counts[how], how))
		}
	}
	return fmt.Sprintf("%s; %s fetched", strings.Join(parts, ", "), units.HumanSize(float64(r.Fetched)))
}

func short(d fmt.Stringer) string {
	s := d.String()
	if i := strings.IndexByte(s, ':'); i >= 0 && len(s) > i+13 {
		return s[i+1 : i+13]
	}
	return s
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
