package commit

import (
	"context"
	"slices"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
)

// files makes the Files of a layer: one file of size bytes per name.
func files(size int64, names ...string) Files {
	f := Files{}
	for _, n := range names {
		f[digest.FromString(n)] = size
	}
	return f
}

// similarRun is a run of three images with one layer each: A and B share
// three files, more than similarShare of either's bytes; C shares one of its
// five with A, a fifth of either's bytes.
func similarRun() (c *Coordinator, a, b, cImg *Image, blobA, blobB, blobC digest.Digest) {
	blobA, blobB, blobC = digest.FromString("A"), digest.FromString("B"), digest.FromString("C")
	c = NewCoordinator(Plan{
		{Name: "a", Layers: []Layer{{Blob: blobA}}},
		{Name: "b", Layers: []Layer{{Blob: blobB}}},
		{Name: "c", Layers: []Layer{{Blob: blobC}}},
	}, map[digest.Digest]Files{
		blobA: files(100, "1", "2", "3", "4", "10"),
		blobB: files(100, "1", "2", "3", "5"),
		blobC: files(100, "4", "6", "7", "8", "9"),
	}, nil, nil)
	ctx := context.Background()
	return c, c.Join(ctx, 0, Hooks{}), c.Join(ctx, 1, Hooks{}), c.Join(ctx, 2, Hooks{}), blobA, blobB, blobC
}

func TestSimilarLayersShareAQuarterOfTheirFileBytes(t *testing.T) {
	c, _, _, _, blobA, blobB, blobC := similarRun()
	if got := c.sim.similar[blobA]; !slices.Equal(got, []digest.Digest{blobB}) {
		t.Errorf("layers similar to A: %v, want only B", got)
	}
	if got := c.sim.similar[blobB]; !slices.Equal(got, []digest.Digest{blobA}) {
		t.Errorf("layers similar to B: %v, want only A", got)
	}
	if got := c.sim.similar[blobC]; len(got) != 0 {
		t.Errorf("layers similar to C: %v, want none", got)
	}
	if got := c.sim.saves[blobC]; got != 0 {
		t.Errorf("C saves %d bytes, want 0 (A's share of it is below similarShare)", got)
	}
	if got := c.sim.saves[blobA]; got != 300 {
		t.Errorf("A saves %d bytes, want 300 (B's three files)", got)
	}
}

// A layer whose lookup would claim it while another image fetches a similar
// layer waits for that one's commit, then decides again; a layer that is
// not similar enough does not wait.
func TestSimilarLayerWaitsForTheOtherOnesCommit(t *testing.T) {
	c, a, b, cImg, blobA, blobB, blobC := similarRun()
	if d := a.claimOrWait(blobA, a.lookingUp(blobA), false); d != fetchIt {
		t.Fatalf("a's lookup: %v, want fetchIt", d)
	}
	if d := cImg.claimOrWait(blobC, cImg.lookingUp(blobC), false); d != fetchIt {
		t.Fatalf("c's lookup: %v, want fetchIt: C is not similar to A", d)
	}
	got := make(chan decision, 1)
	go func() { got <- b.claimOrWait(blobB, b.lookingUp(blobB), false) }()
	eventually(t, "b waits for a's A", func() bool { return waiting(c, b) })
	fb := flightOf(c, blobB)
	if fb != nil {
		t.Fatal("b claimed B while a fetches A, a similar layer")
	}
	c.committed(blobA)
	if d := <-got; d != claimAgain {
		t.Fatalf("b after A was committed: %v, want claimAgain", d)
	}
	if b.waited(blobB) {
		t.Error("b reports B as obtained by waiting; it is still to be fetched")
	}
	if d := b.claimOrWait(blobB, nil, false); d != fetchIt {
		t.Fatalf("b deciding B again: %v, want fetchIt (claim)", d)
	}
}

// The wait ends too when the other layer's owner gives up, and the layer is
// then claimed: a failed owner never holds up a similar layer.
func TestSimilarLayerClaimedWhenTheOtherOwnerFails(t *testing.T) {
	c, a, b, _, blobA, blobB, _ := similarRun()
	a.claimOrWait(blobA, a.lookingUp(blobA), false)
	got := make(chan decision, 1)
	go func() { got <- b.claimOrWait(blobB, b.lookingUp(blobB), false) }()
	eventually(t, "b waits for a's A", func() bool { return waiting(c, b) })
	a.Done()
	if d := <-got; d != claimAgain {
		t.Fatalf("b after a gave up: %v, want claimAgain", d)
	}
	if d := b.claimOrWait(blobB, nil, false); d != fetchIt {
		t.Fatalf("b deciding B again: %v, want fetchIt (claim)", d)
	}
}

