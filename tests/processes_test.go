package tests

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/herd-project/herd/tests/internal/testimage"
	"github.com/herd-project/herd/tests/internal/testregistry"
)

// Issue 14: herd processes on one store share their fetches through the
// blob locks beside it (commit/locks.go).

// startHerdLive is startHerd with a standard error the test may read while
// herd runs.
func (e *env) startHerdLive(tmp string, stderr *syncBuffer, args ...string) *herdProcess {
	e.t.Helper()
	return e.startHerdWith(tmp, func(c *exec.Cmd) { c.Stderr = stderr }, args...)
}

// locksLeft lists the blob lock files under the env's run root that some
// process still holds.
func (e *env) locksLeft(t *testing.T) []string {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(e.runroot, "herd-blob-locks", "*.lock"))
	var held []string
	for _, path := range files {
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); errors.Is(err, unix.EWOULDBLOCK) {
			held = append(held, path)
		}
		f.Close()
	}
	return held
}

// Issue 14, test 1: two herd processes started together on one store, on
// the same 8 images sharing base layers: the registry serves every blob
// once across both, both succeed, the store checks clean.
func TestTwoProcessesFetchEachBlobOnce(t *testing.T) {
	for _, comp := range []string{"gzip", "zstd:chunked"} {
		t.Run(comp, func(t *testing.T) {
			// A limited link stretches the transfers, so that the two
			// processes really overlap.
			e := newEnv(t, testregistry.Options{BandwidthLimit: 1 << 20})
			images := fleet(e, comp)
			tmp := t.TempDir()
			for round := range repetitions(t, 2) {
				e.resetStore()
				e.reg.ResetCounters()
				var procs []*herdProcess
				for range 2 {
					procs = append(procs, e.startHerd(tmp, append([]string{"--format", "json", "-j", "4", "--stall-timeout", "10m"}, refs(images...)...)...))
				}
				fetchers := map[digest.Digest][]string{}
				for i, p := range procs {
					if code := p.wait(t); code != 0 {
						t.Fatalf("round %d: herd %d exited %d\n%s", round, i, code, p.stderr.String())
					}
					s := e.parseSummary(run{stdout: p.stdout.String(), stderr: p.stderr.String()})
					for _, img := range s.Images {
						for _, l := range img.Layers {
							if l.How == "fetched" || l.How == "partial" {
								fetchers[l.Digest] = append(fetchers[l.Digest], fmt.Sprintf("herd %d %s", i, img.Reference))
							}
						}
					}
				}
				waitedForOther := 0
				for _, l := range testimage.DistinctLayers(images...) {
					if got := e.reg.BlobBytes(l.Digest); got == 0 || got > servedOnceBound(comp, l.Size) {
						t.Errorf("round %d: blob %s (%d bytes) served %d bytes in %d requests across both processes, want once",
							round, l.Digest, l.Size, got, e.reg.BlobGets(l.Digest))
					}
					if n := len(fetchers[l.Digest]); n != 1 {
						t.Errorf("round %d: blob %s fetched by %v, want by one image of one process", round, l.Digest, fetchers[l.Digest])
					}
				}
				for _, p := range procs {
					waitedForOther += strings.Count(p.stderr.String(), "waiting for another herd process")
				}
				t.Logf("round %d: %d waits for the other process", round, waitedForOther)
				for _, p := range images {
					e.verifyImage(p)
				}
				checkStore(t, e.store())
				if held := e.locksLeft(t); len(held) != 0 {
					t.Errorf("round %d: blob locks still held after both exited: %v", round, held)
				}
			}
		})
	}
}

// Issue 14, test 3: the herd that fetches a blob is killed (SIGKILL) in
// the middle of it; the other herd, waiting for it, takes the blob over as
// soon as the kernel drops the dead process's lock, not after a timeout,
// and succeeds; no lock is left to block a later run.
func TestKilledHolderHandsTheBlobOverAtOnce(t *testing.T) {
	e := newEnv(t, testregistry.Options{})
	img := e.push("handover/app:1", testimage.Image{Layers: []testimage.Layer{baseLayer, ownLayer(1401)}}, "gzip")
	blob := img.Layers[0].Digest
	body := fetchBlob(t, e.reg, "handover/app", blob)
	var mu sync.Mutex
	var gets []time.Time
	held := make(chan struct{}, 1)
	e.reg.SetBlobHook(func(w http.ResponseWriter, req *http.Request, d digest.Digest) bool {
		if d != blob {
			return false
		}
		mu.Lock()
		gets = append(gets, time.Now())
		first := len(gets) == 1
		mu.Unlock()
		if !first {
			return false
		}
		// The first fetcher gets the headers and half the blob, then nothing.
		w.Header().Set("Content-Length", fmt.Sprint(len(body)))
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(body[:len(body)/2])
		w.(http.Flusher).Flush()
		held <- struct{}{}
		<-req.Context().Done()
		return true
	})
	tmp := t.TempDir()
	args := []string{"--format", "json", "--stall-timeout", "10m", img.Ref}
	var holderErr, waiterErr syncBuffer
	holder := e.startHerdLive(tmp, &holderErr, args...)
	<-held
	waiter := e.startHerdLive(tmp, &waiterErr, args...)
	for deadline := time.Now().Add(time.Minute); !strings.Contains(waiterErr.String(), "waiting for another herd process"); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the second herd never waited for the first:\n%s", waiterErr.String())
		}
	}
	killed := time.Now()
	if err := holder.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	holder.wait(t)
	if code := waiter.wait(t); code != 0 {
		t.Fatalf("the waiting herd exited %d after the holder was killed\n%s", code, waiterErr.String())
	}
	mu.Lock()
	defer mu.Unlock()
	if len(gets) != 2 {
		t.Fatalf("blob %s requested %d times, want twice (the killed holder, then the waiter)", blob, len(gets))
	}
	took := gets[1].Sub(killed)
	t.Logf("the waiter requested the blob %s after the holder was killed", took.Round(time.Millisecond))
	if took > 5*time.Second { // --stall-timeout is 10m: anything near this is not a timeout
		t.Errorf("the waiter took the blob over %s after the holder died, want at once", took)
	}
	s := e.parseSummary(run{stdout: waiter.stdout.String(), stderr: waiterErr.String()})
	if len(s.Images) != 1 || s.Images[0].Attempts != 1 {
		t.Errorf("waiter summary %+v: want one image pulled in one attempt", s.Images)
	}
	for _, l := range s.Images[0].Layers {
		if l.Digest == blob && (l.How != "fetched" || l.WaitEnded != "owner-failed") {
			t.Errorf("the taken-over blob: how %q, wait ended %q; want fetched after owner-failed\n%s", l.How, l.WaitEnded, waiterErr.String())
		}
	}
	e.verifyImage(img)
	checkStore(t, e.store())
	if held := e.locksLeft(t); len(held) != 0 {
		t.Errorf("blob locks still held after both herds ended: %v", held)
	}
}
