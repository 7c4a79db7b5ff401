package tests

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	digest "github.com/opencontainers/go-digest"

	"github.com/herd-project/herd/tests/internal/testimage"
	"github.com/herd-project/herd/tests/internal/testregistry"
)

// snapshotOutsideStore records every file under the env's directory that
// is not the store's (root, runroot), herd's blob-info cache beside it
// (cmd.blobInfoCacheDir: herd's own metadata, written on purpose) or the
// pusher's work directory: path → size, mode, link count and mtime of
// files, and that directories exist.
func (e *env) snapshotOutsideStore(t *testing.T) map[string]string {
	t.Helper()
	skip := map[string]bool{e.root: true, e.runroot: true, filepath.Join(e.dir, "cache"): true, filepath.Join(e.dir, "push"): true}
	out := map[string]string{}
	err := filepath.Walk(e.dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if skip[p] {
			return filepath.SkipDir
		}
		if fi.IsDir() {
			// Creating the store (and the run's temporary directory) in e.dir
			// changes directories' times; what is in them is compared.
			out[p] = "dir"
			return nil
		}
		var nlink uint64
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			nlink = uint64(st.Nlink)
		}
		out[p] = fmt.Sprintf("%d %v %d %d", fi.Size(), fi.Mode(), nlink, fi.ModTime().UnixNano())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// hostileCase is one hostile input, pulled beside a good image.
type hostileCase struct {
	name string
	// make pushes the hostile image (or builds the input) and returns the
	// argument for herd and what its error must say, besides naming it.
	make func(t *testing.T, e *env, h *hostileFixture) (arg string, want []string)
}

// hostileFixture is what the cases may aim at outside the store.
type hostileFixture struct {
	sentinel string // a file name no test creates: it must appear nowhere
	outside  string // a directory outside the store
	secret   string // a file outside the store
	proxy    string // host of the rewriting proxy in front of the registry
}

// Issue 6, test 6: each hostile input fails with an error naming the image
// (and the layer blob, where there is one) and the cause; is not retried;
// writes nothing outside the store; leaves no layer of it in the store; and
// the good image of the same run is pulled. containers/image and
// containers/storage reject most of these themselves; herd refuses the
// tars they would contain instead (commit/tarcheck.go) and says clearly
// what a manifest it cannot pull is.
func TestHostileInputs(t *testing.T) {
	e := newEnv(t, testregistry.Options{})
	good := e.push("good:1", testimage.Image{Layers: []testimage.Layer{ownLayer(91)}}, "gzip")
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	h := &hostileFixture{sentinel: "herd-escape-" + hex.EncodeToString(b), outside: filepath.Join(e.dir, "outside"), secret: filepath.Join(e.dir, "secret.txt")}
	if err := os.Mkdir(h.outside, 0o755); err != nil {
		t.Fatal(err)
	}
	write(t, h.secret, "not for layers")
	h.proxy = rewritingProxy(t, e.reg, func(path string, resp *http.Response) error {
		switch {
		case strings.HasSuffix(path, "/unknown-type/manifests/1"):
			resp.Header.Set("Content-Type", "application/vnd.example.unknown.v1+json")
		case strings.HasSuffix(path, "/huge-manifest/manifests/1"):
			// A registry never stores a manifest over 4 MiB; serve one.
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				return err
			}
			body = append(bytes.TrimRight(body, "}"), []byte(`,"annotations":{"pad":"`+strings.Repeat("p", 5<<20)+`"}}`)...)
			resp.Body = io.NopCloser(bytes.NewReader(body))
			resp.ContentLength = int64(len(body))
			resp.Header.Set("Content-Length", fmt.Sprint(len(body)))
		}
		return nil
	})
	up := strings.Repeat("../", 40) // from any layer directory up to /
	blobOf := func(l rawLayer) string { return digest.FromBytes(l.blob).String() }

	cases := []hostileCase{
		{"unknown manifest media type", func(t *testing.T, e *env, h *hostileFixture) (string, []string) {
			e.push("unknown-type:1", testimage.Image{Layers: []testimage.Layer{ownLayer(92)}}, "gzip")
			return h.proxy + "/unknown-type:1", []string{`"application/vnd.example.unknown.v1+json"`, "not a manifest type herd can pull"}
		}},
		{"oversized manifest", func(t *testing.T, e *env, h *hostileFixture) (string, []string) {
			e.push("huge-manifest:1", testimage.Image{Layers: []testimage.Layer{ownLayer(93)}}, "gzip")
			return h.proxy + "/huge-manifest:1", []string{"manifest", "exceeded maximum allowed size"}
		}},
		{"oversized config", func(t *testing.T, e *env, h *hostileFixture) (string, []string) {
			cfg := `{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"comment":"` + strings.Repeat("x", 5<<20) + `"}`
			ref := pushRaw(t, e.reg, "hostile/big-config", []rawLayer{gzipLayer(t, tarOf(t, tarFile("a.txt", "a")))}, []byte(cfg))
			return ref, []string{"configuration", "exceeded maximum allowed size"}
		}},
		{"diff_id mismatch", func(t *testing.T, e *env, h *hostileFixture) (string, []string) {
			l := gzipLayer(t, tarOf(t, tarFile("a.txt", "a")))
			l.diffID = digest.FromString("not this layer")
			return pushRaw(t, e.reg, "hostile/diff-id", []rawLayer{l}, nil), []string{blobOf(l), "does not match config's DiffID", l.diffID.String()}
		}},
		{"dot-dot paths", func(t *testing.T, e *env, h *hostileFixture) (string, []string) {
			l := gzipLayer(t, tarOf(t,
				tarFile("ok.txt", "fine"),
				tarFile("../"+h.sentinel, "one level up"),
				tarFile(up+strings.TrimPrefix(h.outside, "/")+"/"+h.sentinel, "into a directory outside the store"),
			))
			return pushRaw(t, e.reg, "hostile/dot-dot", []rawLayer{l}, nil), []string{blobOf(l), `"../` + h.sentinel + `"`, `".." path component`}
		}},
		{"write through an absolute symlink", func(t *testing.T, e *env, h *hostileFixture) (string, []string) {
			l := gzipLayer(t, tarOf(t,
				tarSymlink("escape", h.outside),
				tarFile("escape/"+h.sentinel, "through the symlink"),
			))
			return pushRaw(t, e.reg, "hostile/symlink", []rawLayer{l}, nil), []string{blobOf(l), `"escape/` + h.sentinel + `"`, "through symlink", h.outside}
		}},
		{"hard link out of the layer", func(t *testing.T, e *env, h *hostileFixture) (string, []string) {
			l := gzipLayer(t, tarOf(t,
				tarFile("ok.txt", "fine"),
				tarHardlink(h.sentinel, h.secret),
			))
			return pushRaw(t, e.reg, "hostile/hardlink", []rawLayer{l}, nil), []string{blobOf(l), "hard link", h.secret, "not in the layer"}
		}},
		{"hard link up and out", func(t *testing.T, e *env, h *hostileFixture) (string, []string) {
			l := gzipLayer(t, tarOf(t, tarHardlink(h.sentinel, up+strings.TrimPrefix(h.secret, "/"))))
			return pushRaw(t, e.reg, "hostile/hardlink-up", []rawLayer{l}, nil), []string{blobOf(l), "hard link", `".." path component`}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e.t = t
			e.resetStore()
			tmp := filepath.Join(e.dir, "tmp")
			if err := os.MkdirAll(tmp, 0o755); err != nil {
				t.Fatal(err)
			}
			t.Setenv("TMPDIR", tmp)
			arg, want := c.make(t, e, h)
			before := e.snapshotOutsideStore(t)

			s, r := e.summary(good.Ref, arg)
			if r.code != 1 || len(s.Images) != 2 {
				t.Fatalf("exit %d with %d images, want 1 with both images reported\n%s", r.code, len(s.Images), r.stderr)
			}
			if s.Images[0].Error != "" {
				t.Errorf("the good image failed: %s", s.Images[0].Error)
			}
			msg := s.Images[1].Error
			for _, w := range append([]string{arg}, want...) {
				if !strings.Contains(msg, w) {
					t.Errorf("the error does not say %q:\n%s", w, msg)
				}
			}
			if strings.Contains(r.stderr, "retrying in") {
				t.Errorf("herd retried a hostile input:\n%s", r.stderr)
			}
			e.verifyImage(good)
			checkStore(t, e.store())
			if images, err := e.store().Images(); err != nil || len(images) != 1 {
				t.Errorf("the store holds %d images (%v), want only the good one", len(images), err)
			}
			after := e.snapshotOutsideStore(t)
			for p, v := range after {
				if before[p] != v {
					t.Errorf("written outside the store: %s (%s, was %q)", p, v, before[p])
				}
			}
			for p := range before {
				if _, ok := after[p]; !ok {
					t.Errorf("removed outside the store: %s", p)
				}
			}
			// The sentinel is nowhere between the store and /.
			for d := e.root; ; d = filepath.Dir(d) {
				if _, err := os.Lstat(filepath.Join(d, h.sentinel)); err == nil {
					t.Errorf("%s exists", filepath.Join(d, h.sentinel))
				}
				if d == "/" {
					break
				}
			}
		})
	}
}

// Empty input is a usage error (exit 2) that says what is wrong, before
// anything is pulled.
func TestEmptyInput(t *testing.T) {
	e := newEnv(t, testregistry.Options{})
	good := e.push("good:1", testimage.Image{Layers: []testimage.Layer{ownLayer(94)}}, "gzip")
	list := filepath.Join(e.dir, "images.txt")
	write(t, list, "# nothing to pull today\n\n   \n")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--file", list}, "no images to pull"},
		{[]string{"--file", "-"}, "no images to pull"}, // empty standard input
		{[]string{good.Ref, ""}, "argument 2 is an empty image reference"},
		{[]string{"  "}, "argument 1 is an empty image reference"},
	} {
		r := e.herd(c.args...)
		if r.code != 2 || !strings.Contains(r.stderr, c.want) {
			t.Errorf("herd pull %q: exit %d, want 2 saying %q; stderr:\n%s", c.args, r.code, c.want, r.stderr)
		}
	}
	if images, err := e.store().Images(); err != nil || len(images) != 0 {
		t.Errorf("a usage error pulled %d images (%v)", len(images), err)
	}
}
