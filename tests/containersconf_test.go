package tests

// Issue 13, item 3: containers.conf's [engine] table gives herd pull its
// defaults as it gives podman pull's (image_parallel_copies, retry,
// retry_delay, image_copy_tmp_dir), read as containers/common reads it
// (CONTAINERS_CONF, CONTAINERS_CONF_OVERRIDE); a flag given wins. herd runs
// as a process of its own here, so that the environment applies.

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/herd-project/herd/progress"
	"github.com/herd-project/herd/tests/internal/testimage"
	"github.com/herd-project/herd/tests/internal/testregistry"
)

// confEnv is the part of the environment a containers.conf test controls:
// the test's own TMPDIR and containers.conf variables are left out, so that
// only what environ says applies.
var confEnv = []string{"TMPDIR", "CONTAINERS_CONF", "CONTAINERS_CONF_OVERRIDE"}

// herdWithConf runs `herd pull --format json` as a separate process (the
// env's store and default flags, then args) with environ as the only
// TMPDIR and containers.conf variables, and parses its summary.
func (e *env) herdWithConf(environ []string, args ...string) (progress.Summary, run) {
	e.t.Helper()
	c := e.herdCommand(nil, append([]string{"--format", "json"}, args...)...)
	c.Env = slices.DeleteFunc(c.Env, func(kv string) bool {
		name, _, _ := strings.Cut(kv, "=")
		return slices.Contains(confEnv, name)
	})
	c.Env = append(c.Env, environ...)
	var stdout, stderr syncBuffer
	c.Stdout, c.Stderr = &stdout, &stderr
	r := run{code: exitCode(e.t, c.Run())}
	r.stdout, r.stderr = stdout.String(), stderr.String()
	return e.parseSummary(r), r
}

// conf writes a containers.conf named name in the env's directory and
// returns its path.
func (e *env) conf(name, content string) string {
	path := filepath.Join(e.dir, name)
	write(e.t, path, content)
	return path
}

// failFirstGet makes the registry answer the first GET of blob with a 503,
// a transient fault that one retry gets past, and serve every other request.
func (e *env) failFirstGet(blob digest.Digest) {
	var gets atomic.Int32
	e.reg.SetBlobHook(func(w http.ResponseWriter, req *http.Request, d digest.Digest) bool {
		if d != blob || gets.Add(1) > 1 {
			return false
		}
		http.Error(w, "busy (injected fault)", http.StatusServiceUnavailable)
		return true
	})
}

// retryImage pushes a one-layer image for the retry tests.
func retryImage(e *env, name string, seed int64) testimage.Pushed {
	return e.push(name, testimage.Image{Layers: []testimage.Layer{ownLayer(seed)}}, "gzip")
}

// onlyImage is the one image of a run's summary.
func onlyImage(t *testing.T, s progress.Summary, r run) progress.ImageSummary {
	t.Helper()
	if len(s.Images) != 1 {
		t.Fatalf("%d images in the summary, want 1\n%s", len(s.Images), r.stderr)
	}
	return s.Images[0]
}

// Test 1: retry = 0 makes a transient fault fail the image after its first
// attempt; --retry on the command line overrides it.
func TestContainersConfRetry(t *testing.T) {
	e := newEnv(t, testregistry.Options{})
	img := retryImage(e, "conf-retry:1", 1301)
	conf := e.conf("containers.conf", "[engine]\nretry = 0\nretry_delay = \"10ms\"\n")

	e.failFirstGet(img.Layers[0].Digest)
	s, r := e.herdWithConf([]string{"CONTAINERS_CONF=" + conf}, img.Ref)
	got := onlyImage(t, s, r)
	if r.code != 1 || got.Error == "" || got.Attempts != 1 {
		t.Fatalf("retry = 0: exit %d, attempts %d, error %q; want exit 1 after 1 attempt\n%s", r.code, got.Attempts, got.Error, r.stderr)
	}
	if !strings.Contains(got.Error, "503") {
		t.Errorf("retry = 0: the image failed, but not on the injected 503: %s", got.Error)
	}

	e.resetStore()
	e.failFirstGet(img.Layers[0].Digest)
	s, r = e.herdWithConf([]string{"CONTAINERS_CONF=" + conf}, "--retry", "2", img.Ref)
	got = onlyImage(t, s, r)
	if r.code != 0 || got.Attempts != 2 {
		t.Fatalf("retry = 0 and --retry 2: exit %d, attempts %d (%s); want the image pulled on its 2nd attempt\n%s", r.code, got.Attempts, got.Error, r.stderr)
	}
	e.verifyImage(img)
}

