package tests

// Issue 13, item 7: herd on many machines behind a pull-through cache. The
// CNCF distribution registry in proxy mode caches the test registry (the
// origin) and is named as the origin's [[registry.mirror]] in
// registries.conf, as a site would set up a cache for its machines. Each
// "machine" is an empty store.

import (
	"fmt"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"
	"go.podman.io/image/v5/types"

	"github.com/herd-project/herd/progress"
	"github.com/herd-project/herd/tests/internal/testimage"
	"github.com/herd-project/herd/tests/internal/testregistry"
)

// cacheSite is an origin (the env's registry) with images, and a
// distribution pull-through cache in front of it that the env's
// registries.conf names as the origin's mirror.
type cacheSite struct {
	t      *testing.T
	e      *env
	cache  *testregistry.Registry
	images []testimage.Pushed
	layers []types.BlobInfo
}

// newCacheSite pushes, in gzip, an image for each of refs (REPO:TAG): all
// share the base layer, the first half also the mid layer, each has a top
// layer of its own.
func newCacheSite(t *testing.T, refs ...string) *cacheSite {
	e := newEnv(t, testregistry.Options{}) // e.reg is the origin
	c := &cacheSite{t: t, e: e}
	for i, ref := range refs {
		layers := []testimage.Layer{baseLayer}
		if i < len(refs)/2 {
			layers = append(layers, midLayer)
		}
		layers = append(layers, ownLayer(700+int64(i)))
		c.images = append(c.images, e.push(ref, testimage.Image{Layers: layers}, "gzip"))
	}
	c.layers = testimage.DistinctLayers(c.images...)
	c.cache = testregistry.StartT(t, testregistry.Options{ProxyFor: e.reg.URL})
	e.reg.ResetCounters()

	// No --tls-verify=false: "insecure" lets herd use plain HTTP, to the
	// origin and to the cache.
	e.omit = map[string]bool{"--tls-verify": true}
	write(t, e.regconf, mirrorConf(e.reg.Host, c.cache.Host))
	return c
}

// machine pulls every image into a new empty store with -j 8 (so that the
// images overlap), counting afresh at the origin and the cache, and checks
// what herd did: every image in the store under the origin's name, each
// layer and config served to herd by the cache once (and reported fetched
// by one image), the summary's bytes what the cache served, each manifest
// asked for once, by its tag. It returns the summary.
func (c *cacheSite) machine(what string) progress.Summary {
	c.t.Helper()
	t, e := c.t, c.e
	e.resetStore()
	e.reg.ResetCounters()
	c.cache.ResetCounters()
	s, r := e.summary(append([]string{"-j", "8"}, refs(c.images...)...)...)
	wantSuccess(t, r, what)
	for _, img := range c.images {
		e.verifyImage(img)
	}
	if len(s.Images) != len(c.images) {
		t.Fatalf("%s: %d images in the summary, want %d", what, len(s.Images), len(c.images))
	}
	for i, img := range s.Images {
		if img.Reference != c.images[i].Ref {
			t.Errorf("%s: summary reference %s, want the origin's name %s", what, img.Reference, c.images[i].Ref)
		}
	}
	fetchers := fetchedBy(s)
	for _, l := range c.layers {
		if got, n := c.cache.BlobBytes(l.Digest), c.cache.BlobGets(l.Digest); got != l.Size || n != 1 {
			t.Errorf("%s: the cache served layer %s (%d bytes) to herd as %d bytes in %d GETs, want once", what, l.Digest, l.Size, got, n)
		}
		if n := len(fetchers[l.Digest]); n != 1 {
			t.Errorf("%s: layer %s reported fetched by %d images %v, want 1", what, l.Digest, n, fetchers[l.Digest])
		}
	}
	for _, img := range c.images {
		// Twice: herd reads it for the IDs of the whole layers it fetches
		// itself (commit/wholelayer.go), and containers/image reads it.
		if n := c.cache.BlobGets(img.ConfigDigest); n != 2 {
			t.Errorf("%s: the cache served config %s in %d GETs, want 2", what, img.ConfigDigest, n)
		}
		repo, tag := repoTag(img.Ref)
		if g, h := c.cache.ManifestGets(repo, tag), c.cache.ManifestHeads(repo, tag); g != 1 || h != 0 {
			t.Errorf("%s: the cache had %d GETs and %d HEADs of %s:%s, want 1 and 0", what, g, h, repo, tag)
		}
	}
	if got, want := s.Totals.Fetched, c.cache.TotalBlobBytes(); got != want {
		t.Errorf("%s: herd reports %d bytes fetched, the cache served %d", what, got, want)
	}
	t.Logf("%s: the cache served herd %d blob bytes (%d layers, %d configs), herd reports %d fetched; the origin served %d blob bytes",
		what, c.cache.TotalBlobBytes(), len(c.layers), len(c.images), s.Totals.Fetched, e.reg.TotalBlobBytes())
	return s
}

