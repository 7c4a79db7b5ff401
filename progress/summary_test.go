package progress

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"

	"github.com/herd-project/herd/pull"
)

// The summary, the plain display and the terminal's total line add up a run
// the same way: every image's bytes, a failed one's included, and each image
// once, as ok or failed; the terminal adds what images still in flight have
// read so far.
func TestTotalsAgree(t *testing.T) {
	a, b, c, d := digest.FromString("a"), digest.FromString("b"), digest.FromString("c"), digest.FromString("d")
	pulled := &pull.Result{Inputs: []string{"pulled"}, ImageID: "0123456789abcdef", BytesFetched: 1000 + 40 + 5, // and a 5-byte config
		Layers: []pull.Layer{
			{Digest: a, Size: 1000, How: pull.Fetched, BytesFetched: 1000},
			{Digest: b, Size: 300, How: pull.Reused},
			{Digest: c, Size: 100, How: pull.Partial, BytesFetched: 40},
		}}
	reused := &pull.Result{Inputs: []string{"reused"}, ImageID: "fedcba9876543210", BytesFetched: 5,
		Layers: []pull.Layer{{Digest: a, Size: 1000, How: pull.Reused}}}
	failed := &pull.Result{Inputs: []string{"failed"}, Err: errors.New("boom"), BytesFetched: 7,
		Layers: []pull.Layer{
			{Digest: b, Size: 300, How: pull.Waited},
			{Digest: d, Size: 50, BytesFetched: 7}, // not obtained: reuses nothing
		}}
	want := Totals{Fetched: 1045 + 5 + 7, Reused: 300 + 60 + 1000 + 300, OK: 2, Failed: 1}

	if got := NewSummary([]*pull.Result{pulled, reused, failed}, 0).Totals; got != want {
		t.Errorf("summary totals %+v, want %+v", got, want)
	}

	var out bytes.Buffer
	p := NewPlain(&out)
	for i, r := range []*pull.Result{pulled, reused, failed} {
		p.Observe(pull.Event{Kind: pull.EventImageDone, Image: i, Result: r})
	}
	p.Close()
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if last, prefix := lines[len(lines)-1], "total: 2 pulled, 1 failed, "+size(want.Fetched)+" fetched, "+size(want.Reused)+" reused in "; !strings.HasPrefix(last, prefix) {
		t.Errorf("plain total line %q, want it to start %q", last, prefix)
	}

	// The terminal: the three finished, and a fourth still reading a layer.
	var shots []snapshot
	for i, r := range []*pull.Result{pulled, reused, failed} {
		v := newImageView(i)
		v.observe(pull.Event{Kind: pull.EventImageDone, Image: i, Result: r})
		shots = append(shots, v.snapshot())
	}
	v := newImageView(3)
	v.observe(pull.Event{Kind: pull.EventResolved, Result: &pull.Result{Inputs: []string{"running"}, Layers: []pull.Layer{{Digest: d, Size: 50}}}})
	v.observe(pull.Event{Kind: pull.EventLayerStarted, Blob: d, Size: 50})
	v.observe(pull.Event{Kind: pull.EventLayerRead, Blob: d, Bytes: 20, Size: 50})
	shots = append(shots, v.snapshot())
	running := want
	running.Fetched += 20
	if got := runSoFar(shots); got != running {
		t.Errorf("terminal totals %+v, want %+v", got, running)
	}
}
