package tests

// Helpers that several test files share; env_test.go has the env itself
// and the ways of running herd and podman on it. A helper that one file
// uses stays in that file.

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/creack/pty"
	"github.com/hinshun/vt10x"
	digest "github.com/opencontainers/go-digest"
	imgspecv1 "github.com/opencontainers/image-spec/specs-go/v1"
	"go.podman.io/storage"

	"github.com/herd-project/herd/progress"
	"github.com/herd-project/herd/tests/internal/testimage"
	"github.com/herd-project/herd/tests/internal/testregistry"
)

// ---- Images: the layers and image sets most tests push.

const kib = 1024

// base, mid and own layers shaped like a small real image.
var (
	baseLayer = testimage.RandomLayer(1, 12, 16*kib)
	midLayer  = testimage.RandomLayer(2, 8, 16*kib)
)

// ownLayer is an image's own top layer, different for every seed.
func ownLayer(seed int64) testimage.Layer { return testimage.RandomLayer(100+seed, 4, 8*kib) }

// fleet pushes 8 images sharing base layers in overlapping subsets: all
// share B1 and B2, the first half also share M, each has its own top layer.
func fleet(e *env, compression string) []testimage.Pushed {
	return fleetNamed(e, "fleet", compression)
}

// fleetNamed pushes the fleet as PREFIX0:v1 … PREFIX7:v1: the same content,
// and so the same DiffIDs, under other names, in any compression.
func fleetNamed(e *env, prefix, compression string) []testimage.Pushed {
	var images []testimage.Pushed
	for i := 0; i < 8; i++ {
		layers := []testimage.Layer{baseLayer, midLayer}
		if i < 4 {
			layers = append(layers, testimage.RandomLayer(3, 6, 16*kib))
		}
		layers = append(layers, ownLayer(int64(i)))
		images = append(images, e.push(fmt.Sprintf("%s%d:v1", prefix, i), testimage.Image{Layers: layers}, compression))
	}
	return images
}

// repetitions is how often a test repeats a randomised case: def, or
// HERD_TEST_REPS to hunt a rare interleaving longer.
func repetitions(t *testing.T, def int) int {
	if s := os.Getenv("HERD_TEST_REPS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			t.Fatalf("HERD_TEST_REPS=%q: %v", s, err)
		}
		return n
	}
	return def
}

// ---- Runs: checks on what herd said and did.

// wantSuccess stops the test unless the run exited 0.
func wantSuccess(t *testing.T, r run, what string) {
	t.Helper()
	if r.code != 0 {
		t.Fatalf("%s: exit status %d, want 0\nstderr:\n%s", what, r.code, r.stderr)
	}
}

// wantFailure checks that a run failed with exit status 1 and that its
// standard error says every one of the phrases.
func wantFailure(t *testing.T, r run, what string, phrases ...string) {
	t.Helper()
	wantStatus(t, r, what, 1, phrases...)
}

// wantStatus checks that a run exited with code and that its standard
// error says every one of the phrases.
func wantStatus(t *testing.T, r run, what string, code int, phrases ...string) {
	t.Helper()
	t.Logf("%s: herd said:\n%s", what, r.stderr) // the messages, for review with -v
	if r.code != code {
		t.Errorf("%s: exit status %d, want %d\nstderr:\n%s", what, r.code, code, r.stderr)
	}
	for _, p := range phrases {
		if !strings.Contains(r.stderr, p) {
			t.Errorf("%s: standard error does not say %q:\n%s", what, p, r.stderr)
		}
	}
}

