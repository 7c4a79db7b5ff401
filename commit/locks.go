package commit

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// BlobLocks are the cross-process half of one fetch per blob: one lock
// file per blob digest in a directory beside the store (under its run
// root), locked with flock(2) by whichever herd process fetches the blob,
// for as long as its flight lasts. Another herd on the same store that
// needs the blob finds the lock taken and waits, as it would for a pull of
// its own (a flight whose owner is another process), until the store has
// the layer or the lock is free again: the kernel drops an flock when its
// holder ends, however it ends, so a herd killed mid-fetch hands the blob
// over at once, and no lock ever outlives its process to block a later run.
// The files themselves stay (they are empty, and the run root is emptied
// at boot): removing one could race with a process that just opened it.
//
// containers/storage's pkg/lockfile is not used: it keeps every lock it
// ever opened for the life of the process, and has no non-blocking try for
// a lock another process holds. Processes that do not take part (podman,
// CRI-O) never see these files and work as before.
type BlobLocks struct {
	dir          string
	presence     *os.File // this process's presence file, locked for its life
	presencePath string   // its name (the file was renamed after it was opened)
}

// OpenBlobLocks uses (and creates) dir for the lock files, and announces
// this process there (othersActive) until Close.
func OpenBlobLocks(dir string) (*BlobLocks, error) {
	// Presence files have a directory of their own: othersActive lists it
	// at every missed lookup, and the blob locks pile up until boot.
	if err := os.MkdirAll(filepath.Join(dir, "processes"), 0o700); err != nil {
		return nil, fmt.Errorf("creating the directory for herd's blob locks: %w", err)
	}
	// The file is locked under a name othersActive does not list, then
	// renamed: under its final name it is never seen unlocked, so another
	// process's othersActive can neither take it for a dead process's and
	// remove it, nor hold its lock at the moment this process takes it.
	name := filepath.Join(dir, "processes", fmt.Sprintf("%d-%d", os.Getpid(), time.Now().UnixNano()))
	f, err := os.OpenFile(name+".new", os.O_RDWR|os.O_CREATE|os.O_EXCL|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("announcing this herd beside the store: %w", err)
	}
	err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
	if err == nil {
		err = os.Rename(name+".new", name+".present")
	}
	if err != nil {
		f.Close()
		os.Remove(name + ".new")
		return nil, fmt.Errorf("announcing this herd beside the store: %w", err)
	}
	return &BlobLocks{dir: dir, presence: f, presencePath: name + ".present"}, nil
}

// Close withdraws this process's announcement.
func (l *BlobLocks) Close() {
	if l != nil {
		os.Remove(l.presencePath)
		l.presence.Close()
	}
}

// othersActive reports whether another herd process is pulling into the
// store now: one holds its presence file's lock. Files of processes that
// ended are removed on the way (their lock is free, and their names are
// never reused).
func (l *BlobLocks) othersActive() bool {
	if l == nil {
		return false
	}
	files, _ := filepath.Glob(filepath.Join(l.dir, "processes", "*.present"))
	active := false
	for _, path := range files {
		if path == l.presencePath {
			continue
		}
		f, err := os.Open(path)
		if err != nil {
			continue
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			active = true
		} else {
			os.Remove(path)
		}
		f.Close()
	}
	return active
}

// tryLock takes blob's lock unless another process holds it. It returns
// the function that releases it, or nil if another process holds it. A
// nil BlobLocks, or a lock file that cannot be used, locks nothing: herd
// then coordinates within its process only, as it did before.
func (l *BlobLocks) tryLock(blob digest.Digest) (release func()) {
	noop := func() {}
	if l == nil {
		return noop
	}
	path := filepath.Join(l.dir, blob.Algorithm().String()+"-"+blob.Encoded()+".lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		logrus.Debugf("blob lock %s: %v: not coordinating this blob with other processes", path, err)
		return noop
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil
		}
		logrus.Debugf("blob lock %s: %v: not coordinating this blob with other processes", path, err)
		return noop
	}
	return func() { f.Close() } // closing the only descriptor drops the flock
}