// A pull that owns a flight does not wait for a similar layer: another pull
// may be waiting for its flight, and that wait would then depend on a layer
// it does not need, or close a cycle through the other layer's owner.
func TestSimilarLayerNotWaitedForByAnOwner(t *testing.T) {
	c, a, b, _, blobA, blobB, _ := similarRun()
	a.claimOrWait(blobA, a.lookingUp(blobA), false)
	blobZ := digest.FromString("z")
	if d := b.claimOrWait(blobZ, nil, true); d != fetchIt {
		t.Fatalf("b claiming another blob: %v, want fetchIt", d)
	}
	if d := decideWithoutWaiting(t, c, a, b, blobB); d != fetchIt {
		t.Fatalf("b, an owner, looking up B: %v, want fetchIt", d)
	}
}

// decideWithoutWaiting runs b's lookup of blob and fails if b waits; owner
// is the pull whose flight it would wait for, ended then so that the test
// ends.
func decideWithoutWaiting(t *testing.T, c *Coordinator, owner, b *Image, blob digest.Digest) decision {
	t.Helper()
	got := make(chan decision, 1)
	go func() { got <- b.claimOrWait(blob, b.lookingUp(blob), false) }()
	for {
		select {
		case d := <-got:
			return d
		default:
		}
		if waiting(c, b) {
			owner.Done()
			<-got
			t.Fatal("b waits for another pull's similar layer")
		}
		time.Sleep(time.Millisecond)
	}
}

// Once a third layer brought the files two similar layers share, the
// second need not wait for the first: it would fetch nothing less.
func TestSimilarLayerNotWaitedForWhenItsFilesAreInTheStore(t *testing.T) {
	blobA, blobB, blobD := digest.FromString("A"), digest.FromString("B"), digest.FromString("D")
	c := NewCoordinator(Plan{
		{Name: "a", Layers: []Layer{{Blob: blobA}}},
		{Name: "b", Layers: []Layer{{Blob: blobB}}},
		{Name: "d", Layers: []Layer{{Blob: blobD}}},
	}, map[digest.Digest]Files{
		blobA: files(100, "1", "2", "3", "4"),
		blobB: files(100, "1", "2", "3", "5"),
		blobD: files(100, "1", "2", "3"),
	}, nil, nil)
	ctx := context.Background()
	a, b := c.Join(ctx, 0, Hooks{}), c.Join(ctx, 1, Hooks{})
	c.committed(blobD)
	a.claimOrWait(blobA, a.lookingUp(blobA), false)
	if d := decideWithoutWaiting(t, c, a, b, blobB); d != fetchIt {
		t.Fatalf("b looking up B with the shared files in the store: %v, want fetchIt", d)
	}
}

// The lead is the image whose layers save the others the most; the others
// may start once it has claimed them, or when its attempt ends.
func TestLeadIsReadyOnceItClaimedItsLayers(t *testing.T) {
	blobA, blobB := digest.FromString("A"), digest.FromString("B")
	blobBig := digest.FromString("big")
	// All of small's files, but small has under a quarter of big's.
	bigFiles := files(100, "1", "2", "4", "6", "7", "8", "9", "10", "11")
	allFiles := map[digest.Digest]Files{blobB: files(100, "1", "2"), blobA: files(100, "3"), blobBig: bigFiles}
	c := NewCoordinator(Plan{
		{Name: "small", Layers: []Layer{{Blob: blobB}}},
		{Name: "big", Layers: []Layer{{Blob: blobX}, {Blob: blobA}, {Blob: blobBig}}},
	}, allFiles, nil, nil)
	lead, ready := c.Lead()
	if lead != 1 {
		t.Fatalf("lead %d, want 1 (its top layer has all of the other's files)", lead)
	}
	big := c.Join(context.Background(), 1, Hooks{})
	select {
	case <-ready:
		t.Fatal("ready before the lead looked anything up")
	default:
	}
	if d := big.claimOrWait(blobBig, big.lookingUp(blobBig), false); d != fetchIt {
		t.Fatalf("the lead's top layer: %v, want fetchIt", d)
	}
	select {
	case <-ready:
	default:
		t.Fatal("not ready after the lead claimed the layer that saves the others files")
	}

	c = NewCoordinator(Plan{
		{Name: "small", Layers: []Layer{{Blob: blobB}}},
		{Name: "big", Layers: []Layer{{Blob: blobBig}}},
	}, allFiles, nil, nil)
	_, ready = c.Lead()
	c.Join(context.Background(), 1, Hooks{}).Done() // it failed before any lookup
	select {
	case <-ready:
	default:
		t.Fatal("not ready after the lead's attempt ended")
	}
}
