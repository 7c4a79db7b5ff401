package tests

import (
	"context"
	"fmt"
	"math/rand"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/spf13/pflag"
	"go.podman.io/storage/pkg/archive"

	"github.com/herd-project/herd/cmd"
	"github.com/herd-project/herd/pull"
	"github.com/herd-project/herd/tests/internal/testimage"
	"github.com/herd-project/herd/tests/internal/testregistry"
)

// Issue 2, tests 1 and 2: several images in each compression land in an
// empty store, correct and readable; a second run fetches no layer bytes.
func TestPullIntoEmptyStoreThenAgain(t *testing.T) {
	e := newEnv(t, testregistry.Options{})
	var images []testimage.Pushed
	for i, comp := range []string{"gzip", "gzip", "zstd", "zstd:chunked"} {
		img := testimage.Image{Layers: []testimage.Layer{baseLayer, midLayer, ownLayer(int64(i))}}
		images = append(images, e.push(fmt.Sprintf("app%d:v1", i), img, comp))
	}

	r := e.herd(refs(images...)...)
	if r.code != 0 {
		t.Fatalf("herd pull exited %d\n%s", r.code, r.stderr)
	}
	for _, p := range images {
		e.verifyImage(p)
	}
	if ids := strings.Fields(r.stdout); len(ids) != len(images) {
		t.Errorf("want one image ID per image on stdout, got %q", r.stdout)
	}

	e.reg.ResetCounters()
	r = e.herd(refs(images...)...)
	if r.code != 0 {
		t.Fatalf("second herd pull exited %d\n%s", r.code, r.stderr)
	}
	if n := e.layerBytes(images...); n != 0 {
		t.Errorf("second run: registry served %d layer bytes, want 0", n)
	}
	for _, p := range images {
		e.verifyImage(p)
	}
}

// Issue 2, test 3: at -j 1 a base layer two images share is served once.
func TestSharedBaseServedOnceSerial(t *testing.T) {
	for _, comp := range compressions {
		t.Run(comp, func(t *testing.T) {
			e := newEnv(t, testregistry.Options{})
			a := e.push("a:1", testimage.Image{Layers: []testimage.Layer{baseLayer, ownLayer(1)}}, comp)
			b := e.push("b:1", testimage.Image{Layers: []testimage.Layer{baseLayer, ownLayer(2)}}, comp)
			shared := a.Layers[0]
			if b.Layers[0].Digest != shared.Digest {
				t.Fatalf("fixture: the base layer is not one blob (%s, %s)", shared.Digest, b.Layers[0].Digest)
			}
			for rep := 0; rep < 3; rep++ {
				e.resetStore()
				e.reg.ResetCounters()
				if r := e.herd("-j", "1", a.Ref, b.Ref); r.code != 0 {
					t.Fatalf("herd exited %d\n%s", r.code, r.stderr)
				}
				got := e.reg.BlobBytes(shared.Digest)
				if got == 0 || got > servedOnceBound(comp, shared.Size) {
					t.Fatalf("run %d: shared blob (%d bytes) served %d bytes, want it served once", rep, shared.Size, got)
				}
				e.verifyImage(a)
				e.verifyImage(b)
			}
		})
	}
}

// Issue 2, test 4: zstd:chunked images whose layers are different blobs
// with mostly the same files: the second pull fetches only what differs.
// At -j 1 the first layer is committed before the second starts; at -j 4
// herd reads both TOCs first and pulls the similar layers one after the
// other (commit/similar.go). Issue 11 made that hold at any -j.
func TestSimilarFilesPartialPull(t *testing.T) {
	e := newEnv(t, testregistry.Options{})
	a, b := e.pushSimilarPair("sim", 7)
	for _, jobs := range []string{"1", "4"} {
		t.Run("j"+jobs, func(t *testing.T) {
			e.resetStore()
			e.reg.ResetCounters()
			s, r := e.summary("-j", jobs, a.Ref, b.Ref)
			if r.code != 0 {
				t.Fatalf("herd exited %d\n%s", r.code, r.stderr)
			}
			// Whichever image went second should have been served at most 20%.
			aBytes, bBytes := e.reg.BlobBytes(a.Layers[0].Digest), e.reg.BlobBytes(b.Layers[0].Digest)
			aFrac, bFrac := float64(aBytes)/float64(a.Layers[0].Size), float64(bBytes)/float64(b.Layers[0].Size)
			t.Logf("served %.1f%% of a's blob, %.1f%% of b's", 100*aFrac, 100*bFrac)
			if min(aFrac, bFrac) > 0.20 {
				t.Errorf("the second image was served %.1f%% of its blob, want at most 20%%", 100*min(aFrac, bFrac))
			}
			hows := map[pull.How]bool{}
			for _, img := range s.Images {
				hows[img.Layers[0].How] = true
			}
			if !hows["partial"] {
				t.Errorf("no layer reported as a partial pull: %+v", s.Images)
			}
			e.verifyImage(a)
			e.verifyImage(b)
		})
	}
}

