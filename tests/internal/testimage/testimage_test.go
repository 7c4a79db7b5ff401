package testimage

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"
	imgspecv1 "github.com/opencontainers/image-spec/specs-go/v1"
	"go.podman.io/image/v5/pkg/compression"
	"go.podman.io/image/v5/types"
	"go.podman.io/storage/pkg/chunked/toc"

	"github.com/herd-project/herd/tests/internal/testregistry"
)

const compressions = "gzip zstd zstd:chunked"

var layerMediaType = map[string]string{
	"gzip":         imgspecv1.MediaTypeImageLayerGzip,
	"zstd":         imgspecv1.MediaTypeImageLayerZstd,
	"zstd:chunked": imgspecv1.MediaTypeImageLayerZstd,
}

func fetch(t *testing.T, url string, accept string) []byte {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s %v", url, resp.Status, err)
	}
	return b
}

// checkLayers verifies each pushed blob has the expected media type and
// decompresses to the tar whose digest the config lists.
func checkLayers(t *testing.T, r *testregistry.Registry, repo string, p Pushed, comp string) {
	t.Helper()
	if len(p.Layers) != len(p.DiffIDs) {
		t.Fatalf("%s: %d layers, %d diffIDs", p.Ref, len(p.Layers), len(p.DiffIDs))
	}
	for i, l := range p.Layers {
		if l.MediaType != layerMediaType[comp] {
			t.Errorf("%s layer %d: media type %q, want %q", p.Ref, i, l.MediaType, layerMediaType[comp])
		}
		tocDigest, err := toc.GetTOCDigest(l.Annotations)
		if err != nil {
			t.Fatalf("%s layer %d: %v", p.Ref, i, err)
		}
		if (tocDigest != nil) != (comp == "zstd:chunked") {
			t.Errorf("%s layer %d (%s): TOC digest %v", p.Ref, i, comp, tocDigest)
		}
		blob := fetch(t, r.URL+"/v2/"+repo+"/blobs/"+l.Digest.String(), "")
		if digest.FromBytes(blob) != l.Digest || int64(len(blob)) != l.Size {
			t.Fatalf("%s layer %d: blob does not match descriptor", p.Ref, i)
		}
		rc, _, err := compression.AutoDecompress(bytes.NewReader(blob))
		if err != nil {
			t.Fatal(err)
		}
		uncompressed, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		if got := digest.FromBytes(uncompressed); got != p.DiffIDs[i] {
			t.Errorf("%s layer %d: uncompressed digest %s, config diff_id %s", p.Ref, i, got, p.DiffIDs[i])
		}
		t.Logf("%s layer %d: %s %d bytes -> %d", p.Ref, i, comp, l.Size, len(uncompressed))
	}
	var cfg imgspecv1.Image
	if err := json.Unmarshal(fetch(t, r.URL+"/v2/"+repo+"/blobs/"+p.ConfigDigest.String(), ""), &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.OS == "" || cfg.Architecture == "" || len(cfg.RootFS.DiffIDs) != len(p.DiffIDs) {
		t.Fatalf("%s: bad config %+v", p.Ref, cfg)
	}
	for i, d := range cfg.RootFS.DiffIDs {
		if d != p.DiffIDs[i] {
			t.Fatalf("%s: config diff_id %d = %s, want %s", p.Ref, i, d, p.DiffIDs[i])
		}
	}
}

// TestSharedBaseLayer pushes two images sharing a base layer per compression
// to one registry (so later compressions meet blobs of earlier ones) and
// checks the base is one blob referenced by both manifests.
func TestSharedBaseLayer(t *testing.T) {
	ctx := context.Background()
	r := testregistry.StartT(t, testregistry.Options{})
	p := NewPusher(r.Host, t.TempDir())
	base := RandomLayer(1, 8, 16<<10)

	for _, comp := range strings.Fields(compressions) {
		t.Run(comp, func(t *testing.T) {
			repoA, repoB := "dedup/"+strings.ReplaceAll(comp, ":", "-")+"-a", "dedup/"+strings.ReplaceAll(comp, ":", "-")+"-b"
			a, err := p.Push(ctx, repoA+":v1", Image{Layers: []Layer{base, RandomLayer(2, 4, 16<<10)}}, comp)
			if err != nil {
				t.Fatal(err)
			}
			b, err := p.Push(ctx, repoB+":v1", Image{Layers: []Layer{base, RandomLayer(3, 4, 16<<10)}}, comp)
			if err != nil {
				t.Fatal(err)
			}
			if a.Layers[0].Digest != b.Layers[0].Digest {
				t.Fatalf("shared base layer pushed as two blobs: %s and %s", a.Layers[0].Digest, b.Layers[0].Digest)
			}
			if a.Layers[1].Digest == b.Layers[1].Digest {
				t.Fatalf("distinct top layers have the same blob %s", a.Layers[1].Digest)
			}
			if a.DiffIDs[0] != base.DiffID() {
				t.Fatalf("DiffIDs[0] = %s, want %s", a.DiffIDs[0], base.DiffID())
			}
			checkLayers(t, r, repoA, a, comp)
			checkLayers(t, r, repoB, b, comp)
			// The manifest is reachable by tag with the reported digest.
			mb := fetch(t, r.URL+"/v2/"+repoA+"/manifests/v1", imgspecv1.MediaTypeImageManifest)
			if digest.FromBytes(mb) != a.ManifestDigest {
				t.Fatalf("manifest digest %s, reported %s", digest.FromBytes(mb), a.ManifestDigest)
			}
		})
	}
}

func TestPushIndex(t *testing.T) {
	ctx := context.Background()
	r := testregistry.StartT(t, testregistry.Options{})
	p := NewPusher(r.Host, t.TempDir())
	base := RandomLayer(10, 4, 8<<10)
	imgs := []Image{
		{Layers: []Layer{base, RandomLayer(11, 2, 8<<10)}},
		{Layers: []Layer{base, RandomLayer(12, 2, 8<<10)}, Platform: Platform{OS: "linux", Arch: "arm64", Variant: "v8"}},
	}
	indexDigest, pushed, err := p.PushIndex(ctx, "multi/app:latest", imgs, "zstd:chunked")
	if err != nil {
		t.Fatal(err)
	}
	ib := fetch(t, r.URL+"/v2/multi/app/manifests/latest", imgspecv1.MediaTypeImageIndex)
	if digest.FromBytes(ib) != indexDigest {
		t.Fatalf("index digest %s, reported %s", digest.FromBytes(ib), indexDigest)
	}
	var index imgspecv1.Index
	if err := json.Unmarshal(ib, &index); err != nil {
		t.Fatal(err)
	}
	want := []string{"linux/amd64/", "linux/arm64/v8"}
	for i, m := range index.Manifests {
		got := m.Platform.OS + "/" + m.Platform.Architecture + "/" + m.Platform.Variant
		if got != want[i] || m.Digest != pushed[i].ManifestDigest {
			t.Fatalf("index entry %d: %s %s, want %s %s", i, got, m.Digest, want[i], pushed[i].ManifestDigest)
		}
		if pushed[i].Ref != r.Host+"/multi/app@"+m.Digest.String() {
			t.Fatalf("instance %d ref %q", i, pushed[i].Ref)
		}
		checkLayers(t, r, "multi/app", pushed[i], "zstd:chunked")
	}
	if pushed[0].Layers[0].Digest != pushed[1].Layers[0].Digest {
		t.Fatalf("shared base layer pushed as two blobs")
	}
}

func TestLayerTar(t *testing.T) {
	l := Layer{Files: []File{
		{Path: "b/c/d.txt", Data: []byte("d")},
		{Path: "/a.txt", Data: []byte("a"), Mode: 0o755},
		{Path: "b/e.txt", Data: []byte("e")},
	}}
	t1, t2 := l.Tar(), l.Tar()
	if !bytes.Equal(t1, t2) || l.DiffID() != digest.FromBytes(t1) {
		t.Fatal("Tar is not deterministic")
	}
	tr := tar.NewReader(bytes.NewReader(t1))
	var names []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Uid != 0 || h.Gid != 0 || !h.ModTime.Equal(tarTime) {
			t.Fatalf("%s: uid %d gid %d mtime %v", h.Name, h.Uid, h.Gid, h.ModTime)
		}
		if h.Name == "a.txt" && h.Mode != 0o755 || h.Name == "b/e.txt" && h.Mode != 0o644 {
			t.Fatalf("%s: mode %o", h.Name, h.Mode)
		}
		names = append(names, h.Name)
	}
	if got, want := strings.Join(names, " "), "a.txt b/ b/c/ b/c/d.txt b/e.txt"; got != want {
		t.Fatalf("entries %q, want %q", got, want)
	}
}

