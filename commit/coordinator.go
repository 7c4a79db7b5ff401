// How pulls of one run share their fetches.
//
// containers/image pulls one image per copy.Image call. Each call asks the
// store whether a layer is already there (TryReusingBlobWithOptions →
// LayersByCompressedDigest and friends) before fetching it, and makes the
// layer visible only when it commits it (PutLayer, or ApplyStagedLayer for
// partial pulls) once every lower layer of that image is committed. Any
// other pull that asks in between misses and fetches the same blob again.
// herd gives every pull its own *Store, a decorator around the one shared
// storage.Store, and a shared Coordinator that remembers which pull is
// fetching which blob. A pull whose lookup misses a blob that another pull
// is fetching waits for that pull to commit it, then looks again.
//
// Invariants (keep them true when changing this file):
//
//  1. A flight exists for a blob digest only while its owner pull is running
//     and has neither committed nor abandoned it. A pull claims a blob (starts
//     a flight) when its own lookup misses and nobody else holds a flight, so
//     the claim is made by the goroutine that goes on to fetch it, while it
//     holds a slot of the shared semaphore.
//  2. A flight ends (its done channel is closed) exactly once, on a signal
//     herd observes with certainty, never on a clock:
//     - Committed: any pull commits a layer made from the blob (PutLayer,
//     matched by compressed digest, or ApplyStagedLayer, matched by TOC
//     digest for zstd:chunked partial pulls);
//     - OwnerReused: the owner turns out to reuse the blob after all
//     (a \"skipped\" event: its compressed-digest lookup missed, but a TOC or
//     DiffID lookup that follows found the layer; not the "skipped" event
//     of a whole layer the owner's Store fetches itself, which
//     containers/image takes as reused before it is fetched: its flight
//     ends when its layer is committed, wholelayer.go);
//     - InStore: containers/image finished one of the owner's layers (a
//     "done" or "skipped" event, Image.Progress) and the store now has a
//     layer that a lookup of the blob finds (reusable): containers/image
//     commits a layer without PutLayer when one with the same chain ID
//     already exists (made from another compression of the same content,
//     by podman load, by a local build), and every commit happens inside
//     the call that precedes such an event;
//     - OwnerFailed: the owner's copy.Image returned without committing the
//     blob (Image.Done), whatever the reason: its fetch failed, a lower
//     layer failed, it was abandoned as stalled, or it was cancelled.
//     Waiters then look the layer up again; if it is still missing they
//     claim it.
//  3. Waiting never forms a cycle. containers/image holds the waiting image's
//     destination lock while it asks the store, so a waiting pull cannot
//     commit anything until its wait ends. A pull therefore waits for another
//     only if the owner does not, directly or through other waits, already
//     wait for it (checked on the pull-level wait graph under one mutex).
//     Otherwise it fetches the blob itself: a duplicate fetch, never a hang.
//     A pull also waits, before claiming a zstd:chunked layer, for another
//     pull's flight of a layer with many of the same files (similar.go),
//     but only while it owns no flight: no pull then waits for it, and the
//     wait closes no cycle. Where herd pulls an image's layers itself, a
//     wait for another pull of this process is made at the layer's commit
//     instead (commitwait.go), and a layer's partial pull may wait for a
//     layer with some of its files (partiallayer.go): the image's other
//     layers go on meanwhile, but nothing of it above the layer can be
//     committed, so these waits are in the wait graph, with the same check,
//     from their decision to their end.
//  4. Waits need no new semaphore slot to end when the owner succeeds: the
//     owner claimed while holding a slot for that layer, and containers/image
//     acquired the slots of every lower layer of the owner's image before it
//     (copyLayers acquires in layer order), so the owner can finish and
//     commit without a new slot, and the event that ends the flight (2)
//     follows. When the owner fails, or its layer needs no PutLayer and no
//     event shows it in the store, the flight ends only when its copy.Image
//     returns, which needs slots for the owner's upper layers and its
//     config. The pull engine guarantees those: while an image waits, it
//     lends the run as many slots as that image can hold (pull/slots.go), so
//     waiting images never hold the slots an owner needs.
//  5. A wait has no clock of its own. It ends when the flight ends (2), when
//     the waiting pull is cancelled, or when the store has a layer a lookup
//     of the blob finds (checked every second as well: another process, a
//     second herd or podman, may have committed it; that is the only
//     polling, and it ends a wait only with InStore). A stuck owner costs a
//     waiter what the owner's own stall rule allows, no more.
//  6. A pull decides about its layers in layer order. containers/image runs
//     every layer of an image in its own goroutine, so the lookup of layer 2
//     may come before that of layer 1. If it claimed layer 2 while another
//     pull owns layer 1, a pull waiting on its layer 1 would wait for the
//     first, which wants layer 2: a cycle, broken by a duplicate fetch (3).
//     So when a lookup misses, the layers below it that this pull has not
//     looked up yet, and that the store does not have, are decided first,
//     on their behalf: claimed if nobody fetches them, waited for if another
//     pull does. When no other image of the run needs the blob looked up
//     (an image's own top layer), the waits for this process's pulls are
//     skipped: nobody in this process will wait for it, so claiming it
//     closes no cycle here, and its fetch should not wait for lower layers
//     (invariant 8 still waits for another process's flight below it, and
//     skips nothing while other herds run). The layers below it that
//     nobody fetches are still claimed, bottom up until one is not this
//     pull's: that waits for nothing, and a herd process started later
//     finds them taken (8).
//     Their goroutines already hold their slots (copyLayers acquires in
//     layer order, and a layer keeps its slot until its lookup and copy are
//     over), so these claims keep invariants 1 and 4. With shared layers in
//     the same order in every image, as base images give, no wait then
//     closes a cycle; only images sharing layers in different orders still
//     cost a duplicate fetch.
//  7. An image whose manifest lists the same blob twice is copied one layer
//     at a time (Image.OneLayerAtATime): containers/image copies both
//     occurrences at once, and looks each up while holding the image's
//     destination lock, which the other occurrence needs to record its
//     fetched blob; waiting for our own flight would never end, and not
//     waiting fetches the blob twice. Copied in layer order, the upper
//     occurrence finds the lower one's fetched blob in containers/image's
//     own pending files and reuses it. Its layers then never hold a slot
//     another of its layers needs (invariant 4 holds trivially).
//  8. Other herd processes on the same store take part through the blob
//     locks beside it (BlobLocks): an owner holds its blob's lock for as
//     long as its flight lasts. A pull that would claim a blob whose lock
//     another process holds gets a flight owned by that process instead,
//     and waits for it like for any other (the lock is tried every 20 ms:
//     when it is free the holder committed, gave up or died). Such a wait
//     must not close a cycle across processes, which no process can see.
//     So a pull never waits for another process's flight of a layer while
//     it owns a flight of a layer above it in its image (it fetches the
//     layer itself: a duplicate, never a hang), and never claims a layer
//     while another process's flight of a layer below it is under way (it
//     waits for that first, as in 6: for layers whose own lookup is under
//     way too, by trying their lock). An owner's commit then never depends
//     on another process, so every flight another process waits for ends.
//     While other herd processes are running (BlobLocks.othersActive), 6
//     also applies to blobs only this image needs: otherwise an image's
//     own top layer, claimed before its base, would turn every wait for a
//     base another process fetches into a duplicate.
//     The waits of another process are not in this process's wait graph,
//     and need none of its slots (4).
//
// A blob a pull claims is fetched by containers/image, or by the Store
// itself in the background, whole (wholelayer.go) or partially for
// zstd:chunked (partiallayer.go): the flight is the same, and so are these
// invariants; the background fetch takes a --jobs slot of its own (or the
// one of the commit that waits for it), and needs nothing from another
// pull once it has one (its waits for layers with some of its files come
// before, in the wait graph).
//
// Waits are decided only in LayersByCompressedDigest, the lookup every
// TryReusingBlobWithOptions makes before any TOC- or DiffID-based lookup,
// so one decision point serves gzip, zstd and zstd:chunked alike; they are
// made there, or at the layer's commit (commitwait.go). Before
// claiming a blob the Store asks whether a lookup would find its layer some
// other way (reusable: by TOC digest for a partially pulled layer, or by
// the DiffID that the shared blob-info cache records for the blob): if so,
// containers/image finds it next, and there is nothing to claim.

