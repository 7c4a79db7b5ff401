package tests

import (
	"context"
	"runtime"
	"strings"
	"testing"

	"github.com/herd-project/herd/progress"
	"github.com/herd-project/herd/tests/internal/testimage"
	"github.com/herd-project/herd/tests/internal/testregistry"
)

// Issue 13, item 1: --policy always|missing|newer|never, as podman pull's.

// policyImage is a small image of two layers, its own on top.
func policyImage(seed int64) testimage.Image {
	return testimage.Image{Layers: []testimage.Layer{baseLayer, ownLayer(seed)}}
}

// pullOK runs herd with args and fails the test unless it exits 0.
func (e *env) pullOK(args ...string) run {
	e.t.Helper()
	r := e.herd(args...)
	if r.code != 0 {
		e.t.Fatalf("herd %s: exit %d\n%s", strings.Join(args, " "), r.code, r.stderr)
	}
	return r
}

// blobGets is how many GETs the registry had for p's config and layers.
func blobGets(e *env, p testimage.Pushed) int {
	n := e.reg.BlobGets(p.ConfigDigest)
	for _, l := range p.Layers {
		n += e.reg.BlobGets(l.Digest)
	}
	return n
}

// checkKept checks that img, in a summary, reports the stored image of ref
// kept without a pull: its ID, every layer reused, nothing fetched, no
// attempt.
func checkKept(e *env, img progress.ImageSummary, ref string) {
	e.t.Helper()
	stored, err := e.store().Image(ref)
	if err != nil {
		e.t.Fatalf("%s is not in the store: %v", ref, err)
	}
	if img.Error != "" || img.ImageID != stored.ID || img.Fetched != 0 || img.Attempts != 0 || !img.Present {
		e.t.Errorf("%s: summary %+v, want the stored image %s kept: no error, 0 bytes fetched, 0 attempts, present", ref, img, stored.ID)
	}
	if len(img.Layers) == 0 {
		e.t.Errorf("%s: summary lists no layers", ref)
	}
	for _, l := range img.Layers {
		if l.How != "reused" || l.Fetched != 0 {
			e.t.Errorf("%s: layer %s is %q with %d bytes fetched, want reused, 0", ref, l.Digest, l.How, l.Fetched)
		}
	}
}

