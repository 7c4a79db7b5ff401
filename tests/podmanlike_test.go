package tests

import (
	"context"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	digest "github.com/opencontainers/go-digest"

	"github.com/herd-project/herd/tests/testimage"
	"github.com/herd-project/herd/tests/testregistry"
)

// Issue 12: herd behaves like podman pull where scripts depend on it.

// Item 1: each reference's manifest is fetched once per run, and the image
// stored is the digest herd resolved even if the tag moves between
// resolving and pulling.
func TestManifestReadOnceAndTagPinned(t *testing.T) {
	e := newEnv(t, testregistry.Options{})
	a := e.push("moving:1", testimage.Image{Layers: []testimage.Layer{baseLayer, ownLayer(71)}}, "gzip")
	other := testimage.Image{Layers: []testimage.Layer{baseLayer, ownLayer(72)}}
	e.reg.ResetCounters()

	// The first blob request comes after resolving: move the tag then.
	var moved atomic.Bool
	var moveErr atomic.Value
	e.reg.SetBlobHook(func(w http.ResponseWriter, req *http.Request, d digest.Digest) bool {
		if moved.CompareAndSwap(false, true) {
			if _, err := e.pusher.Push(context.Background(), "moving:1", other, "gzip"); err != nil {
				moveErr.Store(err)
			}
		}
		return false
	})
	s, r := e.summary("-j", "4", a.Ref)
	e.reg.SetBlobHook(nil)
	if err, _ := moveErr.Load().(error); err != nil {
		t.Fatalf("moving the tag: %v", err)
	}
	if r.code != 0 {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
	if got := e.reg.ManifestGets("moving", "1"); got != 1 {
		t.Errorf("the manifest of moving:1 was fetched %d times, want once", got)
	}
	if got := e.reg.ManifestGets("moving", a.ManifestDigest.String()); got != 0 {
		t.Errorf("the manifest was fetched again by digest %d times", got)
	}
	if s.Images[0].Digest != a.ManifestDigest.String() {
		t.Errorf("summary digest %s, want the resolved %s", s.Images[0].Digest, a.ManifestDigest)
	}
	e.verifyImage(a) // the layers (diff_ids) of the image herd resolved, not of the one the tag moved to
	img, err := e.store().Image(a.Ref)
	if err != nil {
		t.Fatal(err)
	}
	if img.Digest != a.ManifestDigest {
		t.Errorf("stored image has manifest digest %s, want %s", img.Digest, a.ManifestDigest)
	}
	if !moved.Load() {
		t.Error("the tag was never moved: the test did not exercise its case")
	}
}

// Item 2: NAME:TAG@DIGEST pulls the digest, as podman does, and the digest
// is printed once.
func TestTagAndDigestPullsTheDigest(t *testing.T) {
	e := newEnv(t, testregistry.Options{})
	a := e.push("both:1", testimage.Image{Layers: []testimage.Layer{baseLayer, ownLayer(73)}}, "gzip")
	input := a.Ref + "@" + a.ManifestDigest.String()
	r := e.herd(input)
	if r.code != 0 {
		t.Fatalf("herd pull %s: exit %d\n%s", input, r.code, r.stderr)
	}
	if strings.Contains(r.stderr, "@"+a.ManifestDigest.String()+"@") {
		t.Errorf("the digest is printed twice:\n%s", r.stderr)
	}
	byDigest := strings.TrimSuffix(a.Ref, ":1") + "@" + a.ManifestDigest.String()
	img, err := e.store().Image(byDigest)
	if err != nil {
		t.Fatalf("the store has no image %s: %v\n%s", byDigest, err, r.stderr)
	}
	if img.Digest != a.ManifestDigest {
		t.Errorf("stored manifest digest %s, want %s", img.Digest, a.ManifestDigest)
	}
	if strings.TrimSpace(r.stdout) != img.ID {
		t.Errorf("stdout %q, want the image ID %s", r.stdout, img.ID)
	}
}

// Item 3: a platform mismatch warns as podman does, and the JSON summary has
// the platform pulled, for a single-platform image too.
func TestPlatformMismatchWarns(t *testing.T) {
	e := newEnv(t, testregistry.Options{})
	a := e.push("single:1", testimage.Image{Layers: []testimage.Layer{baseLayer, ownLayer(74)},
		Platform: testimage.Platform{OS: "linux", Arch: "amd64"}}, "gzip")
	const warning = "does not match the expected platform"

	s, r := e.summary("--os", "linux", "--arch", "amd64", a.Ref)
	if r.code != 0 || strings.Contains(r.stderr, warning) {
		t.Fatalf("pulling amd64 for amd64: exit %d, or a warning:\n%s", r.code, r.stderr)
	}
	if s.Images[0].Platform != "linux/amd64" {
		t.Errorf("summary platform %q, want linux/amd64", s.Images[0].Platform)
	}

	e.resetStore()
	s, r = e.summary("--arch", "arm64", a.Ref)
	if r.code != 0 {
		t.Fatalf("exit %d (podman pulls it and warns)\n%s", r.code, r.stderr)
	}
	if !strings.Contains(r.stderr, a.Ref+": image platform (linux/amd64) "+warning+" (linux/arm64)") {
		t.Errorf("no warning naming the image and both platforms:\n%s", r.stderr)
	}
	if s.Images[0].Platform != "linux/amd64" {
		t.Errorf("summary platform %q, want the platform pulled, linux/amd64", s.Images[0].Platform)
	}
}