// checkServedOnce fails unless every distinct layer blob of images was
// served by the registry once (and not zero times), and the summary reports
// exactly one image as having fetched it.
func checkServedOnce(t *testing.T, e *env, compression string, images []testimage.Pushed, s progress.Summary, what string) {
	t.Helper()
	fetchers := map[digest.Digest][]string{}
	for _, img := range s.Images {
		for _, l := range img.Layers {
			switch l.How {
			case "fetched", "partial":
				fetchers[l.Digest] = append(fetchers[l.Digest], img.Inputs[0])
			case "waited", "reused":
			default:
				t.Errorf("%s: %s layer %s: how %q is not one of fetched, partial, waited, reused", what, img.Inputs[0], l.Digest, l.How)
			}
		}
	}
	for _, l := range testimage.DistinctLayers(images...) {
		got := e.reg.BlobBytes(l.Digest)
		if got == 0 || got > servedOnceBound(compression, l.Size) {
			t.Errorf("%s: blob %s (%d bytes) served %d bytes in %d requests, want it served once",
				what, l.Digest, l.Size, got, e.reg.BlobGets(l.Digest))
		}
		if n := len(fetchers[l.Digest]); n != 1 {
			t.Errorf("%s: blob %s reported fetched by %d images %v, want 1", what, l.Digest, n, fetchers[l.Digest])
		}
	}
}

// sumSizes is the size of a summary's layers, each listing counted.
func sumSizes(layers []progress.LayerSummary) int64 {
	var n int64
	for _, l := range layers {
		n += l.Size
	}
	return n
}

// containsAll reports whether have holds every one of want.
func containsAll(have []string, want ...string) bool {
	set := map[string]bool{}
	for _, h := range have {
		set[h] = true
	}
	for _, w := range want {
		if !set[w] {
			return false
		}
	}
	return true
}

// ---- The store: containers/storage's check, and what herd leaves there.

// checkStore runs containers/storage's own consistency check and fails the
// test on any report but the one every partial pull gets
// (partialPullMtime).
func checkStore(t *testing.T, s storage.Store) {
	t.Helper()
	checkStoreReport(t, s, false)
}

// checkStoreAfterKill is checkStore for a store whose writer was SIGKILLed.
// It also tolerates one report that is containers/storage's, not herd's: a
// kill during the overlay driver's feature probe, before herd has touched
// anything, leaves the probe's directory in the driver's home, and Check
// reports it as a layer the driver has but the store does not account for;
// the next run removes it (cmd/leftovers.go, TestEarlyKillLeavesNothingAfterRerun).
// It returns how many of those it found.
func checkStoreAfterKill(t *testing.T, s storage.Store) int {
	t.Helper()
	return checkStoreReport(t, s, true)
}

// checkStoreReport is checkStore, and with afterKill checkStoreAfterKill.
func checkStoreReport(t *testing.T, s storage.Store, afterKill bool) (probeDirs int) {
	t.Helper()
	report, err := s.Check(storage.CheckEverything())
	if err != nil {
		t.Fatalf("checking the store: %v", err)
	}
	for id, errs := range report.Layers {
		if layer, err := s.Layer(id); err == nil && layer.TOCDigest != "" {
			errs = withoutPartialPullMtimes(errs) // only for partially pulled layers: any other difference counts
		}
		var real []error
		for _, err := range errs {
			if afterKill && errors.Is(err, storage.ErrLayerUnaccounted) && overlayProbeDir.MatchString(id) {
				probeDirs++
				continue
			}
			real = append(real, err)
		}
		if len(real) > 0 {
			t.Errorf("store check: layer %s: %v", id, real)
		}
	}
	for id, errs := range report.Images {
		if errs = withoutPartialPullMtimes(errs); len(errs) > 0 {
			t.Errorf("store check: image %s: %v", id, errs)
		}
	}
	for id, errs := range report.ROLayers {
		t.Errorf("store check: read-only layer %s: %v", id, errs)
	}
	return probeDirs
}

// partialPullMtime matches the one report Check makes about every
// zstd:chunked partial pull, herd's or podman's alike: a directory whose
// mtime changed when pkg/chunked created files in it after setting it
// (containers/podman#25101). Reproduced here with a single image at -j 1.
var partialPullMtime = regexp.MustCompile(`^layer [0-9a-f]+: [^()]+\(mtime:0x[0-9a-f]+\x{FFEB}0x[0-9a-f]+\), layer content modified$`)

