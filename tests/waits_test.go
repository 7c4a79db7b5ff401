package tests

import (
	"context"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/distribution/reference"
	digest "github.com/opencontainers/go-digest"
	"go.podman.io/image/v5/signature"
	"go.podman.io/image/v5/types"
	"go.podman.io/storage"
	storagetypes "go.podman.io/storage/types"

	"github.com/herd-project/herd/progress"
	"github.com/herd-project/herd/pull"
	"github.com/herd-project/herd/tests/internal/testimage"
	"github.com/herd-project/herd/tests/internal/testregistry"
)

// Issue 10: every wait for another pull's blob ends when the work it waits
// for ends, never by a clock. These tests fail when a wait ends any other
// way: by the stall watchdog (an attempt abandoned, a retry), or with an
// end that says the owner failed when it did not.

// checkCleanWaits fails unless every image of s was pulled in one attempt,
// no transfer was abandoned as stalled, and every wait ended because the
// layer reached the store (committed, store, reused).
func checkCleanWaits(t *testing.T, s progress.Summary, r run, what string) (waits int) {
	t.Helper()
	if r.code != 0 || s.Totals.Failed != 0 {
		t.Fatalf("%s: exit %d, %d failed\n%s", what, r.code, s.Totals.Failed, r.stderr)
	}
	if strings.Contains(r.stderr, "stall-timeout") {
		t.Errorf("%s: a transfer was taken for stalled:\n%s", what, r.stderr)
	}
	for _, img := range s.Images {
		if img.Attempts != 1 {
			t.Errorf("%s: %s took %d attempts, want 1", what, img.Inputs[0], img.Attempts)
		}
		for _, l := range img.Layers {
			switch l.WaitEnded {
			case "":
			case "committed", "store", "reused":
				waits++
			default:
				t.Errorf("%s: %s waited for blob %s and the wait ended %q", what, img.Inputs[0], l.Digest, l.WaitEnded)
			}
		}
	}
	return waits
}

// Issue 10, item 4: the demo's image set (the same base layer in gzip and
// zstd:chunked in one run) pulls with no wait ending by a timeout and no
// retry, every blob served once.
func TestDemoSetWaitsEndCleanly(t *testing.T) {
	e := newEnv(t, testregistry.Options{})
	images, err := e.pusher.PushDemoSet(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for rep := 0; rep < repetitions(t, 2)*3; rep++ {
		jobs := []string{"2", "4", "8"}[rep%3]
		e.resetStore()
		e.reg.ResetCounters()
		s, r := e.summaryWithin(2*time.Minute, append([]string{"-j", jobs}, refs(images...)...)...)
		waits := checkCleanWaits(t, s, r, "-j "+jobs+" run "+strconv.Itoa(rep))
		for i, p := range images {
			comp := "gzip" // PushDemoSet: the first three gzip, the others zstd:chunked
			if i >= 3 {
				comp = "zstd:chunked"
			}
			for _, l := range p.Layers {
				if got := e.reg.BlobBytes(l.Digest); got > servedOnceBound(comp, l.Size) {
					t.Errorf("run %d: blob %s (%s, %d bytes) served %d bytes", rep, l.Digest, comp, l.Size, got)
				}
			}
		}
		t.Logf("-j %s run %d: %.2f s wall, %d waits", jobs, rep, s.Totals.WallSeconds, waits)
	}
}

// Issue 10, item 1: a store that already holds the fleet's layers from
// another compression (two images pulled earlier as zstd). containers/image
// then commits the gzip layers by reusing the layers with the same chain
// ID, without a PutLayer, so only the store lookup by DiffID after the
// owner's event can end the waits.
func TestPreseededStoreWaitsEndWithoutTimeout(t *testing.T) {
	e := newEnv(t, testregistry.Options{})
	gz := fleet(e, "gzip")
	zs := fleetNamed(e, "fleetz", "zstd")
	for i, jobs := range []int{1, 2, 4, 8} {
		e.resetStore()
		if r := e.herd("-j", "4", zs[0].Ref, zs[5].Ref); r.code != 0 {
			t.Fatalf("pre-pulling as zstd: exit %d\n%s", r.code, r.stderr)
		}
		e.reg.ResetCounters()
		what := "-j " + strconv.Itoa(jobs)
		s, r := e.summaryWithin(2*time.Minute, append([]string{"-j", strconv.Itoa(jobs)}, refs(gz...)...)...)
		waits := checkCleanWaits(t, s, r, what)
		served, unique := int64(0), int64(0)
		for _, l := range testimage.DistinctLayers(gz...) {
			got := e.reg.BlobBytes(l.Digest)
			served += got
			unique += l.Size
			if got > l.Size {
				t.Errorf("%s: blob %s (%d bytes) served %d bytes", what, l.Digest, l.Size, got)
			}
			// The first run's blob-info cache is empty: no gzip blob's
			// DiffID is known, so each is fetched exactly once. Later runs
			// share the cache and may reuse without fetching.
			if i == 0 && got != l.Size {
				t.Errorf("%s: blob %s (%d bytes) served %d bytes, want once", what, l.Digest, l.Size, got)
			}
		}
		for _, p := range gz {
			e.verifyImage(p)
		}
		checkStore(t, e.store())
		t.Logf("%s: %.2f s wall, %d waits, served/unique %.3f", what, s.Totals.WallSeconds, waits, float64(served)/float64(unique))
	}
}

// failBlob makes the registry fail the first request for blob, after delay
// (so that another image starts waiting for it), the way kind says: "500"
// answers Internal Server Error, "reset" sends the headers and part of the
// body and then resets the connection, and resets the ranged requests with
// which containers/image reconnects too. It returns when each request for
// the blob arrived and when the last failure was sent.
func failBlob(t *testing.T, e *env, blob digest.Digest, size int64, kind string, delay time.Duration) (requests func() []time.Time, failedAt func() time.Time) {
	var mu sync.Mutex
	var times []time.Time
	var failed time.Time
	var first atomic.Bool
	e.reg.SetBlobHook(func(w http.ResponseWriter, req *http.Request, d digest.Digest) bool {
		if d != blob {
			return false
		}
		mu.Lock()
		times = append(times, time.Now())
		mu.Unlock()
		isFirst := first.CompareAndSwap(false, true)
		reconnection := kind == "reset" && req.Header.Get("Range") != ""
		if !isFirst && !reconnection {
			return false
		}
		if isFirst {
			time.Sleep(delay)
		}
		defer func() { mu.Lock(); failed = time.Now(); mu.Unlock() }()
		if kind == "500" {
			http.Error(w, "injected failure", http.StatusInternalServerError)
			return true
		}
		w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(make([]byte, 100))
		conn, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Errorf("hijacking the connection to reset it: %v", err)
			return true
		}
		if tcp, ok := conn.(*net.TCPConn); ok {
			_ = tcp.SetLinger(0) // close with RST
		}
		_ = conn.Close()
		return true
	})
	return func() []time.Time { mu.Lock(); defer mu.Unlock(); return append([]time.Time(nil), times...) },
		func() time.Time { mu.Lock(); defer mu.Unlock(); return failed }
}

