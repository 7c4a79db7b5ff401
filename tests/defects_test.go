package tests

import (
	"bufio"
	"fmt"
	"math/rand"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/docker/go-units"
	digest "github.com/opencontainers/go-digest"
	"go.podman.io/image/v5/types"

	"github.com/herd-project/herd/tests/internal/testimage"
	"github.com/herd-project/herd/tests/internal/testregistry"
)

// Issue 16 item 7: the smaller defects, each with its test.

// randomLayer is a gzip layer of one file of size random bytes.
func randomLayer(t *testing.T, seed int64, size int) rawLayer {
	t.Helper()
	data := make([]byte, size)
	rand.New(rand.NewSource(seed)).Read(data)
	return gzipLayer(t, tarOf(t, tarFile(fmt.Sprintf("data%d.bin", seed), string(data))))
}

// fetchedOf matches the plain display's line for a fetched blob.
var fetchedOf = regexp.MustCompile(`: blob \S+: fetched (\S+) of (\S+)$`)

// An image whose manifest lists the same layer blob twice (here below and
// above another layer) is pulled with the blob fetched once: the upper
// occurrence reuses the lower one's fetch, and is reported as reused. Pulled
// beside another image sharing the blob, nothing deadlocks and every blob is
// served once. Before, containers/image fetched both occurrences at once,
// and herd showed "fetched 212B of 106B". The hand-made image is gzip; the
// same layers pushed by containers/image cover zstd and zstd:chunked (whose
// upper occurrence is found by its TOC digest).
func TestDuplicateLayerFetchedOnce(t *testing.T) {
	e := newEnv(t, testregistry.Options{})
	base, top, other := randomLayer(t, 1, 256<<10), randomLayer(t, 2, 64<<10), randomLayer(t, 3, 64<<10)
	raw := func(l rawLayer) types.BlobInfo {
		return types.BlobInfo{Digest: digest.FromBytes(l.blob), Size: int64(len(l.blob))}
	}
	twice := testimage.Pushed{Ref: pushRaw(t, e.reg, "defects/twice", []rawLayer{base, top, base}, nil),
		Layers: []types.BlobInfo{raw(base), raw(top), raw(base)}, DiffIDs: []digest.Digest{base.diffID, top.diffID, base.diffID}}
	beside := testimage.Pushed{Ref: pushRaw(t, e.reg, "defects/beside", []rawLayer{base, other}, nil),
		Layers: []types.BlobInfo{raw(base), raw(other)}, DiffIDs: []digest.Digest{base.diffID, other.diffID}}
	type dupCase struct {
		name, compression string
		images            []testimage.Pushed
	}
	cases := []dupCase{
		{"alone", "gzip", []testimage.Pushed{twice}},
		{"beside another image that has the blob", "gzip", []testimage.Pushed{twice, beside}},
	}
	a, b := ownLayer(301), ownLayer(302)
	for _, c := range compressions[1:] {
		p := e.push("defects/twice-"+strings.ReplaceAll(c, ":", "-")+":1", testimage.Image{Layers: []testimage.Layer{a, b, a}}, c)
		cases = append(cases, dupCase{c, c, []testimage.Pushed{p}})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e.t = t
			e.resetStore()
			// The repeated blob takes a while to arrive, so that both
			// occurrences would be under way at once if herd let them.
			slow := c.images[0].Layers[0].Digest
			e.reg.SetBlobHook(func(w http.ResponseWriter, req *http.Request, d digest.Digest) bool {
				if d == slow {
					time.Sleep(300 * time.Millisecond)
				}
				return false
			})
			e.reg.ResetCounters()
			checkDuplicateLayerRun(t, e, c.compression, c.images)
			for _, p := range c.images {
				e.verifyImage(p)
			}
		})
	}
}

