package commit

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	"go.podman.io/image/v5/types"
)

// These tests drive the coordinator's decisions directly, in orders that the
// end-to-end tests reach only by chance. The store side is covered end to
// end in tests/dedup_test.go against a real store and registry.

var (
	blobX = digest.FromString("x")
	blobY = digest.FromString("y")
)

// waitFor runs claimOrWait in a goroutine and returns its decision channel.
func waitFor(p *Image, blob digest.Digest) <-chan decision {
	out := make(chan decision, 1)
	go func() { out <- p.claimOrWait(blob, nil, true) }()
	return out
}

// twoImages returns the coordinator of a run of two images, a and b, that
// both have layers, and the first attempt of each.
func twoImages(layers []Layer) (c *Coordinator, a, b *Image) {
	c = NewCoordinator(Plan{{Name: "a", Layers: layers}, {Name: "b", Layers: layers}}, nil, nil, nil)
	return c, c.Join(context.Background(), 0, Hooks{}), c.Join(context.Background(), 1, Hooks{})
}

// done and skipped are containers/image's progress events that end blob's
// transfer.
func done(blob digest.Digest) types.ProgressProperties {
	return types.ProgressProperties{Event: types.ProgressEventDone, Artifact: types.BlobInfo{Digest: blob}}
}

func skipped(blob digest.Digest) types.ProgressProperties {
	return types.ProgressProperties{Event: types.ProgressEventSkipped, Artifact: types.BlobInfo{Digest: blob}}
}

// waitEnd says how img's last wait for blob ended.
func waitEnd(img *Image, blob digest.Digest) WaitEnd {
	img.mu.Lock()
	defer img.mu.Unlock()
	return img.waitEnds[blob]
}

// flightOf is the flight of blob under way, or nil.
func flightOf(c *Coordinator, blob digest.Digest) *flight {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.flights[blob]
}

func waiting(c *Coordinator, waiter *Image) bool {
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
	c, a, b := twoImages(nil)
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
	if !b.waited(blobX) {
		t.Error("b does not report that it waited for the blob")
	}
}

