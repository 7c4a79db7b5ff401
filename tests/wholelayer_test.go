package tests

import (
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"

	"github.com/herd-project/herd/tests/internal/testimage"
	"github.com/herd-project/herd/tests/internal/testregistry"
)

// Issue 11: herd fetches the whole (gzip, zstd) layers it claims itself and
// applies each with one decompression (commit/wholelayer.go), in layers
// whose IDs are the ones containers/image computes, so that it takes them
// as its own: no layer is made twice, none is left over, and every image's
// layer IDs are the chain of its DiffIDs. zstd:chunked layers herd pulls
// partially itself (commit/partiallayer.go), under the same IDs.
func TestWholeLayersFetchedByHerd(t *testing.T) {
	e := newEnv(t, testregistry.Options{})
	// Each compression with layers of its own: a layer whose chain of
	// DiffIDs is in the store already (the same content in another
	// compression) is fetched by containers/image, which then takes the
	// layer there (commit/wholelayer.go).
	own := func(seed int64) testimage.Layer { return testimage.RandomLayer(seed, 6, 16*kib) }
	images := []testimage.Pushed{
		e.push("whole/gzip0:1", testimage.Image{Layers: []testimage.Layer{baseLayer, midLayer, ownLayer(1700)}}, "gzip"),
		e.push("whole/gzip1:1", testimage.Image{Layers: []testimage.Layer{baseLayer, midLayer, ownLayer(1701)}}, "gzip"),
		e.push("whole/zstd:1", testimage.Image{Layers: []testimage.Layer{own(1702), own(1703)}}, "zstd"),
		e.push("whole/chunked:1", testimage.Image{Layers: []testimage.Layer{own(1704), own(1705)}}, "zstd:chunked"),
	}
	whole := images[:3]
	s, r := e.summary(append([]string{"--log-level", "debug", "-j", "4"}, refs(images...)...)...)
	if r.code != 0 || s.Totals.OK != len(images) {
		t.Fatalf("exit %d, %d of %d pulled\n%s", r.code, s.Totals.OK, len(images), r.stderr)
	}
	for _, p := range images {
		e.verifyImage(p)
	}
	checkServedOnce(t, e, "gzip", whole, s, "the run")

	st := e.store()
	inImages := map[string]bool{}
	for _, p := range images {
		img, err := st.Image(p.Ref)
		if err != nil {
			t.Fatal(err)
		}
		// containers/image's storage destination names a layer by the chain
		// of DiffIDs when it knows them (herd's partial pulls check them).
		var want string
		for i, d := range p.DiffIDs {
			if i == 0 {
				want = d.Encoded()
			} else {
				want = digest.Canonical.FromString(want + "+" + d.Encoded()).Encoded()
			}
		}
		if img.TopLayer != want {
			t.Errorf("%s: top layer %s, want the chain of its DiffIDs %s", p.Ref, img.TopLayer, want)
		}
		for id := img.TopLayer; id != ""; {
			inImages[id] = true
			l, err := st.Layer(id)
			if err != nil {
				t.Fatal(err)
			}
			id = l.Parent
		}
	}
	layers, err := st.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range layers {
		if !inImages[l.ID] {
			t.Errorf("layer %s (blob %s) belongs to no image: made twice, or left over", l.ID, l.CompressedDigest)
		}
	}

	// How herd fetched each blob itself: every layer of the gzip and zstd
	// images whole, the zstd:chunked image's partially.
	fetched := map[digest.Digest]string{}
	for _, line := range strings.Split(r.stderr, "\n") {
		for _, how := range []string{"whole-layer fetch", "partial pull"} {
			if i := strings.Index(line, "fetching blob "); i >= 0 && strings.Contains(line, "("+how+")") {
				fetched[digest.Digest(strings.Fields(line[i+len("fetching blob "):])[0])] = how
			}
		}
	}
	for i, p := range images {
		want := "whole-layer fetch"
		if i == len(whole) {
			want = "partial pull"
		}
		for _, l := range p.Layers {
			if got := fetched[l.Digest]; got != want {
				t.Errorf("%s: blob %s: herd's own fetch %q, want %q", p.Ref, l.Digest, got, want)
			}
		}
	}
	checkStore(t, st)
}