// Test 2: retry_delay is the wait before a retry, and --retry-delay wins
// over it. Observed through pkg/retry's warning, which says how long it
// waits ("retrying in 250ms"), rather than by timing the run.
func TestContainersConfRetryDelay(t *testing.T) {
	e := newEnv(t, testregistry.Options{})
	img := retryImage(e, "conf-delay:1", 1302)
	conf := e.conf("containers.conf", "[engine]\nretry_delay = \"250ms\"\n")

	for _, c := range []struct {
		name  string
		flags []string
		want  string
	}{
		{"retry_delay", nil, "retrying in 250ms"},
		{"--retry-delay over retry_delay", []string{"--retry-delay", "120ms"}, "retrying in 120ms"},
	} {
		e.resetStore()
		e.failFirstGet(img.Layers[0].Digest)
		s, r := e.herdWithConf([]string{"CONTAINERS_CONF=" + conf}, append(c.flags, img.Ref)...)
		got := onlyImage(t, s, r)
		if r.code != 0 || got.Attempts != 2 {
			t.Fatalf("%s: exit %d, attempts %d (%s); want the image pulled on its 2nd attempt\n%s", c.name, r.code, got.Attempts, got.Error, r.stderr)
		}
		if n := strings.Count(r.stderr, "retrying in"); n != 1 || !strings.Contains(r.stderr, c.want) {
			t.Errorf("%s: want one retry logged with %q, got %d:\n%s", c.name, c.want, n, r.stderr)
		}
	}
}

// Test 3: image_parallel_copies bounds the blob copies in flight, as --jobs
// does: observed at the registry as the most layer GETs open at once, each
// held open 100 ms so that copies allowed to overlap do. 0 (or no setting)
// is herd's own default, and --jobs wins over the setting.
func TestContainersConfParallelCopies(t *testing.T) {
	e := newEnv(t, testregistry.Options{})
	var images []testimage.Pushed
	for i := range 3 {
		layers := []testimage.Layer{ownLayer(int64(1310 + 2*i)), ownLayer(int64(1311 + 2*i))}
		images = append(images, e.push(fmt.Sprintf("conf-jobs%d:1", i), testimage.Image{Layers: layers}, "gzip"))
	}
	var mu sync.Mutex
	open, most := 0, 0
	layers := map[digest.Digest]bool{}
	for _, p := range images {
		for _, l := range p.Layers {
			layers[l.Digest] = true
		}
	}
	e.reg.SetBlobHook(func(w http.ResponseWriter, req *http.Request, d digest.Digest) bool {
		if !layers[d] {
			return false // configs: not layer copies
		}
		mu.Lock()
		open++
		most = max(most, open)
		mu.Unlock()
		time.Sleep(100 * time.Millisecond)
		mu.Lock()
		open--
		mu.Unlock()
		return false // then served as usual
	})
	none := e.conf("none.conf", "[engine]\nimage_parallel_copies = 0\n")
	one := e.conf("one.conf", "[engine]\nimage_parallel_copies = 1\n")

	for _, c := range []struct {
		name    string
		conf    string
		flags   []string
		atMost1 bool
	}{
		{"image_parallel_copies = 0 (herd's default, 6)", none, nil, false},
		{"image_parallel_copies = 1", one, nil, true},
		{"--jobs 3 over image_parallel_copies = 1", one, []string{"--jobs", "3"}, false},
	} {
		e.resetStore()
		mu.Lock()
		most = 0
		mu.Unlock()
		s, r := e.herdWithConf([]string{"CONTAINERS_CONF=" + c.conf}, append(c.flags, refs(images...)...)...)
		if r.code != 0 || s.Totals.OK != len(images) {
			t.Fatalf("%s: exit %d, %d of %d images pulled\n%s", c.name, r.code, s.Totals.OK, len(images), r.stderr)
		}
		mu.Lock()
		peak := most
		mu.Unlock()
		t.Logf("%s: at most %d layer GETs open at once", c.name, peak)
		if c.atMost1 && peak != 1 {
			t.Errorf("%s: %d layer GETs open at once, want 1", c.name, peak)
		}
		if !c.atMost1 && peak < 2 {
			t.Errorf("%s: never more than %d layer GET open at once: the setting bounded copies it should not", c.name, peak)
		}
	}
}

