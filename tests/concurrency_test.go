package tests

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	"go.podman.io/storage"
	storagetypes "go.podman.io/storage/types"

	"github.com/herd-project/herd/tests/internal/testimage"
	"github.com/herd-project/herd/tests/internal/testregistry"
)

// Issue 6, test 5: three herd processes and a podman pull run at once on
// one store, with overlapping sets of images: every one succeeds, every
// image is complete and correct, and the store passes containers/storage's
// check; and (issue 14) the herds fetch each blob at most once among them. Several rounds on a fresh store each time, for more interleavings.
func TestConcurrentProcessesShareOneStore(t *testing.T) {
	podman := podmanBinary(t)
	// A limited link stretches the transfers so that the four processes
	// really overlap.
	e := newEnv(t, testregistry.Options{BandwidthLimit: 1 << 20})
	images := fleet(e, "gzip")
	pick := func(idx ...int) []testimage.Pushed {
		var out []testimage.Pushed
		for _, i := range idx {
			out = append(out, images[i])
		}
		return out
	}
	herdSets := [][]testimage.Pushed{pick(0, 1, 2, 3, 4), pick(2, 3, 4, 5, 6), pick(5, 6, 7, 0, 1)}
	podmanSet := pick(3, 7, 1)
	tmp := t.TempDir()

	// podman refuses a runroot longer than 50 characters; t.TempDir's are.
	short, err := os.MkdirTemp("", "herd-cc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(short) })
	herdGets := e.countHerdGets()
	for round := 0; round < repetitions(t, 3); round++ {
		herdGets.reset()
		e.resetStore()
		e.runroot = filepath.Join(short, fmt.Sprintf("run%d", round))
		root, runroot := e.root, e.runroot
		t.Cleanup(func() { // before short is removed (cleanups run last first)
			if s, err := storage.GetStore(storagetypes.StoreOptions{GraphRoot: root, RunRoot: runroot, GraphDriverName: e.driver}); err == nil {
				_, _ = s.Shutdown(true)
			}
		})
		start := time.Now()
		var procs []*herdProcess
		for _, set := range herdSets {
			// Debug logs say how each wait for another pull's blob ended.
			procs = append(procs, e.startHerd(tmp, append([]string{"--log-level", "debug"}, refs(set...)...)...))
		}
		pc := e.podmanCommand(podman, append([]string{"pull", "--tls-verify=false", "--signature-policy", e.policy}, refs(podmanSet...)...)...)
		var pout, perr bytes.Buffer
		pc.Stdout, pc.Stderr = &pout, &perr
		if err := pc.Start(); err != nil {
			t.Fatalf("starting podman: %v", err)
		}
		perrc := make(chan error, 1)
		go func() { perrc <- pc.Wait() }()

		for i, p := range procs {
			if code := p.wait(t); code != 0 {
				t.Errorf("round %d: herd %d (%s) exited %d\n%s", round, i, strings.Join(refs(herdSets[i]...), " "), code, p.stderr.String())
			}
			// A layer another process commits first must end the waits for
			// it at once (commit/coordinator.go, invariant 5), not after the
			// whole run has stalled for --stall-timeout.
			for _, line := range strings.Split(p.stderr.String(), "\n") {
				if strings.Contains(line, "): stalled") {
					t.Errorf("round %d: herd %d: a wait ended only because the run stalled: %s", round, i, line)
				}
			}
		}
		if err := <-perrc; err != nil {
			t.Errorf("round %d: podman pull %s: %v\n%s", round, strings.Join(refs(podmanSet...), " "), err, perr.String())
		}
		if t.Failed() {
			t.FailNow()
		}
		t.Logf("round %d: all four processes done in %s", round, time.Since(start).Round(time.Millisecond))
		// Issue 14, test 2: herd's processes fetch each blob at most once
		// among themselves (podman takes no part, and may fetch it too).
		reported := map[digest.Digest]bool{}
		for _, p := range images {
			for _, l := range p.Layers {
				if n := herdGets.get(l.Digest); n > 1 && !reported[l.Digest] {
					reported[l.Digest] = true
					t.Errorf("round %d: herd processes fetched blob %s %d times, want at most once; what each said of it:", round, l.Digest, n)
					for i, proc := range procs {
						for _, line := range strings.Split(proc.stderr.String(), "\n") {
							if strings.Contains(line, l.Digest.Encoded()[:12]) {
								t.Logf("herd %d: %s", i, line)
							}
						}
					}
				}
			}
		}
		for _, p := range images {
			e.verifyImage(p)
		}
		checkStore(t, e.store())
		if left := herdTempDirs(t, tmp); len(left) != 0 {
			t.Errorf("round %d: temporary directories left: %v", round, left)
		}
		// podman sees every image, whoever pulled it.
		out := e.podman(podman, "images", "--format", "{{.Repository}}:{{.Tag}}")
		for _, p := range images {
			if !strings.Contains(out, p.Ref) {
				t.Errorf("round %d: podman images does not list %s:\n%s", round, p.Ref, out)
			}
		}
		if t.Failed() {
			t.FailNow()
		}
	}
	t.Logf("%d herd processes and podman pulled %d overlapping images into one store, each round", len(herdSets), len(images))
}