// pushSimilarPair pushes NAME-a:1 and NAME-b:1, zstd:chunked images of one
// layer each: different blobs, 3 of whose 40 files differ.
func (e *env) pushSimilarPair(name string, seed int64) (a, b testimage.Pushed) {
	e.t.Helper()
	big := testimage.RandomLayer(seed, 40, 32*kib)
	similar := testimage.SimilarLayer(big, seed+1, 3)
	a = e.push(name+"-a:1", testimage.Image{Layers: []testimage.Layer{big}}, "zstd:chunked")
	b = e.push(name+"-b:1", testimage.Image{Layers: []testimage.Layer{similar}}, "zstd:chunked")
	if a.Layers[0].Digest == b.Layers[0].Digest {
		e.t.Fatal("fixture: the similar layers are one blob")
	}
	return a, b
}

// Issue 11: herd reads the TOCs of zstd:chunked layers to order them
// (commit/similar.go), and then pulls those layers partially itself
// (commit/partiallayer.go), serving the TOC it read already: the registry
// sends each TOC once, not once to herd and once more to the partial pull.
func TestTOCReadOnce(t *testing.T) {
	e := newEnv(t, testregistry.Options{})
	a := e.push("toc-a:1", testimage.Image{Layers: []testimage.Layer{testimage.RandomLayer(31, 20, 16*kib)}}, "zstd:chunked")
	b := e.push("toc-b:1", testimage.Image{Layers: []testimage.Layer{testimage.RandomLayer(32, 20, 16*kib)}}, "zstd:chunked")
	tocRanges := map[digest.Digest]string{} // blob → the start of its TOC's byte range
	for _, p := range []testimage.Pushed{a, b} {
		l := p.Layers[0]
		var offset int64
		if _, err := fmt.Sscanf(l.Annotations["io.github.containers.zstd-chunked.manifest-position"], "%d:", &offset); err != nil {
			t.Fatalf("fixture: %s has no TOC position: %v", p.Ref, err)
		}
		tocRanges[l.Digest] = fmt.Sprintf("%d-", offset)
	}
	var mu sync.Mutex
	tocReads := map[digest.Digest]int{}
	e.reg.SetBlobHook(func(w http.ResponseWriter, req *http.Request, d digest.Digest) bool {
		start, ok := tocRanges[d]
		if !ok {
			return false
		}
		ranges := strings.TrimPrefix(req.Header.Get("Range"), "bytes=")
		for _, r := range strings.Split(ranges, ",") {
			if strings.HasPrefix(strings.TrimSpace(r), start) {
				mu.Lock()
				tocReads[d]++
				mu.Unlock()
			}
		}
		return false
	})
	s, r := e.summary("-j", "4", a.Ref, b.Ref)
	if r.code != 0 {
		t.Fatalf("herd exited %d\n%s", r.code, r.stderr)
	}
	for _, p := range []testimage.Pushed{a, b} {
		if n := tocReads[p.Layers[0].Digest]; n != 1 {
			t.Errorf("%s: the registry was asked for the TOC of blob %s %d times, want once", p.Ref, p.Layers[0].Digest, n)
		}
	}
	for _, img := range s.Images {
		if how := img.Layers[0].How; how != "partial" {
			t.Errorf("%s: layer obtained %q, want partial", img.Inputs[0], how)
		}
	}
	e.verifyImage(a)
	e.verifyImage(b)
}

