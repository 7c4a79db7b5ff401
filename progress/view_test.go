package progress

import (
	"testing"

	digest "github.com/opencontainers/go-digest"

	"github.com/herd-project/herd/pull"
)

// An image that lists a blob twice shows each occurrence done only when it
// is: the lower one fetched leaves the upper one to go, and the bar counts
// the blob's bytes once until then.
func TestTerminalRepeatedLayer(t *testing.T) {
	a, b := digest.FromString("a"), digest.FromString("b")
	v := newImageView(0)
	v.observe(pull.Event{Kind: pull.EventResolved, Result: &pull.Result{Inputs: []string{"x"},
		Layers: []pull.Layer{{Digest: a, Size: 100}, {Digest: b, Size: 10}, {Digest: a, Size: 100}}}})
	v.observe(pull.Event{Kind: pull.EventLayerStarted, Blob: a, Size: 100})
	v.observe(pull.Event{Kind: pull.EventLayerRead, Blob: a, Bytes: 40, Size: 100})
	if s := v.snapshot(); s.layersDone != 0 || s.obtainedBytes != 40 {
		t.Errorf("while the lower occurrence is read: %d done, %d bytes obtained; want 0 and 40", s.layersDone, s.obtainedBytes)
	}
	v.observe(pull.Event{Kind: pull.EventLayerRead, Blob: a, Bytes: 60, Size: 100})
	v.observe(pull.Event{Kind: pull.EventLayerDone, Blob: a, How: pull.Fetched, Bytes: 100, Size: 100})
	if s := v.snapshot(); s.layersDone != 1 || s.obtainedBytes != 100 || s.state == "committing" {
		t.Errorf("the lower occurrence fetched: %d done, %d bytes obtained, %q; want 1, 100, not committing", s.layersDone, s.obtainedBytes, s.state)
	}
	v.observe(pull.Event{Kind: pull.EventLayerDone, Blob: b, How: pull.Fetched, Bytes: 10, Size: 10})
	v.observe(pull.Event{Kind: pull.EventLayerDone, Blob: a, How: pull.Reused, Size: 100})
	if s := v.snapshot(); s.layersDone != 3 || s.obtainedBytes != 210 || s.reused != 100 || s.fetched != 100 {
		t.Errorf("all three: %d done, %d obtained, %d reused, %d fetched; want 3, 210, 100, 100", s.layersDone, s.obtainedBytes, s.reused, s.fetched)
	}
}