package commit

import (
	"context"
	"runtime"
	"slices"
	"sync"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"
	"go.podman.io/image/v5/types"
)

// WaitEnd says how a wait for another pull's blob ended (invariant 2).
type WaitEnd string

const (
	// Committed: a pull of this run committed a layer made from the blob.
	Committed WaitEnd = "committed"
	// OwnerReused: the owner found the layer already in the store, under
	// another digest (the same content pulled earlier in another compression).
	OwnerReused WaitEnd = "reused"
	// InStore: the store has a layer the waiter can reuse, though no pull of
	// this run committed one from this blob: the owner's containers/image
	// used an existing layer with the same content, or another process
	// committed it.
	InStore WaitEnd = "store"
	// OwnerFailed: the owner's pull ended without the layer; the waiter
	// fetches the blob itself.
	OwnerFailed WaitEnd = "owner-failed"
	// Cancelled: the waiting pull was cancelled.
	Cancelled WaitEnd = "cancelled"
)

// storePollInterval is how often a waiting pull asks the store whether
// another process committed the layer it waits for (invariant 5).
const storePollInterval = time.Second

// DiffIDs is the part of containers/image's blob-info cache the Coordinator
// reads: the DiffID recorded for a blob once some pull has fetched it whole,
// and for a zstd:chunked TOC digest once some pull has pulled it partially.
// The caches blobinfocache.DefaultCache returns (sqlite, memory) have both.
type DiffIDs interface {
	UncompressedDigest(blob digest.Digest) digest.Digest
	UncompressedDigestForTOC(toc digest.Digest) digest.Digest
}