// A registry that refuses ranged reads (400 Bad Request): herd's own
// partial pulls of zstd:chunked layers (commit/partiallayer.go) fall back
// to fetching each blob whole, as containers/image's would, once each.
func TestPartialPullFallsBackWhenRangesAreRefused(t *testing.T) {
	e := newEnv(t, testregistry.Options{})
	a := e.push("noranges-a:1", testimage.Image{Layers: []testimage.Layer{testimage.RandomLayer(71, 10, 16*kib)}}, "zstd:chunked")
	b := e.push("noranges-b:1", testimage.Image{Layers: []testimage.Layer{testimage.RandomLayer(72, 10, 16*kib)}}, "zstd:chunked")
	var mu sync.Mutex
	refused := 0
	e.reg.SetBlobHook(func(w http.ResponseWriter, req *http.Request, d digest.Digest) bool {
		if req.Header.Get("Range") == "" {
			return false
		}
		mu.Lock()
		refused++
		mu.Unlock()
		http.Error(w, "ranges not supported", http.StatusBadRequest)
		return true
	})
	s, r := e.summary("--log-level", "debug", "-j", "4", a.Ref, b.Ref)
	if r.code != 0 {
		t.Fatalf("herd exited %d\n%s", r.code, r.stderr)
	}
	if refused == 0 {
		t.Fatal("no ranged read was made: the test did not exercise a partial pull")
	}
	for _, p := range []testimage.Pushed{a, b} {
		// herd's own partial pull gave up and fetched the blob itself.
		if !strings.Contains(r.stderr, "fetching blob "+p.Layers[0].Digest.String()+" whole: ") {
			t.Errorf("%s: herd did not fall back from its own partial pull of %s", p.Ref, p.Layers[0].Digest)
		}
	}
	for _, img := range s.Images {
		if how := img.Layers[0].How; how != "fetched" {
			t.Errorf("%s: layer obtained %q, want fetched (whole)", img.Inputs[0], how)
		}
	}
	for _, p := range []testimage.Pushed{a, b} {
		if got, size := e.reg.BlobBytes(p.Layers[0].Digest), p.Layers[0].Size; got != size {
			t.Errorf("%s: blob %s served %d bytes, want it whole once (%d)", p.Ref, p.Layers[0].Digest, got, size)
		}
		e.verifyImage(p)
	}
	checkStore(t, e.store())
}

// A zstd:chunked layer that waits for a similar one another image pulls
// (commit/similar.go) is pulled all the same when that image fails: the
// wait ends with the failed pull, and the failure names its image.
func TestSimilarLayerPulledWhenTheOtherImageFails(t *testing.T) {
	e := newEnv(t, testregistry.Options{})
	a, b := e.pushSimilarPair("simfail", 9)
	broken := a.Layers[0].Digest
	// The first GET is herd's read of the TOC; the pull's own reads fail,
	// late enough for b to be waiting by then.
	e.reg.SetBlobHook(func(w http.ResponseWriter, req *http.Request, d digest.Digest) bool {
		if d != broken || e.reg.BlobGets(d) == 1 {
			return false
		}
		select {
		case <-time.After(time.Second):
		case <-req.Context().Done():
		}
		http.Error(w, "blob unavailable", http.StatusNotFound)
		return true
	})
	r := e.herd("-j", "4", "--retry", "0", a.Ref, b.Ref)
	if r.code != 1 {
		t.Fatalf("exit status %d, want 1\n%s", r.code, r.stderr)
	}
	if !strings.Contains(r.stderr, "a layer with files in common") {
		t.Errorf("b did not wait for a's similar layer:\n%s", r.stderr)
	}
	if !strings.Contains(r.stderr, a.Ref) {
		t.Errorf("stderr does not name the failed image %s:\n%s", a.Ref, r.stderr)
	}
	e.verifyImage(b)
}

