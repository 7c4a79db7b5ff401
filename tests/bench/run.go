package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.podman.io/storage"
	storagetypes "go.podman.io/storage/types"
	"golang.org/x/sys/unix"

	"github.com/herd-project/herd/tests/bench/launcher"
	"github.com/herd-project/herd/tests/internal/testimage"
	"github.com/herd-project/herd/tests/internal/testregistry"
	"github.com/herd-project/herd/tests/internal/teststore"
)

// program is an executable to run as a contender, with extra environment
// (the smoke test runs its own binary as herd and as plaincopy).
type program struct {
	path string
	env  []string
}

// contender is one way of pulling a set: herd or the plain copy.Image
// baseline at a -j, or podman (whose concurrency is containers/image's
// default of 6 blob copies per image, with no limit across images).
type contender struct {
	name string // herd…, plaincopy, plaincopy-seq, podman-one-call, podman-per-image
	jobs int    // 0 for podman
}

func (c contender) String() string {
	if c.jobs == 0 {
		return c.name
	}
	return fmt.Sprintf("%s -j %d", c.name, c.jobs)
}

// measurement is one run of one contender on a fresh store.
type measurement struct {
	Wall   time.Duration `json:"wall"`
	Served int64         `json:"servedLayerBytes"` // layer blob body bytes, counted by the registry
	CPU    time.Duration `json:"cpu"`              // user+system, the process and its reaped children (layer-applying re-execs)
	RSS    int64         `json:"peakRSS"`          // bytes; for several processes the sum of their peaks
	Floor  int64         `json:"rssFloor"`         // bytes: a peak RSS this low or lower cannot be read (package bench/launcher)
	// AtFloor is set when some process's peak was no higher than Floor: its
	// real peak is that or lower.
	AtFloor bool   `json:"rssAtFloor,omitempty"`
	Err     string `json:"error,omitempty"`
}

// runner runs contenders against one registry.
type runner struct {
	cfg     *config
	reg     *testregistry.Registry
	regConf string // registries.conf marking reg insecure
}

func newRunner(cfg *config, reg *testregistry.Registry) (*runner, error) {
	r := &runner{cfg: cfg, reg: reg, regConf: filepath.Join(cfg.work, fmt.Sprintf("registries-%s.conf", strings.ReplaceAll(reg.Host, ":", "-")))}
	conf := fmt.Sprintf("[[registry]]\nlocation = %q\ninsecure = true\n", reg.Host)
	return r, os.WriteFile(r.regConf, []byte(conf), 0o644)
}

// measure pulls images with c into a fresh store and removes it afterwards.
// seed, if any, is pulled by herd into that store first, untimed. With
// summary set, herd (contender herd only) writes its JSON summary there.
func (r *runner) measure(ctx context.Context, c contender, images, seed []testimage.Pushed, summary string) measurement {
	dir, err := os.MkdirTemp(r.cfg.work, "run-")
	if err != nil {
		return measurement{Err: err.Error()}
	}
	defer r.remove(dir)
	root, tmp := filepath.Join(dir, "storage"), filepath.Join(dir, "tmp")
	if err := os.Mkdir(tmp, 0o755); err != nil {
		return measurement{Err: err.Error()}
	}
	runroot, err := runRoot(dir)
	if err != nil {
		return measurement{Err: err.Error()}
	}
	if runroot != filepath.Join(dir, "run") {
		defer r.remove(runroot)
	}
	refs := r.refs(images)
	// Every contender reads the same storage.conf (partial pulls on) and
	// registries.conf, and keeps big temporary files in the run's directory.
	env := append(os.Environ(), "TMPDIR="+tmp, "CONTAINERS_STORAGE_CONF="+r.cfg.storageConf, "CONTAINERS_REGISTRIES_CONF="+r.regConf)

	var cmds []launcher.Cmd
	command := func(p program, args ...string) launcher.Cmd {
		return launcher.Cmd{Path: p.path, Args: args, Env: append(slices.Clone(env), p.env...)}
	}
	storeFlags := []string{"--root", root, "--runroot", runroot, "--storage-driver", r.cfg.driver}
	herdArgs := func(jobs int) []string {
		args := append([]string{"pull", "--quiet", "-j", strconv.Itoa(jobs)}, storeFlags...)
		return append(args, "--signature-policy", r.cfg.policy, "--registries-conf", r.regConf, "--tls-verify=false")
	}
	if len(seed) > 0 {
		pre := exec.CommandContext(ctx, r.cfg.herd.path, append(herdArgs(4), r.refs(seed)...)...)
		pre.Env = append(slices.Clone(env), r.cfg.herd.env...)
		if out, err := pre.CombinedOutput(); err != nil {
			return measurement{Err: fmt.Sprintf("pre-seeding the store: %v: %s", err, launcher.LastLines(string(out), 5))}
		}
	}
	switch c.name {
	case "herd", "herd-preseeded":
		cmd := command(r.cfg.herd, append(herdArgs(c.jobs), refs...)...)
		if summary != "" && c.name == "herd" {
			// Still --quiet: no progress on standard error, as in every
			// other run; the summary replaces the IDs on standard output.
			cmd.Args = append([]string{"pull", "--format", "json"}, cmd.Args[1:]...)
			cmd.Stdout = summary
		}
		cmds = append(cmds, cmd)
	case "herd-before":
		cmds = append(cmds, command(r.cfg.herdBefore, append(herdArgs(c.jobs), refs...)...))
	case "herd-2proc", "herd-2proc-nolocks":
		for range 2 {
			cmd := command(r.cfg.herd, append(herdArgs(c.jobs), refs...)...)
			if c.name == "herd-2proc-nolocks" {
				cmd.Env = append(cmd.Env, "HERD_BLOB_LOCKS=off")
			}
			cmds = append(cmds, cmd)
		}
	case "plaincopy", "plaincopy-seq":
		args := []string{"-root", root, "-runroot", runroot, "-storage-driver", r.cfg.driver,
			"-policy", r.cfg.policy, "-j", strconv.Itoa(c.jobs), "-tls-verify=false"}
		if c.name == "plaincopy-seq" {
			args = append(args, "-sequential")
		}
		cmds = append(cmds, command(r.cfg.plaincopy, append(args, refs...)...))
	case "podman-one-call", "podman-per-image":
		global := append(slices.Clone(storeFlags), "--tmpdir", filepath.Join(dir, "podman-tmp"),
			"--events-backend", "none", "--cgroup-manager", "cgroupfs")
		pull := append(global, "pull", "--quiet", "--signature-policy", r.cfg.policy)
		if c.name == "podman-one-call" {
			cmds = append(cmds, command(program{path: r.cfg.podman}, append(pull, refs...)...))
		} else {
			for _, ref := range refs {
				cmds = append(cmds, command(program{path: r.cfg.podman}, append(slices.Clone(pull), ref)...))
			}
		}
	default:
		return measurement{Err: "unknown contender " + c.name}
	}

	r.reg.ResetCounters()
	// A hang bound, far above any run's time: a stuck contender fails its
	// row instead of stopping the benchmark.
	runCtx, cancel := context.WithTimeout(ctx, 15*time.Minute)
	defer cancel()
	lr, err := r.launch(runCtx, cmds)
	if err != nil {
		return measurement{Err: err.Error()}
	}
	m := measurement{Wall: lr.Wall, Floor: lr.Floor}
	var failures []string
	for _, p := range lr.Procs {
		m.CPU += p.CPU
		m.RSS += p.RSS
		if p.RSS <= lr.Floor {
			m.AtFloor = true
		}
		if p.Err != "" {
			failures = append(failures, p.Err+": "+p.Output)
		}
	}
	m.Served = testimage.ServedLayerBytes(r.reg, images...)
	if len(failures) > 0 {
		m.Err = strings.Join(failures, "; ")
		return m
	}
	if err := r.verify(root, runroot, refs); err != nil {
		m.Err = fmt.Sprintf("%s exited 0 but %v", c, err)
	}
	return m
}

