package commit

import (
	"context"
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
	go func() { out <- p.claimOrWait(blob) }()
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
	c := NewCoordinator()
	a, b := c.NewPull(context.Background(), "a"), c.NewPull(context.Background(), "b")
	if d := a.claimOrWait(blobX); d != fetchIt {
		t.Fatalf("first miss: %v, want fetchIt (claim)", d)
	}
	if d := a.claimOrWait(blobX); d != fetchIt {
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
	c := NewCoordinator()
	a, b := c.NewPull(context.Background(), "a"), c.NewPull(context.Background(), "b")
	a.claimOrWait(blobX)
	got := waitFor(b, blobX)
	eventually(t, "b waits", func() bool { return waiting(c, b) })
	a.Done() // a failed
	if d := <-got; d != claimAgain {
		t.Fatalf("after the owner gave up: %v, want claimAgain", d)
	}
	if d := b.claimOrWait(blobX); d != fetchIt {
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
	c := NewCoordinator()
	a, b := c.NewPull(context.Background(), "a"), c.NewPull(context.Background(), "b")
	a.claimOrWait(blobX)
	got := waitFor(b, blobX)
	eventually(t, "b waits", func() bool { return waiting(c, b) })
	a.Reused(blobX)
	if d := <-got; d != lookAgain {
		t.Fatalf("after the owner reused the blob: %v, want lookAgain", d)
	}
}

// Two pulls that each own what the other wants: the second wait would close
// a cycle, so it is refused and that pull fetches the blob itself.
func TestWaitThatWouldCloseACycleIsRefused(t *testing.T) {
	c := NewCoordinator()
	a, b := c.NewPull(context.Background(), "a"), c.NewPull(context.Background(), "b")
	a.claimOrWait(blobX)
	b.claimOrWait(blobY)
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
	c := NewCoordinator()
	blobZ := digest.FromString("z")
	a, b, z := c.NewPull(context.Background(), "a"), c.NewPull(context.Background(), "b"), c.NewPull(context.Background(), "z")
	a.claimOrWait(blobX)
	b.claimOrWait(blobY)
	z.claimOrWait(blobZ)
	waitFor(a, blobY) // a → b
	eventually(t, "a waits", func() bool { return waiting(c, a) })
	waitFor(b, blobZ) // b → z
	eventually(t, "b waits", func() bool { return waiting(c, b) })
	if d := z.claimOrWait(blobX); d != fetchIt { // z → a would close a → b → z → a
		t.Fatalf("z: %v, want fetchIt", d)
	}
	a.Done()
	b.Done()
	z.Done()
}

func TestWaitsEndWhenTheRunStalls(t *testing.T) {
	c := NewCoordinator()
	c.StallTimeout = 100 * time.Millisecond
	a, b := c.NewPull(context.Background(), "a"), c.NewPull(context.Background(), "b")
	a.claimOrWait(blobX)
	start := time.Now()
	if d := b.claimOrWait(blobX); d != fetchIt {
		t.Fatalf("after a stall: %v, want fetchIt", d)
	}
	if waited := time.Since(start); waited < c.StallTimeout {
		t.Errorf("gave up after %s, before the stall timeout %s", waited, c.StallTimeout)
	}
}

func TestWaitsEndOnCancellation(t *testing.T) {
	c := NewCoordinator()
	ctx, cancel := context.WithCancel(context.Background())
	a, b := c.NewPull(context.Background(), "a"), c.NewPull(ctx, "b")
	a.claimOrWait(blobX)
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
	c := NewCoordinator()
	toc := digest.FromString("toc")
	c.LinkTOC(toc, blobX)
	if c.blobForTOC(toc) != blobX || c.tocForBlob(blobX) != toc {
		t.Fatal("LinkTOC does not link both ways")
	}
}
