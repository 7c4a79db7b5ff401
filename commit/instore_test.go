package commit

import (
	"sync/atomic"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
)

// A wait ends when the store has the layer, even though the flight it waits
// for has not ended: another process committed the layer first, and the
// owner's containers/image reused it by chain ID without a PutLayer
// (invariant 5). Without this, the owner may need a slot the waiters hold.
func TestWaitEndsWhenAnotherProcessCommits(t *testing.T) {
	c, a, b := twoImages(nil)
	var present atomic.Bool
	b.reusable = func(blob digest.Digest) bool { return blob == blobX && present.Load() }
	a.claimOrWait(blobX, nil, true)
	got := waitFor(b, blobX)
	eventually(t, "b waits", func() bool { return waiting(c, b) })
	present.Store(true) // the flight is still a's
	select {
	case d := <-got:
		if d != lookAgain {
			t.Fatalf("after the layer appeared in the store: %v, want lookAgain", d)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the wait did not end when the layer appeared in the store")
	}
	if !b.waited(blobX) {
		t.Error("b does not report that it obtained the blob by waiting")
	}
}