func TestGeneratedLayers(t *testing.T) {
	a, b := RandomLayer(5, 10, 4096), RandomLayer(5, 10, 4096)
	if a.DiffID() != b.DiffID() {
		t.Fatal("RandomLayer is not deterministic")
	}
	if RandomLayer(6, 10, 4096).DiffID() == a.DiffID() {
		t.Fatal("different seeds gave the same layer")
	}
	s := SimilarLayer(a, 7, 3)
	changed := 0
	for i := range a.Files {
		if a.Files[i].Path != s.Files[i].Path || len(a.Files[i].Data) != len(s.Files[i].Data) {
			t.Fatalf("file %d: path or size changed", i)
		}
		if !bytes.Equal(a.Files[i].Data, s.Files[i].Data) {
			changed++
		}
	}
	if changed != 3 {
		t.Fatalf("%d files changed, want 3", changed)
	}
}

// servedCounts is a registry's served bytes by blob, for ServedLayerBytes.
type servedCounts map[digest.Digest]int64

func (s servedCounts) BlobBytes(d digest.Digest) int64 { return s[d] }

func TestDistinctLayers(t *testing.T) {
	blob := func(d string, size int64) types.BlobInfo {
		return types.BlobInfo{Digest: digest.FromString(d), Size: size}
	}
	base, a, b := blob("base", 100), blob("a", 10), blob("b", 1)
	images := []Pushed{{Layers: []types.BlobInfo{base, a}}, {Layers: []types.BlobInfo{base, b, b}}}
	var got []digest.Digest
	for _, l := range DistinctLayers(images...) {
		got = append(got, l.Digest)
	}
	if want := []digest.Digest{base.Digest, a.Digest, b.Digest}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("DistinctLayers: %v, want %v", got, want)
	}
	if n := UniqueLayerBytes(images...); n != 111 {
		t.Errorf("UniqueLayerBytes: %d, want 111", n)
	}
	// base served twice (two requests) counts twice; its second listing does not.
	served := servedCounts{base.Digest: 200, b.Digest: 1}
	if n := ServedLayerBytes(served, images...); n != 201 {
		t.Errorf("ServedLayerBytes: %d, want 201", n)
	}
}
