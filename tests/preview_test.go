package tests

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/herd-project/herd/progress"
	"github.com/herd-project/herd/tests/internal/testimage"
	"github.com/herd-project/herd/tests/internal/testregistry"
)

// Issue 13, item 4: herd pull --dry-run reads manifests only, and what it
// says a pull would fetch is what the following pull fetched, by the
// registry's counters.
func TestDryRunSaysWhatAPullFetches(t *testing.T) {
	e := newEnv(t, testregistry.Options{})
	present := e.push("present:1", testimage.Image{Layers: []testimage.Layer{baseLayer, ownLayer(1)}}, "gzip")
	a := e.push("a:1", testimage.Image{Layers: []testimage.Layer{baseLayer, midLayer, ownLayer(2)}}, "gzip")
	b := e.push("b:1", testimage.Image{Layers: []testimage.Layer{baseLayer, midLayer, ownLayer(3)}}, "gzip")
	if r := e.herd(present.Ref); r.code != 0 {
		t.Fatalf("pulling %s first: exit %d\n%s", present.Ref, r.code, r.stderr)
	}

	e.reg.ResetCounters()
	r := e.herd("--dry-run", "--format", "json", a.Ref, b.Ref, present.Ref)
	if r.code != 0 {
		t.Fatalf("herd pull --dry-run exited %d\n%s", r.code, r.stderr)
	}
	if n := e.reg.TotalBlobBytes(); n != 0 {
		t.Errorf("a dry run fetched %d blob bytes, want none", n)
	}
	var p progress.PreviewSummary
	if err := json.Unmarshal([]byte(r.stdout), &p); err != nil {
		t.Fatalf("parsing the dry run's JSON: %v\n%s", err, r.stdout)
	}
	if len(p.Images) != 3 {
		t.Fatalf("%d images in the preview, want 3\n%s", len(p.Images), r.stdout)
	}
	base, mid := a.Layers[0].Size, a.Layers[1].Size
	own := func(img testimage.Pushed) int64 { return img.Layers[len(img.Layers)-1].Size }
	for i, want := range []struct {
		shared, inStore int64
	}{
		{base + mid, base}, // a: base and mid shared with b (base with present too); base in the store
		{base + mid, base},
		{base, base + own(present)}, // present: all in the store
	} {
		got := p.Images[i]
		if got.SharedBytes != want.shared || got.InStoreBytes != want.inStore {
			t.Errorf("%s: shared %d, in store %d; want %d and %d", got.Reference, got.SharedBytes, got.InStoreBytes, want.shared, want.inStore)
		}
	}
	if p.Totals.Layers != 5 || p.Totals.InStoreBytes != base+own(present) {
		t.Errorf("totals: %d distinct layers, %d in store; want 5 and %d", p.Totals.Layers, p.Totals.InStoreBytes, base+own(present))
	}

	e.reg.ResetCounters()
	if r := e.herd(a.Ref, b.Ref, present.Ref); r.code != 0 {
		t.Fatalf("herd pull exited %d\n%s", r.code, r.stderr)
	}
	if served := e.reg.TotalBlobBytes(); served != p.Totals.ToFetchBytes {
		t.Errorf("the pull fetched %d blob bytes; the dry run said %d", served, p.Totals.ToFetchBytes)
	}
	var perImage int64
	for _, img := range p.Images {
		perImage += img.ToFetchBytes
	}
	if perImage != p.Totals.ToFetchBytes {
		t.Errorf("per image the dry run adds up to %d bytes to fetch, in total it says %d", perImage, p.Totals.ToFetchBytes)
	}

	// An image --policy keeps would fetch nothing.
	r = e.herd("--dry-run", "--format", "json", "--policy", "missing", present.Ref)
	var kept progress.PreviewSummary
	if err := json.Unmarshal([]byte(r.stdout), &kept); err != nil || r.code != 0 {
		t.Fatalf("herd pull --dry-run --policy missing: exit %d, %v\n%s", r.code, err, r.stderr)
	}
	if kept.Totals.ToFetchBytes != 0 {
		t.Errorf("a dry run with --policy missing of a stored image would fetch %d bytes, want 0", kept.Totals.ToFetchBytes)
	}

	// The table names every image and the totals.
	r = e.herd("--dry-run", a.Ref, b.Ref)
	if r.code != 0 || !strings.Contains(r.stdout, "TO FETCH") || !strings.Contains(r.stdout, "total: 2 images, 4 distinct layers") {
		t.Errorf("herd pull --dry-run (table) exited %d:\n%s\n%s", r.code, r.stdout, r.stderr)
	}
}
