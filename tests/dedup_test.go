package tests

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/herd-project/herd/tests/internal/testimage"
	"github.com/herd-project/herd/tests/internal/testregistry"
)

// Issue 3, test 1: every shared blob is served once at any -j.
func TestSharedBlobsServedOnceAtAnyJobs(t *testing.T) {
	reps := repetitions(t, 4)
	for _, comp := range compressions {
		t.Run(comp, func(t *testing.T) {
			e := newEnv(t, testregistry.Options{})
			images := fleet(e, comp)
			waited := 0
			for _, jobs := range []int{1, 2, 4, 8, 16} {
				for rep := 0; rep < reps; rep++ {
					e.resetStore()
					e.reg.ResetCounters()
					s, r := e.summary(append([]string{"-j", strconv.Itoa(jobs)}, refs(images...)...)...)
					if r.code != 0 || s.Totals.OK != len(images) {
						t.Fatalf("-j %d run %d: exit %d, %d ok\n%s", jobs, rep, r.code, s.Totals.OK, r.stderr)
					}
					checkServedOnce(t, e, comp, images, s, fmt.Sprintf("-j %d run %d", jobs, rep))
					waited += strings.Count(r.stdout, `"how": "waited"`)
					if rep == 0 {
						for _, p := range images {
							e.verifyImage(p)
						}
					}
				}
			}
			// Without coordination, -j > 1 fetches shared blobs several times;
			// with it, some pulls must have waited for others.
			if waited == 0 {
				t.Error("no layer was ever reported as obtained by waiting for another pull")
			}
			t.Logf("%d layers obtained by waiting over %d runs", waited, 5*reps)
		})
	}
}

// Issue 3, trap: two images share blobs in opposite orders. Waiting for each
// other would deadlock (a waiting pull holds its image's lock); herd must
// finish, correctly, fetching at most one blob twice to break the cycle.
func TestOppositeOrderNeverHangs(t *testing.T) {
	reps := repetitions(t, 4)
	for _, comp := range compressions {
		t.Run(comp, func(t *testing.T) {
			e := newEnv(t, testregistry.Options{})
			p, q := testimage.RandomLayer(31, 6, 16*kib), testimage.RandomLayer(32, 6, 16*kib)
			a := e.push("order-a:1", testimage.Image{Layers: []testimage.Layer{p, q, ownLayer(33)}}, comp)
			b := e.push("order-b:1", testimage.Image{Layers: []testimage.Layer{q, p, ownLayer(34)}}, comp)
			dups := 0
			for rep := 0; rep < 2*reps; rep++ {
				e.resetStore()
				e.reg.ResetCounters()
				r := e.herd("-j", "4", a.Ref, b.Ref)
				if r.code != 0 {
					t.Fatalf("run %d: exit %d\n%s", rep, r.code, r.stderr)
				}
				e.verifyImage(a)
				e.verifyImage(b)
				for _, l := range a.Layers[:2] {
					switch got := e.reg.BlobBytes(l.Digest); {
					case got > 0 && got <= servedOnceBound(comp, l.Size):
					case got <= 2*servedOnceBound(comp, l.Size):
						dups++
					default:
						t.Errorf("run %d: shared blob %s served %d bytes (size %d)", rep, l.Digest, got, l.Size)
					}
				}
			}
			t.Logf("%d of %d shared-blob fetches were duplicated to break a wait cycle", dups, 4*reps)
		})
	}
}