// originManifests checks the origin's manifest requests of the last
// machine: for each image, gets GETs and heads HEADs by its tag, and none
// by digest.
func (c *cacheSite) originManifests(what string, gets, heads int) {
	c.t.Helper()
	for _, img := range c.images {
		repo, tag := repoTag(img.Ref)
		if g, h := c.e.reg.ManifestGets(repo, tag), c.e.reg.ManifestHeads(repo, tag); g != gets || h != heads {
			c.t.Errorf("%s: the origin had %d GETs and %d HEADs of %s:%s, want %d and %d", what, g, h, repo, tag, gets, heads)
		}
		d := img.ManifestDigest.String()
		if g, h := c.e.reg.ManifestGets(repo, d), c.e.reg.ManifestHeads(repo, d); g != 0 || h != 0 {
			c.t.Errorf("%s: the origin had %d GETs and %d HEADs of %s@%s, want none", what, g, h, repo, d)
		}
	}
}

// fetchedBy maps each blob to the inputs of the images that report
// fetching it.
func fetchedBy(s progress.Summary) map[digest.Digest][]string {
	out := map[digest.Digest][]string{}
	for _, img := range s.Images {
		for _, l := range img.Layers {
			if l.How == "fetched" {
				out[l.Digest] = append(out[l.Digest], img.Inputs[0])
			}
		}
	}
	return out
}

// repoTag splits HOST/REPO:TAG into REPO and TAG.
func repoTag(ref string) (repo, tag string) {
	_, path, _ := strings.Cut(ref, "/")
	i := strings.LastIndex(path, ":")
	return path[:i], path[i+1:]
}

// Several tags of one repository. The first machine fills the cache: the
// origin serves each blob once, and herd fetches each blob once through
// the mirror. A second machine then pulls without a blob byte (or a
// manifest GET) from the origin: distribution's cache only asks the origin
// with a HEAD where each tag points. With the origin down, a third machine
// still pulls everything from the cache.
func TestPullThroughCache(t *testing.T) {
	c := newCacheSite(t, "site/app:v1", "site/app:v2", "site/app:v3", "site/app:v4")
	origin := c.e.reg

	c.machine("machine 1, empty cache")
	for _, l := range c.layers {
		if got, n := origin.BlobBytes(l.Digest), origin.BlobGets(l.Digest); got != l.Size || n != 1 {
			t.Errorf("machine 1: the origin served layer %s (%d bytes) as %d bytes in %d GETs, want once", l.Digest, l.Size, got, n)
		}
	}
	var configBytes int64 // what the cache served of the configs herd read twice, once
	for _, img := range c.images {
		once := c.cache.BlobBytes(img.ConfigDigest) / 2
		configBytes += once
		if got, n := origin.BlobBytes(img.ConfigDigest), origin.BlobGets(img.ConfigDigest); got != once || n != 1 {
			t.Errorf("machine 1: the origin served config %s as %d bytes in %d GETs, want once (%d bytes)", img.ConfigDigest, got, n, once)
		}
	}
	if got, want := origin.TotalBlobBytes(), c.cache.TotalBlobBytes()-configBytes; got != want {
		t.Errorf("machine 1: the origin served %d blob bytes, the cache %d besides the configs it served again; want the same", got, want)
	}
	// The cache asks where the tag points (HEAD), then fetches the manifest
	// it lacks by that tag (GET), and keeps it.
	c.originManifests("machine 1", 1, 1)

	c.machine("machine 2, warm cache")
	if n := origin.TotalBlobBytes(); n != 0 {
		t.Errorf("machine 2: the origin served %d blob bytes, want 0", n)
	}
	for _, img := range c.images {
		if n := origin.BlobGets(img.ConfigDigest); n != 0 {
			t.Errorf("machine 2: the origin had %d GETs of config %s, want 0", n, img.ConfigDigest)
		}
	}
	for _, l := range c.layers {
		if n := origin.BlobGets(l.Digest); n != 0 {
			t.Errorf("machine 2: the origin had %d GETs of layer %s, want 0", n, l.Digest)
		}
	}
	c.originManifests("machine 2", 0, 1)

	// The cache answers a tag from what it recorded when the origin cannot
	// be reached.
	origin.Close()
	c.machine("machine 3, origin down")
}