// Issue 2, test 5: a missing image does not stop the others.
func TestMissingImageAmongGood(t *testing.T) {
	e := newEnv(t, testregistry.Options{})
	a := e.push("good-a:1", testimage.Image{Layers: []testimage.Layer{baseLayer, ownLayer(1)}}, "gzip")
	b := e.push("good-b:1", testimage.Image{Layers: []testimage.Layer{baseLayer, ownLayer(2)}}, "zstd")
	missing := e.reg.Host + "/nothing-here:1"
	r := e.herd(a.Ref, missing, b.Ref)
	if r.code != 1 {
		t.Fatalf("exit status %d, want 1\n%s", r.code, r.stderr)
	}
	if !strings.Contains(r.stderr, missing) || !strings.Contains(r.stderr, "failed") {
		t.Errorf("stderr does not name the missing image %s as failed:\n%s", missing, r.stderr)
	}
	e.verifyImage(a)
	e.verifyImage(b)
}

// The same reference twice, and two tags of one manifest, are pulled once;
// the image gets both names.
func TestDuplicateInputsPulledOnce(t *testing.T) {
	e := newEnv(t, testregistry.Options{})
	img := testimage.Image{Layers: []testimage.Layer{baseLayer, ownLayer(3)}}
	a := e.push("dup:one", img, "gzip")
	b := e.push("dup:two", img, "gzip")
	if a.ManifestDigest != b.ManifestDigest {
		t.Fatal("fixture: the two tags name different manifests")
	}
	s, r := e.summary(a.Ref, a.Ref, b.Ref)
	if r.code != 0 {
		t.Fatalf("herd exited %d\n%s", r.code, r.stderr)
	}
	if len(s.Images) != 1 || len(s.Images[0].Inputs) != 2 {
		t.Fatalf("want one image for both tags, got %+v", s.Images)
	}
	for _, l := range a.Layers {
		if n := e.reg.BlobBytes(l.Digest); n != l.Size {
			t.Errorf("layer %s served %d bytes, want exactly its size %d", l.Digest, n, l.Size)
		}
	}
	stored, err := e.store().Image(a.Ref)
	if err != nil {
		t.Fatal(err)
	}
	if !containsAll(stored.Names, a.Ref, b.Ref) {
		t.Errorf("image names %v, want both %s and %s", stored.Names, a.Ref, b.Ref)
	}
}

// Every layer is committed as soon as it lands: while the top layer's blob
// is held back at the registry, the lower layers are already in the store.
func TestLayersCommittedAsTheyLand(t *testing.T) {
	for _, comp := range compressions {
		t.Run(comp, func(t *testing.T) {
			e := newEnv(t, testregistry.Options{})
			lower := []testimage.Layer{baseLayer, midLayer}
			p := e.push("early:1", testimage.Image{Layers: append(lower, ownLayer(9))}, comp)
			top := p.Layers[2].Digest

			release := make(chan struct{})
			var once sync.Once
			defer once.Do(func() { close(release) })
			e.reg.SetBlobHook(func(w http.ResponseWriter, req *http.Request, d digest.Digest) bool {
				if d == top {
					select {
					case <-release:
					case <-req.Context().Done():
					}
				}
				return false
			})

			done := make(chan run, 1)
			go func() { done <- e.herd("-j", "3", p.Ref) }()

			s := e.store() // the very store object herd is writing through
			deadline := time.Now().Add(60 * time.Second)
			for !lowerCommitted(s, p.DiffIDs[:2]) {
				select {
				case r := <-done:
					t.Fatalf("herd finished while the top layer was held back: %d\n%s", r.code, r.stderr)
				default:
				}
				if time.Now().After(deadline) {
					t.Fatal("the lower layers were not committed while the top layer was still being fetched")
				}
				time.Sleep(20 * time.Millisecond)
			}
			once.Do(func() { close(release) })
			if r := <-done; r.code != 0 {
				t.Fatalf("herd exited %d\n%s", r.code, r.stderr)
			}
			e.verifyImage(p)
		})
	}
}

