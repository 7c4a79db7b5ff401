package commit

import (
	"context"
	"errors"
	"os"
	"syscall"
	"testing"

	digest "github.com/opencontainers/go-digest"
)

// A commit that fails because a file it wrote is gone (another process's
// cleanup of the store's temporary directories) is marked for a retry; a
// failure the untar child reports as text, as for a layer linking to a file
// it lacks, is not.
func TestCommitFailureOfAVanishedFile(t *testing.T) {
	c := NewCoordinator(Plan{{Name: "a", Layers: []Layer{{Blob: blobX}}}}, nil, nil, nil)
	var reported error
	s := c.Join(context.Background(), 0, Hooks{CommitFailed: func(_ digest.Digest, err error) { reported = err }}).Store(nil)
	rename := &os.LinkError{Op: "rename", Old: "/store/overlay-layers/tmp/temp-dir-1/0-addition", New: "/store/overlay-layers/x.tar-split.gz", Err: syscall.ENOENT}
	err := s.commitFailed(blobX, "", rename)
	if !errors.Is(err, ErrFileVanished) || !errors.Is(err, syscall.ENOENT) || reported != err {
		t.Errorf("rename of a vanished file: %v (reported %v), want ErrFileVanished, keeping ENOENT, reported", err, reported)
	}
	untar := errors.New("unpacking failed (error: exit status 1; output: link usr/bin/x: no such file or directory)")
	if err := s.commitFailed(blobX, "", untar); errors.Is(err, ErrFileVanished) {
		t.Errorf("the untar child's error: %v, want it left as it is", err)
	}
}