// Issue 3, trap: the pull that owns an in-flight blob fails (a registry
// error on its request only); the image waiting for it fetches it instead.
func TestOwnerFailsWaiterTakesOver(t *testing.T) {
	for _, comp := range []string{"gzip", "zstd:chunked"} {
		t.Run(comp, func(t *testing.T) {
			e := newEnv(t, testregistry.Options{})
			shared := testimage.RandomLayer(41, 8, 16*kib)
			a := e.push("owner-a:1", testimage.Image{Layers: []testimage.Layer{shared, ownLayer(42)}}, comp)
			b := e.push("owner-b:1", testimage.Image{Layers: []testimage.Layer{shared, ownLayer(43)}}, comp)
			blob := a.Layers[0].Digest

			// The first request for the shared blob is held long enough for
			// the other image to start waiting, then fails.
			var first atomic.Bool
			e.reg.SetBlobHook(func(w http.ResponseWriter, req *http.Request, d digest.Digest) bool {
				if d != blob || !first.CompareAndSwap(false, true) {
					return false
				}
				time.Sleep(time.Second)
				http.Error(w, "injected failure", http.StatusInternalServerError)
				return true
			})
			// --retry 0: the owner's whole-image retry (issue 6) would find
			// the blob committed by the waiter and reuse it; this is about
			// the handover alone.
			s, r := e.summary("-j", "4", "--retry", "0", a.Ref, b.Ref)
			if !strings.Contains(r.stderr, "waiting for") {
				t.Fatalf("no image waited for the other's blob; the test did not exercise a takeover\n%s", r.stderr)
			}
			if s.Totals.OK < 1 {
				t.Fatalf("no image was pulled\n%s", r.stderr)
			}
			for _, img := range s.Images {
				if img.Error != "" {
					// The owner's own failure must name the blob.
					if !strings.Contains(img.Error, blob.Encoded()[:12]) && !strings.Contains(img.Error, blob.String()) {
						t.Errorf("failure of %s does not name blob %s: %s", img.Inputs[0], blob, img.Error)
					}
					continue
				}
				if img.Layers[0].How != "fetched" && img.Layers[0].How != "partial" {
					t.Errorf("%s got the shared blob by %q; after the owner failed it should have fetched it", img.Inputs[0], img.Layers[0].How)
				}
			}
			if s.Totals.OK == 2 {
				t.Logf("containers/image retried the failed request itself; both images pulled")
			}
			for i, p := range []testimage.Pushed{a, b} {
				if s.Images[i].Error == "" {
					e.verifyImage(p)
				}
			}
			checkStore(t, e.store())
		})
	}
}

// Issue 3, trap: cancelling a run while a pull waits for another's blob
// ends it promptly, with no goroutine of herd's left behind.
func TestCancelWhileWaiting(t *testing.T) {
	e := newEnv(t, testregistry.Options{})
	shared := testimage.RandomLayer(51, 8, 16*kib)
	a := e.push("cancel-a:1", testimage.Image{Layers: []testimage.Layer{shared, ownLayer(52)}}, "gzip")
	b := e.push("cancel-b:1", testimage.Image{Layers: []testimage.Layer{shared, ownLayer(53)}}, "gzip")
	held := e.holdBlob(a.Layers[0].Digest)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan run, 1)
	go func() { done <- e.herdContext(ctx, nil, "-j", "4", a.Ref, b.Ref) }()
	select {
	case <-held:
	case <-time.After(60 * time.Second):
		t.Fatal("the shared blob was never requested")
	}
	time.Sleep(500 * time.Millisecond) // let the other image start waiting
	cancel()
	cancelled := time.Now()
	var r run
	select {
	case r = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("herd did not return within 30s of cancellation")
	}
	took := time.Since(cancelled)
	t.Logf("herd returned %s after cancellation", took.Round(time.Millisecond))
	if took > 5*time.Second {
		t.Errorf("herd took %s to return after cancellation, want a second or two", took)
	}
	if !strings.Contains(r.stderr, "waiting for") {
		t.Errorf("no image was waiting when the run was cancelled; the test did not exercise its case\n%s", r.stderr)
	}
	if r.code == 0 {
		t.Error("a cancelled run exited 0")
	}
	if leaked := herdGoroutines(2 * time.Second); leaked != "" {
		t.Errorf("goroutines left behind after cancellation:\n%s", leaked)
	}
	checkStore(t, e.store())
}

// herdGoroutines returns the stacks of goroutines still running herd's or
// containers/image's copy code, after giving them grace to unwind.
func herdGoroutines(grace time.Duration) string {
	deadline := time.Now().Add(grace)
	for {
		var buf bytes.Buffer
		_ = pprof.Lookup("goroutine").WriteTo(&buf, 2)
		var leaked []string
		for _, g := range strings.Split(buf.String(), "\n\n") {
			if strings.Contains(g, "herd-project/herd/pull.") || strings.Contains(g, "herd-project/herd/commit.") ||
				strings.Contains(g, "go.podman.io/image/v5/copy.") {
				leaked = append(leaked, g)
			}
		}
		if len(leaked) == 0 || time.Now().After(deadline) {
			return strings.Join(leaked, "\n\n")
		}
		time.Sleep(50 * time.Millisecond)
	}
}
