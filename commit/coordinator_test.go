package commit

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
)

// These tests drive the coordinator's decisions directly, in orders that the
// end-to-end tests reach only by chance. The store side is covered end to
// end in tests/dedup_test.go against a real store and registry.

var (
	blobX = digest.FromString("x")
	blobY = digest.FromString("y")
)

// waitFor runs claimOrWait in a goroutine and returns its decision channel.
func waitFor(p *Pull, blob digest.Digest) <-chan decision {
	out := make(chan decision, 1)
	go func() { out <- p.claimOrWait(blob, nil, true) }()
	return out
}

func waiting(c *Coordinator, waiter *Pull) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.waitsFor[waiter]) > 0
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestFirstMissClaimsOthersWaitUntilCommitted(t *testing.T) {
	c := NewCoordinator(nil, nil)
	a, b := c.NewPull(context.Background(), "a", nil), c.NewPull(context.Background(), "b", nil)
	if d := a.claimOrWait(blobX, nil, true); d != fetchIt {
		t.Fatalf("first miss: %v, want fetchIt (claim)", d)
	}
	if d := a.claimOrWait(blobX, nil, true); d != fetchIt {
		t.Fatalf("the owner's own second miss: %v, want fetchIt without waiting", d)
	}
	got := waitFor(b, blobX)
	eventually(t, "b waits", func() bool { return waiting(c, b) })
	c.committed(blobX)
	if d := <-got; d != lookAgain {
		t.Fatalf("after commit: %v, want lookAgain", d)
	}
	if !b.Waited(blobX) {
		t.Error("b does not report that it waited for the blob")
	}
}

func TestOwnerGivingUpHandsTheBlobOver(t *testing.T) {
	c := NewCoordinator(nil, nil)
	a, b := c.NewPull(context.Background(), "a", nil), c.NewPull(context.Background(), "b", nil)
	a.claimOrWait(blobX, nil, true)
	got := waitFor(b, blobX)
	eventually(t, "b waits", func() bool { return waiting(c, b) })
	a.Done() // a failed
	if d := <-got; d != claimAgain {
		t.Fatalf("after the owner gave up: %v, want claimAgain", d)
	}
	if end := b.WaitEnded(blobX); end != OwnerFailed {
		t.Errorf("wait ended %q, want %q", end, OwnerFailed)
	}
	if d := b.claimOrWait(blobX, nil, true); d != fetchIt {
		t.Fatalf("b claiming after the handover: %v, want fetchIt", d)
	}
	c.mu.Lock()
	owner := c.flights[blobX].owner
	c.mu.Unlock()
	if owner != b {
		t.Error("b does not own the blob after taking it over")
	}
}

func TestOwnerReusingEndsItsClaim(t *testing.T) {
	c := NewCoordinator(nil, nil)
	a, b := c.NewPull(context.Background(), "a", nil), c.NewPull(context.Background(), "b", nil)
	a.claimOrWait(blobX, nil, true)
	got := waitFor(b, blobX)
	eventually(t, "b waits", func() bool { return waiting(c, b) })
	a.Reused(blobX)
	if d := <-got; d != lookAgain {
		t.Fatalf("after the owner reused the blob: %v, want lookAgain", d)
	}
	// The layer was in the store all along (under another digest): b reuses
	// it too, and obtained nothing by waiting.
	if b.Waited(blobX) {
		t.Error("b reports it obtained by waiting a layer the store already had")
	}
}