// Issue 10, item 2: the owner's request for a shared blob fails (a 500, or
// a connection reset mid-body). The waiting image takes the blob over as
// soon as the owner's pull ends, not after a stall timeout (set to ten
// minutes here, so that a takeover by timeout cannot pass), and the owner
// reports the registry's error, not a stall.
func TestOwnerFailureHandsOverAtOnce(t *testing.T) {
	for _, kind := range []string{"500", "reset"} {
		for _, comp := range []string{"gzip", "zstd"} {
			for _, retries := range []string{"0", "3"} {
				t.Run(kind+"/"+comp+"/retry"+retries, func(t *testing.T) {
					e := newEnv(t, testregistry.Options{})
					shared := testimage.RandomLayer(41, 8, 16*kib)
					a := e.push("owner-a:1", testimage.Image{Layers: []testimage.Layer{shared, ownLayer(42)}}, comp)
					b := e.push("owner-b:1", testimage.Image{Layers: []testimage.Layer{shared, ownLayer(43)}}, comp)
					blob := a.Layers[0].Digest
					requests, failedAt := failBlob(t, e, blob, a.Layers[0].Size, kind, time.Second)

					s, r := e.summaryWithin(2*time.Minute, "-j", "4", "--retry", retries, "--retry-delay", "10ms", "--stall-timeout", "10m", a.Ref, b.Ref)
					if !strings.Contains(r.stderr, "waiting for") {
						t.Fatalf("no image waited for the other's blob; the test did not exercise a takeover\n%s", r.stderr)
					}
					var after []time.Time
					for _, at := range requests() {
						if at.After(failedAt()) {
							after = append(after, at)
						}
					}
					if len(after) == 0 {
						t.Fatalf("the blob was not requested after the owner's failure; someone must fetch it\n%s", r.stderr)
					}
					takeover := after[0].Sub(failedAt())
					t.Logf("next request for the blob %s after the failure", takeover.Round(time.Millisecond))
					if takeover > 10*time.Second {
						t.Errorf("the blob was requested again %s after the owner's failure; the wait should end when the owner's pull does", takeover)
					}
					failedImages := 0
					for _, img := range s.Images {
						if img.Error != "" {
							failedImages++
							if strings.Contains(img.Error, "stall") {
								t.Errorf("%s reports a stall for a registry failure: %s", img.Inputs[0], img.Error)
							}
							want := "500"
							if kind == "reset" {
								want = "reset"
							}
							if !strings.Contains(img.Error, want) || !strings.Contains(img.Error, blob.Encoded()[:12]) {
								t.Errorf("%s: error %q does not report the registry's failure (%s) for blob %s", img.Inputs[0], img.Error, want, blob)
							}
						}
						for _, l := range img.Layers {
							if l.WaitEnded != "" && l.WaitEnded != "owner-failed" && l.WaitEnded != "committed" && l.WaitEnded != "store" {
								t.Errorf("%s: wait for %s ended %q", img.Inputs[0], l.Digest, l.WaitEnded)
							}
						}
					}
					switch {
					case retries == "0" && failedImages != 1:
						t.Errorf("--retry 0: %d images failed, want the owner only\n%s", failedImages, r.stderr)
					case retries != "0" && failedImages != 0:
						t.Errorf("with retries: %d images failed, want none (the owner's retry reuses the waiter's layer)\n%s", failedImages, r.stderr)
					}
					// One whole fetch, plus the 100 bytes of each reset response.
					if got := e.reg.BlobBytes(blob); got > a.Layers[0].Size+1000 {
						t.Errorf("shared blob served %d bytes, want one whole fetch (%d) besides the failed responses", got, a.Layers[0].Size)
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
	}
}

// slowCommitStore is the shared store with every PutLayer delayed: a disk
// that takes long to apply a layer.
type slowCommitStore struct {
	storage.Store
	delay time.Duration
}

func (s *slowCommitStore) PutLayer(id, parent string, names []string, mountLabel string, writeable bool, options *storage.LayerOptions, diff io.Reader) (*storage.Layer, int64, error) {
	time.Sleep(s.delay)
	return s.Store.PutLayer(id, parent, names, mountLabel, writeable, options, diff)
}

// Issue 10, item 3: a commit that takes three times the stall timeout is
// neither a stall nor a reason to fetch again, for the image committing and
// for the images waiting for it.
func TestSlowCommitIsNotAStall(t *testing.T) {
	e := newEnv(t, testregistry.Options{})
	shared := testimage.RandomLayer(61, 8, 16*kib)
	var images []testimage.Pushed
	for i := 0; i < 3; i++ {
		images = append(images, e.push("slow"+strconv.Itoa(i)+":1", testimage.Image{Layers: []testimage.Layer{shared, ownLayer(int64(62 + i))}}, "gzip"))
	}
	base, err := storage.GetStore(storagetypes.StoreOptions{GraphRoot: e.root, RunRoot: e.runroot, GraphDriverName: e.driver})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _, _ = base.Shutdown(true) }()
	const stall = 500 * time.Millisecond
	policy, err := signature.NewPolicyFromBytes([]byte(`{"default":[{"type":"insecureAcceptAnything"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	sys := &types.SystemContext{
		DockerInsecureSkipTLSVerify: types.OptionalBoolTrue,
		SystemRegistriesConfPath:    e.regconf,
		BlobInfoCacheDir:            filepath.Join(e.dir, "slow-cache"),
		BigFilesTemporaryDir:        tmp,
	}
	var waitsSeen atomic.Int32
	results := pull.Run(context.Background(), refs(images...), pull.Options{
		Store: &slowCommitStore{Store: base, delay: 3 * stall}, System: sys, Policy: policy,
		Jobs: 4, StallTimeout: stall, Retries: 0,
		Observe: func(ev pull.Event) {
			if ev.Kind == pull.EventLayerWaiting {
				waitsSeen.Add(1)
			}
		},
	})
	for _, res := range results {
		if res.Err != nil {
			t.Errorf("%s: %v", res.Name(), res.Err)
			continue
		}
		if res.Attempts != 1 {
			t.Errorf("%s: %d attempts", res.Name(), res.Attempts)
		}
		for _, l := range res.Layers {
			if l.WaitEnded != "" && l.WaitEnded != "committed" && l.WaitEnded != "store" {
				t.Errorf("%s: wait for %s ended %q", res.Name(), l.Digest, l.WaitEnded)
			}
		}
	}
	if got := e.reg.BlobBytes(images[0].Layers[0].Digest); got != images[0].Layers[0].Size {
		t.Errorf("shared blob served %d bytes, want once (%d)", got, images[0].Layers[0].Size)
	}
	if waitsSeen.Load() == 0 {
		t.Error("no image waited for the shared blob; the test did not exercise a wait during a slow commit")
	}
	for _, p := range images {
		named, err := reference.ParseNormalizedNamed(p.Ref)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := base.Image(named.String()); err != nil {
			t.Errorf("%s is not in the store: %v", p.Ref, err)
		}
	}
}

// Issue 10, item 2 at fleet scale, and invariant 4 of package commit: when
// the owner of the fleet's shared base fails, its pull can hand the blob over
// only once its copy.Image returns, which needs slots for its upper layers
// and config while the other images wait holding theirs. Waiting images lend
// their slots to the run (pull/slots.go); without that this run never ends.
func TestOwnerFailureInAFleetNeverDeadlocks(t *testing.T) {
	e := newEnv(t, testregistry.Options{})
	images := fleet(e, "gzip")
	base := images[0].Layers[0]
	for _, jobs := range []string{"1", "2", "4"} {
		e.resetStore()
		e.reg.ResetCounters()
		failBlob(t, e, base.Digest, base.Size, "500", time.Second)
		s, r := e.summaryWithin(2*time.Minute, append([]string{"-j", jobs, "--retry", "0", "--stall-timeout", "10m"}, refs(images...)...)...)
		t.Logf("-j %s: %d pulled, %d failed in %.2f s (the failure is sent after 1 s)", jobs, s.Totals.OK, s.Totals.Failed, s.Totals.WallSeconds)
		if s.Totals.Failed != 1 || s.Totals.OK != len(images)-1 {
			t.Errorf("-j %s: %d pulled, %d failed; want every image but the base's first owner pulled\n%s", jobs, s.Totals.OK, s.Totals.Failed, r.stderr)
		}
		if got := e.reg.BlobBytes(base.Digest); got != base.Size {
			t.Errorf("-j %s: base served %d bytes after the failure, want one fetch (%d)", jobs, got, base.Size)
		}
		checkStore(t, e.store())
	}
}

// Issue 11: an image that waits for another pull's fetch of a layer they
// share waits at that layer's commit (commit/commitwait.go): its own
// layers are fetched meanwhile, where a wait in containers/image's lookup
// held them up until the shared layer was in the store.
func TestWaitingImageFetchesItsOwnLayers(t *testing.T) {
	for _, comp := range []string{"gzip", "zstd:chunked"} {
		t.Run(comp, func(t *testing.T) {
			e := newEnv(t, testregistry.Options{})
			shared := testimage.RandomLayer(61, 8, 16*kib)
			a := e.push("goes-on-a:1", testimage.Image{Layers: []testimage.Layer{shared, ownLayer(62)}}, comp)
			b := e.push("goes-on-b:1", testimage.Image{Layers: []testimage.Layer{shared, ownLayer(63)}}, comp)
			// The shared blob comes slowly, so that whoever waits for it
			// waits long enough to show what it does meanwhile.
			slow := a.Layers[0].Digest
			e.reg.SetBlobHook(func(w http.ResponseWriter, req *http.Request, d digest.Digest) bool {
				if d == slow {
					time.Sleep(time.Second)
				}
				return false
			})
			s, r := e.summary("-j", "4", a.Ref, b.Ref)
			if r.code != 0 {
				t.Fatalf("herd exited %d\n%s", r.code, r.stderr)
			}
			waited := 0
			for _, img := range s.Images {
				base, own := img.Layers[0], img.Layers[1]
				if base.How != "waited" {
					continue
				}
				waited++
				t.Logf("%s: waited for the shared layer from %.3f to %.3f s; fetched its own from %.3f to %.3f s", img.Inputs[0], base.WaitStart, base.WaitEnd, own.FetchStart, own.FetchEnd)
				if own.How != "fetched" && own.How != "partial" || own.FetchStart == 0 {
					t.Fatalf("%s: own layer %s obtained %q, with no fetch start", img.Inputs[0], own.Digest, own.How)
				}
				if own.FetchStart >= base.WaitEnd {
					t.Errorf("%s: its own layer's fetch started at %.3f s, after its wait for the shared layer ended (%.3f s): the wait held it up", img.Inputs[0], own.FetchStart, base.WaitEnd)
				}
			}
			if waited != 1 {
				t.Fatalf("%d images waited for the shared layer, want 1\n%s", waited, r.stderr)
			}
			checkServedOnce(t, e, comp, []testimage.Pushed{a, b}, s, "the run")
			e.verifyImage(a)
			e.verifyImage(b)
			checkStore(t, e.store())
		})
	}
}
