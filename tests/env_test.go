// Package tests holds herd's end-to-end tests: herd's real code, run
// in-process, against the real CNCF distribution registry on 127.0.0.1 and
// a real containers/storage store. Byte counts come from the registry.
package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/distribution/reference"
	"github.com/moby/sys/mountinfo"
	digest "github.com/opencontainers/go-digest"
	istorage "go.podman.io/image/v5/storage"
	"go.podman.io/image/v5/types"
	"go.podman.io/storage"
	"go.podman.io/storage/pkg/reexec"
	storagetypes "go.podman.io/storage/types"
	"golang.org/x/sys/unix"

	"github.com/herd-project/herd/cmd"
	"github.com/herd-project/herd/progress"
	"github.com/herd-project/herd/tests/internal/testimage"
	"github.com/herd-project/herd/tests/internal/testregistry"
)

// asHerdEnv makes the test binary behave as the herd command, for tests
// that need herd as a separate process (a terminal, a kill).
const asHerdEnv = "HERD_TEST_AS_HERD"

func TestMain(m *testing.M) {
	// containers/storage re-executes the binary to apply layers.
	if reexec.Init() {
		return
	}
	if os.Getenv(asHerdEnv) == "1" {
		os.Exit(cmd.Execute(os.Args[1:], cmd.IO{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr}))
	}
	os.Exit(m.Run())
}

// inCI is true in CI, where tests that need root or overlay must run.
var inCI = os.Getenv("CI") == "true"

// env is one test's registry, image pusher and empty store.
type env struct {
	t       testing.TB
	reg     *testregistry.Registry
	pusher  *testimage.Pusher
	dir     string
	root    string
	runroot string
	driver  string
	policy  string
	regconf string
	// omit names flags among --signature-policy, --registries-conf and
	// --tls-verify that e.herd must leave out, for tests of herd's defaults
	// (environment variables, default files, certificate checks).
	omit map[string]bool
}

func newEnv(t testing.TB, opts testregistry.Options) *env {
	t.Helper()
	dir := t.TempDir()                         // t.TempDir strips ':' from test names; overlay needs that
	t.Cleanup(func() { unmountBelow(t, dir) }) // runs before t.TempDir's removal
	e := &env{
		t:       t,
		reg:     testregistry.StartT(t, opts),
		dir:     dir,
		policy:  filepath.Join(dir, "policy.json"),
		regconf: filepath.Join(dir, "registries.conf"),
		driver:  storeDriver(t),
	}
	pushDir := filepath.Join(dir, "push")
	if err := os.Mkdir(pushDir, 0o755); err != nil {
		t.Fatal(err)
	}
	e.pusher = testimage.NewPusher(e.reg.Host, pushDir)
	write(t, e.policy, `{"default":[{"type":"insecureAcceptAnything"}]}`)
	write(t, e.regconf, "") // no system registries.conf: tests use fully qualified names
	e.resetStore()
	return e
}

// unmountBelow detaches every mount below dir, deepest first. A herd killed
// while containers/storage probes the overlay driver (metacopy-check,
// compat directories) leaves that probe's mount behind: the kernel does not
// undo a dead process's mounts, and the directory cannot be removed.
func unmountBelow(t testing.TB, dir string) {
	mounts, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		return
	}
	slices.SortFunc(mounts, func(a, b *mountinfo.Info) int { return len(b.Mountpoint) - len(a.Mountpoint) })
	for _, m := range mounts {
		t.Logf("unmounting %s, left behind below the test's directory", m.Mountpoint)
		_ = unix.Unmount(m.Mountpoint, unix.MNT_DETACH)
	}
}

// resetStore points the env at a new empty store.
func (e *env) resetStore() {
	n := 0
	for {
		e.root = filepath.Join(e.dir, fmt.Sprintf("store%d", n))
		if _, err := os.Stat(e.root); os.IsNotExist(err) {
			break
		}
		n++
	}
	e.runroot = filepath.Join(e.dir, fmt.Sprintf("run%d", n))
	root, runroot := e.root, e.runroot
	e.t.Cleanup(func() {
		if s, err := storage.GetStore(storagetypes.StoreOptions{GraphRoot: root, RunRoot: runroot, GraphDriverName: e.driver}); err == nil {
			_, _ = s.Shutdown(true)
		}
	})
}

var (
	driverOnce sync.Once
	driverName string
	driverWhy  string
)

