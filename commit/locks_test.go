package commit

import (
	"context"
	"testing"
	"time"
)

// Two coordinators on one lock directory stand for two herd processes on
// one store: flock(2) locks of two open files conflict within one process
// as they do across processes.
// twoProcesses returns the coordinators of two runs on one store, as two
// herd processes have them, pulling plan1 and plan2.
func twoProcesses(t *testing.T, plan1, plan2 Plan) (*Coordinator, *Coordinator) {
	t.Helper()
	dir := t.TempDir()
	return openProcess(t, dir, plan1), openProcess(t, dir, plan2)
}

// openProcess returns the coordinator of a herd process that starts now on
// the store whose blob locks are in dir, pulling plan.
func openProcess(t *testing.T, dir string, plan Plan) *Coordinator {
	t.Helper()
	l, err := OpenBlobLocks(dir)
	if err != nil {
		t.Fatal(err)
	}
	c := NewCoordinator(plan, nil, nil, l)
	t.Cleanup(c.Close)
	return c
}

// joinWatched joins image of c with hooks that record its wait events on
// the channel returned: a start as an event with no End.
func joinWatched(c *Coordinator, image int) (*Image, <-chan WaitEvent) {
	events := make(chan WaitEvent, 16)
	img := c.Join(context.Background(), image, Hooks{
		WaitStarted: func(w WaitEvent) { events <- w },
		WaitEnded:   func(e WaitEvent) { events <- e },
	})
	return img, events
}

var (
	justX   = Plan{{Name: "x", Layers: []Layer{{Blob: blobX}}}}
	xUnderY = Plan{{Name: "x-under-y", Layers: []Layer{{Blob: blobX}, {Blob: blobY}}}}
)

func TestOtherProcessOwnsTheBlobUntilItsLockIsFree(t *testing.T) {
	c1, c2 := twoProcesses(t, justX, justX)
	a := c1.Join(context.Background(), 0, Hooks{})
	b, events := joinWatched(c2, 0)
	if d := a.claimOrWait(blobX, nil, true); d != fetchIt {
		t.Fatalf("first process, first miss: %v, want fetchIt (claim)", d)
	}
	got := waitFor(b, blobX)
	if e := <-events; e.End != "" || e.Owner != "another herd process" {
		t.Fatalf("second process: wait event %+v, want a wait for another herd process", e)
	}
	select {
	case d := <-got:
		t.Fatalf("the second process decided %v while the first still fetches the blob", d)
	case <-time.After(5 * otherProcessPollInterval):
	}
	start := time.Now()
	c1.committed(blobX) // the first process commits: its flight ends, its lock is released
	if d := <-got; d != claimAgain {
		t.Fatalf("after the first process committed: %v, want claimAgain (look up, claim if missing)", d)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("the wait ended %s after the lock was released, want about %s", took, otherProcessPollInterval)
	}
	if e := <-events; e.End != OwnerFailed {
		t.Errorf("wait ended %q, want %q (no store to look in here)", e.End, OwnerFailed)
	}
	// The lock is free now: the second process claims it, and the first
	// must wait for it in turn.
	if d := b.claimOrWait(blobX, nil, true); d != fetchIt {
		t.Fatalf("second process after the handover: %v, want fetchIt (claim)", d)
	}
	a2, events := joinWatched(c1, 0) // the first process's next attempt
	got = waitFor(a2, blobX)
	<-events // a2 waits for the second process
	b.Done() // the second process dies without the layer
	if d := <-got; d != claimAgain {
		t.Fatalf("after the second process gave up: %v, want claimAgain", d)
	}
}