// Images of several repositories sharing layers. distribution's cache
// keeps a blob per repository (TestProxyFor in testregistry), while herd
// fetches a shared blob once per machine through whichever image gets to
// it first. So on a later machine the origin serves a shared blob again
// exactly when herd fetches it through a repository the cache has not yet
// fetched it through: the origin serves each blob at most once per
// repository that uses it, over all machines, and the configs and the
// blobs of one repository once.
func TestPullThroughCacheRepositories(t *testing.T) {
	c := newCacheSite(t, "site/app0:v1", "site/app1:v1", "site/app2:v1", "site/app3:v1")
	origin := c.e.reg
	repoOf := map[string]string{}
	for _, img := range c.images {
		repoOf[img.Ref], _ = repoTag(img.Ref)
	}
	users := map[digest.Digest]int{} // how many repositories use each layer
	for _, img := range c.images {
		for _, l := range img.Layers {
			users[l.Digest]++
		}
	}
	cachedIn := map[digest.Digest]map[string]bool{} // the repositories the cache has each layer for
	total := map[digest.Digest]int{}                // the origin's GETs of each layer, over all machines
	for m := 1; m <= 4; m++ {
		what := fmt.Sprintf("machine %d", m)
		s := c.machine(what)
		fetchers := fetchedBy(s)
		again := 0
		for _, l := range c.layers {
			if len(fetchers[l.Digest]) != 1 {
				continue // machine has said so
			}
			via := repoOf[fetchers[l.Digest][0]]
			want := 1
			if cachedIn[l.Digest][via] {
				want = 0
			}
			if got, n := origin.BlobBytes(l.Digest), origin.BlobGets(l.Digest); n != want || got != int64(want)*l.Size {
				t.Errorf("%s: herd fetched layer %s through %s (the cache has it for %v): the origin served %d bytes in %d GETs, want %d GETs",
					what, l.Digest, via, cachedIn[l.Digest], got, n, want)
			}
			if m > 1 && want == 1 {
				again++
			}
			if cachedIn[l.Digest] == nil {
				cachedIn[l.Digest] = map[string]bool{}
			}
			cachedIn[l.Digest][via] = true
			total[l.Digest] += origin.BlobGets(l.Digest)
		}
		for _, img := range c.images {
			want := 0
			if m == 1 {
				want = 1
			}
			if n := origin.BlobGets(img.ConfigDigest); n != want {
				t.Errorf("%s: the origin had %d GETs of config %s, want %d", what, n, img.ConfigDigest, want)
			}
		}
		if m == 1 {
			c.originManifests(what, 1, 1)
		} else {
			c.originManifests(what, 0, 1)
		}
		t.Logf("%s: %d shared layers fetched through a repository the cache did not have them for", what, again)
	}
	for _, l := range c.layers {
		if total[l.Digest] > users[l.Digest] {
			t.Errorf("layer %s: the origin served it %d times in all, more than the %d repositories using it", l.Digest, total[l.Digest], users[l.Digest])
		}
	}
}
