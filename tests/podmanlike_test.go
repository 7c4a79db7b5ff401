package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	digest "github.com/opencontainers/go-digest"

	"github.com/herd-project/herd/cmd"
	"github.com/herd-project/herd/progress"
	"github.com/herd-project/herd/tests/internal/testimage"
	"github.com/herd-project/herd/tests/internal/testregistry"
)

// Issue 12: herd behaves like podman pull where scripts depend on it.

// Item 1: each reference's manifest is fetched once per run, and the image
// stored is the digest herd resolved even if the tag moves between
// resolving and pulling.
func TestManifestReadOnceAndTagPinned(t *testing.T) {
	e := newEnv(t, testregistry.Options{})
	a := e.push("moving:1", testimage.Image{Layers: []testimage.Layer{baseLayer, ownLayer(71)}}, "gzip")
	other := testimage.Image{Layers: []testimage.Layer{baseLayer, ownLayer(72)}}
	e.reg.ResetCounters()

	// The first blob request comes after resolving: move the tag then.
	var moved atomic.Bool
	var moveErr atomic.Value
	e.reg.SetBlobHook(func(w http.ResponseWriter, req *http.Request, d digest.Digest) bool {
		if moved.CompareAndSwap(false, true) {
			if _, err := e.pusher.Push(context.Background(), "moving:1", other, "gzip"); err != nil {
				moveErr.Store(err)
			}
		}
		return false
	})
	s, r := e.summary("-j", "4", a.Ref)
	e.reg.SetBlobHook(nil)
	if err, _ := moveErr.Load().(error); err != nil {
		t.Fatalf("moving the tag: %v", err)
	}
	if r.code != 0 {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
	if got := e.reg.ManifestGets("moving", "1"); got != 1 {
		t.Errorf("the manifest of moving:1 was fetched %d times, want once", got)
	}
	if got := e.reg.ManifestGets("moving", a.ManifestDigest.String()); got != 0 {
		t.Errorf("the manifest was fetched again by digest %d times", got)
	}
	if s.Images[0].Digest != a.ManifestDigest.String() {
		t.Errorf("summary digest %s, want the resolved %s", s.Images[0].Digest, a.ManifestDigest)
	}
	e.verifyImage(a) // the layers (diff_ids) of the image herd resolved, not of the one the tag moved to
	img, err := e.store().Image(a.Ref)
	if err != nil {
		t.Fatal(err)
	}
	if img.Digest != a.ManifestDigest {
		t.Errorf("stored image has manifest digest %s, want %s", img.Digest, a.ManifestDigest)
	}
	if !moved.Load() {
		t.Error("the tag was never moved: the test did not exercise its case")
	}
}

// Item 2: NAME:TAG@DIGEST pulls the digest, as podman does, and the digest
// is printed once.
func TestTagAndDigestPullsTheDigest(t *testing.T) {
	e := newEnv(t, testregistry.Options{})
	a := e.push("both:1", testimage.Image{Layers: []testimage.Layer{baseLayer, ownLayer(73)}}, "gzip")
	input := a.Ref + "@" + a.ManifestDigest.String()
	r := e.herd(input)
	if r.code != 0 {
		t.Fatalf("herd pull %s: exit %d\n%s", input, r.code, r.stderr)
	}
	if strings.Contains(r.stderr, "@"+a.ManifestDigest.String()+"@") {
		t.Errorf("the digest is printed twice:\n%s", r.stderr)
	}
	byDigest := strings.TrimSuffix(a.Ref, ":1") + "@" + a.ManifestDigest.String()
	img, err := e.store().Image(byDigest)
	if err != nil {
		t.Fatalf("the store has no image %s: %v\n%s", byDigest, err, r.stderr)
	}
	if img.Digest != a.ManifestDigest {
		t.Errorf("stored manifest digest %s, want %s", img.Digest, a.ManifestDigest)
	}
	if strings.TrimSpace(r.stdout) != img.ID {
		t.Errorf("stdout %q, want the image ID %s", r.stdout, img.ID)
	}
}

// Item 3: a platform mismatch warns as podman does, and the JSON summary has
// the platform pulled, for a single-platform image too.
func TestPlatformMismatchWarns(t *testing.T) {
	e := newEnv(t, testregistry.Options{})
	a := e.push("single:1", testimage.Image{Layers: []testimage.Layer{baseLayer, ownLayer(74)},
		Platform: testimage.Platform{OS: "linux", Arch: "amd64"}}, "gzip")
	const warning = "does not match the expected platform"

	s, r := e.summary("--os", "linux", "--arch", "amd64", a.Ref)
	if r.code != 0 || strings.Contains(r.stderr, warning) {
		t.Fatalf("pulling amd64 for amd64: exit %d, or a warning:\n%s", r.code, r.stderr)
	}
	if s.Images[0].Platform != "linux/amd64" {
		t.Errorf("summary platform %q, want linux/amd64", s.Images[0].Platform)
	}

	e.resetStore()
	s, r = e.summary("--arch", "arm64", a.Ref)
	if r.code != 0 {
		t.Fatalf("exit %d (podman pulls it and warns)\n%s", r.code, r.stderr)
	}
	if !strings.Contains(r.stderr, a.Ref+": image platform (linux/amd64) "+warning+" (linux/arm64)") {
		t.Errorf("no warning naming the image and both platforms:\n%s", r.stderr)
	}
	if s.Images[0].Platform != "linux/amd64" {
		t.Errorf("summary platform %q, want the platform pulled, linux/amd64", s.Images[0].Platform)
	}
}

// Item 4: exit statuses tell "could not start" (125) and usage errors (2)
// from failed images (1), and with --format json every run past flag
// parsing prints one JSON document.
func TestExitStatusesAndJSONOnStartFailure(t *testing.T) {
	e := newEnv(t, testregistry.Options{})
	a := e.push("status:1", testimage.Image{Layers: []testimage.Layer{ownLayer(75)}}, "gzip")
	cases := []struct {
		name string
		args []string
		code int
		says string
		json bool // reaches the pull command's own checks
	}{
		{"unknown command", []string{"pul", a.Ref}, 2, `unknown command "pul"`, false},
		{"unknown flag", []string{"pull", "--no-such-flag", a.Ref}, 2, "unknown flag", false},
		{"bad flag value", []string{"pull", "--jobs", "0", a.Ref}, 2, "--jobs", true},
		{"no image", []string{"pull"}, 2, "no images to pull", true},
		{"malformed reference", []string{"pull", "UPPER/Case:tag", a.Ref}, 2, `"UPPER/Case:tag" is not an image reference`, true},
		{"malformed reference in a file", []string{"pull", "--file", "-"}, 2, `"alpine:" is not an image reference`, true},
		{"unknown completion shell", []string{"completion", "tcsh"}, 2, "tcsh", false},
		{"bogus storage driver", []string{"pull", "--storage-driver", "bogus", a.Ref}, 125, "bogus", true},
		{"bad storage option", []string{"pull", "--storage-opt", "no.such.option=1", a.Ref}, 125, "no.such.option", true},
		{"missing policy", []string{"pull", "--signature-policy", "/nonexistent/policy.json", a.Ref}, 125, "no signature policy", true},
		{"a missing image", []string{"pull", a.Ref, strings.Replace(a.Ref, "status:1", "status:2", 1)}, 1, "status:2", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			args := c.args
			if args[0] == "pull" {
				// The env's store, registries.conf and TLS flags; its
				// policy too, unless the case gives its own.
				flags := append(e.storeArgs(), "--registries-conf", e.regconf, "--tls-verify=false")
				if !slices.Contains(args, "--signature-policy") {
					flags = append(flags, "--signature-policy", e.policy)
				}
				if c.name == "bogus storage driver" {
					flags = slices.DeleteFunc(flags, func(f string) bool { return f == "--storage-driver" || f == e.driver })
				}
				args = append([]string{"pull", "--format", "json"}, append(flags, args[1:]...)...)
			}
			var stdout, stderr bytes.Buffer
			code := cmd.ExecuteContext(t.Context(), args, cmd.IO{Stdin: strings.NewReader("alpine:\n"), Stdout: &stdout, Stderr: &stderr})
			if code != c.code || !strings.Contains(stderr.String(), c.says) {
				t.Errorf("exit %d, want %d, with standard error saying %q:\n%s", code, c.code, c.says, stderr.String())
			}
			if !c.json {
				return
			}
			var s progress.Summary
			if err := json.Unmarshal(stdout.Bytes(), &s); err != nil {
				t.Fatalf("standard output is not one JSON document: %v\n%s", err, stdout.String())
			}
			if s.HerdVersion == "" {
				t.Error("the summary does not say which herd wrote it")
			}
			if c.code != 1 && (s.Error == "" || !strings.Contains(s.Error, c.says) || len(s.Images) != 0) {
				t.Errorf("summary error %q with %d images, want the start-up error and no images", s.Error, len(s.Images))
			}
		})
	}
}