// Issue 2, test 6: --help documents every flag; usage errors exit 2.
func TestUsage(t *testing.T) {
	exec := func(args ...string) run {
		var out, errOut strings.Builder
		code := cmd.ExecuteContext(context.Background(), args, cmd.IO{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errOut})
		return run{out.String(), errOut.String(), code}
	}
	help := exec("pull", "--help")
	if help.code != 0 {
		t.Fatalf("pull --help exited %d", help.code)
	}
	flags := cmd.PullFlags()
	flags.VisitAll(func(f *pflag.Flag) {
		if !strings.Contains(help.stdout, "--"+f.Name+" ") || f.Usage == "" {
			t.Errorf("pull --help does not document --%s", f.Name)
		}
	})
	if !strings.Contains(help.stdout, "--log-level") {
		t.Error("pull --help does not document the global --log-level")
	}

	for _, args := range [][]string{
		{"pull"},
		{"pull", "--no-such-flag", "x"},
		{"pull", "--jobs", "0", "x"},
		{"pull", "--platform", "linux", "x"},
		{"pull", "--format", "yaml", "x"},
		{"pull", "--file", "/nonexistent/list"},
	} {
		if r := exec(args...); r.code != 2 || !strings.Contains(r.stderr, "Error:") {
			t.Errorf("herd %s: exit %d, want 2 with an error message; stderr: %q", strings.Join(args, " "), r.code, r.stderr)
		}
	}
}

// Images listed in a file or on standard input join those on the command line.
func TestImageListFromFileAndStdin(t *testing.T) {
	e := newEnv(t, testregistry.Options{})
	a := e.push("list-a:1", testimage.Image{Layers: []testimage.Layer{ownLayer(21)}}, "gzip")
	b := e.push("list-b:1", testimage.Image{Layers: []testimage.Layer{ownLayer(22)}}, "zstd")
	c := e.push("list-c:1", testimage.Image{Layers: []testimage.Layer{ownLayer(23)}}, "gzip")
	list := e.dir + "/images.txt"
	write(t, list, "# images for the test\n\n"+a.Ref+"   # first\n")
	r := e.herdContext(context.Background(), strings.NewReader(b.Ref+"\n"), "--file", list, "--file", "-", c.Ref)
	if r.code != 0 {
		t.Fatalf("herd exited %d\n%s", r.code, r.stderr)
	}
	for _, p := range []testimage.Pushed{a, b, c} {
		e.verifyImage(p)
	}
}

// Issue 11: a fully fetched layer reaches the store decompressed once by
// herd, for its tar check and containers/storage alike (commit's
// decompressOnce), and the store still records it as containers/storage
// would have: the blob's compressed digest and size, and its DiffID. The
// compression recorded as none is the sign that the store did not
// decompress it again.
func TestLayerRecordedAfterOneDecompression(t *testing.T) {
	e := newEnv(t, testregistry.Options{})
	var images []testimage.Pushed
	for i, comp := range []string{"gzip", "zstd"} {
		images = append(images, e.push(fmt.Sprintf("once%d:v1", i), testimage.Image{Layers: []testimage.Layer{ownLayer(int64(40 + i))}}, comp))
	}
	if r := e.herd(refs(images...)...); r.code != 0 {
		t.Fatalf("herd pull exited %d\n%s", r.code, r.stderr)
	}
	s := e.store()
	for _, img := range images {
		e.verifyImage(img)
		blob := img.Layers[0]
		layers, err := s.LayersByCompressedDigest(blob.Digest)
		if err != nil || len(layers) != 1 {
			t.Fatalf("%s: %d layers by the blob's digest (%v), want 1", img.Ref, len(layers), err)
		}
		l := layers[0]
		if l.CompressedSize != blob.Size || l.UncompressedDigest != img.DiffIDs[0] || l.UncompressedSize <= 0 {
			t.Errorf("%s: the store records compressed size %d, DiffID %s, size %d; want %d, %s, > 0", img.Ref, l.CompressedSize, l.UncompressedDigest, l.UncompressedSize, blob.Size, img.DiffIDs[0])
		}
		if l.CompressionType != archive.Uncompressed {
			t.Errorf("%s: the store recorded compression %v: it decompressed the layer itself, a third time", img.Ref, l.CompressionType)
		}
	}
}

