// Package tests holds herd's end-to-end tests: herd's real code, run
// in-process, against the real CNCF distribution registry on 127.0.0.1 and
// a real containers/storage store. Byte counts come from the registry.
package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/distribution/reference"
	digest "github.com/opencontainers/go-digest"
	istorage "go.podman.io/image/v5/storage"
	"go.podman.io/storage"
	"go.podman.io/storage/pkg/reexec"
	storagetypes "go.podman.io/storage/types"

	"github.com/herd-project/herd/cmd"
	"github.com/herd-project/herd/progress"
	"github.com/herd-project/herd/tests/internal/testimage"
	"github.com/herd-project/herd/tests/internal/testregistry"
	"github.com/herd-project/herd/tests/internal/teststore"
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

// unmountBelow detaches every mount below dir. A herd killed while
// containers/storage probes the overlay driver (metacopy-check, compat
// directories) leaves that probe's mount behind, and the directory cannot
// be removed with it.
func unmountBelow(t testing.TB, dir string) {
	for _, m := range teststore.UnmountBelow(dir) {
		t.Logf("unmounted %s, left behind below the test's directory", m)
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
		driverName = "overlay"
		if err := teststore.CheckOverlay(""); err != nil {
			driverName, driverWhy = "vfs", err.Error()
		}
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
	if stdin == nil {
		stdin = strings.NewReader("")
	}
	code := cmd.ExecuteContext(ctx, e.pullArgs(args...), cmd.IO{Stdin: stdin, Stdout: &stdout, Stderr: &stderr})
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

// pullArgs are herd's arguments for `herd pull` of args on the env's
// store with its default flags.
func (e *env) pullArgs(args ...string) []string {
	full := append([]string{"pull"}, e.storeArgs()...)
	full = append(full, e.defaultFlags()...)
	return append(full, args...)
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

// summaryWithin is e.summary, failing the test if herd has not returned
// within limit: a wait that never ends is a deadlock, and the suite should
// say so, not run into its own timeout.
func (e *env) summaryWithin(limit time.Duration, args ...string) (progress.Summary, run) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	r := e.herdContext(ctx, nil, append([]string{"--format", "json"}, args...)...)
	if ctx.Err() != nil {
		e.t.Fatalf("herd did not finish within %s (a wait that never ends?)\n%s", limit, r.stderr)
	}
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

// verifyImage checks that p is in the store under its name (or ID), that its layers
// are a chain whose uncompressed digests are the config's diff_ids in order,
// and that containers/image can read every layer back from the store.
func (e *env) verifyImage(p testimage.Pushed) {
	e.t.Helper()
	s := e.store()
	img, err := s.Image(p.Ref)
	if err != nil {
		e.t.Fatalf("%s is not in the store: %v", p.Ref, err)
	}
	chain, err := diffIDChain(s, img.TopLayer)
	if err != nil {
		e.t.Fatalf("%s: the image record's layers: %v", p.Ref, err)
	}
	if fmt.Sprint(chain) != fmt.Sprint(p.DiffIDs) {
		e.t.Fatalf("%s: layer chain %v, config diff_ids %v", p.Ref, chain, p.DiffIDs)
	}

	var named reference.Named // nil when p.Ref is the image's ID: an image without a name
	if p.Ref != img.ID {
		if named, err = reference.ParseNormalizedNamed(p.Ref); err != nil {
			e.t.Fatal(err)
		}
	}
	ref, err := istorage.Transport.NewStoreReference(s, named, img.ID)
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
	return testimage.ServedLayerBytes(e.reg, images...)
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

// ---- herd and podman as processes of their own.

// herdCommand is `herd pull` with the env's store and default flags (as
// e.herd's) and args, as a separate process: the test binary acting as
// herd, in this process's environment plus environ.
func (e *env) herdCommand(environ []string, args ...string) *exec.Cmd {
	e.t.Helper()
	self, err := os.Executable()
	if err != nil {
		e.t.Fatal(err)
	}
	c := exec.Command(self, e.pullArgs(args...)...)
	c.Env = append(append(os.Environ(), asHerdEnv+"=1"), environ...)
	return c
}

// exitCode is a finished process's exit status from the error its Run or
// Wait returned (-1 if a signal killed it); any other error fails the test.
func exitCode(t testing.TB, err error) int {
	t.Helper()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.ExitCode()
	default:
		t.Fatalf("running herd: %v", err)
		return 0
	}
}

// herdExec runs `herd pull` as a separate process (the test binary acting
// as herd) against the env's store, with the env's default flags, extra
// environment variables and stdin; its stdin and stdout are pipes, never a
// terminal, so it is a non-interactive run wherever the tests run. Used
// where herd must see its own process environment.
func (e *env) herdExec(environ []string, stdin string, args ...string) run {
	e.t.Helper()
	c := e.herdCommand(environ, args...)
	c.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	c.Stdout, c.Stderr = &stdout, &stderr
	code := exitCode(e.t, c.Run())
	return run{stdout.String(), stderr.String(), code}
}

// herdProcess is `herd pull` running as a separate process (the test binary
// acting as herd), so that a test can signal or kill it.
type herdProcess struct {
	cmd            *exec.Cmd
	stdout, stderr bytes.Buffer
}

// startHerd starts `herd pull` on the env's store with tmp as its TMPDIR
// (where it keeps its per-run herd-* directory).
func (e *env) startHerd(tmp string, args ...string) *herdProcess {
	e.t.Helper()
	return e.startHerdWith(tmp, func(*exec.Cmd) {}, args...)
}

// startHerdWith is startHerd with setup applied to the command before it
// starts.
func (e *env) startHerdWith(tmp string, setup func(*exec.Cmd), args ...string) *herdProcess {
	e.t.Helper()
	p := &herdProcess{cmd: e.herdCommand([]string{"TMPDIR=" + tmp}, args...)}
	p.cmd.Stdout, p.cmd.Stderr = &p.stdout, &p.stderr
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // for killGroup
	setup(p.cmd)
	if err := p.cmd.Start(); err != nil {
		e.t.Fatalf("starting herd: %v", err)
	}
	return p
}

// killGroup SIGKILLs herd and every process it started (startHerdWith
// gives it a process group of its own), as a shell or systemd kills a job.
// Killing herd alone leaves its helpers running for a moment:
// containers/storage's untar children, whose writes then race the next
// run's removal of their temporary directories ("recover stale temp dirs:
// … directory not empty"), and, on these machines, now and then a child of
// os/exec's fork caught before its exec (one thread, asleep in a futex for
// good), which keeps herd's output pipes, files and blob locks open.
func (p *herdProcess) killGroup() {
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
}

// wait waits for the process and returns its exit status (-1 if a signal
// killed it).
func (p *herdProcess) wait(t testing.TB) int {
	t.Helper()
	return exitCode(t, p.cmd.Wait())
}

// herdBinary copies the test binary (herd when HERD_TEST_AS_HERD=1) to a
// directory every user can read, as the test binary's own is not.
func herdBinary(t *testing.T) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "herd-bin-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	src, err := os.Open(self)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	bin := filepath.Join(dir, "herd")
	dst, err := os.OpenFile(bin, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	return bin
}

// podmanCommand is Debian's podman (bin) on the env's store (same root,
// runroot and driver as herd) with the env's registries.conf and a
// temporary directory of its own.
func (e *env) podmanCommand(bin string, args ...string) *exec.Cmd {
	global := []string{"--root", e.root, "--runroot", e.runroot, "--storage-driver", e.driver,
		"--tmpdir", filepath.Join(e.dir, "podman-tmp"), "--events-backend", "none", "--cgroup-manager", "cgroupfs"}
	c := exec.Command(bin, append(global, args...)...)
	c.Env = append(os.Environ(), "CONTAINERS_REGISTRIES_CONF="+e.regconf)
	return c
}

// podman runs podmanCommand; it returns standard output and fails the test
// on an error.
func (e *env) podman(bin string, args ...string) string {
	e.t.Helper()
	c := e.podmanCommand(bin, args...)
	var stdout, stderr bytes.Buffer
	c.Stdout, c.Stderr = &stdout, &stderr
	if err := c.Run(); err != nil {
		e.t.Fatalf("podman %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String()
}