// launch runs cmds at once through the launcher (package bench/launcher).
func (r *runner) launch(ctx context.Context, cmds []launcher.Cmd) (launcher.Result, error) {
	in, err := json.Marshal(cmds)
	if err != nil {
		return launcher.Result{}, err
	}
	var out, stderr bytes.Buffer
	l := exec.CommandContext(ctx, r.cfg.launcher.path)
	l.Env = append(os.Environ(), r.cfg.launcher.env...)
	l.Stdin, l.Stdout, l.Stderr = bytes.NewReader(in), &out, &stderr
	if err := l.Run(); err != nil {
		return launcher.Result{}, fmt.Errorf("launcher: %v: %s", err, launcher.LastLines(stderr.String(), 5))
	}
	var lr launcher.Result
	if err := json.Unmarshal(out.Bytes(), &lr); err != nil {
		return lr, fmt.Errorf("launcher: reading its report: %w", err)
	}
	if lr.Err != "" {
		return lr, errors.New(lr.Err)
	}
	return lr, nil
}

// runRoot makes a run's run root: in /run as root, where podman keeps it
// (tmpfs) and where its path stays under the 50 characters podman allows;
// in the run's directory otherwise (podman is not run then).
func runRoot(dir string) (string, error) {
	if os.Geteuid() == 0 {
		return os.MkdirTemp("/run", "herd-bench-")
	}
	d := filepath.Join(dir, "run")
	return d, os.Mkdir(d, 0o700)
}

// refs are the references to pull: the cache's, with the registry host.
func (r *runner) refs(images []testimage.Pushed) []string {
	var refs []string
	for _, img := range images {
		refs = append(refs, r.reg.Host+"/"+img.Ref)
	}
	return refs
}

// verify checks that the store holds an image under every reference, so a
// contender that exits 0 without pulling is not timed as a success.
func (r *runner) verify(root, runroot string, refs []string) error {
	store, err := storage.GetStore(storagetypes.StoreOptions{GraphRoot: root, RunRoot: runroot, GraphDriverName: r.cfg.driver})
	if err != nil {
		return fmt.Errorf("opening its store to check it: %w", err)
	}
	defer func() { _, _ = store.Shutdown(true) }()
	for _, ref := range refs {
		if _, err := store.Image(ref); err != nil {
			return fmt.Errorf("the store has no image named %s: %w", ref, err)
		}
	}
	return nil
}

// remove deletes a run's directory, unmounting whatever a contender left
// mounted there first, then flushes the page cache's dirty pages so the next
// run does not pay for this one's writeback.
func (r *runner) remove(dir string) {
	teststore.UnmountBelow(dir)
	if err := os.RemoveAll(dir); err != nil {
		r.cfg.logf("warning: removing %s: %v", dir, err)
	}
	unix.Sync()
}