// storeDriver is overlay when this machine can use it (root, a kernel with
// overlay), else vfs outside CI. CI must have overlay: there it fails.
func storeDriver(t testing.TB) string {
	driverOnce.Do(func() {
		if os.Geteuid() != 0 {
			driverName, driverWhy = "vfs", "not running as root"
			return
		}
		dir, err := os.MkdirTemp("", "herd-overlay-probe")
		if err != nil {
			driverName, driverWhy = "vfs", err.Error()
			return
		}
		defer os.RemoveAll(dir)
		s, err := storage.GetStore(storagetypes.StoreOptions{GraphRoot: dir + "/root", RunRoot: dir + "/run", GraphDriverName: "overlay"})
		if err != nil {
			driverName, driverWhy = "vfs", err.Error()
			return
		}
		_, _ = s.Shutdown(true)
		driverName = "overlay"
	})
	if driverName != "overlay" {
		if inCI {
			t.Fatalf("CI must run the store tests with the overlay driver as root, but overlay is unavailable: %s", driverWhy)
		}
		t.Logf("using the vfs driver: overlay unavailable (%s); CI runs these tests on overlay", driverWhy)
	}
	return driverName
}

func write(t testing.TB, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// herdMu serialises in-process herd runs: herd sets the global logrus
// output for its run.
var herdMu sync.Mutex

type run struct {
	stdout, stderr string
	code           int
}

// herd runs `herd pull` in-process against the env's store and registry.
func (e *env) herd(args ...string) run {
	return e.herdContext(context.Background(), nil, args...)
}

func (e *env) herdContext(ctx context.Context, stdin io.Reader, args ...string) run {
	e.t.Helper()
	herdMu.Lock()
	defer herdMu.Unlock()
	var stdout, stderr syncBuffer
	full := append([]string{"pull"}, e.storeArgs()...)
	full = append(full, e.defaultFlags()...)
	full = append(full, args...)
	if stdin == nil {
		stdin = strings.NewReader("")
	}
	code := cmd.ExecuteContext(ctx, full, cmd.IO{Stdin: stdin, Stdout: &stdout, Stderr: &stderr})
	return run{stdout.String(), stderr.String(), code}
}

// syncBuffer is a bytes.Buffer that herd's display and logrus (retry
// warnings) may write to at once, as they may to an *os.File.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// defaultFlags are the flags every e.herd run gets unless e.omit names
// them: the env's permissive policy, its empty registries.conf, plain HTTP.
func (e *env) defaultFlags() []string {
	var out []string
	if !e.omit["--signature-policy"] {
		out = append(out, "--signature-policy", e.policy)
	}
	if !e.omit["--registries-conf"] {
		out = append(out, "--registries-conf", e.regconf)
	}
	if !e.omit["--tls-verify"] {
		out = append(out, "--tls-verify=false")
	}
	return out
}

func (e *env) storeArgs() []string {
	return []string{"--root", e.root, "--runroot", e.runroot, "--storage-driver", e.driver}
}

// summary runs herd with --format json and parses the summary.
func (e *env) summary(args ...string) (progress.Summary, run) {
	e.t.Helper()
	r := e.herd(append([]string{"--format", "json"}, args...)...)
	return e.parseSummary(r), r
}

// parseSummary parses the JSON summary a run printed.
func (e *env) parseSummary(r run) progress.Summary {
	e.t.Helper()
	var s progress.Summary
	if err := json.Unmarshal([]byte(r.stdout), &s); err != nil {
		e.t.Fatalf("herd's JSON summary does not parse: %v\nstdout:\n%s\nstderr:\n%s", err, r.stdout, r.stderr)
	}
	return s
}

// store opens the env's store (the same object herd uses while it runs).
func (e *env) store() storage.Store {
	e.t.Helper()
	s, err := storage.GetStore(storagetypes.StoreOptions{GraphRoot: e.root, RunRoot: e.runroot, GraphDriverName: e.driver})
	if err != nil {
		e.t.Fatal(err)
	}
	return s
}

// push pushes img as HOST/repo:tag in compression.
func (e *env) push(repoTag string, img testimage.Image, compression string) testimage.Pushed {
	e.t.Helper()
	p, err := e.pusher.Push(context.Background(), repoTag, img, compression)
	if err != nil {
		e.t.Fatalf("pushing %s: %v", repoTag, err)
	}
	return p
}

// verifyImage checks that p is in the store under its name, that its layers
// are a chain whose uncompressed digests are the config's diff_ids in order,
// and that containers/image can read every layer back from the store.
func (e *env) verifyImage(p testimage.Pushed) {
	e.t.Helper()
	s := e.store()
	img, err := s.Image(p.Ref)
	if err != nil {
		e.t.Fatalf("%s is not in the store: %v", p.Ref, err)
	}
	var chain []digest.Digest
	for id := img.TopLayer; id != ""; {
		l, err := s.Layer(id)
		if err != nil {
			e.t.Fatalf("%s: layer %s of the image record is missing: %v", p.Ref, id, err)
		}
		chain = append([]digest.Digest{l.UncompressedDigest}, chain...)
		id = l.Parent
	}
	if fmt.Sprint(chain) != fmt.Sprint(p.DiffIDs) {
		e.t.Fatalf("%s: layer chain %v, config diff_ids %v", p.Ref, chain, p.DiffIDs)
	}

	named, err := reference.ParseNormalizedNamed(p.Ref)
	if err != nil {
		e.t.Fatal(err)
	}
	ref, err := istorage.Transport.NewStoreReference(s, named, "")
	if err != nil {
		e.t.Fatal(err)
	}
	ctx := context.Background()
	src, err := ref.NewImageSource(ctx, nil)
	if err != nil {
		e.t.Fatalf("%s: opening through containers-storage: %v", p.Ref, err)
	}
	defer src.Close()
	infos, err := src.LayerInfosForCopy(ctx, nil) // the layers as the store has them: uncompressed
	if err != nil {
		e.t.Fatalf("%s: listing layers through containers-storage: %v", p.Ref, err)
	}
	if len(infos) != len(p.DiffIDs) {
		e.t.Fatalf("%s: containers-storage shows %d layers, want %d", p.Ref, len(infos), len(p.DiffIDs))
	}
	for i, info := range infos {
		rc, _, err := src.GetBlob(ctx, info, nil)
		if err != nil {
			e.t.Fatalf("%s: reading layer %d back: %v", p.Ref, i, err)
		}
		got, err := digest.Canonical.FromReader(rc)
		rc.Close()
		if err != nil {
			e.t.Fatal(err)
		}
		if got != p.DiffIDs[i] {
			e.t.Fatalf("%s: layer %d reads back as %s, want %s", p.Ref, i, got, p.DiffIDs[i])
		}
	}
}

// layerBytes is what the registry served for the layer blobs of images.
func (e *env) layerBytes(images ...testimage.Pushed) int64 {
	var n int64
	for _, l := range distinctLayers(images...) {
		n += e.reg.BlobBytes(l.Digest)
	}
	return n
}

// distinctLayers lists the layer blobs of images, each once, in order.
func distinctLayers(images ...testimage.Pushed) []types.BlobInfo {
	seen := map[digest.Digest]bool{}
	var out []types.BlobInfo
	for _, p := range images {
		for _, l := range p.Layers {
			if !seen[l.Digest] {
				seen[l.Digest] = true
				out = append(out, l)
			}
		}
	}
	return out
}

// refs are the references of pushed images, as herd arguments.
func refs(images ...testimage.Pushed) []string {
	var out []string
	for _, p := range images {
		out = append(out, p.Ref)
	}
	return out
}

var compressions = []string{"gzip", "zstd", "zstd:chunked"}

// servedOnceBound is the most the registry may serve for one pull of a blob
// of size bytes: exactly its size for a full fetch; for zstd:chunked partial
// pulls, the chunks plus multipart framing (about 100 bytes a part).
func servedOnceBound(compression string, size int64) int64 {
	if compression == "zstd:chunked" {
		return size + size/10 + 4096
	}
	return size
}

// holdBlob makes the registry keep every request for blob open, sending
// nothing, until the client gives up on it; the channel it returns receives
// when the first such request arrives.
func (e *env) holdBlob(blob digest.Digest) <-chan struct{} {
	requested := make(chan struct{}, 1)
	e.reg.SetBlobHook(func(w http.ResponseWriter, req *http.Request, d digest.Digest) bool {
		if d != blob {
			return false
		}
		select {
		case requested <- struct{}{}:
		default:
		}
		<-req.Context().Done()
		return true
	})
	return requested
}
