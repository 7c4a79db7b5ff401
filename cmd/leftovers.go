package cmd

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	"go.podman.io/storage/pkg/fileutils"
	"go.podman.io/storage/pkg/lockfile"
	"go.podman.io/storage/pkg/mount"
)

// The overlay driver of containers/storage probes the kernel the first time
// a store is used after boot (while its run root caches no result): it
// makes a directory in the driver's home, mounts overlay in it and removes
// it again, within milliseconds (drivers/overlay/overlay.go supportsOverlay
// and check.go: compat*, metacopy-check*, opaque-bug-check*,
// volatile-check*). A process killed meanwhile leaves the directory, at
// times with the mount, and containers/storage never removes it: its check
// reports it as a layer "in lower level storage driver not accounted for".
// Store.Repair would remove it, but only after a full Check, which reads
// every layer, and it removes whatever is unaccounted for without the locks
// that make that safe against a running probe. So herd removes these
// directories itself: before it opens the store, and when it is done.
//
// Before, because opening the store bind-mounts the driver's home over
// itself (mount.MakePrivate in overlay's Init) when it is not a mount yet,
// which hides a mount that a probe killed earlier in Init left in its
// directory: that directory cannot be removed until the home is unmounted
// again (Store.Shutdown does it).
//
// A live prober's directory (podman's, another herd's) must not be removed
// from under it. containers/storage runs every probe holding the store's
// graph lock (driver initialisation: supportsOverlay's compat*,
// metacopy-check*, opaque-bug-check*) or the layer store's lock (the
// idmapped-mounts compat* when a layer or container is created, the
// data-only compat* and volatile-check* when a layer is mounted), with one
// exception: Store.Status (`podman info`) may run the idmapped and volatile
// probes holding neither. herd holds both locks while it sweeps (it tries
// them, and leaves the sweep to a later run if another process holds one),
// so no probe but Status's can be in progress; a directory that may be one
// of Status's (a compat* not shaped like supportsOverlay's, which has
// lower1, or a volatile-check*) must also be older than probeMaxAge,
// hundreds of times a probe's duration. At the end of its run herd waits
// for such a directory to come of age, so that a run started right after a
// kill leaves the store clean; only a kill inside a probe causes that wait.

var probeDirName = regexp.MustCompile(`^(compat|metacopy-check|opaque-bug-check|volatile-check)[0-9]+$`)

const probeMaxAge = time.Second

// sweepProbeDirs removes the overlay probe directories that killed processes
// left in the store at graphRoot; with wait, it first waits for the young
// ones to come of age. It never fails the run: what it cannot remove stays
// for a later run.
func sweepProbeDirs(graphRoot string, wait bool) {
	if young := sweepProbeDirsOnce(graphRoot); wait && young > 0 {
		time.Sleep(young)
		sweepProbeDirsOnce(graphRoot)
	}
}

// sweepProbeDirsOnce removes what it safely can, and returns how long until
// the youngest directory it kept for its age may be removed (0 if none).
func sweepProbeDirsOnce(graphRoot string) time.Duration {
	home := filepath.Join(graphRoot, "overlay")
	if !filepath.IsAbs(graphRoot) || len(probeDirs(home)) == 0 {
		return 0 // the usual case: no lock taken, no lock file created
	}
	// The paths containers/storage locks (store.go GetStore, layers.go
	// newLayerStore): in this process, the same *LockFile objects.
	for _, path := range []string{"storage.lock", filepath.Join("overlay-layers", "layers.lock")} {
		lock, err := lockfile.GetLockFile(filepath.Join(graphRoot, path))
		if err != nil {
			logrus.Debugf("not sweeping overlay probe directories: %v", err)
			return 0
		}
		if err := lock.TryLock(); err != nil {
			logrus.Debugf("not sweeping overlay probe directories now: %s: %v", path, err) // a later run will
			return 0
		}
		defer lock.Unlock()
	}
	var wait time.Duration
	for _, ent := range probeDirs(home) {
		dir := filepath.Join(home, ent.Name())
		if kind := probeDirName.FindStringSubmatch(ent.Name())[1]; kind == "volatile-check" ||
			kind == "compat" && fileutils.Lexists(filepath.Join(dir, "lower1")) != nil {
			info, err := os.Lstat(dir)
			if err != nil {
				continue
			}
			if left := probeMaxAge - time.Since(info.ModTime()); left > 0 {
				wait = max(wait, min(left, probeMaxAge))
				continue
			}
		}
		if err := removeProbeDir(dir); err != nil {
			logrus.Debugf("removing overlay probe directory %s: %v", dir, err)
		} else {
			logrus.Infof("removed %s, left by a process killed while it probed the overlay driver", dir)
		}
	}
	return wait
}

// probeDirs lists the directories in home named as the probes name theirs;
// a layer's directory always has diff/, which no probe makes.
func probeDirs(home string) []os.DirEntry {
	entries, _ := os.ReadDir(home)
	return slices.DeleteFunc(entries, func(ent os.DirEntry) bool {
		return !ent.IsDir() || !probeDirName.MatchString(ent.Name()) ||
			fileutils.Lexists(filepath.Join(home, ent.Name(), "diff")) == nil
	})
}

// removeProbeDir unmounts what the probe left mounted in dir, deepest
// first, and removes dir. A mount that stays is one hidden under the bind
// mount of the driver's home (see above): then dir is left whole, shape
// and age included, for a run that starts while the home is not mounted.
// (system.EnsureRemoveAll would remove through the mounts, unmount by a
// prefix that also matches compat12 for compat1, and retry for ten
// seconds a mount it cannot reach.)
func removeProbeDir(dir string) error {
	below, err := mountsBelow(dir)
	for _, mp := range below {
		if err := mount.Unmount(mp); err != nil {
			return err
		}
	}
	if len(below) > 0 {
		below, err = mountsBelow(dir)
	}
	if err != nil {
		return err
	}
	if len(below) > 0 {
		return fmt.Errorf("%s is still mounted, under the driver's home mounted over it", below[0])
	}
	return os.RemoveAll(dir)
}

// mountsBelow lists the mount points below dir, deepest first.
func mountsBelow(dir string) ([]string, error) {
	mounts, err := mount.GetMounts()
	if err != nil {
		return nil, err
	}
	var below []string
	for _, m := range mounts {
		if strings.HasPrefix(m.Mountpoint, dir+"/") {
			below = append(below, m.Mountpoint)
		}
	}
	slices.SortFunc(below, func(a, b string) int { return len(b) - len(a) })
	return below, nil
}
