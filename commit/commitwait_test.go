package commit

import (
	"context"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
)

// A lookup that can leave its wait to the layer's commit gets the flight
// to wait for, with the wait in the wait graph; the owner then may not wait
// for the waiter (that would close a cycle), and a wait that could not be
// made at the commit is made in the lookup as before.
func TestWaitAtCommitIsInTheWaitGraph(t *testing.T) {
	c, a, b := twoImages([]Layer{{Blob: blobX}, {Blob: blobY}})
	if d := a.claimOrWait(blobX, nil, true); d != fetchIt {
		t.Fatalf("a's first miss: %v, want fetchIt", d)
	}
	d, f := b.decide(blobX, nil, true, true)
	if d != waitAtCommit || f == nil || f.owner != a {
		t.Fatalf("b's miss of a's blob, at commit: %v %v, want waitAtCommit on a's flight", d, f)
	}
	if !waiting(c, b) {
		t.Fatal("b's wait at commit is not in the wait graph")
	}
	if d := b.claimOrWait(blobY, nil, true); d != fetchIt || !b.owns(blobY) {
		t.Fatalf("b's miss of Y while its wait goes on: %v, want a claim", d)
	}
	// a waiting for b's Y would close the cycle a → b → a.
	if d := a.claimOrWait(blobY, nil, true); d != fetchIt || a.owns(blobY) {
		t.Fatalf("a's miss of b's Y: %v, want fetchIt without a claim (a duplicate, not a wait)", d)
	}
}

// The staging gate lets a partial pull nobody waits for start only while
// fewer than cores are under way beside one that others need; those never
// wait.
func TestStagingGateHoldsBackPullsNobodyWaitsFor(t *testing.T) {
	g := newStagingGate(2)
	ctx := context.Background()
	leaveNeeded, _ := g.enter(ctx, true, 1)
	leaveOther, _ := g.enter(ctx, false, 1) // 1 under way < 2 cores
	entered := make(chan func(), 1)
	go func() {
		leave, err := g.enter(ctx, false, 1)
		if err == nil {
			entered <- leave
		}
	}()
	select {
	case <-entered:
		t.Fatal("a third pull nobody waits for started beside a needed one on 2 cores")
	case <-time.After(50 * time.Millisecond):
	}
	leaveNeeded2, _ := g.enter(ctx, true, 1) // needed pulls never wait
	leaveOther()
	leaveNeeded2()
	select {
	case leave := <-entered:
		leave()
	case <-time.After(5 * time.Second):
		t.Fatal("the held-back pull did not start when one ended")
	}
	leaveNeeded()

	cancelled, cancel := context.WithCancel(ctx)
	leaveNeeded, _ = g.enter(ctx, true, 1)
	leaveOther, _ = g.enter(ctx, false, 1)
	cancel()
	if _, err := g.enter(cancelled, false, 1); err == nil {
		t.Fatal("a held-back pull did not end with its context")
	}
	leaveOther()
	leaveNeeded()
	if leave, err := g.enter(ctx, false, 1); err != nil {
		t.Fatal(err)
	} else {
		leave() // nothing needed under way: no wait
	}
}

// Of the pulls nobody waits for that the gate holds back, the largest
// starts first when a core frees up.
func TestStagingGateStartsTheLargestFirst(t *testing.T) {
	g := newStagingGate(2)
	ctx := context.Background()
	leaveNeeded, _ := g.enter(ctx, true, 1)
	leaveFirst, _ := g.enter(ctx, false, 10) // 1 under way < 2 cores
	entered := map[int64]chan func(){5: make(chan func(), 1), 50: make(chan func(), 1)}
	for size, ch := range entered {
		go func() {
			if leave, err := g.enter(ctx, false, size); err == nil {
				ch <- leave
			}
		}()
	}
	for waiting := 0; waiting < 2; {
		time.Sleep(time.Millisecond)
		g.mu.Lock()
		waiting = len(g.waiting)
		g.mu.Unlock()
	}
	leaveFirst()
	var leaveLarge func()
	select {
	case leaveLarge = <-entered[50]:
	case <-time.After(5 * time.Second):
		t.Fatal("the larger waiting pull did not start when a core freed up")
	}
	select {
	case <-entered[5]:
		t.Fatal("the smaller pull started too, beyond the cores")
	case <-time.After(50 * time.Millisecond):
	}
	leaveLarge()
	select {
	case leave := <-entered[5]:
		leave()
	case <-time.After(5 * time.Second):
		t.Fatal("the smaller pull did not start after the larger one")
	}
	leaveNeeded()
}