// withoutPartialPullMtimes drops the partialPullMtime reports from errs.
func withoutPartialPullMtimes(errs []error) []error {
	var real []error
	for _, err := range errs {
		if !partialPullMtime.MatchString(err.Error()) {
			real = append(real, err)
		}
	}
	return real
}

// overlayProbeDir matches the temporary directories the overlay driver
// makes in its home to probe kernel features (drivers/overlay/check.go,
// overlay.go: compat*, opaque-bug-check*, metacopy-check*, volatile-check*)
// the first time a store is used after boot, and removes again right away.
var overlayProbeDir = regexp.MustCompile(`^(compat|opaque-bug-check|metacopy-check|volatile-check)[0-9]+$`)

// overlayProbeDirs lists the feature-probe directories in the env's store's
// overlay home (none with another driver).
func overlayProbeDirs(t testing.TB, e *env) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(e.root, e.driver))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []string
	for _, ent := range entries {
		if overlayProbeDir.MatchString(ent.Name()) {
			out = append(out, ent.Name())
		}
	}
	return out
}

// herdTempDirs lists the herd-* directories in tmp.
func herdTempDirs(t testing.TB, tmp string) []string {
	t.Helper()
	dirs, err := filepath.Glob(filepath.Join(tmp, "herd-*"))
	if err != nil {
		t.Fatal(err)
	}
	return dirs
}

// diffIDChain lists the uncompressed digests of the chain of layers that
// ends at top, bottom first: for an image's record, what its config's
// diff_ids must be.
func diffIDChain(s storage.Store, top string) ([]digest.Digest, error) {
	var chain []digest.Digest
	for id := top; id != ""; {
		l, err := s.Layer(id)
		if err != nil {
			return nil, fmt.Errorf("layer %s is missing: %w", id, err)
		}
		chain = append([]digest.Digest{l.UncompressedDigest}, chain...)
		id = l.Parent
	}
	return chain, nil
}

// checkStoreEmpty fails unless the env's store holds no image and no layer.
func (e *env) checkStoreEmpty(why string) {
	e.t.Helper()
	s := e.store()
	images, err := s.Images()
	if err != nil {
		e.t.Fatal(err)
	}
	layers, err := s.Layers()
	if err != nil {
		e.t.Fatal(err)
	}
	if len(images) != 0 || len(layers) != 0 {
		e.t.Errorf("%s: the store holds %d images and %d layers, want none", why, len(images), len(layers))
	}
}

// lowerCommitted reports whether the store holds a layer for every one of
// diffIDs.
func lowerCommitted(s storage.Store, diffIDs []digest.Digest) bool {
	for _, d := range diffIDs {
		layers, err := s.LayersByUncompressedDigest(d)
		if err != nil && !errors.Is(err, storage.ErrLayerUnknown) || len(layers) == 0 {
			return false
		}
	}
	return true
}

// ---- The machine: tools and privileges a test needs; outside CI it skips
// without them, in CI (.ci/run) it fails.

// needRoot skips (fails in CI) unless the test runs as root.
func needRoot(t *testing.T, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		if inCI {
			t.Fatalf("CI runs the tests as root, which %s needs", why)
		}
		t.Skipf("not root: %s needs root; CI runs this test", why)
	}
}

// needTools returns the paths of tools a test needs (tool → Debian
// package). Outside CI a missing tool skips the test; in CI it fails it.
func needTools(t *testing.T, tools map[string]string) map[string]string {
	t.Helper()
	paths := map[string]string{}
	for tool, pkg := range tools {
		p, err := exec.LookPath(tool)
		if err != nil {
			if inCI {
				t.Fatalf("CI must provide %s (apt package %s): %v", tool, pkg, err)
			}
			t.Skipf("%s not found (apt package %s); CI runs this test", tool, pkg)
		}
		paths[tool] = p
	}
	return paths
}