// Plan is what a run will pull, known before any of its pulls starts: each
// image of the run, by its index, with its layers as its manifest lists
// them, lowest first. The coordinator learns from it which blobs more than
// one image needs (invariant 6) and which blob a TOC digest belongs to (a
// partial pull's commit knows only the TOC digest: invariant 2).
type Plan []PlannedImage

// PlannedImage is one image of a Plan. An image that is not pulled (its
// reference did not resolve) has no layers.
type PlannedImage struct {
	Name   string // how wait events and logs name the image
	Layers []Layer
}

// Layer is one layer blob of a planned image.
type Layer struct {
	Blob digest.Digest // the compressed blob's digest
	Size int64         // the blob's size as the manifest declares it; -1 if unknown
	TOC  digest.Digest // zstd:chunked's TOC digest; "" for other layers
}

// Coordinator is shared by all pulls of one run. The zero value is not
// usable; call NewCoordinator.
type Coordinator struct {
	plan    Plan
	diffIDs DiffIDs       // may be nil: no DiffID lookups
	locks   *BlobLocks    // may be nil: no coordination with other processes
	stop    chan struct{} // closed by Close: ends the watches of other processes' flights

	// Fixed by NewCoordinator from the plan: read without c.mu.
	tocToBlob map[digest.Digest]digest.Digest // zstd:chunked TOC digest → compressed blob digest
	blobToTOC map[digest.Digest]digest.Digest // and back
	needs     map[digest.Digest]int           // how many images of the run have each blob
	sim       similarity                      // which zstd:chunked layers have many of the same files (similar.go)
	lead      int                             // the plan's image that goes first (similar.go); -1 if none
	leadReady chan struct{}                   // closed once the others may start
	leadOnce  sync.Once
	stagings  *stagingGate // partial pulls under way (partiallayer.go)
	// Closed when the graph driver's probe ends (driverprobe.go); nil if
	// there is none.
	driverProbed chan struct{}

	mu      sync.Mutex
	flights map[digest.Digest]*flight // by compressed blob digest
	// storedFiles are the shared files (similarity.shared) of the layers
	// this run committed.
	storedFiles    map[digest.Digest]bool
	committedBlobs map[digest.Digest]bool    // the layers this run committed or found in the store, by blob
	waitsFor       map[*Image]map[*Image]int // waiter → owner → number of waits
}

type flight struct {
	owner   *Image // nil: another process fetches the blob (invariant 8)
	done    chan struct{}
	end     WaitEnd // set before done is closed
	release func()  // the owner's blob lock (BlobLocks); nil for another process's flight
}

// ownerName names the owner for wait events and logs.
func (f *flight) ownerName() string {
	if f.owner == nil {
		return "another herd process"
	}
	return f.owner.name
}

// NewCoordinator returns the coordinator of one run that pulls plan.
// files are the files of the plan's zstd:chunked layers by blob, from their
// TOCs, where they were read (may be nil): layers with files in common are
// ordered (similar.go). diffIDs is the blob-info cache the run's
// copy.Image calls share (the same BlobInfoCacheDir), so that a wait ends
// as soon as the layer can be reused by DiffID; nil disables that
// (invariant 2, InStore, then relies on compressed and TOC digests). locks, if not nil, are the store's blob locks
// shared with other herd processes (invariant 8). Call Close when the run's
// pulls are done.
//
// The coordinator has no clock of its own (invariant 5): how long a
// transfer may make no progress is the pull engine's stall policy, which
// ends an owner's attempt, and with it its flights (OwnerFailed).
func NewCoordinator(plan Plan, files map[digest.Digest]Files, diffIDs DiffIDs, locks *BlobLocks) *Coordinator {
	c := &Coordinator{
		plan:           plan,
		sim:            newSimilarity(files),
		diffIDs:        diffIDs,
		locks:          locks,
		stop:           make(chan struct{}),
		tocToBlob:      map[digest.Digest]digest.Digest{},
		blobToTOC:      map[digest.Digest]digest.Digest{},
		needs:          plan.Needs(),
		flights:        map[digest.Digest]*flight{},
		storedFiles:    map[digest.Digest]bool{},
		committedBlobs: map[digest.Digest]bool{},
		waitsFor:       map[*Image]map[*Image]int{},
	}
	c.lead, c.leadReady = leadOf(plan, c.sim.saves), make(chan struct{})
	c.stagings = newStagingGate(runtime.GOMAXPROCS(0))
	for _, img := range plan {
		for _, l := range img.Layers {
			if l.TOC != "" {
				c.tocToBlob[l.TOC] = l.Blob
				c.blobToTOC[l.Blob] = l.TOC
			}
		}
	}
	return c
}

