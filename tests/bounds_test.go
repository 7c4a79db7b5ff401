package tests

import (
	"compress/gzip"
	"context"
	"crypto/rand"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/herd-project/herd/cmd"
	"github.com/herd-project/herd/tests/internal/testimage"
	"github.com/herd-project/herd/tests/internal/testregistry"
)

// Issue 16: herd is bounded against a registry that sends too much, too
// slowly, and against a disk that is too small.

// endlessGzip writes valid gzip data of incompressible content to w until
// writing fails (the client went away) or limit bytes were written, adding
// what it writes to n as it goes (the test may read n while the handler
// still runs).
func endlessGzip(w http.ResponseWriter, limit int64, n *atomic.Int64) {
	start := n.Load()
	cw := writerFunc(func(p []byte) (int, error) {
		k, err := w.Write(p)
		n.Add(int64(k))
		return k, err
	})
	zw := gzip.NewWriter(cw)
	block := make([]byte, 64<<10) // random, and longer than gzip's window: it does not compress
	_, _ = rand.Read(block)
	for n.Load()-start < limit {
		if _, err := zw.Write(block); err != nil {
			break
		}
		if err := zw.Flush(); err != nil {
			break
		}
		w.(http.Flusher).Flush()
	}
}

type writerFunc func(p []byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// Issue 16, test 1: a layer blob that runs past the size its manifest
// declares (with no Content-Length, or a huge one) is cut right after its
// declared size, not retried, and the error names the image, the blob and
// both sizes. Without the bound herd wrote until its temporary directory's
// filesystem was full.
func TestBlobPastDeclaredSizeIsCut(t *testing.T) {
	for _, contentLength := range []string{"", fmt.Sprint(int64(100) << 30)} {
		name := "no Content-Length"
		if contentLength != "" {
			name = "Content-Length 100GiB"
		}
		t.Run(name, func(t *testing.T) {
			e := newEnv(t, testregistry.Options{})
			img := e.push("endless/app:1", testimage.Image{Layers: []testimage.Layer{baseLayer, ownLayer(1601)}}, "gzip")
			blob := img.Layers[1]
			const cap = 1 << 30
			var served atomic.Int64
			var gets atomic.Int32
			e.reg.SetBlobHook(func(w http.ResponseWriter, req *http.Request, d digest.Digest) bool {
				if d != blob.Digest {
					return false
				}
				gets.Add(1)
				if contentLength != "" {
					w.Header().Set("Content-Length", contentLength)
				}
				w.WriteHeader(http.StatusOK)
				endlessGzip(w, cap, &served)
				return true
			})
			r := e.herd("--stall-timeout", "10m", img.Ref)
			if r.code != 1 {
				t.Fatalf("exit %d, want 1\nstderr:\n%s", r.code, r.stderr)
			}
			want := fmt.Sprintf("the registry sent more than the %d bytes the manifest declares", blob.Size)
			if !strings.Contains(r.stderr, want) || !strings.Contains(r.stderr, blob.Digest.String()) || !strings.Contains(r.stderr, img.Ref) {
				t.Errorf("the error does not name the image %s, the blob %s and its declared size (%q):\n%s", img.Ref, blob.Digest, want, r.stderr)
			}
			if n := gets.Load(); n != 1 {
				t.Errorf("the oversized blob was requested %d times, want once (not retried)", n)
			}
			// What the registry wrote bounds what herd received and wrote; it
			// includes what sat in socket buffers when herd hung up.
			const margin = 16 << 20
			n := served.Load()
			t.Logf("declared %d bytes; the registry wrote %d before herd hung up", blob.Size, n)
			if n >= cap || n > blob.Size+margin {
				t.Errorf("the registry wrote %d bytes of a blob declared as %d before herd hung up, want at most %d more", n, blob.Size, margin)
			}
		})
	}
}

// Issue 16, test 1: a manifest or a config that runs past containers/image's
// limits fails the image at once, naming it, and herd stops reading.
func TestManifestAndConfigPastLimits(t *testing.T) {
	e := newEnv(t, testregistry.Options{})
	img := e.push("endless/config:1", testimage.Image{Layers: []testimage.Layer{ownLayer(1602)}}, "gzip")
	const cap = 1 << 30
	var manifestServed, configServed atomic.Int64
	e.reg.SetManifestHook(func(w http.ResponseWriter, req *http.Request) bool {
		if !strings.Contains(req.URL.Path, "/endless/manifest/") {
			return false
		}
		w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
		w.WriteHeader(http.StatusOK)
		endlessGzip(w, cap, &manifestServed) // any bytes will do: only their number matters
		return true
	})
	e.reg.SetBlobHook(func(w http.ResponseWriter, req *http.Request, d digest.Digest) bool {
		if d != img.ConfigDigest {
			return false
		}
		w.WriteHeader(http.StatusOK)
		endlessGzip(w, cap, &configServed)
		return true
	})
	manifestRef := e.reg.Host + "/endless/manifest:1"
	r := e.herd("--retry", "0", "--stall-timeout", "10m", manifestRef, img.Ref)
	if r.code != 1 {
		t.Fatalf("exit %d, want 1\nstderr:\n%s", r.code, r.stderr)
	}
	for _, c := range []struct {
		what, ref, blob string
		served          int64
	}{
		{"manifest", manifestRef, "", manifestServed.Load()},
		{"config", img.Ref, img.ConfigDigest.String(), configServed.Load()},
	} {
		t.Logf("%s: the registry wrote %d bytes before herd hung up", c.what, c.served)
		if c.served == 0 || c.served > 64<<20 {
			t.Errorf("%s: the registry wrote %d bytes, want some and far less than the %d it would have sent", c.what, c.served, cap)
		}
		line := lineWith(r.stderr, c.ref+": failed")
		if line == "" || !strings.Contains(line, c.blob) {
			t.Errorf("%s: no failure line names %s %s:\n%s", c.what, c.ref, c.blob, r.stderr)
		}
	}
}

// lineWith returns the first line of s that contains sub, or "".
func lineWith(s, sub string) string {
	for _, line := range strings.Split(s, "\n") {
		if strings.Contains(line, sub) {
			return line
		}
	}
	return ""
}

// Issue 16, test 2: a transfer that receives less than 1 KiB per
// --stall-timeout is a stall, as a silent one is, although bytes keep
// arriving.
func TestTrickleIsAStall(t *testing.T) {
	e := newEnv(t, testregistry.Options{})
	img := e.push("trickle/app:1", testimage.Image{Layers: []testimage.Layer{ownLayer(1603)}}, "gzip")
	blob := img.Layers[0]
	body := fetchBlob(t, e.reg, "trickle/app", blob.Digest)
	var trickled atomic.Int64
	e.reg.SetBlobHook(func(w http.ResponseWriter, req *http.Request, d digest.Digest) bool {
		if d != blob.Digest {
			return false
		}
		w.Header().Set("Content-Length", fmt.Sprint(len(body)))
		w.WriteHeader(http.StatusOK)
		for _, b := range body { // 20 bytes a second
			if _, err := w.Write([]byte{b}); err != nil {
				return true
			}
			w.(http.Flusher).Flush()
			trickled.Add(1)
			select {
			case <-req.Context().Done():
				return true
			case <-time.After(50 * time.Millisecond):
			}
		}
		return true
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute) // the hang bound: herd must give up long before
	defer cancel()
	r := e.herdContext(ctx, nil, "--retry", "0", "--stall-timeout", "2s", img.Ref)
	if ctx.Err() != nil {
		t.Fatalf("herd was still reading a trickle after 2 minutes with --stall-timeout 2s; %d bytes trickled\nstderr:\n%s", trickled.Load(), r.stderr)
	}
	if r.code != 1 {
		t.Fatalf("exit %d, want 1\nstderr:\n%s", r.code, r.stderr)
	}
	line := lineWith(r.stderr, img.Ref+": failed")
	if !strings.Contains(line, blob.Digest.String()) || !strings.Contains(line, "bytes received in 2s (less than 1024 per --stall-timeout)") {
		t.Errorf("the failure does not say that blob %s trickled below the minimum rate:\n%s", blob.Digest, r.stderr)
	}
	if n := trickled.Load(); n == 0 {
		t.Error("the registry trickled nothing: the case tested is a silent transfer")
	}
}

// smallDisk mounts a tmpfs of size bytes in a new directory and returns it.
func smallDisk(t *testing.T, size string) string {
	needRoot(t, "mounting a small tmpfs")
	dir, err := os.MkdirTemp(t.TempDir(), "small")
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size="+size); err != nil {
		t.Fatalf("mounting a %s tmpfs at %s: %v", size, dir, err)
	}
	t.Cleanup(func() {
		// The overlay driver bind-mounts its home inside; -R takes it too.
		if out, err := exec.Command("umount", "-R", "-l", dir).CombinedOutput(); err != nil {
			t.Errorf("unmounting %s: %v %s", dir, err, out)
		}
	})
	return dir
}

// Issue 16, test 3: a store (or temporary directory) too small for the set
// fails the run at once: no retry, no image taking over a blob whose owner
// could not write it, every blob served at most once, every image's error
// saying why, and a store that checks clean.
func TestFullDiskFailsFastWithoutRefetching(t *testing.T) {
	for _, full := range []string{"store", "temporary directory"} {
		t.Run(full, func(t *testing.T) {
			e := newEnv(t, testregistry.Options{})
			big := testimage.RandomLayer(1610, 2, 4<<20) // 8 MiB, 3.7 MB compressed: more than either small disk holds
			var images []testimage.Pushed
			for i := range 4 {
				images = append(images, e.push(fmt.Sprintf("full/app%d:1", i), testimage.Image{Layers: []testimage.Layer{big, ownLayer(int64(1611 + i))}}, "gzip"))
			}
			args := []string{"--format", "json", "-j", "4", "--retry", "3", "--retry-delay", "10ms", "--stall-timeout", "10m"}
			root := e.root
			if full == "store" {
				root = smallDisk(t, "2m")
				args = append(args, "--root", root)
			} else {
				t.Setenv("TMPDIR", smallDisk(t, "2m"))
			}
			r := e.herd(append(args, refs(images...)...)...)
			s := e.parseSummary(r)
			if r.code != 1 || len(s.Images) != len(images) {
				t.Fatalf("exit %d with %d images, want 1 with %d\nstderr:\n%s", r.code, len(s.Images), len(images), r.stderr)
			}
			noSpace := 0
			for _, im := range s.Images {
				if im.Error == "" {
					t.Errorf("%s: pulled into a disk too small for it", im.Reference)
					continue
				}
				if im.Attempts != 1 {
					t.Errorf("%s: %d attempts, want 1: a full disk is not retried", im.Reference, im.Attempts)
				}
				t.Logf("%s: %s", im.Reference, im.Error)
				if strings.Contains(im.Error, "no space left on device") {
					noSpace++
				} else {
					t.Errorf("%s: the error does not say the disk is full: %s", im.Reference, im.Error)
				}
			}
			if noSpace == 0 {
				t.Error("no image failed with \"no space left on device\"")
			}
			configs := map[digest.Digest]bool{}
			for _, img := range images {
				configs[img.ConfigDigest] = true
			}
			for d, n := range e.reg.Served() {
				// herd reads a config twice: for the IDs of the whole
				// layers it fetches itself, and in containers/image.
				most := 1
				if configs[d] {
					most = 2
				}
				if gets := e.reg.BlobGets(d); gets > most {
					t.Errorf("blob %s requested %d times (%d bytes served), want at most %d", d, gets, n, most)
				}
			}
			e.reg.ResetCounters()
			if full == "store" {
				e.root = root
			}
			checkStore(t, e.store())
		})
	}
}

// Issue 16, test 5: another process (podman rmi, image prune) removes a
// layer a pull builds on, between containers/image's reuse of it and the
// commit of the layer above it. The error names the image and the layer
// that disappeared, and herd pulls the image again from the store as it is.
func TestLayerRemovedDuringPullIsRetried(t *testing.T) {
	e := newEnv(t, testregistry.Options{})
	a := e.push("removed/a:1", testimage.Image{Layers: []testimage.Layer{baseLayer}}, "gzip")
	b := e.push("removed/b:1", testimage.Image{Layers: []testimage.Layer{baseLayer, ownLayer(1620)}}, "gzip")
	if r := e.herd(a.Ref); r.code != 0 {
		t.Fatalf("pulling %s first: exit %d\n%s", a.Ref, r.code, r.stderr)
	}
	store := e.store()
	baseLayers, err := store.LayersByCompressedDigest(b.Layers[0].Digest)
	if err != nil || len(baseLayers) != 1 {
		t.Fatalf("the base layer after pulling %s: %v %v", a.Ref, baseLayers, err)
	}
	imgA, err := store.Image(a.Ref)
	if err != nil {
		t.Fatal(err)
	}

	// B's own layer is held until A, and with it the base layer B has
	// already chosen to reuse, is gone. At --jobs 1 the base's lookup and
	// its "reused" report come before the own layer's fetch starts:
	// containers/image commits the layers queued above a layer inside that
	// layer's call, so a layer herd fetches itself, queued early, would
	// hold the base's report back until its fetch ends.
	var stderr syncBuffer
	release := make(chan struct{})
	held := make(chan struct{}, 1)
	own := b.Layers[1].Digest
	e.reg.SetBlobHook(func(w http.ResponseWriter, req *http.Request, d digest.Digest) bool {
		if d == own {
			select {
			case held <- struct{}{}:
				<-release
			default:
			}
		}
		return false
	})
	done := make(chan int, 1)
	var stdout syncBuffer
	go func() {
		herdMu.Lock()
		defer herdMu.Unlock()
		args := e.pullArgs("--jobs", "1", "--format", "json", "--retry-delay", "10ms", "--stall-timeout", "10m", b.Ref)
		done <- cmd.ExecuteContext(context.Background(), args, cmd.IO{Stdin: strings.NewReader(""), Stdout: &stdout, Stderr: &stderr})
	}()
	<-held
	reused := fmt.Sprintf("blob %s: reused", b.Layers[0].Digest.Encoded()[:12])
	for deadline := time.Now().Add(time.Minute); !strings.Contains(stderr.String(), reused); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			close(release)
			t.Fatalf("herd never reported %q:\n%s", reused, stderr.String())
		}
	}
	// What podman rmi -f does: delete the image and the layers only it used.
	if _, err := store.DeleteImage(imgA.ID, true); err != nil {
		t.Fatalf("removing %s as podman rmi would: %v", a.Ref, err)
	}
	close(release)
	code := <-done
	r := run{stdout.String(), stderr.String(), code}
	s := e.parseSummary(r)
	if code != 0 || len(s.Images) != 1 {
		t.Fatalf("exit %d, want 0 after one retry\nstderr:\n%s", code, r.stderr)
	}
	if s.Images[0].Attempts != 2 {
		t.Errorf("%d attempts, want 2 (the one that lost its base layer, and the retry)", s.Images[0].Attempts)
	}
	warning := lineWith(r.stderr, "was removed from the store while herd pulled")
	if !strings.Contains(warning, b.Ref) || !strings.Contains(warning, baseLayers[0].ID) {
		t.Errorf("no retry warning names the image %s and the removed layer %s:\n%s", b.Ref, baseLayers[0].ID, r.stderr)
	}
	e.verifyImage(b)
	checkStore(t, store)
}
