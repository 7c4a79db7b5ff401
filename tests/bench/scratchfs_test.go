package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// The scratch filesystem is a journaled ext4 of its own, and goes away with
// the directory it was made in.
func TestScratchFS(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("CI runs as root: the scratch filesystem must be tested there")
		}
		t.Skip("making and mounting a filesystem needs root")
	}
	dir := filepath.Join(t.TempDir(), "work")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	mnt, unmount, err := mountScratchFS(dir)
	if err != nil {
		t.Fatal(err)
	}
	var parent, fs unix.Stat_t
	if err := unix.Stat(dir, &parent); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat(mnt, &fs); err != nil {
		t.Fatal(err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(mnt, &st); err != nil {
		t.Fatal(err)
	}
	switch {
	case fs.Dev == parent.Dev:
		t.Errorf("%s is on the same filesystem as %s: nothing was mounted", mnt, dir)
	case st.Type != unix.EXT4_SUPER_MAGIC:
		t.Errorf("%s is a filesystem of type %#x, want ext4", mnt, st.Type)
	}
	// mkfs.ext4 makes a journal unless told not to.
	if out, err := exec.Command("dumpe2fs", "-h", filepath.Join(dir, "scratch.ext4")).CombinedOutput(); err != nil || !strings.Contains(string(out), "Journal inode:") {
		t.Errorf("the scratch filesystem has no journal (dumpe2fs: %v)\n%s", err, out)
	}
	if err := os.WriteFile(filepath.Join(mnt, "f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	unmount()
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("after unmounting, %s: %v; want it removed", dir, err)
	}
}