func TestPolicyMissing(t *testing.T) {
	e := newEnv(t, testregistry.Options{})
	// Short names resolve against the store through registries.conf, as
	// podman looks them up before pulling. (containers/image caches the
	// file for the process: it is written before the first run.)
	write(t, e.regconf, `unqualified-search-registries = ["`+e.reg.Host+`"]`+"\n")
	a := e.push("a:1", policyImage(1), "gzip")
	b := e.push("b:1", policyImage(2), "gzip")
	e.pullOK(a.Ref)

	e.reg.ResetCounters()
	s, r := e.summary("--policy", "missing", a.Ref, "a:1", b.Ref)
	if r.code != 0 {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
	if n, g := e.reg.ManifestGets("a", "1"), blobGets(e, a); n+g != 0 {
		t.Errorf("the store has %s, yet the registry had %d manifest and %d blob requests for it", a.Ref, n, g)
	}
	if len(s.Images) != 2 {
		t.Fatalf("want 2 images in the summary (a by two names, b), got %+v", s.Images)
	}
	if got := strings.Join(s.Images[0].Inputs, " "); got != a.Ref+" a:1" {
		t.Errorf("the kept image's inputs are %q, want both names of a", got)
	}
	checkKept(e, s.Images[0], a.Ref)
	if e.reg.ManifestGets("b", "1") != 1 || s.Images[1].Error != "" || s.Images[1].Attempts != 1 {
		t.Errorf("%s, not in the store, was not pulled: %+v", b.Ref, s.Images[1])
	}
	e.verifyImage(b)

	// A chosen platform makes missing ask the registry, as podman's does
	// (a stored image may declare a platform it is not for); the image is
	// the same, so nothing is fetched.
	e.reg.ResetCounters()
	s, r = e.summary("--policy", "missing", "--platform", "linux/"+runtime.GOARCH, a.Ref)
	if r.code != 0 {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
	if n, g := e.reg.ManifestGets("a", "1"), blobGets(e, a); n != 1 || g != 0 {
		t.Errorf("missing with --platform: %d manifest and %d blob requests, want 1 and 0", n, g)
	}
	checkKept(e, s.Images[0], a.Ref)
}

func TestPolicyNever(t *testing.T) {
	e := newEnv(t, testregistry.Options{})
	a := e.push("a:1", policyImage(1), "gzip")
	b := e.push("b:1", policyImage(2), "gzip")
	e.pullOK(a.Ref)

	e.reg.ResetCounters()
	s, r := e.summary("--policy", "never", a.Ref, b.Ref)
	if r.code != 1 {
		t.Fatalf("never with an image not in the store: exit %d, want 1\n%s", r.code, r.stderr)
	}
	if n := e.reg.ManifestGets("a", "1") + e.reg.ManifestGets("b", "1") + blobGets(e, a) + blobGets(e, b); n != 0 {
		t.Errorf("never: the registry had %d requests", n)
	}
	checkKept(e, s.Images[0], a.Ref)
	if msg := s.Images[1].Error; !strings.Contains(msg, b.Ref) || !strings.Contains(msg, "never") || !strings.Contains(msg, "not in the store") {
		t.Errorf("the error for %s does not name it, the policy and the cause: %q", b.Ref, msg)
	}
	if _, err := e.store().Image(b.Ref); err == nil {
		t.Errorf("never pulled %s", b.Ref)
	}

	// Without a registry at all, an image in the store is enough.
	e.reg.Close()
	r = e.pullOK("--policy", "never", a.Ref)
	if id := strings.TrimSpace(r.stdout); id != s.Images[0].ImageID {
		t.Errorf("never printed %q, want the stored image's ID %s", id, s.Images[0].ImageID)
	}
	t.Logf("display of a kept image:\n%s", r.stderr)
}

func TestPolicyNewer(t *testing.T) {
	e := newEnv(t, testregistry.Options{})
	a := e.push("a:1", policyImage(1), "gzip")
	list, instances, err := e.pusher.PushIndex(context.Background(), "multi:1", []testimage.Image{
		{Layers: policyImage(3).Layers, Platform: testimage.Platform{Arch: runtime.GOARCH}},
		{Layers: policyImage(4).Layers, Platform: testimage.Platform{Arch: "s390x"}},
	}, "gzip")
	if err != nil {
		t.Fatal(err)
	}
	multi := e.reg.Host + "/multi:1"
	e.pullOK(a.Ref, multi)

	// Unchanged: the manifest requests podman's check makes (the tag's
	// manifest, and for a list the instance chosen from it), no blob.
	e.reg.ResetCounters()
	s, r := e.summary("--policy", "newer", a.Ref, multi)
	if r.code != 0 {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
	if n, g := e.reg.ManifestGets("a", "1"), blobGets(e, a); n != 1 || g != 0 {
		t.Errorf("newer, unchanged %s: %d manifest and %d blob requests, want 1 and 0", a.Ref, n, g)
	}
	inst := instances[0]
	if n, ni, g := e.reg.ManifestGets("multi", "1"), e.reg.ManifestGets("multi", inst.ManifestDigest.String()), blobGets(e, inst); n != 1 || ni != 1 || g != 0 {
		t.Errorf("newer, unchanged list %s: %d requests of its manifest, %d of the instance's, %d of blobs; want 1, 1, 0", multi, n, ni, g)
	}
	checkKept(e, s.Images[0], a.Ref)
	checkKept(e, s.Images[1], multi)
	if s.Images[1].Digest != list.String() || s.Images[1].InstanceDigest != inst.ManifestDigest.String() {
		t.Errorf("the kept list's digests are %s and %s, want %s and %s", s.Images[1].Digest, s.Images[1].InstanceDigest, list, inst.ManifestDigest)
	}

	// The tag moved to a new image: newer pulls it.
	a2 := e.push("a:1", policyImage(5), "gzip")
	e.reg.ResetCounters()
	s, r = e.summary("--policy", "newer", a.Ref)
	if r.code != 0 {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
	if e.reg.BlobBytes(a2.Layers[1].Digest) == 0 || s.Images[0].Attempts != 1 || s.Images[0].Digest != a2.ManifestDigest.String() {
		t.Errorf("newer did not pull the new image of %s: %+v", a.Ref, s.Images[0])
	}
	e.verifyImage(a2)

	// A registry that cannot be read: the stored image, with a warning.
	e.reg.Close()
	r = e.pullOK("--policy", "newer", a.Ref)
	if !strings.Contains(r.stderr, a.Ref) || !strings.Contains(r.stderr, "using the image in the store") {
		t.Errorf("no warning that the stored %s is used:\n%s", a.Ref, r.stderr)
	}
}

func TestPolicyAlways(t *testing.T) {
	e := newEnv(t, testregistry.Options{})
	a := e.push("a:1", policyImage(1), "gzip")
	e.pullOK(a.Ref)
	for _, args := range [][]string{{"--policy", "always", a.Ref}, {a.Ref}} {
		e.reg.ResetCounters()
		s, r := e.summary(args...)
		if r.code != 0 {
			t.Fatalf("exit %d\n%s", r.code, r.stderr)
		}
		if n := e.reg.ManifestGets("a", "1"); n != 1 {
			t.Errorf("%v: the manifest was requested %d times, want once", args, n)
		}
		if n := e.layerBytes(a); n != 0 || s.Images[0].Attempts != 1 {
			t.Errorf("%v: %d layer bytes served, %d attempts; want 0 and 1", args, n, s.Images[0].Attempts)
		}
	}
}

func TestPolicyInvalid(t *testing.T) {
	e := newEnv(t, testregistry.Options{})
	r := e.herd("--policy", "sometimes", e.reg.Host+"/a:1")
	if r.code != 2 {
		t.Errorf("--policy sometimes: exit %d, want 2 (usage)", r.code)
	}
	for _, want := range []string{"sometimes", "always", "missing", "newer", "never"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("the usage error does not say %q:\n%s", want, r.stderr)
		}
	}
}