// Test 4: image_copy_tmp_dir is where herd makes its run's directory for big
// temporary files (seen in the middle of a blob's transfer); $TMPDIR wins
// over it, as in podman; "storage" is tmp/ in the store's graph root.
func TestContainersConfImageCopyTmpDir(t *testing.T) {
	e := newEnv(t, testregistry.Options{})
	img := retryImage(e, "conf-tmp:1", 1320)
	confDir, tmpdir := filepath.Join(e.dir, "conf-tmp"), filepath.Join(e.dir, "env-tmp")
	for _, d := range []string{confDir, tmpdir} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	path := e.conf("path.conf", "[engine]\nimage_copy_tmp_dir = \""+confDir+"\"\n")
	storage := e.conf("storage.conf", "[engine]\nimage_copy_tmp_dir = \"storage\"\n")

	for _, c := range []struct {
		name    string
		environ []string
		where   func() string // where the run's directory must be
	}{
		{"a path", []string{"CONTAINERS_CONF=" + path}, func() string { return confDir }},
		{"TMPDIR over the path", []string{"CONTAINERS_CONF=" + path, "TMPDIR=" + tmpdir}, func() string { return tmpdir }},
		{"storage", []string{"CONTAINERS_CONF=" + storage}, func() string { return filepath.Join(e.root, "tmp") }},
	} {
		e.resetStore()
		want := c.where()
		// The run's directory exists while a blob is fetched: look then,
		// in every candidate.
		var (
			mu     sync.Mutex
			looked bool
			seen   []string
		)
		e.reg.SetBlobHook(func(w http.ResponseWriter, req *http.Request, d digest.Digest) bool {
			mu.Lock()
			defer mu.Unlock()
			if d == img.Layers[0].Digest && !looked {
				looked = true
				for _, dir := range []string{confDir, tmpdir, filepath.Join(e.root, "tmp")} {
					m, _ := filepath.Glob(filepath.Join(dir, "herd-*"))
					seen = append(seen, m...)
				}
			}
			return false
		})
		s, r := e.herdWithConf(c.environ, img.Ref)
		if r.code != 0 || s.Totals.OK != 1 {
			t.Fatalf("%s: exit %d\n%s", c.name, r.code, r.stderr)
		}
		mu.Lock()
		if !looked {
			t.Fatalf("%s: the layer was never fetched", c.name)
		}
		if len(seen) != 1 || filepath.Dir(seen[0]) != want {
			t.Errorf("%s: run directories seen during the run: %v; want one, in %s", c.name, seen, want)
		}
		mu.Unlock()
		if left := herdTempDirs(t, want); len(left) != 0 {
			t.Errorf("%s: left behind: %v", c.name, left)
		}
	}
}

// Test 5: CONTAINERS_CONF_OVERRIDE is read after CONTAINERS_CONF, and its
// values win.
func TestContainersConfOverride(t *testing.T) {
	e := newEnv(t, testregistry.Options{})
	img := retryImage(e, "conf-override:1", 1330)
	conf := e.conf("containers.conf", "[engine]\nretry = 0\nretry_delay = \"250ms\"\n")
	override := e.conf("override.conf", "[engine]\nretry = 1\nretry_delay = \"150ms\"\n")

	e.failFirstGet(img.Layers[0].Digest)
	s, r := e.herdWithConf([]string{"CONTAINERS_CONF=" + conf, "CONTAINERS_CONF_OVERRIDE=" + override}, img.Ref)
	got := onlyImage(t, s, r)
	if r.code != 0 || got.Attempts != 2 {
		t.Fatalf("exit %d, attempts %d (%s); want the override's retry = 1 to pull the image on its 2nd attempt\n%s", r.code, got.Attempts, got.Error, r.stderr)
	}
	if !strings.Contains(r.stderr, "retrying in 150ms") {
		t.Errorf("the retry did not wait the override's 150ms:\n%s", r.stderr)
	}
}

// Test 6: a containers.conf that does not parse, or with a value herd cannot
// use, stops herd before it pulls anything: exit 125, with an error that
// names the file (on standard error, and in the JSON summary).
func TestContainersConfBad(t *testing.T) {
	e := newEnv(t, testregistry.Options{})
	img := retryImage(e, "conf-bad:1", 1340)
	for _, c := range []struct {
		name, content, says string
	}{
		{"does not parse", "[engine]\nretry = \"three\"\n", "engine.retry"},
		{"not TOML", "[engine\n", "toml"},
		{"retry_delay not a duration", "[engine]\nretry_delay = \"soon\"\n", `retry_delay "soon"`},
		{"relative image_copy_tmp_dir", "[engine]\nimage_copy_tmp_dir = \"tmp\"\n", "relative"},
	} {
		conf := e.conf(strings.ReplaceAll(c.name, " ", "-")+".conf", c.content)
		s, r := e.herdWithConf([]string{"CONTAINERS_CONF=" + conf}, img.Ref)
		wantStatus(t, r, c.name, 125, conf, c.says)
		if !strings.Contains(s.Error, conf) || len(s.Images) != 0 {
			t.Errorf("%s: the JSON summary's error %q does not name %s, or it lists images", c.name, s.Error, conf)
		}
	}
	if n := e.reg.ManifestGets("conf-bad", "1"); n != 0 {
		t.Errorf("the registry was asked for the manifest %d times: herd went on past a bad containers.conf", n)
	}
}