// Item 5: --quiet prints one ID per input, in input order, as podman does.
func TestQuietPrintsOneLinePerInput(t *testing.T) {
	e := newEnv(t, testregistry.Options{})
	a := e.push("quiet-a:1", testimage.Image{Layers: []testimage.Layer{ownLayer(76)}}, "gzip")
	b := e.push("quiet-b:1", testimage.Image{Layers: []testimage.Layer{ownLayer(77)}}, "gzip")
	byDigest := strings.TrimSuffix(a.Ref, ":1") + "@" + a.ManifestDigest.String()
	r := e.herd("-q", byDigest, b.Ref, a.Ref)
	if r.code != 0 {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
	s := e.store()
	var want []string
	for _, ref := range []string{byDigest, b.Ref, a.Ref} {
		img, err := s.Image(ref)
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, img.ID)
	}
	if got := strings.Fields(r.stdout); !slices.Equal(got, want) {
		t.Errorf("herd -q printed %q, want one ID per input in order %q", got, want)
	}
	if r.stderr != "" {
		t.Errorf("herd -q wrote to standard error:\n%s", r.stderr)
	}
}

// Item 6: herd version and --version, stamped by the build as make build
// does, and the version in the User-Agent.
func TestVersion(t *testing.T) {
	// The library versions come from a binary's build information, which a
	// test binary lacks: build herd, with this test binary's build tags.
	tags := ""
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, s := range info.Settings {
			if s.Key == "-tags" {
				tags = s.Value
			}
		}
	}
	bin := filepath.Join(t.TempDir(), "herd")
	build := exec.Command("go", "build", "-tags", tags, "-ldflags", "-X github.com/herd-project/herd/cmd.version=1.2.3-test -X github.com/herd-project/herd/cmd.commit=abc123",
		"-o", bin, "github.com/herd-project/herd")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building herd: %v\n%s", err, out)
	}
	for _, arg := range []string{"version", "--version"} {
		out, err := exec.Command(bin, arg).Output()
		if err != nil {
			t.Fatalf("herd %s: %v", arg, err)
		}
		for _, w := range []string{"herd version 1.2.3-test\n", "commit: abc123\n", "go: go1.", "containers/image: v5.", "containers/storage: v1."} {
			if !strings.Contains(string(out), w) {
				t.Errorf("herd %s does not print %q:\n%s", arg, w, out)
			}
		}
	}
	e := newEnv(t, testregistry.Options{})
	a := e.push("agent:1", testimage.Image{Layers: []testimage.Layer{ownLayer(78)}}, "gzip")
	var agent atomic.Value
	e.reg.SetBlobHook(func(w http.ResponseWriter, req *http.Request, d digest.Digest) bool {
		agent.Store(req.UserAgent())
		return false
	})
	if r := e.herd(a.Ref); r.code != 0 {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
	if got, _ := agent.Load().(string); got != "herd/"+cmd.Version() {
		t.Errorf("User-Agent %q, want herd/%s", got, cmd.Version())
	}
}