// podmanBinary finds Debian's podman, for a test that runs it on a store
// under the test's temporary directory, which needs root.
func podmanBinary(t *testing.T) string {
	t.Helper()
	needRoot(t, "podman on a store under the test's temporary directory")
	return needTools(t, map[string]string{"podman": "podman"})["podman"]
}

// ---- The registry: counting, reading and rewriting what it serves.

// herdGets counts, per blob, the GETs that herd processes (by User-Agent)
// sent; podman's are not counted. Ranged GETs of a partial pull count once
// per blob and process: what matters is how many processes fetched it.
type herdGets struct {
	mu   sync.Mutex
	gets map[digest.Digest]int
}

// countHerdGets makes the registry count herd's GETs (replacing any blob
// hook).
func (e *env) countHerdGets() *herdGets {
	h := &herdGets{gets: map[digest.Digest]int{}}
	e.reg.SetBlobHook(func(w http.ResponseWriter, req *http.Request, d digest.Digest) bool {
		if strings.HasPrefix(req.UserAgent(), "herd/") && req.Header.Get("Range") == "" {
			h.mu.Lock()
			h.gets[d]++
			h.mu.Unlock()
		}
		return false
	})
	return h
}

func (h *herdGets) reset() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.gets = map[digest.Digest]int{}
}

func (h *herdGets) get(d digest.Digest) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.gets[d]
}

// fetchBlob GETs a blob from the registry as it stores it.
func fetchBlob(t *testing.T, reg *testregistry.Registry, repo string, d digest.Digest) []byte {
	t.Helper()
	resp, err := http.Get(reg.URL + "/v2/" + repo + "/blobs/" + d.String())
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("fetching blob %s: %s %v", d, resp.Status, err)
	}
	return body
}

// rewritingProxy is a plain-HTTP proxy in front of the real registry that
// passes everything through except the manifests rewrite changes: a
// registry (or a CDN in front of one) that serves what a registry never
// stores. It returns the proxy's host.
func rewritingProxy(t *testing.T, reg *testregistry.Registry, rewrite func(path string, resp *http.Response) error) string {
	t.Helper()
	target, err := url.Parse(reg.URL)
	if err != nil {
		t.Fatal(err)
	}
	p := httputil.NewSingleHostReverseProxy(target)
	p.ModifyResponse = func(resp *http.Response) error { return rewrite(resp.Request.URL.Path, resp) }
	srv := httptest.NewServer(p)
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// ---- Hand-made images go to the registry through its HTTP API, as a
// client that does not follow the rules would push them: containers/image
// would refuse to build most of them.

// putBlobRaw uploads data to repo (monolithic POST + PUT upload).
func putBlobRaw(t *testing.T, reg *testregistry.Registry, repo string, data []byte) digest.Digest {
	t.Helper()
	d, err := reg.PutBlob(repo, data)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// putManifestRaw stores body as repo:tag with the given media type.
func putManifestRaw(t *testing.T, reg *testregistry.Registry, repo, tag, mediaType string, body []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPut, reg.URL+"/v2/"+repo+"/manifests/"+tag, bytes.NewReader(body))
	req.Header.Set("Content-Type", mediaType)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	msg, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("putting manifest %s:%s: %s %s", repo, tag, resp.Status, msg)
	}
}

// rawLayer is one layer of a hand-made image: its gzip blob and the diff ID
// its config claims for it.
type rawLayer struct {
	blob   []byte
	diffID digest.Digest
}

// gzipLayer compresses a tar into a layer whose config diff ID is right.
func gzipLayer(t *testing.T, tarball []byte) rawLayer {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(tarball); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return rawLayer{blob: buf.Bytes(), diffID: digest.FromBytes(tarball)}
}