// Before its partial pull, a layer nobody else needs waits for a layer in
// flight that others need and that holds some of its files; a layer others
// need waits only for a lower layer of its own image.
func TestSharingFlights(t *testing.T) {
	blobBase, blobA, blobB, blobC := digest.FromString("base"), digest.FromString("A"), digest.FromString("B"), digest.FromString("C")
	c := NewCoordinator(Plan{
		{Name: "a", Layers: []Layer{{Blob: blobBase}, {Blob: blobA}, {Blob: blobB}}},
		{Name: "c", Layers: []Layer{{Blob: blobBase}, {Blob: blobC}}},
		{Name: "a2", Layers: []Layer{{Blob: blobBase}, {Blob: blobA}}},
	}, map[digest.Digest]Files{
		// B holds one of A's files, C one of A's 100 (a small overlap).
		blobA: files(100, "1", "2", "3", "4", "5", "6", "7", "8", "9", "10"),
		blobB: files(100, "1", "b1", "b2", "b3", "b4", "b5", "b6", "b7", "b8", "b9", "b10"),
		blobC: files(100, "2", "c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8", "c9", "c10", "c11", "c12", "c13", "c14", "c15", "c16", "c17", "c18", "c19", "c20"),
	}, nil, nil)
	ctx := context.Background()
	a, cImg := c.Join(ctx, 0, Hooks{}), c.Join(ctx, 1, Hooks{})
	for _, blob := range []digest.Digest{blobA, blobB} {
		if d := a.claimOrWait(blob, nil, false); d != fetchIt {
			t.Fatalf("a claiming %s: %v", blob, d)
		}
	}
	if !c.needed(blobA) || c.needed(blobC) {
		t.Fatalf("needed: A %v, C %v; want A (two images have it) and not C", c.needed(blobA), c.needed(blobC))
	}
	sharing := func(img *Image, blob digest.Digest, ownOnly bool) digest.Digest {
		c.mu.Lock()
		defer c.mu.Unlock()
		other, _ := c.sharingFlightLocked(img, blob, ownOnly)
		return other
	}
	if other := sharing(cImg, blobC, false); other != blobA {
		t.Errorf("C, which nobody else needs, waits for %q, want A (in flight, needed, with one of its files)", other)
	}
	if other := sharing(cImg, blobC, true); other != "" {
		t.Errorf("C, with ownOnly, waits for %s of another image", other)
	}
	if other := sharing(a, blobB, true); other != blobA {
		t.Errorf("B waits for %q, want A, below it in its own image", other)
	}
	if other := sharing(a, blobA, true); other != "" {
		t.Errorf("A waits for %s, which is above it in its own image", other)
	}
	c.committed(blobA)
	if other := sharing(cImg, blobC, false); other != "" {
		t.Errorf("C waits for %s once A is committed", other)
	}
}

// A layer found in the store once claimed (its owner reused it, or a
// lookup found it) has its files there as a committed one does: a layer
// with some of them waits for no other layer in flight that holds them
// too, and a layer similar to it is no longer needed for its sake.
func TestFilesOfALayerFoundInTheStore(t *testing.T) {
	blobBase, blobA, blobB, blobC := digest.FromString("base"), digest.FromString("A"), digest.FromString("B"), digest.FromString("C")
	c := NewCoordinator(Plan{
		{Name: "a", Layers: []Layer{{Blob: blobBase}, {Blob: blobA}}},
		{Name: "b", Layers: []Layer{{Blob: blobBase}, {Blob: blobB}}},
		{Name: "c", Layers: []Layer{{Blob: blobBase}, {Blob: blobC}}},
	}, map[digest.Digest]Files{
		// B holds all of A (A is similar to B); C holds one file of both.
		blobA: files(100, "1", "2", "3", "4", "5", "6", "7", "8", "9", "10"),
		blobB: files(100, "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "b1", "b2", "b3", "b4", "b5", "b6", "b7", "b8", "b9", "b10"),
		blobC: files(100, "1", "c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8", "c9", "c10", "c11", "c12", "c13", "c14", "c15", "c16", "c17", "c18", "c19", "c20"),
	}, nil, nil)
	ctx := context.Background()
	a, b, cImg := c.Join(ctx, 0, Hooks{}), c.Join(ctx, 1, Hooks{}), c.Join(ctx, 2, Hooks{})
	if d := a.claimOrWait(blobA, nil, false); d != fetchIt {
		t.Fatalf("a claiming A: %v", d)
	}
	a.reused(blobA) // the owner found A's layer in the store
	if d := b.claimOrWait(blobB, nil, false); d != fetchIt {
		t.Fatalf("b claiming B: %v", d)
	}
	c.mu.Lock()
	other, _ := c.sharingFlightLocked(cImg, blobC, false)
	needed := c.neededLocked(blobB)
	c.mu.Unlock()
	if other != "" {
		t.Errorf("C waits for %s for a file A's layer, in the store, has", other)
	}
	if needed {
		t.Error("B is needed, for A, whose layer is in the store")
	}
}
