package tests

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/herd-project/herd/progress"
	"github.com/herd-project/herd/tests/internal/testimage"
	"github.com/herd-project/herd/tests/internal/testregistry"
)

// rootlessUserName is the unprivileged user the rootless test creates (once
// per machine) and runs herd and podman as.
const rootlessUserName = "herd-rootless"

// unprivilegedUser is the rootless test user, created with a home
// directory and subordinate uid and gid ranges if it does not exist yet.
type unprivilegedUser struct {
	uid, gid   int
	home       string
	runtimeDir string // its XDG_RUNTIME_DIR: there is no logind to make one
}

func newUnprivilegedUser(t *testing.T, tools map[string]string) *unprivilegedUser {
	t.Helper()
	u, err := user.Lookup(rootlessUserName)
	if err != nil {
		if out, err := exec.Command(tools["useradd"], "--create-home", "--shell", "/bin/sh", rootlessUserName).CombinedOutput(); err != nil {
			t.Fatalf("useradd %s: %v\n%s", rootlessUserName, err, out)
		}
		if u, err = user.Lookup(rootlessUserName); err != nil {
			t.Fatal(err)
		}
	}
	// Debian's useradd allocates subordinate ranges itself (SUB_UID_COUNT
	// in login.defs); elsewhere add 65536 after the highest range in use.
	for _, f := range []struct{ file, flag string }{{"/etc/subuid", "--add-subuids"}, {"/etc/subgid", "--add-subgids"}} {
		has, next := subordinateRanges(t, f.file, rootlessUserName)
		if has {
			continue
		}
		rng := fmt.Sprintf("%d-%d", next, next+65535)
		if out, err := exec.Command(tools["usermod"], f.flag, rng, rootlessUserName).CombinedOutput(); err != nil {
			t.Fatalf("usermod %s %s %s: %v\n%s", f.flag, rng, rootlessUserName, err, out)
		}
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	ru := &unprivilegedUser{uid: uid, gid: gid, home: u.HomeDir}

	runtimeDir, err := os.MkdirTemp("", "herd-rootless-run-")
	if err != nil {
		t.Fatal(err)
	}
	ru.runtimeDir = runtimeDir
	if err := os.Chown(runtimeDir, uid, gid); err != nil {
		t.Fatal(err)
	}
	// The store and configuration are the test's: start and end without them.
	ru.stopPause()
	ru.clean(t)
	t.Cleanup(func() {
		ru.stopPause()
		ru.clean(t)
		os.RemoveAll(runtimeDir)
	})
	return ru
}

// subordinateRanges reports whether name has a range in file, and the
// first id after every range there (at least 100000).
func subordinateRanges(t *testing.T, file, name string) (has bool, next int) {
	next = 100000
	f, err := os.Open(file)
	if os.IsNotExist(err) {
		return false, next
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		parts := strings.Split(strings.TrimSpace(sc.Text()), ":")
		if len(parts) != 3 {
			continue
		}
		if parts[0] == name {
			has = true
		}
		start, err1 := strconv.Atoi(parts[1])
		count, err2 := strconv.Atoi(parts[2])
		if err1 == nil && err2 == nil && start+count > next {
			next = start + count
		}
	}
	return has, next
}

func (u *unprivilegedUser) clean(t *testing.T) {
	for _, d := range []string{".local/share/containers", ".config/containers", ".cache/containers"} {
		if err := os.RemoveAll(filepath.Join(u.home, d)); err != nil {
			t.Errorf("cleaning the rootless user's %s: %v", d, err)
		}
	}
	for _, prefix := range []string{"podman-run-", "containers-user-", "storage-run-"} {
		if err := os.RemoveAll(u.tmpDir(prefix)); err != nil {
			t.Errorf("cleaning the rootless user's run-time state: %v", err)
		}
	}
}

// stopPause ends the pause process rootless podman leaves behind to keep
// its user namespace, found by the pid it records in XDG_RUNTIME_DIR or,
// when that is unset, in /tmp/podman-run-UID.
func (u *unprivilegedUser) stopPause() {
	for _, dir := range []string{u.runtimeDir, u.tmpDir("podman-run-")} {
		b, err := os.ReadFile(filepath.Join(dir, "libpod", "tmp", "pause.pid"))
		if err != nil {
			continue
		}
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 1 {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// tmpDir is /tmp/PREFIXUID, where podman (podman-run-, containers-user-)
// and containers/storage (storage-run-) keep run-time state of a user
// without XDG_RUNTIME_DIR.
func (u *unprivilegedUser) tmpDir(prefix string) string {
	return filepath.Join(os.TempDir(), prefix+strconv.Itoa(u.uid))
}

// write writes a file the user owns (and the directories to it under home).
func (u *unprivilegedUser) write(t *testing.T, rel, content string) {
	t.Helper()
	path := filepath.Join(u.home, rel)
	write(t, path, content)
	for p := path; p != u.home && strings.HasPrefix(p, u.home); p = filepath.Dir(p) {
		if err := os.Chown(p, u.uid, u.gid); err != nil {
			t.Fatal(err)
		}
	}
}

// command runs name as the user, in its home, with a login-like environment.
func (u *unprivilegedUser) command(name string, stdin string, extraEnv []string, args ...string) *exec.Cmd {
	c := exec.Command(name, args...)
	c.Dir = u.home
	c.Env = append([]string{
		"HOME=" + u.home, "USER=" + rootlessUserName, "LOGNAME=" + rootlessUserName,
		"PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
		"XDG_RUNTIME_DIR=" + u.runtimeDir,
	}, extraEnv...)
	c.Stdin = strings.NewReader(stdin)
	c.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(u.uid), Gid: uint32(u.gid), Groups: []uint32{}}}
	return c
}

// Issue 5, test 7: an unprivileged user with subordinate ids runs herd with
// no store flags. herd re-executes itself in a user namespace as podman
// does, reads the user's registries.conf, policy.json and storage.conf
// (driver = "overlay" and nothing else), reads the image list from standard
// input (read by the re-executed herd), and pulls into the user's default
// store with native overlay; podman, run as that user, lists the image.
// (TestRootlessPullIntoPodmansStore is the same user with no storage.conf.)
func TestRootlessPull(t *testing.T) {
	needRoot(t, "creating the unprivileged user")
	tools := needTools(t, map[string]string{
		"podman": "podman", "newuidmap": "uidmap", "newgidmap": "uidmap",
		"useradd": "passwd", "usermod": "passwd",
	})
	u := newUnprivilegedUser(t, tools)
	e := newEnv(t, testregistry.Options{})
	img := e.push("rootless/app:1", testimage.Image{Layers: []testimage.Layer{baseLayer, ownLayer(561)}}, "gzip")
	u.write(t, ".config/containers/registries.conf", fmt.Sprintf("[[registry]]\nlocation = %q\ninsecure = true\n", e.reg.Host))
	u.write(t, ".config/containers/policy.json", `{"default": [{"type": "insecureAcceptAnything"}]}`)
	// The user's storage.conf is what herd and podman both read: herd does
	// not ask podman then, and Debian 12's podman uses overlay too.
	u.write(t, ".config/containers/storage.conf", "[storage]\ndriver = \"overlay\"\n")

	c := u.command(herdBinary(t), img.Ref+"\n", []string{asHerdEnv + "=1"}, "pull", "--format", "json", "--file", "-")
	var stdout, stderr bytes.Buffer
	c.Stdout, c.Stderr = &stdout, &stderr
	if err := c.Run(); err != nil {
		t.Fatalf("herd pull as %s: %v\nstderr:\n%s", rootlessUserName, err, stderr.String())
	}
	var s progress.Summary
	if err := json.Unmarshal(stdout.Bytes(), &s); err != nil {
		t.Fatalf("summary: %v\n%s", err, stdout.String())
	}
	if len(s.Images) != 1 || s.Images[0].ImageID != img.ConfigDigest.Encoded() {
		t.Fatalf("rootless herd pulled %+v, want %s with ID %s", s.Images, img.Ref, img.ConfigDigest.Encoded())
	}
	if n := e.layerBytes(img); n == 0 {
		t.Error("the registry served no layer bytes to the rootless pull")
	}

	// The default rootless store, on overlay. storage.conf sets no
	// mount_program (fuse-overlayfs): the overlay driver mounted natively in
	// the user namespace, or it would have failed.
	graphRoot := filepath.Join(u.home, ".local/share/containers/storage")
	images, err := os.ReadFile(filepath.Join(graphRoot, "overlay-images", "images.json"))
	if err != nil {
		t.Fatalf("no overlay image store at the rootless default %s: %v", graphRoot, err)
	}
	if !bytes.Contains(images, []byte(img.ConfigDigest.Encoded())) {
		t.Errorf("%s/overlay-images/images.json does not list image %s", graphRoot, img.ConfigDigest.Encoded())
	}
	// Files that root wrote in the user namespace belong to the user outside it.
	layerDirs, _ := filepath.Glob(filepath.Join(graphRoot, "overlay", "*", "diff"))
	if len(layerDirs) != len(img.Layers) {
		t.Errorf("%d layer directories in the rootless store, want %d", len(layerDirs), len(img.Layers))
	}
	for _, d := range layerDirs {
		if fi, err := os.Stat(d); err == nil && fi.Sys().(*syscall.Stat_t).Uid != uint32(u.uid) {
			t.Errorf("%s is owned by uid %d, want the user's %d (root in its namespace)", d, fi.Sys().(*syscall.Stat_t).Uid, u.uid)
		}
	}

	info := u.command(tools["podman"], "", nil, "info", "--format", "{{.Store.GraphDriverName}} {{.Store.GraphRoot}} {{json .Store.GraphOptions}}")
	var infoErr bytes.Buffer
	info.Stderr = &infoErr
	out, err := info.Output()
	if err != nil {
		t.Fatalf("podman info as %s: %v\n%s", rootlessUserName, err, infoErr.String())
	}
	t.Logf("podman's rootless store: %s", out)
	if !strings.HasPrefix(string(out), "overlay "+graphRoot+" ") {
		t.Errorf("podman's rootless store is %q, want overlay at %s", out, graphRoot)
	}

	list := u.command(tools["podman"], "", nil, "images", "--format", "json")
	out, err = list.Output()
	if err != nil {
		t.Fatalf("podman images as %s: %v", rootlessUserName, err)
	}
	var listed []struct {
		ID    string `json:"Id"`
		Names []string
	}
	if err := json.Unmarshal(out, &listed); err != nil {
		t.Fatalf("podman images: %v\n%s", err, out)
	}
	if len(listed) != 1 || listed[0].ID != img.ConfigDigest.Encoded() || !containsAll(listed[0].Names, img.Ref) {
		t.Errorf("podman images as %s lists %+v, want %s named %s", rootlessUserName, listed, img.ConfigDigest.Encoded(), img.Ref)
	}
}

// Issue 16, item 4: a rootless user with no storage.conf and no
// XDG_RUNTIME_DIR (su, sudo, cron: no logind session), as in the report.
// Left to itself herd's containers/storage would pick overlay and
// /tmp/storage-run-UID, while Debian 12's podman 4.3 picks vfs and
// /tmp/podman-run-UID, and lists nothing herd pulled. herd must pull into
// exactly the store (driver, graph root, run root) the user's podman uses:
// podman lists the image and runs it, as that user.
func TestRootlessPullIntoPodmansStore(t *testing.T) {
	needRoot(t, "creating the unprivileged user")
	tools := needTools(t, map[string]string{
		"podman": "podman", "newuidmap": "uidmap", "newgidmap": "uidmap",
		"useradd": "passwd", "usermod": "passwd", "runc": "runc", "ldd": "libc-bin",
	})
	u := newUnprivilegedUser(t, tools)
	e := newEnv(t, testregistry.Options{})
	const text = "read from the image herd pulled"
	img := e.push("rootless/shell:1", testimage.Image{Layers: []testimage.Layer{shellLayer(t, "etc/herd-test", text), ownLayer(571)}}, "gzip")
	// registries.conf and policy.json for the test registry; no storage.conf.
	u.write(t, ".config/containers/registries.conf", fmt.Sprintf("[[registry]]\nlocation = %q\ninsecure = true\n", e.reg.Host))
	u.write(t, ".config/containers/policy.json", `{"default": [{"type": "insecureAcceptAnything"}]}`)
	as := func(name string, extraEnv []string, args ...string) (stdout, stderr string) {
		t.Helper()
		c := u.command(name, "", extraEnv, args...)
		c.Env = slices.DeleteFunc(c.Env, func(kv string) bool { return strings.HasPrefix(kv, "XDG_RUNTIME_DIR=") })
		var out, errOut bytes.Buffer
		c.Stdout, c.Stderr = &out, &errOut
		if err := c.Run(); err != nil {
			t.Fatalf("%s %s as %s: %v\nstderr:\n%s", filepath.Base(name), strings.Join(args, " "), rootlessUserName, err, errOut.String())
		}
		return out.String(), errOut.String()
	}

	// herd first: the user has never run podman.
	stdout, log := as(herdBinary(t), []string{asHerdEnv + "=1"}, "--log-level", "debug", "pull", "--format", "json", img.Ref)
	s := e.parseSummary(run{stdout: stdout, stderr: log})
	if len(s.Images) != 1 || s.Images[0].ImageID != img.ConfigDigest.Encoded() {
		t.Fatalf("rootless herd pulled %+v, want %s with ID %s", s.Images, img.Ref, img.ConfigDigest.Encoded())
	}

	var info struct {
		Store struct{ GraphDriverName, GraphRoot, RunRoot string }
	}
	if out, _ := as(tools["podman"], nil, "info", "--format", "json"); json.Unmarshal([]byte(out), &info) != nil {
		t.Fatalf("podman info --format json: %s", out)
	}
	st := info.Store
	t.Logf("the rootless user's podman uses driver %s, graph root %s, run root %s", st.GraphDriverName, st.GraphRoot, st.RunRoot)
	// herd says which store it opened (at debug level) ...
	if want := fmt.Sprintf("driver %s, graph root %s, run root %s", st.GraphDriverName, st.GraphRoot, st.RunRoot); !strings.Contains(log, want) {
		t.Errorf("herd did not report using podman's store (%q); its log:\n%s", want, log)
	}
	// ... and the image is there: the image store of podman's driver under
	// podman's graph root lists it.
	images, err := os.ReadFile(filepath.Join(st.GraphRoot, st.GraphDriverName+"-images", "images.json"))
	if err != nil || !bytes.Contains(images, []byte(img.ConfigDigest.Encoded())) {
		t.Errorf("podman's %s image store under %s does not list %s (%v)", st.GraphDriverName, st.GraphRoot, img.ConfigDigest.Encoded(), err)
	}

	var listed []struct {
		ID    string `json:"Id"`
		Names []string
	}
	if out, _ := as(tools["podman"], nil, "images", "--format", "json"); json.Unmarshal([]byte(out), &listed) != nil {
		t.Fatalf("podman images --format json: %s", out)
	}
	if len(listed) != 1 || listed[0].ID != img.ConfigDigest.Encoded() || !containsAll(listed[0].Names, img.Ref) {
		t.Fatalf("podman images as %s lists %+v, want %s named %s", rootlessUserName, listed, img.ConfigDigest.Encoded(), img.Ref)
	}

	// Rootless podman runs it: runc (crun 1.8 fails on this cgroup v1
	// layout) and no network (slirp4netns needs /dev/net/tun).
	got, _ := as(tools["podman"], nil, "run", "--rm", "--runtime", "runc", "--net=none", img.ConfigDigest.Encoded(),
		"/bin/sh", "-c", `read -r line < /etc/herd-test && echo "$line"`)
	if strings.TrimSpace(got) != text {
		t.Errorf("podman run of herd's image printed %q, want %q", got, text)
	}
}

// shellLayer holds the host's /bin/sh and the libraries ldd names for it,
// which is enough for `podman run IMAGE /bin/sh -c ...`, and a text file at
// path for the shell to read.
func shellLayer(t *testing.T, path, text string) testimage.Layer {
	t.Helper()
	sh, err := os.ReadFile("/bin/sh")
	if err != nil {
		t.Fatal(err)
	}
	l := testimage.Layer{Files: []testimage.File{{Path: "bin/sh", Data: sh, Mode: 0o755}, {Path: path, Data: []byte(text + "\n")}}}
	out, err := exec.Command("ldd", "/bin/sh").Output()
	if err != nil {
		t.Fatalf("ldd /bin/sh: %v", err)
	}
	// "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)", "/lib64/ld-linux-x86-64.so.2 (0x...)"
	for _, f := range strings.Fields(string(out)) {
		if filepath.IsAbs(f) {
			data, err := os.ReadFile(f) // through symbolic links: the image gets files
			if err != nil {
				t.Fatal(err)
			}
			l.Files = append(l.Files, testimage.File{Path: strings.TrimPrefix(f, "/"), Data: data, Mode: 0o755})
		}
	}
	return l
}
