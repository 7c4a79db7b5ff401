package tests

import (
	"runtime"
	"strings"
	"testing"

	"github.com/herd-project/herd/tests/internal/testimage"
	"github.com/herd-project/herd/tests/internal/testregistry"
)

// Issue 5, test 5: from a manifest list herd pulls the host's instance by
// default, and another with --platform, --os/--arch/--variant; the summary
// says which instance and platform it pulled.
func TestPlatformFromManifestList(t *testing.T) {
	e := newEnv(t, testregistry.Options{})
	platforms := []testimage.Platform{{OS: "linux", Arch: "amd64"}, {OS: "linux", Arch: "arm64", Variant: "v8"}}
	var imgs []testimage.Image
	for i, p := range platforms {
		imgs = append(imgs, testimage.Image{Layers: []testimage.Layer{baseLayer, ownLayer(550 + int64(i))}, Platform: p})
	}
	index, instances, err := e.pusher.PushIndex(t.Context(), "multi/app:1", imgs, "gzip")
	if err != nil {
		t.Fatal(err)
	}
	ref := e.reg.Host + "/multi/app:1"

	// pulled checks that one run pulled instance i of the index, and only its layers.
	pulled := func(what string, i int, args ...string) {
		t.Helper()
		e.resetStore()
		e.reg.ResetCounters()
		s, r := e.summary(append(args, ref)...)
		wantSuccess(t, r, what)
		want := instances[i]
		wantPlatform := strings.TrimSuffix(platforms[i].OS+"/"+platforms[i].Arch+"/"+platforms[i].Variant, "/")
		if len(s.Images) != 1 {
			t.Fatalf("%s: summary has %d images, want 1", what, len(s.Images))
		}
		got := s.Images[0]
		if got.Digest != index.String() || got.InstanceDigest != want.ManifestDigest.String() || got.Platform != wantPlatform {
			t.Errorf("%s: summary says digest %s, instance %s, platform %q; want %s, %s, %q",
				what, got.Digest, got.InstanceDigest, got.Platform, index, want.ManifestDigest, wantPlatform)
		}
		if got.ImageID != want.ConfigDigest.Encoded() {
			t.Errorf("%s: image ID %s, want the %s config %s", what, got.ImageID, wantPlatform, want.ConfigDigest.Encoded())
		}
		asTag := want
		asTag.Ref = ref
		e.verifyImage(asTag)
		other := instances[1-i]
		if n := e.reg.BlobBytes(other.Layers[1].Digest); n != 0 {
			t.Errorf("%s: the registry served %d bytes of the other platform's layer", what, n)
		}
	}

	switch runtime.GOARCH {
	case "amd64":
		pulled("the host's platform", 0)
	case "arm64":
		pulled("the host's platform", 1)
	default:
		t.Logf("host architecture %s is in neither instance: only explicit choices are tested", runtime.GOARCH)
	}
	pulled("--platform linux/arm64", 1, "--platform", "linux/arm64")
	pulled("--platform linux/arm64/v8", 1, "--platform", "linux/arm64/v8")
	pulled("--arch arm64", 1, "--arch", "arm64")
	pulled("--platform linux/amd64", 0, "--platform", "linux/amd64")
	pulled("--os linux --arch amd64", 0, "--os", "linux", "--arch", "amd64")

	e.resetStore()
	r := e.herd("--platform", "linux/s390x", ref)
	wantFailure(t, r, "a platform the list lacks", ref, "s390x")
	e.checkStoreEmpty("a platform the list lacks")
	if r := e.herd("--platform", "linux/arm64", "--arch", "amd64", ref); r.code != 2 {
		t.Errorf("--platform with --arch: exit %d, want 2 (usage)\n%s", r.code, r.stderr)
	}
}
