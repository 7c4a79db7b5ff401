package cmd

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// TempDir is the base directory for big temporary files: $TMPDIR, else
// /var/tmp, podman's image_copy_tmp_dir default (image blobs are too big for
// a tmpfs /tmp). herd pull takes containers.conf's image_copy_tmp_dir over
// /var/tmp (containersconf.go); $TMPDIR wins over both. The benchmark's
// baseline uses it too, so that both stage blobs on the same disk (the
// benchmark sets $TMPDIR for both).
func TempDir() string {
	if d := os.Getenv("TMPDIR"); d != "" {
		return d
	}
	return "/var/tmp"
}

// runTempDir creates the directory for this run's big temporary files
// (containers/image's blob staging, SystemContext.BigFilesTemporaryDir) in
// base, and returns it with the function that removes it. A run removes its
// own directory on every ordinary exit, SIGINT and SIGTERM included; a
// SIGKILLed run cannot, so each run first sweeps the directories of runs
// whose process is gone.
//
// Ownership is an flock(2) on the directory, held for the whole run: the
// kernel drops it when the process dies, however it dies, and it works
// across PID namespaces sharing one /var/tmp, where a PID means nothing.
// The directory's name also carries the owner's PID, which covers the one
// moment the lock cannot: between creating the directory and locking it.
// containers/storage's pkg/lockfile is not used because it keeps every lock
// it ever opened for the life of the process.
func runTempDir(base string) (string, func(), error) {
	sweepTempDirs(base)
	dir, err := os.MkdirTemp(base, fmt.Sprintf("herd-%d-", os.Getpid()))
	if err != nil {
		return "", nil, fmt.Errorf("creating a temporary directory: %w", err)
	}
	fd, err := lockDir(dir, 0)
	if err != nil {
		_ = os.RemoveAll(dir)
		return "", nil, fmt.Errorf("locking temporary directory %s: %w", dir, err)
	}
	return dir, func() {
		if err := os.RemoveAll(dir); err != nil {
			logrus.Warnf("removing temporary directory %s: %v", dir, err)
		}
		_ = unix.Close(fd)
	}, nil
}

// sweepTempDirs removes base/herd-PID-* directories left by runs that died
// without cleaning up. It never fails the run: what it cannot remove stays.
func sweepTempDirs(base string) {
	dirs, _ := filepath.Glob(filepath.Join(base, "herd-*-*"))
	for _, dir := range dirs {
		pid, err := strconv.Atoi(strings.SplitN(filepath.Base(dir), "-", 3)[1])
		if err != nil || pid <= 0 {
			continue // not a name herd makes
		}
		fd, err := lockDir(dir, unix.LOCK_NB)
		if err != nil {
			continue // in use (or not ours to open)
		}
		if !processGone(pid) {
			// Unlocked but its creator lives: it is between creating and locking it.
			_ = unix.Close(fd)
			continue
		}
		if err := os.RemoveAll(dir); err != nil {
			logrus.Debugf("removing stale temporary directory %s: %v", dir, err)
		} else {
			logrus.Infof("removed %s, left by an earlier herd run (PID %d) that did not exit cleanly", dir, pid)
		}
		_ = unix.Close(fd)
	}
}

// lockDir opens dir and takes an exclusive flock on it (flags: 0 to wait,
// unix.LOCK_NB not to), returning the descriptor that holds the lock.
func lockDir(dir string, flags int) (int, error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	if err := unix.Flock(fd, unix.LOCK_EX|flags); err != nil {
		_ = unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// processGone reports whether no process with pid exists here.
func processGone(pid int) bool {
	return errors.Is(unix.Kill(pid, 0), unix.ESRCH)
}