// tarOf writes the headers (with data for regular files) as a tar.
func tarOf(t *testing.T, entries ...tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.hdr
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.data))
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatalf("tar header %q: %v", h.Name, err)
		}
		if _, err := tw.Write(e.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// tarEntry is one entry of a hand-made tar: tarFile, tarSymlink, tarHardlink.
type tarEntry struct {
	hdr  tar.Header
	data []byte
}

func tarFile(name, content string) tarEntry {
	return tarEntry{hdr: tar.Header{Name: name, Typeflag: tar.TypeReg}, data: []byte(content)}
}

func tarSymlink(name, target string) tarEntry {
	return tarEntry{hdr: tar.Header{Name: name, Typeflag: tar.TypeSymlink, Linkname: target, Mode: 0o777}}
}

func tarHardlink(name, target string) tarEntry {
	return tarEntry{hdr: tar.Header{Name: name, Typeflag: tar.TypeLink, Linkname: target}}
}

// pushRaw pushes a hand-made OCI image as HOST/repo:tag: its layers, a
// config (made from the layers' diff IDs unless config is given), and the
// manifest. It returns the reference.
func pushRaw(t *testing.T, reg *testregistry.Registry, repo string, layers []rawLayer, config []byte) string {
	t.Helper()
	if config == nil {
		cfg := imgspecv1.Image{
			Platform: imgspecv1.Platform{OS: "linux", Architecture: "amd64"},
			RootFS:   imgspecv1.RootFS{Type: "layers"},
		}
		for _, l := range layers {
			cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, l.diffID)
		}
		var err error
		if config, err = json.Marshal(cfg); err != nil {
			t.Fatal(err)
		}
	}
	m := imgspecv1.Manifest{MediaType: imgspecv1.MediaTypeImageManifest}
	m.SchemaVersion = 2
	m.Config = imgspecv1.Descriptor{MediaType: imgspecv1.MediaTypeImageConfig, Digest: putBlobRaw(t, reg, repo, config), Size: int64(len(config))}
	for _, l := range layers {
		m.Layers = append(m.Layers, imgspecv1.Descriptor{MediaType: imgspecv1.MediaTypeImageLayerGzip, Digest: putBlobRaw(t, reg, repo, l.blob), Size: int64(len(l.blob))})
	}
	body, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	putManifestRaw(t, reg, repo, "1", imgspecv1.MediaTypeImageManifest, body)
	return reg.Host + "/" + repo + ":1"
}

// ---- Terminals: pseudo-terminals and the emulator that replays what
// herd drew on them.

// terminal is a pseudo-terminal whose master side the test reads,
// recording everything written on the other side (pts), which the test
// hands to a display or to a process.
type terminal struct {
	pts  *os.File
	mu   sync.Mutex
	raw  bytes.Buffer
	read chan struct{} // closed once every holder of pts has closed it
}

// openTerminal opens a pseudo-terminal of cols×rows and starts recording
// it; the test's cleanup closes it.
func openTerminal(t testing.TB, cols, rows int) *terminal {
	t.Helper()
	ptm, pts, err := pty.Open()
	if err != nil {
		t.Fatalf("opening a pseudo-terminal: %v", err)
	}
	t.Cleanup(func() { ptm.Close() })
	if err := pty.Setsize(ptm, &pty.Winsize{Cols: uint16(cols), Rows: uint16(rows)}); err != nil {
		t.Fatal(err)
	}
	term := &terminal{pts: pts, read: make(chan struct{})}
	go func() {
		defer close(term.read)
		buf := make([]byte, 32*1024)
		for {
			n, err := ptm.Read(buf)
			term.mu.Lock()
			term.raw.Write(buf[:n])
			term.mu.Unlock()
			if err != nil {
				return // EIO: nobody holds pts any more
			}
		}
	}()
	return term
}

// written is what has been written on the terminal so far.
func (term *terminal) written() string {
	term.mu.Lock()
	defer term.mu.Unlock()
	return term.raw.String()
}