func TestOwnerGivingUpHandsTheBlobOver(t *testing.T) {
	c, a, b := twoImages(nil)
	a.claimOrWait(blobX, nil, true)
	got := waitFor(b, blobX)
	eventually(t, "b waits", func() bool { return waiting(c, b) })
	a.Done() // a failed
	if d := <-got; d != claimAgain {
		t.Fatalf("after the owner gave up: %v, want claimAgain", d)
	}
	if end := waitEnd(b, blobX); end != OwnerFailed {
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
	c, a, b := twoImages(nil)
	a.claimOrWait(blobX, nil, true)
	got := waitFor(b, blobX)
	eventually(t, "b waits", func() bool { return waiting(c, b) })
	a.Progress(skipped(blobX))
	if d := <-got; d != lookAgain {
		t.Fatalf("after the owner reused the blob: %v, want lookAgain", d)
	}
	// The layer was in the store all along (under another digest): b reuses
	// it too, and obtained nothing by waiting.
	if b.waited(blobX) {
		t.Error("b reports it obtained by waiting a layer the store already had")
	}
}

// Two pulls that each own what the other wants: the second wait would close
// a cycle, so it is refused and that pull fetches the blob itself.
func TestWaitThatWouldCloseACycleIsRefused(t *testing.T) {
	c, a, b := twoImages(nil)
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
	c := NewCoordinator(Plan{{Name: "a"}, {Name: "b"}, {Name: "z"}}, nil, nil, nil)
	blobZ := digest.FromString("z")
	a, b, z := c.Join(context.Background(), 0, Hooks{}), c.Join(context.Background(), 1, Hooks{}), c.Join(context.Background(), 2, Hooks{})
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
func TestLayerEndEndsFlightWhenTheStoreHasTheLayer(t *testing.T) {
	c, a, b := twoImages(nil)
	var present atomic.Bool
	a.reusable = func(blob digest.Digest) bool { return blob == blobX && present.Load() }
	a.claimOrWait(blobX, nil, true)
	got := waitFor(b, blobX)
	eventually(t, "b waits", func() bool { return waiting(c, b) })
	a.Progress(done(blobY)) // an event while the layer is not there yet: the flight goes on
	select {
	case d := <-got:
		t.Fatalf("the wait ended (%v) though the store does not have the layer", d)
	case <-time.After(50 * time.Millisecond):
	}
	present.Store(true)
	a.Progress(done(blobY))
	if d := <-got; d != lookAgain {
		t.Fatalf("after the owner's layer ended with the layer in the store: %v, want lookAgain", d)
	}
	if end := waitEnd(b, blobX); end != InStore {
		t.Errorf("wait ended %q, want %q", end, InStore)
	}
	if !b.waited(blobX) {
		t.Error("b does not report that it obtained the blob by waiting")
	}
}

func TestWaitsEndOnCancellation(t *testing.T) {
	c, a, _ := twoImages(nil)
	ctx, cancel := context.WithCancel(context.Background())
	b := c.Join(ctx, 1, Hooks{})
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

// The plan links each zstd:chunked blob with its TOC digest both ways, and
// counts each image once per blob it needs, however often it lists it.
func TestPlanLinksTOCsAndCountsNeeds(t *testing.T) {
	toc := digest.FromString("toc")
	c := NewCoordinator(Plan{
		{Name: "a", Layers: []Layer{{Blob: blobX, TOC: toc}, {Blob: blobY}, {Blob: blobX, TOC: toc}}},
		{Name: "b", Layers: []Layer{{Blob: blobY}}},
		{Name: "unresolved"},
	}, nil, nil, nil)
	if c.tocToBlob[toc] != blobX || c.blobToTOC[blobX] != toc {
		t.Error("the plan's TOC digest is not linked both ways with its blob")
	}
	if c.shared(blobX) {
		t.Error("a blob one image lists twice counts as shared")
	}
	if !c.shared(blobY) {
		t.Error("a blob two images need does not count as shared")
	}
}

// Progress says how each event's blob was obtained.
func TestProgressSaysHowABlobWasObtained(t *testing.T) {
	c, a, b := twoImages(nil)
	if got := a.Progress(types.ProgressProperties{Event: types.ProgressEventRead, Artifact: types.BlobInfo{Digest: blobX}}); got != NotEnded {
		t.Errorf("a read event: %v, want NotEnded", got)
	}
	if got := a.Progress(done(blobX)); got != Fetched {
		t.Errorf("a done event: %v, want Fetched", got)
	}
	if got := a.Progress(skipped(blobY)); got != Reused {
		t.Errorf("a skipped event without a wait: %v, want Reused", got)
	}
	a.claimOrWait(blobX, nil, true)
	got := waitFor(b, blobX)
	eventually(t, "b waits", func() bool { return waiting(c, b) })
	c.committed(blobX)
	<-got
	if got := b.Progress(skipped(blobX)); got != Waited {
		t.Errorf("a skipped event after a wait that a commit ended: %v, want Waited", got)
	}
}

// Invariant 6: a pull whose upper layer is looked up before its lower one
// decides the lower one first. Here b looks up Y before X: it must claim X
// as well, so that a, which wants X, waits for b instead of claiming X and
// later wanting Y from b while b waits for a's X.
func TestUpperLookupClaimsUnlookedLowerLayers(t *testing.T) {
	c, a, b := twoImages([]Layer{{Blob: blobX}, {Blob: blobY}})
	if d := b.claimOrWait(blobY, b.lookingUp(blobY), true); d != fetchIt {
		t.Fatalf("b's upper lookup: %v, want fetchIt", d)
	}
	fx := flightOf(c, blobX)
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
	c, a, b := twoImages([]Layer{{Blob: blobX}, {Blob: blobY}})
	a.claimOrWait(blobX, a.lookingUp(blobX), true)
	below := b.lookingUp(blobY)
	got := make(chan decision, 1)
	go func() { got <- b.claimOrWait(blobY, below, true) }()
	eventually(t, "b waits for a's X", func() bool { return waiting(c, b) })
	fy := flightOf(c, blobY)
	if fy != nil {
		t.Fatal("b claimed Y while a fetches X, below it")
	}
	c.committed(blobX)
	if d := <-got; d != claimAgain {
		t.Fatalf("b after a committed X: %v, want claimAgain (decide again)", d)
	}
	if !b.waited(blobX) {
		t.Error("b does not report that it obtained X by waiting")
	}
	// X is in the store now, so the Store passes no layers below Y.
	if d := b.claimOrWait(blobY, nil, true); d != fetchIt {
		t.Fatalf("b deciding Y again: %v, want fetchIt (claim)", d)
	}
}

// Invariant 6 below an image's own top layer: its lookup waits for no pull
// of this process, and claims the layers below it that nobody fetches only
// up to the first one another pull fetches: a claim above that could make
// the other pull, waiting for it, wait for a pull that waits for it.
func TestTopLayerLookupClaimsNothingAboveAnotherPullsFlight(t *testing.T) {
	blobZ := digest.FromString("z")
	c := NewCoordinator(Plan{
		{Name: "a", Layers: []Layer{{Blob: blobX}, {Blob: blobY}}},
		{Name: "b", Layers: []Layer{{Blob: blobX}, {Blob: blobY}, {Blob: blobZ}}},
	}, nil, nil, nil)
	a := c.Join(context.Background(), 0, Hooks{})
	b := c.Join(context.Background(), 1, Hooks{})
	a.claimOrWait(blobX, a.lookingUp(blobX), true)
	if d := b.claimOrWait(blobZ, b.lookingUp(blobZ), false); d != fetchIt {
		t.Fatalf("b's own top layer: %v, want fetchIt without waiting for a's X", d)
	}
	fy := flightOf(c, blobY)
	if fy != nil {
		t.Fatalf("b's top-layer lookup claimed Y, above a's flight of X (owner %s)", fy.ownerName())
	}
}