// Needs says how many images of the plan need each layer blob: an image
// that lists a blob twice counts once.
func (p Plan) Needs() map[digest.Digest]int {
	needs := map[digest.Digest]int{}
	for _, img := range p {
		counted := map[digest.Digest]bool{}
		for _, l := range img.Layers {
			if !counted[l.Blob] {
				counted[l.Blob] = true
				needs[l.Blob]++
			}
		}
	}
	return needs
}

// Close ends the coordinator's watches of other processes' flights, and
// its part in the store's blob locks.
func (c *Coordinator) Close() {
	close(c.stop)
	c.locks.Close()
	c.awaitDriverProbe()
}

// shared reports whether more than one image of the run needs blob.
func (c *Coordinator) shared(blob digest.Digest) bool { return c.needs[blob] > 1 }

// WaitEvent says that an image waited for another pull's blob, and how the
// wait ended.
type WaitEvent struct {
	Blob   digest.Digest
	Owner  string  // the other pull's name, or "another herd process"
	End    WaitEnd // how the wait ended
	Waited time.Duration
	// Similar is set when the wait was for another blob with files in
	// common with Blob (similar.go, partiallayer.go): End says how that
	// blob's flight ended, and Blob is still to be fetched.
	Similar digest.Digest
	// AtCommit: the wait is made at the layer's commit (commitwait.go),
	// not in its lookup: the image's other layers go on meanwhile, and the
	// commit lends the run the one slot it holds.
	AtCommit bool
}

// Hooks are how the coordinator tells the pull engine what happens to one
// image's layers, from the goroutine where it happens. Any may be nil (Join
// puts a no-op in its place).
type Hooks struct {
	// WaitStarted: the image waits for the Owner's fetch of the Blob, or
	// before fetching the Blob for its fetch of a layer with some of the
	// same files (Similar); End and Waited are not set yet. Unless
	// AtCommit, containers/image holds the image's lock meanwhile, so none
	// of its other layers can finish until WaitEnded.
	WaitStarted func(WaitEvent)
	WaitEnded   func(WaitEvent)
	// CommitStarted: the blob's fetch is over and its layer's commit starts
	// (the pull engine's stall watchdog stops timing the transfer).
	CommitStarted func(blob digest.Digest)
	// Committed: the image committed a layer made from blob; partial for a
	// zstd:chunked partial pull.
	Committed func(blob digest.Digest, partial bool)
	// CommitFailed: a layer's commit failed, as it happens; containers/image
	// reports it only once all the image's other layers have ended. blob is
	// "" for the image record itself.
	CommitFailed func(blob digest.Digest, err error)
}

// withNoOps returns h with a no-op for each hook not given, so that callers
// never check.
func (h Hooks) withNoOps() Hooks {
	if h.WaitStarted == nil {
		h.WaitStarted = func(WaitEvent) {}
	}
	if h.WaitEnded == nil {
		h.WaitEnded = func(WaitEvent) {}
	}
	if h.CommitStarted == nil {
		h.CommitStarted = func(digest.Digest) {}
	}
	if h.Committed == nil {
		h.Committed = func(digest.Digest, bool) {}
	}
	if h.CommitFailed == nil {
		h.CommitFailed = func(digest.Digest, error) {}
	}
	return h
}

// Image is one attempt of one image's pull, its part in the run. Create it
// with Join, give Store(...) to containers/image as that image's store,
// report every progress event of its copy.Image to Progress, and call Done
// when the copy.Image returns.
type Image struct {
	c     *Coordinator
	ctx   context.Context
	index int // in the plan
	name  string
	hooks Hooks

	// reusable reports whether a lookup of blob in the shared store finds a
	// layer; set by Store (invariants 2 and 5).
	reusable func(blob digest.Digest) bool

	layers  []digest.Digest // the image's layer blobs, lowest first
	planned []Layer         // and as the plan has them

	// whole, if set, lets the Store fetch layers itself (wholelayer.go,
	// partiallayer.go) and wait at their commits (commitwait.go).
	whole        *LayerFetches
	wholeCtx     context.Context // ends the fetches when copy.Image returns
	wholeCancel  context.CancelFunc
	wholeRunning sync.WaitGroup

	mu       sync.Mutex
	claims   map[digest.Digest]*flight
	waitEnds map[digest.Digest]WaitEnd // how the last wait for each blob ended
	looked   map[digest.Digest]bool    // layers decided by or for their own lookup (invariant 6)

	wholeFetches map[string]*wholeFetch // by layer ID, until applied
	wholeBlobs   map[digest.Digest]bool // blobs herd fetches itself
	wholeErr     error                  // the first failure of one

	commitWaits map[digest.Digest]*commitWait // waits made at the layers' commits (commitwait.go)
}