// wait waits until every holder of pts has closed it (close this process's
// copy first) and returns everything written on the terminal.
func (term *terminal) wait(t testing.TB) []byte {
	t.Helper()
	select {
	case <-term.read:
	case <-time.After(10 * time.Second):
		t.Fatal("the terminal was not closed within 10s of its last writer ending")
	}
	term.mu.Lock()
	defer term.mu.Unlock()
	return bytes.Clone(term.raw.Bytes())
}

// onTerminal runs draw with a terminal display on a pseudo-terminal of
// cols×rows, and returns what was written to it and the frames drawn, once
// draw has closed the display.
func onTerminal(t *testing.T, cols, rows int, draw func(d progress.Display)) (written []byte, drawn [][]string) {
	t.Helper()
	term := openTerminal(t, cols, rows)
	draw(progress.NewTerminal(term.pts))
	term.pts.Close()
	written = term.wait(t)
	fs, final := screens(t, written, cols, rows)
	return written, append(fs, final)
}

// redraw is how mpb starts each frame: the cursor goes up over the previous
// frame and clears down.
var redraw = regexp.MustCompile(`\x1b\[\d+A\x1b\[J`)

// escapes is every escape sequence herd may send the terminal: mpb's redraw.
var escapes = regexp.MustCompile(`\x1b\[[0-9;?]*[A-Za-z]`)

// screens replays raw through a terminal emulator of cols x rows and returns
// the screen as it stood before each redraw (every frame herd drew) and at
// the end. Lines are right-trimmed; trailing empty lines dropped.
func screens(t *testing.T, raw []byte, cols, rows int) (frames [][]string, final []string) {
	t.Helper()
	for _, esc := range escapes.FindAll(raw, -1) {
		if !redraw.Match(esc) && !regexp.MustCompile(`^\x1b\[J$`).Match(esc) && !regexp.MustCompile(`^\x1b\[\d+A$`).Match(esc) {
			t.Errorf("herd sent the terminal the escape sequence %q; the test's emulator only knows mpb's redraw", esc)
		}
	}
	vt := vt10x.New(vt10x.WithSize(cols, rows))
	prev := 0
	for _, m := range redraw.FindAllIndex(raw, -1) {
		if _, err := vt.Write(raw[prev:m[0]]); err != nil {
			t.Fatal(err)
		}
		prev = m[0]
		frames = append(frames, screenLines(vt))
	}
	if _, err := vt.Write(raw[prev:]); err != nil {
		t.Fatal(err)
	}
	return frames, screenLines(vt)
}

// vtWrapped is vt10x's attrWrap: the mode bit it sets on the last cell of a
// row whose text went on to the next row.
const vtWrapped = 1 << 6

// screenLines is the screen's text, one string per line as written: rows
// joined where the text wrapped, right-trimmed, trailing empty lines
// dropped. Wrapped lines get a "\x00" at the end, so that checks can tell
// them (only log lines and final lines above the bars may wrap).
func screenLines(vt vt10x.Terminal) []string {
	vt.Lock()
	defer vt.Unlock()
	cols, rows := vt.Size()
	var lines []string
	var cur strings.Builder
	wrapped := false
	for y := range rows {
		for x := range cols {
			cur.WriteRune(vt.Cell(x, y).Char)
		}
		if vt.Cell(cols-1, y).Mode&vtWrapped != 0 {
			wrapped = true
			continue
		}
		line := strings.TrimRight(cur.String(), " \x00")
		if wrapped {
			line += "\x00"
		}
		lines = append(lines, line)
		cur.Reset()
		wrapped = false
	}
	for len(lines) > 0 && lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	return lines
}

// mirrorConf is a registries.conf that names mirror as origin's
// [[registry.mirror]], both plain HTTP ("insecure"), with extra lines for
// the mirror's table.
func mirrorConf(origin, mirror string, extra ...string) string {
	conf := fmt.Sprintf("[[registry]]\nlocation = %q\ninsecure = true\n\n[[registry.mirror]]\nlocation = %q\ninsecure = true\n", origin, mirror)
	return conf + strings.Join(append(extra, ""), "\n")
}