// checkDuplicateLayerRun pulls images, the first of which lists its bottom
// layer blob again on top, and checks that each blob was served once and
// that the summary and the plain display count every byte once.
func checkDuplicateLayerRun(t *testing.T, e *env, compression string, images []testimage.Pushed) {
	s, r := e.summaryWithin(time.Minute, refs(images...)...)
	if r.code != 0 || len(s.Images) != len(images) {
		t.Fatalf("exit %d with %d images, want 0 with %d\n%s", r.code, len(s.Images), len(images), r.stderr)
	}
	for _, l := range testimage.DistinctLayers(images...) {
		if n := e.reg.BlobBytes(l.Digest); n == 0 || n > servedOnceBound(compression, l.Size) {
			t.Errorf("blob %s of %d bytes: the registry served %d bytes (%d GETs), want it served once", l.Digest, l.Size, n, e.reg.BlobGets(l.Digest))
		}
	}
	// Partial pulls' multipart framing is the registry's, not herd's.
	if served := e.reg.TotalBlobBytes(); s.Totals.Fetched > served || compression != "zstd:chunked" && s.Totals.Fetched != served {
		t.Errorf("the summary says %d bytes fetched, the registry served %d", s.Totals.Fetched, served)
	}
	for _, img := range s.Images {
		var layerFetched, unique int64
		seen := map[digest.Digest]bool{}
		for _, l := range img.Layers {
			layerFetched += l.Fetched
			if l.Fetched > l.Size {
				t.Errorf("%s: layer %s: %d bytes fetched of %d", img.Inputs[0], l.Digest, l.Fetched, l.Size)
			}
			if !seen[l.Digest] {
				seen[l.Digest] = true
				unique += l.Size
			}
		}
		// The image's count adds its config to its layers'.
		if layerFetched > img.Fetched || img.Fetched > unique+1024 {
			t.Errorf("%s: %d bytes fetched for its layers, %d for the image, whose distinct layers are %d bytes", img.Inputs[0], layerFetched, img.Fetched, unique)
		}
		if layerFetched+img.Reused != sumSizes(img.Layers) {
			t.Errorf("%s: %d layer bytes fetched and %d reused, want them to add up to its layers' %d", img.Inputs[0], layerFetched, img.Reused, sumSizes(img.Layers))
		}
	}
	dup := s.Images[0].Layers
	if len(dup) != 3 || dup[2].Digest != dup[0].Digest || dup[2].How != "reused" || dup[2].Fetched != 0 {
		t.Errorf("the repeated layer is reported as %+v, want reused with 0 bytes fetched", dup[min(2, len(dup)-1)])
	}

	// The plain display never fetches more of a blob than it has.
	sc := bufio.NewScanner(strings.NewReader(r.stderr))
	lines := 0
	for sc.Scan() {
		m := fetchedOf.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		lines++
		got, err1 := units.FromHumanSize(m[1])
		of, err2 := units.FromHumanSize(m[2])
		if err1 != nil || err2 != nil || got > of {
			t.Errorf("plain display: %q", sc.Text())
		}
	}
	if lines == 0 {
		t.Errorf("no blob reported as fetched:\n%s", r.stderr)
	}
	t.Logf("herd said:\n%s", r.stderr)
}

// shortContentLength makes the registry answer every GET of blob with a
// Content-Length short by cut bytes and the whole body after it, as a broken
// proxy would: the client reads the declared length, and the rest arrives on
// a connection it considers idle.
func shortContentLength(t *testing.T, reg *testregistry.Registry, blob digest.Digest, body []byte, cut int) {
	reg.SetBlobHook(func(w http.ResponseWriter, req *http.Request, d digest.Digest) bool {
		if d != blob {
			return false
		}
		conn, buf, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Errorf("hijacking the connection: %v", err)
			return false
		}
		defer conn.Close()
		fmt.Fprintf(buf, "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nDocker-Content-Digest: %s\r\nContent-Length: %d\r\n\r\n", blob, len(body)-cut)
		buf.Write(body)
		_ = buf.Flush()
		time.Sleep(200 * time.Millisecond) // the client sees the rest before the connection closes
		return true
	})
}

// A registry whose Content-Length is shorter than the body it sends fails
// the image at once (the blob is cut short, so its digest cannot match; a
// digest mismatch is not retried), with an error naming the image and the
// blob. Go's net/http reports the rest of the body arriving on an idle
// connection through the standard logger ("Unsolicited response received on
// idle HTTP channel"); herd's standard error shows that only at
// --log-level debug. herd runs as a process of its own here: in-process,
// the standard logger would write to the test's standard error, not herd's.
func TestShortContentLength(t *testing.T) {
	e := newEnv(t, testregistry.Options{})
	l := randomLayer(t, 4, 32<<10)
	blob := digest.FromBytes(l.blob)
	ref := pushRaw(t, e.reg, "defects/short", []rawLayer{l}, nil)
	shortContentLength(t, e.reg, blob, l.blob, 16)

	r := e.herdExec(nil, "", "--format", "json", ref)
	s := e.parseSummary(r)
	t.Logf("herd said:\n%s", r.stderr)
	if r.code != 1 || len(s.Images) != 1 || s.Images[0].Attempts != 1 {
		t.Fatalf("exit %d, %d images, want 1 with the image failed after one attempt\n%s\n%s", r.code, len(s.Images), r.stdout, r.stderr)
	}
	for _, want := range []string{ref, blob.String(), "Digest did not match"} {
		if !strings.Contains(s.Images[0].Error, want) {
			t.Errorf("the error does not say %q: %s", want, s.Images[0].Error)
		}
	}
	if strings.Contains(r.stderr, "Unsolicited response") {
		t.Errorf("net/http's log line reached standard error:\n%s", r.stderr)
	}
	if n := e.reg.BlobGets(blob); n != 1 {
		t.Errorf("the blob was requested %d times, want 1 (no retry)", n)
	}

	// The line is still there for debugging, as a debug message.
	r = e.herdExec(nil, "", "--log-level", "debug", ref)
	if r.code != 1 || !regexp.MustCompile(`level=debug msg="Unsolicited response received on idle HTTP channel`).MatchString(r.stderr) {
		t.Errorf("--log-level debug: exit %d (want 1), and net/http's line should be a debug message:\n%s", r.code, r.stderr)
	}
}