// Join starts an attempt of the plan's image number image; ctx cancels its
// waits. Each attempt (a retry is a new copy.Image) joins anew.
func (c *Coordinator) Join(ctx context.Context, image int, hooks Hooks) *Image {
	planned := c.plan[image]
	layers := make([]digest.Digest, len(planned.Layers))
	for i, l := range planned.Layers {
		layers[i] = l.Blob
	}
	return &Image{
		c: c, ctx: ctx, index: image, name: planned.Name, hooks: hooks.withNoOps(), layers: layers, planned: planned.Layers,
		claims:   map[digest.Digest]*flight{},
		waitEnds: map[digest.Digest]WaitEnd{},
		looked:   map[digest.Digest]bool{},
	}
}

// OneLayerAtATime reports whether the image lists a layer blob more than
// once, so that its copy.Image must copy one layer at a time (invariant 7).
func (img *Image) OneLayerAtATime() bool {
	return listsTwice(img.planned)
}

// listsTwice reports whether some blob is in layers more than once.
func listsTwice(layers []Layer) bool {
	seen := map[digest.Digest]bool{}
	for _, l := range layers {
		if seen[l.Blob] {
			return true
		}
		seen[l.Blob] = true
	}
	return false
}

// lookingUp records that the pull's own lookup of blob has started, and
// returns the layers below blob that this pull does not own a flight of,
// lowest first (invariants 6 and 8).
func (img *Image) lookingUp(blob digest.Digest) []digest.Digest {
	img.mu.Lock()
	defer img.mu.Unlock()
	img.looked[blob] = true
	var below []digest.Digest
	for _, l := range img.layers {
		if l == blob {
			return below
		}
		if img.claims[l] == nil {
			below = append(below, l)
		}
	}
	return nil // not one of the manifest's layers: nothing is known below it
}

// undecided reports whether no lookup of blob by this pull has started.
func (img *Image) undecided(blob digest.Digest) bool {
	img.mu.Lock()
	defer img.mu.Unlock()
	return !img.looked[blob]
}

// waited reports whether this image obtained blob by waiting for another
// pull's fetch of it (and not by fetching it, or because the owner found it
// in the store already).
func (img *Image) waited(blob digest.Digest) bool {
	img.mu.Lock()
	defer img.mu.Unlock()
	switch img.waitEnds[blob] {
	case Committed, InStore:
		return true
	}
	return false
}

// Obtained says how containers/image obtained a blob, as the progress event
// that ends its transfer shows.
type Obtained int

const (
	NotEnded Obtained = iota // the event ends no transfer
	// Fetched: a "done" event; the blob was fetched whole, or for
	// zstd:chunked partially (Hooks.Committed says which).
	Fetched
	// Reused: a "skipped" event; the store had the layer.
	Reused
	// Waited: a "skipped" event after the image waited for another pull's
	// fetch of the blob, which put the layer in the store.
	Waited
)

// Progress is how the pull engine reports each of containers/image's
// progress events for this image, in the order they come; it says how the
// event's blob was obtained if the event ends its transfer. The events end
// flights (invariant 2): "skipped" one the owner turns out not to need
// (OwnerReused), and "done" and "skipped" every flight whose layer a lookup
// now finds (InStore). containers/image sends "skipped" events only when
// copy.Options.ProgressInterval is set (copy/single.go): the pull engine
// must set it.
func (img *Image) Progress(pp types.ProgressProperties) Obtained {
	switch pp.Event {
	case types.ProgressEventDone:
		img.layerEnded()
		return Fetched
	case types.ProgressEventSkipped:
		if obtained, atCommit := img.commitWaitSkipped(pp.Artifact.Digest); atCommit {
			// Reported once the wait at the layer's commit has ended.
			img.layerEnded()
			return obtained
		}
		if img.fetchesItself(pp.Artifact.Digest) {
			// containers/image took the layer herd is fetching as reused:
			// the fetch goes on, and its flight with it (wholelayer.go).
			img.layerEnded()
			return NotEnded
		}
		img.reused(pp.Artifact.Digest)
		img.layerEnded()
		// A wait, if any, ended before containers/image reported the skip.
		if img.waited(pp.Artifact.Digest) {
			return Waited
		}
		return Reused
	}
	return NotEnded
}

// Done ends every flight the pull still owns (invariant 2, OwnerFailed).
// Call it exactly once, after copy.Image returns, whatever it returned.
func (img *Image) Done() {
	c := img.c
	c.mu.Lock()
	defer c.mu.Unlock()
	img.mu.Lock()
	for blob, f := range img.claims {
		c.endFlightLocked(blob, f, OwnerFailed)
	}
	img.claims = map[digest.Digest]*flight{}
	img.mu.Unlock()
	c.leadDecidedLocked(img, true)
}