// A layer that holds the same file at several paths: herd's own partial
// pull asks the registry for it once, and writes every copy. It does so
// whether the pull reads the layer's TOC itself (one image) or herd read it
// before to order the layers (two images), and the registry's count says so.
func TestFileHeldTwiceFetchedOnce(t *testing.T) {
	const dupSize = 512 * kib
	layerWithCopies := func(seed int64) testimage.Layer {
		l := testimage.RandomLayer(seed, 6, 16*kib)
		rng := rand.New(rand.NewSource(seed))
		tool := make([]byte, dupSize) // random bytes: compressed, about as big
		rng.Read(tool)
		for _, path := range []string{"usr/bin/tool%d", "usr/lib/tool%d/tool", "usr/libexec/tool%d"} {
			l.Files = append(l.Files, testimage.File{Path: fmt.Sprintf(path, seed), Data: tool, Mode: 0o755})
		}
		return l
	}
	for _, images := range []int{1, 2} {
		t.Run(fmt.Sprintf("%d images", images), func(t *testing.T) {
			e := newEnv(t, testregistry.Options{})
			var pushed []testimage.Pushed
			for i := range images {
				img := testimage.Image{Layers: []testimage.Layer{layerWithCopies(int64(81 + i))}}
				pushed = append(pushed, e.push(fmt.Sprintf("copies%d:1", i), img, "zstd:chunked"))
			}
			s, r := e.summary(append([]string{"-j", "4"}, refs(pushed...)...)...)
			if r.code != 0 {
				t.Fatalf("herd exited %d\n%s", r.code, r.stderr)
			}
			for i, p := range pushed {
				if how := s.Images[i].Layers[0].How; how != "partial" {
					t.Fatalf("%s: layer obtained %q, want partial", p.Ref, how)
				}
				l := p.Layers[0]
				// The blob holds the file three times; two copies not
				// fetched save twice its size, less a few part headers.
				if served, most := e.reg.BlobBytes(l.Digest), l.Size-2*dupSize+8*kib; served == 0 || served > most {
					t.Errorf("%s: the registry sent %d bytes of blob %s (%d bytes, the same %d-byte file in it three times), want at most %d",
						p.Ref, served, l.Digest, l.Size, dupSize, most)
				}
				e.verifyImage(p)
			}
		})
	}
}

// A registry that refuses the ranges herd asks for to fetch a file held
// twice once: herd asks for pkg/chunked's own ranges instead, and the pull
// fetches every copy.
func TestFileHeldTwiceRefusedRanges(t *testing.T) {
	e := newEnv(t, testregistry.Options{})
	l := testimage.RandomLayer(91, 6, 16*kib)
	tool := make([]byte, 256*kib)
	rand.New(rand.NewSource(91)).Read(tool)
	l.Files = append(l.Files, testimage.File{Path: "usr/bin/tool", Data: tool}, testimage.File{Path: "usr/lib/tool/tool", Data: tool})
	p := e.push("refused-copies:1", testimage.Image{Layers: []testimage.Layer{l}}, "zstd:chunked")
	blob := p.Layers[0]
	var tocOffset int64
	if _, err := fmt.Sscanf(blob.Annotations["io.github.containers.zstd-chunked.manifest-position"], "%d:", &tocOffset); err != nil {
		t.Fatalf("fixture: %s has no TOC position: %v", p.Ref, err)
	}
	var mu sync.Mutex
	refused := 0
	e.reg.SetBlobHook(func(w http.ResponseWriter, req *http.Request, d digest.Digest) bool {
		ranges := strings.Split(strings.TrimPrefix(req.Header.Get("Range"), "bytes="), ",")
		// The TOC's read is let through; a read of more ranges than
		// pkg/chunked's one for the files is refused.
		if d != blob.Digest || len(ranges) < 2 || strings.HasPrefix(ranges[0], fmt.Sprintf("%d-", tocOffset)) {
			return false
		}
		mu.Lock()
		refused++
		mu.Unlock()
		http.Error(w, "too many ranges", http.StatusBadRequest)
		return true
	})
	s, r := e.summary("-j", "4", p.Ref)
	if r.code != 0 {
		t.Fatalf("herd exited %d\n%s", r.code, r.stderr)
	}
	if refused == 0 {
		t.Fatal("no read of several ranges was made: herd did not ask for the file once")
	}
	if how := s.Images[0].Layers[0].How; how != "partial" {
		t.Errorf("layer obtained %q, want partial", how)
	}
	if served := e.reg.BlobBytes(blob.Digest); served < blob.Size-16*kib {
		t.Errorf("the registry sent %d bytes of blob %s (%d bytes): want the whole file twice, pkg/chunked's ranges", served, blob.Digest, blob.Size)
	}
	e.verifyImage(p)
}
