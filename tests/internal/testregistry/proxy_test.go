package testregistry

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"

	digest "github.com/opencontainers/go-digest"
)

// A registry started with ProxyFor is a pull-through cache of its origin:
// the first GET of a blob reaches the origin, later ones are served from
// the cache; a manifest by tag costs the origin a HEAD of the tag every
// time and a GET (by the tag) only the first time; a blob is cached per
// repository; pushes are refused.
func TestProxyFor(t *testing.T) {
	origin := StartT(t, Options{})
	cache := StartT(t, Options{ProxyFor: origin.URL})

	const repo = "lib/cached"
	layer := randomBytes(200 << 10)
	config := []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`)
	layerDigest := putBlob(t, origin, repo, layer)
	configDigest := putBlob(t, origin, repo, config)
	manifest, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": configDigest, "size": len(config)},
		"layers":        []any{map[string]any{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layerDigest, "size": len(layer)}},
	})
	if err != nil {
		t.Fatal(err)
	}
	manifestDigest := digest.FromBytes(manifest)
	req, _ := http.NewRequest(http.MethodPut, origin.URL+"/v2/"+repo+"/manifests/v1", bytes.NewReader(manifest))
	req.Header.Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("putting the manifest: %s", resp.Status)
	}
	origin.ResetCounters()

	accept := map[string]string{"Accept": "application/vnd.oci.image.manifest.v1+json"}
	for i := 1; i <= 2; i++ {
		what := fmt.Sprintf("GET %d through the cache", i)
		resp, body := get(t, http.MethodGet, cache.URL+"/v2/"+repo+"/manifests/v1", accept)
		if resp.StatusCode != http.StatusOK || !bytes.Equal(body, manifest) {
			t.Fatalf("%s: manifest: %s, %q", what, resp.Status, body)
		}
		resp, body = get(t, http.MethodGet, cache.URL+"/v2/"+repo+"/blobs/"+layerDigest.String(), nil)
		if resp.StatusCode != http.StatusOK || !bytes.Equal(body, layer) {
			t.Fatalf("%s: blob: %s, %d bytes", what, resp.Status, len(body))
		}
		if got, want := cache.BlobBytes(layerDigest), int64(i*len(layer)); got != want {
			t.Errorf("%s: the cache served %d bytes of the blob, want %d", what, got, want)
		}
		if got := cache.ManifestGets(repo, "v1"); got != i {
			t.Errorf("%s: the cache counted %d manifest GETs by tag, want %d", what, got, i)
		}
		// The origin: the blob and the manifest once, whatever i; the tag is
		// asked about (HEAD) on every pull by tag.
		if got, n := origin.BlobBytes(layerDigest), origin.BlobGets(layerDigest); got != int64(len(layer)) || n != 1 {
			t.Errorf("%s: the origin served %d bytes of the blob in %d GETs, want %d in 1", what, got, n, len(layer))
		}
		// distribution fetches a manifest it lacks by the tag it was asked
		// for, and then keeps it by digest.
		if got := origin.ManifestGets(repo, "v1"); got != 1 {
			t.Errorf("%s: the origin served the manifest by tag %d times, want 1", what, got)
		}
		if got := origin.ManifestGets(repo, manifestDigest.String()); got != 0 {
			t.Errorf("%s: the origin served the manifest by digest %d times, want 0", what, got)
		}
		if got := origin.ManifestHeads(repo, "v1"); got != i {
			t.Errorf("%s: the origin had %d HEADs of the tag, want %d", what, got, i)
		}
	}
	// The cache keeps blobs per repository, as distribution links them:
	// the same blob asked for through another repository is fetched from
	// the origin again.
	putBlob(t, origin, "lib/other", layer)
	resp, body := get(t, http.MethodGet, cache.URL+"/v2/lib/other/blobs/"+layerDigest.String(), nil)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(body, layer) {
		t.Fatalf("the blob through another repository: %s, %d bytes", resp.Status, len(body))
	}
	if n := origin.BlobGets(layerDigest); n != 2 {
		t.Errorf("the origin had %d GETs of the blob after a GET through another repository, want 2", n)
	}
	if origin.BlobGets(configDigest) != 0 {
		t.Errorf("the origin served the config blob, which nobody asked the cache for")
	}
	if _, err := cache.PutBlob(repo, []byte("pushed to a cache")); err == nil {
		t.Errorf("a push to the cache succeeded; a pull-through cache refuses pushes")
	}
}