// reused ends this image's flight for blob, if it has one, because it found
// the layer in the store after claiming it: containers/image reports a blob
// as skipped only after its reuse check succeeded.
func (img *Image) reused(blob digest.Digest) {
	img.c.mu.Lock()
	defer img.c.mu.Unlock()
	img.mu.Lock()
	defer img.mu.Unlock()
	if f := img.claims[blob]; f != nil {
		delete(img.claims, blob)
		img.c.endFlightLocked(blob, f, OwnerReused)
	}
}

// layerEnded ends each flight this image owns whose layer a lookup now finds
// in the store (invariant 2, InStore). Progress calls it after every "done"
// or "skipped" event: containers/image commits layers only inside the calls
// that precede those events, sometimes without PutLayer.
func (img *Image) layerEnded() {
	img.mu.Lock()
	var blobs []digest.Digest
	for blob := range img.claims {
		blobs = append(blobs, blob)
	}
	img.mu.Unlock()
	for _, blob := range blobs {
		if img.reusable == nil || !img.reusable(blob) { // store lookups, outside the locks
			continue
		}
		img.c.mu.Lock()
		img.mu.Lock()
		if f := img.claims[blob]; f != nil {
			delete(img.claims, blob)
			img.c.endFlightLocked(blob, f, InStore)
		}
		img.mu.Unlock()
		img.c.mu.Unlock()
	}
}

// endFlightLocked closes f if it is still the current flight for blob.
// c.mu must be held.
func (c *Coordinator) endFlightLocked(blob digest.Digest, f *flight, end WaitEnd) {
	if c.flights[blob] != f {
		return
	}
	delete(c.flights, blob)
	if end == OwnerReused || end == InStore {
		// The layer is in the store, as if committed: its files are
		// there for the partial pulls that wait for some of them.
		c.filesCommittedLocked(blob)
	}
	f.end = end
	close(f.done)
	if f.release != nil {
		f.release()
	}
}

// committed ends the flight of blob (whoever owns it) because a layer made
// from it is now in the store.
func (c *Coordinator) committed(blob digest.Digest) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.filesCommittedLocked(blob)
	if f := c.flights[blob]; f != nil {
		if f.owner != nil {
			f.owner.mu.Lock()
			delete(f.owner.claims, blob)
			f.owner.mu.Unlock()
		}
		c.endFlightLocked(blob, f, Committed)
	}
}

// decision is what a pull does about a blob its lookup did not find.
type decision int

const (
	fetchIt    decision = iota // claimed, our own flight, waiting is unsafe, or cancelled
	lookAgain                  // the layer is in the store now: look it up
	claimAgain                 // the owner gave up, or a lower layer was decided: decide again
	// waitAtCommit: another pull of this process fetches the blob, and the
	// wait for it is left to the layer's commit (commitwait.go); it is in
	// the wait graph already.
	waitAtCommit
)

// claimOrWait implements invariants 1, 3, 5, 6 and 8 for one missed lookup
// of blob. below are the layers under it that the store does not have and
// this pull owns no flight of, lowest first; shared says whether other
// images of the run need blob (if not, it waits for no other pull of this
// process below it: invariant 6).
func (img *Image) claimOrWait(blob digest.Digest, below []digest.Digest, shared bool) decision {
	d, _ := img.decide(blob, below, shared, false)
	return d
}

