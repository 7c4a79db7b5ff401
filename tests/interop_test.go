package tests

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/herd-project/herd/pull"
	"github.com/herd-project/herd/tests/internal/testimage"
	"github.com/herd-project/herd/tests/internal/testregistry"
)

// podmanImages is `podman images` as ID → names.
func (e *env) podmanImages(bin string) map[string][]string {
	e.t.Helper()
	var listed []struct {
		ID    string `json:"Id"`
		Names []string
	}
	out := e.podman(bin, "images", "--format", "json")
	if err := json.Unmarshal([]byte(out), &listed); err != nil {
		e.t.Fatalf("podman images --format json: %v\n%s", err, out)
	}
	ids := map[string][]string{}
	for _, l := range listed {
		ids[l.ID] = l.Names
	}
	return ids
}

// Issue 5, test 8: herd and Debian's podman share a store. podman lists
// herd's images with herd's IDs and names and mounts them with the
// expected files; a later podman pull of the same images finds every layer
// present; images podman pulled first are reused by herd. Two gzip images
// share a base layer; one image is zstd; one zstd:chunked, which herd pulls
// partially.
//
// podman 4.3 finds a layer by the compressed digest the store recorded for
// it (its blob-info cache is its own, and in another format), so each
// image's layers are its own blobs rather than the same layer in another
// compression; and a partially pulled zstd:chunked layer, recorded by its
// TOC digest only, is fetched again by a podman pull (podman 4.3 does not
// look layers up by TOC digest): the test checks that podman reads and
// re-pulls it as the same image, and reports what it fetched.
func TestPodmanInterop(t *testing.T) {
	podman := podmanBinary(t)
	e := newEnv(t, testregistry.Options{})
	type fixture struct {
		name, compression string
		layers            []testimage.Layer
	}
	base := testimage.RandomLayer(580, 12, 16*kib)
	fixtures := []fixture{
		{"gzip-a", "gzip", []testimage.Layer{base, ownLayer(581)}},
		{"gzip-b", "gzip", []testimage.Layer{base, ownLayer(582)}},
		{"zstd", "zstd", []testimage.Layer{testimage.RandomLayer(583, 8, 16*kib), ownLayer(584)}},
		{"zstd-chunked", "zstd:chunked", []testimage.Layer{testimage.RandomLayer(585, 8, 16*kib), ownLayer(586)}},
	}
	var images []testimage.Pushed
	for _, f := range fixtures {
		images = append(images, e.push("interop/"+f.name+":1", testimage.Image{Layers: f.layers}, f.compression))
	}

	s, r := e.summary(refs(images...)...)
	wantSuccess(t, r, "herd pull")
	listed := e.podmanImages(podman)
	for i, img := range s.Images {
		names, ok := listed[img.ImageID]
		if !ok {
			t.Errorf("podman images does not list herd's %s (ID %s); it lists %v", img.Reference, img.ImageID, listed)
			continue
		}
		if !containsAll(names, img.Names...) || !containsAll(names, images[i].Ref) {
			t.Errorf("podman names %s %v, herd named it %v", img.ImageID, names, img.Names)
		}

		mnt := strings.TrimSpace(e.podman(podman, "image", "mount", img.ImageID))
		for _, l := range fixtures[i].layers {
			f := l.Files[0]
			got, err := os.ReadFile(filepath.Join(mnt, f.Path))
			if err != nil || !bytes.Equal(got, f.Data) {
				t.Errorf("podman image mount of %s: %s differs from the image's (%v)", img.Reference, f.Path, err)
			}
		}
		e.podman(podman, "image", "unmount", img.ImageID)
	}

	// podman pulls the same images: every layer is already there.
	e.reg.ResetCounters()
	for i, img := range images {
		id := lastLine(e.podman(podman, "pull", "--tls-verify=false", "--signature-policy", e.policy, img.Ref))
		if id != s.Images[i].ImageID {
			t.Errorf("podman pull %s: image %s, herd pulled %s", img.Ref, id, s.Images[i].ImageID)
		}
	}
	for i, img := range images {
		for _, l := range img.Layers {
			n := e.reg.BlobBytes(l.Digest)
			switch {
			case fixtures[i].compression == "zstd:chunked":
				t.Logf("podman pull after herd: %s layer %s: %d of %d bytes fetched again (partially pulled by herd)", img.Ref, l.Digest, n, l.Size)
			case n != 0:
				t.Errorf("podman pull after herd: the registry served %d bytes of layer %s of %s, want 0", n, l.Digest, img.Ref)
			}
		}
	}

	checkStore(t, e.store())

	// The other way round: podman pulls into an empty store, herd reuses.
	e.resetStore()
	for _, img := range images {
		e.podman(podman, "pull", "--tls-verify=false", "--signature-policy", e.policy, img.Ref)
	}
	e.reg.ResetCounters()
	s, r = e.summary(refs(images...)...)
	wantSuccess(t, r, "herd pull after podman")
	if n := e.layerBytes(images...); n != 0 {
		t.Errorf("herd after podman: the registry served %d layer bytes, want 0", n)
	}
	for _, img := range s.Images {
		for _, l := range img.Layers {
			if l.How != pull.Reused {
				t.Errorf("herd after podman: %s layer %s was %s, want %s", img.Reference, l.Digest, l.How, pull.Reused)
			}
		}
	}
	for _, img := range images {
		e.verifyImage(img)
	}
	checkStore(t, e.store())
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}