// Invariant 8: a pull that owns a layer above one another process fetches
// does not wait for it (that could close a cycle across processes).
func TestNoWaitForAnotherProcessBelowOwnClaim(t *testing.T) {
	c1, c2 := twoProcesses(t, justX, xUnderY)
	other := c1.Join(context.Background(), 0, Hooks{})
	other.claimOrWait(blobX, nil, true)
	p := c2.Join(context.Background(), 0, Hooks{})
	if d := p.claimOrWait(blobY, nil, true); d != fetchIt { // its lookup of X has not started: Y is claimed
		t.Fatalf("claiming the upper layer: %v, want fetchIt", d)
	}
	if d := p.claimOrWait(blobX, nil, true); d != fetchIt {
		t.Fatalf("the lower layer, fetched by another process, below our own claim: %v, want fetchIt (a duplicate, not a wait)", d)
	}
}

// Invariant 8: no claim above a layer another process fetches, even when
// the lower layer's own lookup is under way and the upper one is the
// image's own: the upper layer's lookup waits for the lower layer first.
func TestNoClaimAboveAnotherProcessFlight(t *testing.T) {
	c1, c2 := twoProcesses(t, justX, xUnderY)
	other := c1.Join(context.Background(), 0, Hooks{})
	other.claimOrWait(blobX, nil, true)
	p := c2.Join(context.Background(), 0, Hooks{})
	lower := make(chan decision, 1)
	go func() { lower <- p.claimOrWait(blobX, p.lookingUp(blobX), true) }() // waits for the other process
	eventually(t, "the lower layer waits", func() bool {
		c2.mu.Lock()
		defer c2.mu.Unlock()
		f := c2.flights[blobX]
		return f != nil && f.owner == nil
	})
	upper := make(chan decision, 1)
	go func() { upper <- p.claimOrWait(blobY, p.lookingUp(blobY), false) }()
	select {
	case d := <-upper:
		t.Fatalf("the upper layer decided %v while another process fetches the layer below it", d)
	case <-time.After(5 * otherProcessPollInterval):
	}
	other.Done()
	if d := <-lower; d != claimAgain {
		t.Errorf("lower layer: %v, want claimAgain", d)
	}
	if d := <-upper; d != claimAgain {
		t.Errorf("upper layer: %v, want claimAgain (decide again, now that nothing below is another process's)", d)
	}
}

// Invariant 6 with 8: the lookup of an image's own top layer claims the
// layers below it that nobody fetches, though it waits for none of them.
// A herd process that starts later (so othersActive was false at that
// lookup) then finds the base taken and waits for it, instead of claiming
// it under the first process's claim above it, which would have had to
// fetch the base again (seen as a blob fetched three times by three herds
// started at once).
func TestTopLayerLookupClaimsTheBaseForProcessesStartedLater(t *testing.T) {
	dir := t.TempDir()
	first := openProcess(t, dir, xUnderY) // alone on the store so far
	p := first.Join(context.Background(), 0, Hooks{})
	if d := p.claimOrWait(blobY, p.lookingUp(blobY), false); d != fetchIt {
		t.Fatalf("the first process's top layer: %v, want fetchIt", d)
	}
	later := openProcess(t, dir, xUnderY)
	q, events := joinWatched(later, 0)
	got := make(chan decision, 1)
	go func() { got <- q.claimOrWait(blobX, q.lookingUp(blobX), true) }()
	select {
	case e := <-events:
		if e.Blob != blobX || e.Owner != "another herd process" {
			t.Fatalf("the later process: %+v, want a wait for another herd process's fetch of the base", e)
		}
	case d := <-got:
		t.Fatalf("the later process decided %v about the base, want a wait for the first process's claim of it", d)
	}
	if d := p.claimOrWait(blobX, p.lookingUp(blobX), true); d != fetchIt || !p.owns(blobX) {
		t.Fatalf("the first process's own lookup of its base: %v (owns it: %v), want fetchIt with the claim made for it", d, p.owns(blobX))
	}
	p.Done() // as if its fetch failed: the lock is free
	if d := <-got; d != claimAgain {
		t.Errorf("the later process after the first let go: %v, want claimAgain", d)
	}
}