// decide is claimOrWait, and with atCommit, when the caller can make a
// wait for another pull of this process at the layer's commit
// (commitwait.go), it does not make that wait but returns waitAtCommit
// and the flight to wait for, with the wait in the wait graph.
func (img *Image) decide(blob digest.Digest, below []digest.Digest, shared, atCommit bool) (decision, *flight) {
	c := img.c
	// While other herd processes pull into the store, a blob only this
	// image needs is decided after the layers below it as well (8).
	others := c.locks.othersActive()
	c.mu.Lock()
	// Below a blob only this image needs, nothing of this process is waited
	// for, but the layers nobody fetches are claimed all the same, bottom up
	// until one is not this pull's (above that, a claim would break 6): a
	// herd process that starts later then finds them taken and waits, where
	// it would otherwise claim one under this pull's claim above it, which
	// must then fetch it again (8).
	mayClaim := true
	for _, b := range below {
		// Invariant 6 decides the layers no lookup has decided yet;
		// invariant 8 also those whose lookup is under way (it may be
		// waiting for a lower layer), since no flight below this claim may
		// belong to another process.
		undecided := img.undecided(b)
		f := c.flights[b]
		switch {
		case f == nil && undecided && (shared || others || mayClaim):
			if c.claimLocked(img, b) {
				continue
			}
			f = c.flights[b] // another process's
		case f == nil:
			// Its own lookup decides (6): claiming it here could make this
			// pull wait for itself, through that lookup's wait or another
			// pull's wait for the claim. Only another process's flight
			// matters (8).
			mayClaim = false
			if f = c.otherProcessFlightLocked(img, b); f == nil {
				continue
			}
		}
		if f.owner != img {
			mayClaim = false
		}
		if (f.owner == nil || undecided && shared || others) && c.mayWaitLocked(img, b, f) {
			// Another pull, or process, fetches a lower layer: let it commit
			// that first, then decide again from the start (c.mu is released).
			if img.wait(b, f) == Cancelled {
				return fetchIt, nil // containers/image fails on the cancelled context
			}
			return claimAgain, nil
		}
		// Ours already, another pull's in this process that its own lookup
		// waits for, or waiting would close a cycle: its own lookup decides.
	}
	f := c.flights[blob]
	if f == nil {
		if other, of := c.similarFlightLocked(img, blob); of != nil {
			// Nobody fetches blob, but another image fetches a layer with
			// many of its files: let it commit that first (similar.go).
			if img.waitSimilar(blob, other, of) == Cancelled {
				return fetchIt, nil
			}
			return claimAgain, nil
		}
		if c.claimLocked(img, blob) {
			c.mu.Unlock()
			return fetchIt, nil
		}
	}
	if f = c.flights[blob]; !c.mayWaitLocked(img, blob, f) {
		if f.owner != img {
			logrus.Debugf("%s: fetching %s although %s is fetching it: waiting could close a cycle (invariants 3, 8)", img.name, blob, f.ownerName())
		}
		c.mu.Unlock()
		return fetchIt, nil
	}
	if atCommit && f.owner != nil && !others {
		// Not while other herd processes pull: see commitwait.go.
		c.addWaitLocked(img, f.owner, +1)
		c.leadDecidedLocked(img, true)
		c.mu.Unlock()
		return waitAtCommit, f
	}
	switch img.wait(blob, f) {
	case Committed, OwnerReused, InStore:
		return lookAgain, nil
	case OwnerFailed:
		return claimAgain, nil
	default:
		return fetchIt, nil
	}
}

// claimLocked starts a flight of blob owned by img, with the blob's lock
// (invariant 8), and reports whether it did. If another process holds the
// lock it starts a flight owned by that process instead, which ends when
// the lock is free. c.mu must be held.
func (c *Coordinator) claimLocked(img *Image, blob digest.Digest) bool {
	release := c.locks.tryLock(blob)
	if release == nil {
		c.startOtherProcessFlightLocked(img, blob)
		return false
	}
	f := &flight{owner: img, done: make(chan struct{}), release: release}
	c.flights[blob] = f
	img.mu.Lock()
	img.claims[blob] = f
	img.looked[blob] = true
	img.mu.Unlock()
	c.leadDecidedLocked(img, false)
	return true
}

// otherProcessFlightLocked returns a flight of blob owned by another
// process if one holds its lock, or nil. c.mu must be held, and blob must
// have no flight.
func (c *Coordinator) otherProcessFlightLocked(img *Image, blob digest.Digest) *flight {
	if release := c.locks.tryLock(blob); release != nil {
		release() // a probe: whoever claims it takes it again
		return nil
	}
	return c.startOtherProcessFlightLocked(img, blob)
}

// startOtherProcessFlightLocked starts a flight of blob owned by another
// process, watched until its lock is free. c.mu must be held.
func (c *Coordinator) startOtherProcessFlightLocked(img *Image, blob digest.Digest) *flight {
	f := &flight{done: make(chan struct{})}
	c.flights[blob] = f
	go c.watchOtherProcess(blob, f, img.reusable)
	return f
}

// otherProcessPollInterval is how often herd tries the lock of a blob
// another process fetches: a try is one system call, and a herd killed
// mid-fetch is taken over this soon.
const otherProcessPollInterval = 20 * time.Millisecond

// watchOtherProcess ends f, the flight of blob owned by another process,
// when that process no longer holds the blob's lock: it committed the
// layer (InStore) or gave up or died (OwnerFailed). Waiters then look the
// blob up again and, if it is still missing, claim it.
func (c *Coordinator) watchOtherProcess(blob digest.Digest, f *flight, reusable func(digest.Digest) bool) {
	tick := time.NewTicker(otherProcessPollInterval)
	defer tick.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-f.done: // ended otherwise: a pull of this run committed it anyway
			return
		case <-tick.C:
		}
		release := c.locks.tryLock(blob)
		if release == nil {
			continue
		}
		release() // whoever claims the blob next takes it again
		end := OwnerFailed
		if reusable != nil && reusable(blob) {
			end = InStore
		}
		c.mu.Lock()
		c.endFlightLocked(blob, f, end)
		c.mu.Unlock()
		return
	}
}