// Two pulls that each own what the other wants: the second wait would close
// a cycle, so it is refused and that pull fetches the blob itself.
func TestWaitThatWouldCloseACycleIsRefused(t *testing.T) {
	c := NewCoordinator(nil, nil)
	a, b := c.NewPull(context.Background(), "a", nil), c.NewPull(context.Background(), "b", nil)
	a.claimOrWait(blobX, nil, true)
	b.claimOrWait(blobY, nil, true)
	aWaits := waitFor(a, blobY)
	eventually(t, "a waits for b", func() bool { return waiting(c, a) })

	done := waitFor(b, blobX)
	select {
	case d := <-done:
		if d != fetchIt {
			t.Fatalf("b asked to wait for a, which waits for b: %v, want fetchIt", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("b waits for a while a waits for b: a deadlock")
	}
	c.committed(blobY)
	if d := <-aWaits; d != lookAgain {
		t.Fatalf("a after b committed: %v", d)
	}
}

// A longer cycle, through a third pull.
func TestCycleThroughAThirdPullIsRefused(t *testing.T) {
	c := NewCoordinator(nil, nil)
	blobZ := digest.FromString("z")
	a, b, z := c.NewPull(context.Background(), "a", nil), c.NewPull(context.Background(), "b", nil), c.NewPull(context.Background(), "z", nil)
	a.claimOrWait(blobX, nil, true)
	b.claimOrWait(blobY, nil, true)
	z.claimOrWait(blobZ, nil, true)
	waitFor(a, blobY) // a → b
	eventually(t, "a waits", func() bool { return waiting(c, a) })
	waitFor(b, blobZ) // b → z
	eventually(t, "b waits", func() bool { return waiting(c, b) })
	if d := z.claimOrWait(blobX, nil, true); d != fetchIt { // z → a would close a → b → z → a
		t.Fatalf("z: %v, want fetchIt", d)
	}
	a.Done()
	b.Done()
	z.Done()
}

// Invariant 2, InStore: the owner's containers/image finished a layer
// without a PutLayer for the blob (a layer with the same chain ID existed,
// made from another compression). The flight ends at the owner's next
// "done" or "skipped" event, not by any clock: the waiter's own store poll
// is disabled here.
func TestLayerEndedEndsFlightWhenTheStoreHasTheLayer(t *testing.T) {
	c := NewCoordinator(nil, nil)
	a, b := c.NewPull(context.Background(), "a", nil), c.NewPull(context.Background(), "b", nil)
	var present atomic.Bool
	a.reusable = func(blob digest.Digest) bool { return blob == blobX && present.Load() }
	a.claimOrWait(blobX, nil, true)
	got := waitFor(b, blobX)
	eventually(t, "b waits", func() bool { return waiting(c, b) })
	a.LayerEnded() // an event while the layer is not there yet: the flight goes on
	select {
	case d := <-got:
		t.Fatalf("the wait ended (%v) though the store does not have the layer", d)
	case <-time.After(50 * time.Millisecond):
	}
	present.Store(true)
	a.LayerEnded()
	if d := <-got; d != lookAgain {
		t.Fatalf("after the owner's layer ended with the layer in the store: %v, want lookAgain", d)
	}
	if end := b.WaitEnded(blobX); end != InStore {
		t.Errorf("wait ended %q, want %q", end, InStore)
	}
	if !b.Waited(blobX) {
		t.Error("b does not report that it obtained the blob by waiting")
	}
}

func TestWaitsEndOnCancellation(t *testing.T) {
	c := NewCoordinator(nil, nil)
	ctx, cancel := context.WithCancel(context.Background())
	a, b := c.NewPull(context.Background(), "a", nil), c.NewPull(ctx, "b", nil)
	a.claimOrWait(blobX, nil, true)
	got := waitFor(b, blobX)
	eventually(t, "b waits", func() bool { return waiting(c, b) })
	cancel()
	select {
	case d := <-got:
		if d != fetchIt {
			t.Fatalf("after cancellation: %v, want fetchIt", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a cancelled wait did not end")
	}
	if waiting(c, b) {
		t.Error("the wait graph still has b's edge after its wait ended")
	}
}

func TestLinkTOCLinksBothWays(t *testing.T) {
	c := NewCoordinator(nil, nil)
	toc := digest.FromString("toc")
	c.LinkTOC(toc, blobX)
	if c.blobForTOC(toc) != blobX || c.tocForBlob(blobX) != toc {
		t.Fatal("LinkTOC does not link both ways")
	}
}

// Invariant 6: a pull whose upper layer is looked up before its lower one
// decides the lower one first. Here b looks up Y before X: it must claim X
// as well, so that a, which wants X, waits for b instead of claiming X and
// later wanting Y from b while b waits for a's X.
func TestUpperLookupClaimsUnlookedLowerLayers(t *testing.T) {
	c := NewCoordinator(nil, nil)
	layers := []digest.Digest{blobX, blobY}
	a, b := c.NewPull(context.Background(), "a", layers), c.NewPull(context.Background(), "b", layers)
	if d := b.claimOrWait(blobY, b.lookingUp(blobY), true); d != fetchIt {
		t.Fatalf("b's upper lookup: %v, want fetchIt", d)
	}
	c.mu.Lock()
	fx := c.flights[blobX]
	c.mu.Unlock()
	if fx == nil || fx.owner != b {
		t.Fatal("b's upper lookup did not claim its unlooked lower layer")
	}
	if d := b.claimOrWait(blobX, b.lookingUp(blobX), true); d != fetchIt {
		t.Fatalf("b's own lookup of the layer claimed for it: %v, want fetchIt", d)
	}
	got := waitFor(a, blobX)
	eventually(t, "a waits for b's X", func() bool { return waiting(c, a) })
	c.committed(blobX)
	if d := <-got; d != lookAgain {
		t.Fatalf("a after b committed X: %v, want lookAgain", d)
	}
}

// The other side of invariant 6: when another pull already fetches the lower
// layer, the upper lookup waits for it instead of claiming the upper layer,
// then decides again.
func TestUpperLookupWaitsForLowerLayerInFlight(t *testing.T) {
	c := NewCoordinator(nil, nil)
	layers := []digest.Digest{blobX, blobY}
	a, b := c.NewPull(context.Background(), "a", layers), c.NewPull(context.Background(), "b", layers)
	a.claimOrWait(blobX, a.lookingUp(blobX), true)
	below := b.lookingUp(blobY)
	got := make(chan decision, 1)
	go func() { got <- b.claimOrWait(blobY, below, true) }()
	eventually(t, "b waits for a's X", func() bool { return waiting(c, b) })
	c.mu.Lock()
	fy := c.flights[blobY]
	c.mu.Unlock()
	if fy != nil {
		t.Fatal("b claimed Y while a fetches X, below it")
	}
	c.committed(blobX)
	if d := <-got; d != claimAgain {
		t.Fatalf("b after a committed X: %v, want claimAgain (decide again)", d)
	}
	if !b.Waited(blobX) {
		t.Error("b does not report that it obtained X by waiting")
	}
	// X is in the store now, so the Store passes no layers below Y.
	if d := b.claimOrWait(blobY, nil, true); d != fetchIt {
		t.Fatalf("b deciding Y again: %v, want fetchIt (claim)", d)
	}
}