// Item 7: usage is checked before the user-namespace re-exec, so a rootless
// user's mistake gets the usage error alone (here a user with no passwd
// entry and no subordinate ids, for whom the re-exec can only complain).
func TestRootlessUsageErrorComesFirst(t *testing.T) {
	needRoot(t, "running herd as another user")
	home := t.TempDir()
	const uid = 54321
	if err := os.Chown(home, uid, uid); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Dir(home), 0o755); err != nil {
		t.Fatal(err)
	}
	c := exec.Command(herdBinary(t), "pull")
	c.Dir = home
	c.Env = []string{"HOME=" + home, "XDG_RUNTIME_DIR=" + home, "PATH=/usr/bin:/bin", asHerdEnv + "=1"}
	c.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid, Groups: []uint32{}}}
	var stderr bytes.Buffer
	c.Stderr = &stderr
	err := c.Run()
	code := c.ProcessState.ExitCode()
	if code != 2 || stderr.String() != "Error: no images to pull: give at least one IMAGE or --file\nSee 'herd pull --help'.\n" {
		t.Errorf("herd pull with no image as uid %d: %v (exit %d), standard error:\n%s", uid, err, code, stderr.String())
	}
}

// Item 7: a failed manifest read counts its attempts, and each retry is one
// line that names the input and the cause.
func TestManifestRetriesNamedOnce(t *testing.T) {
	e := newEnv(t, testregistry.Options{})
	missing := e.reg.Host + "/nowhere:1"
	var gets atomic.Int32
	e.reg.SetManifestHook(func(w http.ResponseWriter, req *http.Request) bool {
		gets.Add(1)
		http.Error(w, "injected", http.StatusServiceUnavailable)
		return true
	})
	s, r := e.summary("--retry", "2", "--retry-delay", "10ms", missing)
	if r.code != 1 || len(s.Images) != 1 {
		t.Fatalf("exit %d with %d images\n%s", r.code, len(s.Images), r.stderr)
	}
	if got := s.Images[0].Attempts; got != 3 {
		t.Errorf("attempts %d, want 3 (1 and 2 retries)", got)
	}
	var retryLines []string
	for _, line := range strings.Split(r.stderr, "\n") {
		if strings.Contains(line, "retry") {
			retryLines = append(retryLines, line)
		}
	}
	if len(retryLines) != 2 {
		t.Errorf("%d lines about retries, want one per retry (2):\n%s", len(retryLines), r.stderr)
	}
	for _, line := range retryLines {
		if !strings.Contains(line, missing) || !strings.Contains(line, "503") {
			t.Errorf("retry line does not name the input and the cause: %s", line)
		}
	}
}
