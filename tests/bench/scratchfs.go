package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// The stores the contenders pull into live on a filesystem the benchmark
// makes for itself (as root; -scratch-fs): a fresh ext4, with a journal, in
// a sparse file, loop-mounted.
//
// Why: every run pulls into a new store and the store is deleted after the
// run, tens of thousands of files each time. On ext4 without a journal (the
// root filesystem of the machines this was measured on), the inode allocator
// skips every inode deleted in the last minute, reading its inode table
// block to check (ext4's recently_deleted): a run that starts right after
// the previous run's store was deleted spends most of its CPU time creating
// files, 2-3 times the CPU of the same run on a fresh filesystem, and
// contenders' figures then depend on which ran after what. A journaled
// ext4, as a host's /var/lib/containers usually is, has no such check. A
// benchmark killed before its end leaves the filesystem mounted under its
// work directory: umount it by hand.

// scratchSize is the sparse file's size: room for a few stores and the
// blobs staged for them; the host's disk holds only what is written.
const scratchSize = 64 << 30

// mountScratchFS makes and mounts the filesystem under dir, and returns its
// mount point and what unmounts it and removes dir.
func mountScratchFS(dir string) (string, func(), error) {
	img, mnt := filepath.Join(dir, "scratch.ext4"), filepath.Join(dir, "scratch")
	f, err := os.Create(img)
	if err != nil {
		return "", nil, err
	}
	err = f.Truncate(scratchSize)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Mkdir(mnt, 0o755)
	}
	if err == nil {
		err = runCommand("mkfs.ext4", "-q", "-F", img)
	}
	if err == nil {
		err = runCommand("mount", "-o", "loop", img, mnt)
	}
	if err != nil {
		os.RemoveAll(dir)
		return "", nil, fmt.Errorf("making a scratch filesystem for the stores (-scratch-fs=false to use -work's as it is): %w", err)
	}
	return mnt, func() {
		_ = unix.Unmount(mnt, unix.MNT_DETACH) // mount's loop device goes with it
		os.RemoveAll(dir)
	}, nil
}

func runCommand(name string, args ...string) error {
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %v: %s", name, err, strings.TrimSpace(string(out)))
	}
	return nil
}