// mayWaitLocked reports whether img may wait for f, the flight of blob:
// someone else owns it and waiting closes no cycle (invariants 3 and 8).
// c.mu must be held.
func (c *Coordinator) mayWaitLocked(img *Image, blob digest.Digest, f *flight) bool {
	switch {
	case f.owner == img:
		return false
	case f.owner == nil:
		return !img.claimsAbove(blob)
	default:
		return !c.reachesLocked(f.owner, img)
	}
}

// fetchesItself reports whether the Store fetches blob itself.
func (img *Image) fetchesItself(blob digest.Digest) bool {
	img.mu.Lock()
	defer img.mu.Unlock()
	return img.wholeBlobs[blob]
}

// owns reports whether img owns the flight of blob.
func (img *Image) owns(blob digest.Digest) bool {
	img.mu.Lock()
	defer img.mu.Unlock()
	return img.claims[blob] != nil
}

// claimsAbove reports whether img owns a flight of a layer above blob in its
// image.
func (img *Image) claimsAbove(blob digest.Digest) bool {
	img.mu.Lock()
	defer img.mu.Unlock()
	return slices.ContainsFunc(img.layersAbove(blob), func(l digest.Digest) bool { return img.claims[l] != nil })
}

// layersAbove returns img's layers above blob, lowest first; none if blob
// is not one of them.
func (img *Image) layersAbove(blob digest.Digest) []digest.Digest {
	if i := slices.Index(img.layers, blob); i >= 0 {
		return img.layers[i+1:]
	}
	return nil
}

// wait waits for f, another pull's flight of blob, and says how the wait
// ended. It is called with c.mu held, and releases it.
func (img *Image) wait(blob digest.Digest, f *flight) WaitEnd {
	return img.waitFor(blob, blob, f)
}

// waitSimilar waits for f, another pull's flight of other, a layer with
// many of blob's files (similar.go). It is called with c.mu held, and
// releases it.
func (img *Image) waitSimilar(blob, other digest.Digest, f *flight) WaitEnd {
	return img.waitFor(blob, other, f)
}

// waitFor waits for f, another pull's flight of flown, on behalf of this
// pull's layer blob. It is called with c.mu held, and releases it.
func (img *Image) waitFor(blob, flown digest.Digest, f *flight) WaitEnd {
	c := img.c
	c.addWaitLocked(img, f.owner, +1)
	c.leadDecidedLocked(img, true)
	c.mu.Unlock()
	return img.waitOut(img.ctx, blob, flown, f, false)
}

// waitOut makes a wait that is in the wait graph (invariant 3): for f, the
// flight of flown, on behalf of this pull's layer blob, until ctx ends,
// made at the layer's commit or before its partial pull if atCommit
// (commitwait.go, partiallayer.go); it reports the wait, takes it out of
// the graph, and says how it ended.
func (img *Image) waitOut(ctx context.Context, blob, flown digest.Digest, f *flight, atCommit bool) WaitEnd {
	c := img.c
	event := WaitEvent{Blob: blob, Owner: f.ownerName(), AtCommit: atCommit}
	if flown != blob {
		event.Similar = flown
	}
	start := time.Now()
	img.hooks.WaitStarted(event)
	event.End = img.await(ctx, flown, f)
	event.Waited = time.Since(start)
	c.mu.Lock()
	c.addWaitLocked(img, f.owner, -1)
	c.mu.Unlock()
	if flown == blob {
		img.mu.Lock()
		img.waitEnds[blob] = event.End
		img.mu.Unlock()
	}
	img.hooks.WaitEnded(event)
	return event.End
}

// await blocks until f ends, ctx (the pull's, or its fetches') ends, or the
// store has the layer (invariant 5).
func (img *Image) await(ctx context.Context, blob digest.Digest, f *flight) WaitEnd {
	tick := time.NewTicker(storePollInterval)
	defer tick.Stop()
	for {
		select {
		case <-f.done:
			return f.end
		case <-ctx.Done():
			return Cancelled
		case <-tick.C:
			if img.reusable != nil && img.reusable(blob) {
				return InStore
			}
		}
	}
}

func (c *Coordinator) addWaitLocked(waiter, owner *Image, delta int) {
	if owner == nil {
		return // another process: it waits for nothing of ours (invariant 8)
	}
	m := c.waitsFor[waiter]
	if m == nil {
		m = map[*Image]int{}
		c.waitsFor[waiter] = m
	}
	m[owner] += delta
	if m[owner] <= 0 {
		delete(m, owner)
	}
	if len(m) == 0 {
		delete(c.waitsFor, waiter)
	}
}

// reachesLocked reports whether from already waits, directly or through
// other pulls, for to. c.mu must be held.
func (c *Coordinator) reachesLocked(from, to *Image) bool {
	seen := map[*Image]bool{}
	stack := []*Image{from}
	for len(stack) > 0 {
		img := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if img == to {
			return true
		}
		if seen[img] {
			continue
		}
		seen[img] = true
		for q := range c.waitsFor[img] {
			stack = append(stack, q)
		}
	}
	return false
}
