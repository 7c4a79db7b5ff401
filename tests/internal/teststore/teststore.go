// Package teststore holds what the end-to-end tests and the benchmark both
// need from the machine's containers/storage: which driver works here, and
// cleaning up after stores in a scratch directory.
package teststore

import (
	"errors"
	"fmt"
	"os"
	"slices"

	"github.com/moby/sys/mountinfo"
	"go.podman.io/storage"
	storagetypes "go.podman.io/storage/types"
	"golang.org/x/sys/unix"
)

// CheckOverlay reports why this process cannot use containers/storage's
// overlay driver here (it needs root and a kernel with overlay), or nil when
// it can. It opens and removes a throwaway store in a new directory under
// dir ("" for the default temporary directory), whose path must not contain
// ':' (overlay's mount options use it as a separator).
func CheckOverlay(dir string) error {
	if os.Geteuid() != 0 {
		return errors.New("not running as root")
	}
	probe, err := os.MkdirTemp(dir, "herd-overlay-probe-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(probe)
	s, err := storage.GetStore(storagetypes.StoreOptions{GraphRoot: probe + "/root", RunRoot: probe + "/run", GraphDriverName: "overlay"})
	if err != nil {
		return fmt.Errorf("opening an overlay store: %w", err)
	}
	_, _ = s.Shutdown(true)
	return nil
}

// UnmountBelow detaches every mount below dir, deepest first, and returns
// the mount points. A process killed while it used a store there (a
// contender, a herd killed during the overlay driver's feature probe)
// leaves its mounts behind: the kernel does not undo a dead process's
// mounts, and the directory cannot be removed until they are gone.
func UnmountBelow(dir string) []string {
	mounts, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		return nil
	}
	slices.SortFunc(mounts, func(a, b *mountinfo.Info) int { return len(b.Mountpoint) - len(a.Mountpoint) })
	var out []string
	for _, m := range mounts {
		_ = unix.Unmount(m.Mountpoint, unix.MNT_DETACH)
		out = append(out, m.Mountpoint)
	}
	return out
}
