// Package commit decides how layers reach the store when many pulls run in
// one process, so that a blob several images need is fetched once per run.
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
//     (Pull.Reused: its compressed-digest lookup missed, but a TOC or
//     DiffID lookup that follows found the layer);
//     - InStore: containers/image finished one of the owner's layers (a
//     "done" or "skipped" event, Pull.LayerEnded) and the store now has a
//     layer that a lookup of the blob finds (reusable): containers/image
//     commits a layer without PutLayer when one with the same chain ID
//     already exists (made from another compression of the same content,
//     by podman load, by a local build), and every commit happens inside
//     the call that precedes such an event;
//     - OwnerFailed: the owner's copy.Image returned without committing the
//     blob (Pull.Done), whatever the reason: its fetch failed, a lower
//     layer failed, it was abandoned as stalled, or it was cancelled.
//     Waiters then look the layer up again; if it is still missing they
//     claim it.
//  3. Waiting never forms a cycle. containers/image holds the waiting image's
//     destination lock while it asks the store, so a waiting pull cannot
//     commit anything until its wait ends. A pull therefore waits for another
//     only if the owner does not, directly or through other waits, already
//     wait for it (checked on the pull-level wait graph under one mutex).
//     Otherwise it fetches the blob itself: a duplicate fetch, never a hang.
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
//     pull does. This is skipped when no other image of the run needs the
//     blob looked up (an image's own top layer): nobody in this process
//     will wait for it, so claiming it closes no cycle here, and its fetch
//     should not wait for lower layers (invariant 8 still waits for another
//     process's flight below it, and skips nothing while other herds run).
//     Their goroutines already hold their slots (copyLayers acquires in
//     layer order, and a layer keeps its slot until its lookup and copy are
//     over), so these claims keep invariants 1 and 4. With shared layers in
//     the same order in every image, as base images give, no wait then
//     closes a cycle; only images sharing layers in different orders still
//     cost a duplicate fetch.
//  7. An image whose manifest lists the same blob twice is copied one layer
//     at a time (Pull.OneLayerAtATime): containers/image copies both
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
// Waits happen only in LayersByCompressedDigest, the lookup every
// TryReusingBlobWithOptions makes before any TOC- or DiffID-based lookup,
// so one wait point serves gzip, zstd and zstd:chunked alike. Before
// claiming a blob the Store asks whether a lookup would find its layer some
// other way (reusable: by TOC digest for a partially pulled layer, or by
// the DiffID that the shared blob-info cache records for the blob): if so,
// containers/image finds it next, and there is nothing to claim.
package commit

import (
	"context"
	"sync"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"
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

// Coordinator is shared by all pulls of one run. The zero value is not
// usable; call NewCoordinator.
type Coordinator struct {
	diffIDs DiffIDs       // may be nil: no DiffID lookups
	locks   *BlobLocks    // may be nil: no coordination with other processes
	stop    chan struct{} // closed by Close: ends the watches of other processes' flights

	mu        sync.Mutex
	flights   map[digest.Digest]*flight       // by compressed blob digest
	tocToBlob map[digest.Digest]digest.Digest // zstd:chunked TOC digest → compressed blob digest
	blobToTOC map[digest.Digest]digest.Digest // and back
	waitsFor  map[*Pull]map[*Pull]int         // waiter → owner → number of waits
	needs     map[digest.Digest]int           // how many images of the run have each blob
}

type flight struct {
	owner   *Pull // nil: another process fetches the blob (invariant 8)
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

// NewCoordinator returns a coordinator for one run. diffIDs is the blob-info
// cache the run's copy.Image calls share (the same BlobInfoCacheDir), so that
// a wait ends as soon as the layer can be reused by DiffID; nil disables
// that (invariant 2, InStore, then relies on compressed and TOC digests).
// locks, if not nil, are the store's blob locks shared with other herd
// processes (invariant 8). Call Close when the run's pulls are done.
func NewCoordinator(diffIDs DiffIDs, locks *BlobLocks) *Coordinator {
	return &Coordinator{
		diffIDs:   diffIDs,
		locks:     locks,
		stop:      make(chan struct{}),
		flights:   map[digest.Digest]*flight{},
		tocToBlob: map[digest.Digest]digest.Digest{},
		blobToTOC: map[digest.Digest]digest.Digest{},
		waitsFor:  map[*Pull]map[*Pull]int{},
		needs:     map[digest.Digest]int{},
	}
}

// Close ends the coordinator's watches of other processes' flights, and
// its part in the store's blob locks.
func (c *Coordinator) Close() {
	close(c.stop)
	c.locks.Close()
}

// LinkTOC records that a zstd:chunked blob has the given TOC digest, so that
// a partial pull's commit (which knows only the TOC digest) ends the flight
// of that blob. The pull engine calls it for every layer of every manifest.
func (c *Coordinator) LinkTOC(toc, blob digest.Digest) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.tocToBlob[toc] = blob
	c.blobToTOC[blob] = toc
}

// Need records that one image of the run has blob among its layers. The
// pull engine calls it once per image and distinct layer blob, before the
// pulls start (invariant 6).
func (c *Coordinator) Need(blob digest.Digest) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.needs[blob]++
}

// shared reports whether more than one image of the run needs blob.
func (c *Coordinator) shared(blob digest.Digest) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.needs[blob] > 1
}

// WaitEvent tells an observer that a pull waited for another pull's blob.
type WaitEvent struct {
	Blob  digest.Digest
	Owner string  // the other pull's name
	End   WaitEnd // "" when the wait starts
	// Waited is how long the wait lasted (when End is set).
	Waited time.Duration
}

// Pull is one image's view of the run. Create it with NewPull, give
// Store(...) to containers/image as that image's store, call LayerEnded for
// every layer containers/image reports done or skipped, and Done when the
// image's copy.Image returns.
type Pull struct {
	c    *Coordinator
	ctx  context.Context
	name string
	// OnWait, if set, is called when a wait starts (End "") and when it
	// ends, from the goroutine that waits.
	OnWait func(WaitEvent)
	// OnCommitStart, if set, is called with the blob digest of every layer
	// this pull starts committing: its fetch is over (the pull engine's
	// stall watchdog stops timing it).
	OnCommitStart func(blob digest.Digest)
	// OnCommit, if set, is called with the blob digest of every layer this
	// pull commits and whether it was a partial pull.
	OnCommit func(blob digest.Digest, partial bool)
	// OnCommitError, if set, is called with every error of a layer's commit
	// in this pull, as it happens: containers/image reports it only when all
	// the image's other layers have ended.
	OnCommitError func(blob digest.Digest, err error)

	// reusable reports whether a lookup of blob in the shared store finds a
	// layer; set by Store (invariants 2 and 5).
	reusable func(blob digest.Digest) bool

	layers []digest.Digest // the image's layer blobs, lowest first

	mu       sync.Mutex
	claims   map[digest.Digest]*flight
	waitEnds map[digest.Digest]WaitEnd // how the last wait for each blob ended
	looked   map[digest.Digest]bool    // layers decided by or for their own lookup (invariant 6)
}

// NewPull registers one image's pull. layers are the compressed digests of
// the image's layer blobs, lowest first, as its manifest lists them; ctx
// cancels its waits.
func (c *Coordinator) NewPull(ctx context.Context, name string, layers []digest.Digest) *Pull {
	return &Pull{
		c: c, ctx: ctx, name: name, layers: layers,
		claims:   map[digest.Digest]*flight{},
		waitEnds: map[digest.Digest]WaitEnd{},
		looked:   map[digest.Digest]bool{},
	}
}

// OneLayerAtATime reports whether the pull's image lists a layer blob more
// than once, so that its copy.Image must copy one layer at a time
// (invariant 7).
func (p *Pull) OneLayerAtATime() bool {
	seen := map[digest.Digest]bool{}
	for _, l := range p.layers {
		if seen[l] {
			return true
		}
		seen[l] = true
	}
	return false
}

// lookingUp records that the pull's own lookup of blob has started, and
// returns the layers below blob that this pull does not own a flight of,
// lowest first (invariants 6 and 8).
func (p *Pull) lookingUp(blob digest.Digest) []digest.Digest {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.looked[blob] = true
	var below []digest.Digest
	for _, l := range p.layers {
		if l == blob {
			return below
		}
		if p.claims[l] == nil {
			below = append(below, l)
		}
	}
	return nil // not one of the manifest's layers: nothing is known below it
}

// undecided reports whether no lookup of blob by this pull has started.
func (p *Pull) undecided(blob digest.Digest) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return !p.looked[blob]
}

// WaitEnded says how this pull's last wait for blob ended, "" if it never
// waited for it.
func (p *Pull) WaitEnded(blob digest.Digest) WaitEnd {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.waitEnds[blob]
}

// Waited reports whether this pull obtained blob by waiting for another
// pull's fetch of it (and not by fetching it, or because the owner found it
// in the store already).
func (p *Pull) Waited(blob digest.Digest) bool {
	switch p.WaitEnded(blob) {
	case Committed, InStore:
		return true
	}
	return false
}

// Done ends every flight the pull still owns (invariant 2, OwnerFailed).
// Call it exactly once, after copy.Image returns, whatever it returned.
func (p *Pull) Done() {
	p.c.mu.Lock()
	defer p.c.mu.Unlock()
	p.mu.Lock()
	defer p.mu.Unlock()
	for blob, f := range p.claims {
		p.c.endFlightLocked(blob, f, OwnerFailed)
	}
	p.claims = map[digest.Digest]*flight{}
}

// Reused ends this pull's flight for blob, if it has one, because the pull
// found the layer in the store after claiming it. The pull engine calls it
// when containers/image reports the blob as skipped, which it does only
// after its reuse check succeeded.
func (p *Pull) Reused(blob digest.Digest) {
	p.c.mu.Lock()
	defer p.c.mu.Unlock()
	p.mu.Lock()
	defer p.mu.Unlock()
	if f := p.claims[blob]; f != nil {
		delete(p.claims, blob)
		p.c.endFlightLocked(blob, f, OwnerReused)
	}
}

// LayerEnded ends each flight this pull owns whose layer a lookup now finds
// in the store (invariant 2, InStore). The pull engine calls it after every
// "done" or "skipped" event of this pull: containers/image commits layers
// only inside the calls that precede those events, sometimes without
// PutLayer.
func (p *Pull) LayerEnded() {
	p.mu.Lock()
	var blobs []digest.Digest
	for blob := range p.claims {
		blobs = append(blobs, blob)
	}
	p.mu.Unlock()
	for _, blob := range blobs {
		if p.reusable == nil || !p.reusable(blob) { // store lookups, outside the locks
			continue
		}
		p.c.mu.Lock()
		p.mu.Lock()
		if f := p.claims[blob]; f != nil {
			delete(p.claims, blob)
			p.c.endFlightLocked(blob, f, InStore)
		}
		p.mu.Unlock()
		p.c.mu.Unlock()
	}
}

// endFlightLocked closes f if it is still the current flight for blob.
// c.mu must be held.
func (c *Coordinator) endFlightLocked(blob digest.Digest, f *flight, end WaitEnd) {
	if c.flights[blob] != f {
		return
	}
	delete(c.flights, blob)
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
	if f := c.flights[blob]; f != nil {
		if f.owner != nil {
			f.owner.mu.Lock()
			delete(f.owner.claims, blob)
			f.owner.mu.Unlock()
		}
		c.endFlightLocked(blob, f, Committed)
	}
}

func (c *Coordinator) blobForTOC(toc digest.Digest) digest.Digest {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.tocToBlob[toc]
}

func (c *Coordinator) tocForBlob(blob digest.Digest) digest.Digest {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.blobToTOC[blob]
}

// decision is what a pull does about a blob its lookup did not find.
type decision int

const (
	fetchIt    decision = iota // claimed, our own flight, waiting is unsafe, or cancelled
	lookAgain                  // the layer is in the store now: look it up
	claimAgain                 // the owner gave up, or a lower layer was decided: decide again
)

// claimOrWait implements invariants 1, 3, 5, 6 and 8 for one missed lookup
// of blob. below are the layers under it that the store does not have and
// this pull owns no flight of, lowest first; shared says whether other
// images of the run need blob (if not, it waits for no other pull of this
// process below it: invariant 6).
func (p *Pull) claimOrWait(blob digest.Digest, below []digest.Digest, shared bool) decision {
	c := p.c
	// While other herd processes pull into the store, a blob only this
	// image needs is decided after the layers below it as well (8).
	others := c.locks.othersActive()
	c.mu.Lock()
	for _, b := range below {
		// Invariant 6 decides the layers no lookup has decided yet;
		// invariant 8 also those whose lookup is under way (it may be
		// waiting for a lower layer), since no flight below this claim may
		// belong to another process.
		undecided := p.undecided(b)
		f := c.flights[b]
		switch {
		case f == nil && undecided && (shared || others):
			if c.claimLocked(p, b) {
				continue
			}
			f = c.flights[b] // another process's
		case f == nil:
			// Its own lookup decides (6): claiming it here could make this
			// pull wait for itself, through that lookup's wait or another
			// pull's wait for the claim. Only another process's flight
			// matters (8).
			if f = c.otherProcessFlightLocked(p, b); f == nil {
				continue
			}
		}
		if (f.owner == nil || undecided && shared || others) && c.mayWaitLocked(p, b, f) {
			// Another pull, or process, fetches a lower layer: let it commit
			// that first, then decide again from the start (c.mu is released).
			if p.wait(b, f) == Cancelled {
				return fetchIt // containers/image fails on the cancelled context
			}
			return claimAgain
		}
		// Ours already, another pull's in this process that its own lookup
		// waits for, or waiting would close a cycle: its own lookup decides.
	}
	f := c.flights[blob]
	if f == nil && c.claimLocked(p, blob) {
		c.mu.Unlock()
		return fetchIt
	}
	if f = c.flights[blob]; !c.mayWaitLocked(p, blob, f) {
		if f.owner != p {
			logrus.Debugf("%s: fetching %s although %s is fetching it: waiting could close a cycle (invariants 3, 8)", p.name, blob, f.ownerName())
		}
		c.mu.Unlock()
		return fetchIt
	}
	switch p.wait(blob, f) {
	case Committed, OwnerReused, InStore:
		return lookAgain
	case OwnerFailed:
		return claimAgain
	default:
		return fetchIt
	}
}

// claimLocked starts a flight of blob owned by p, with the blob's lock
// (invariant 8), and reports whether it did. If another process holds the
// lock it starts a flight owned by that process instead, which ends when
// the lock is free. c.mu must be held.
func (c *Coordinator) claimLocked(p *Pull, blob digest.Digest) bool {
	release := c.locks.tryLock(blob)
	if release == nil {
		c.startOtherProcessFlightLocked(p, blob)
		return false
	}
	f := &flight{owner: p, done: make(chan struct{}), release: release}
	c.flights[blob] = f
	p.mu.Lock()
	p.claims[blob] = f
	p.looked[blob] = true
	p.mu.Unlock()
	return true
}

// otherProcessFlightLocked returns a flight of blob owned by another
// process if one holds its lock, or nil. c.mu must be held, and blob must
// have no flight.
func (c *Coordinator) otherProcessFlightLocked(p *Pull, blob digest.Digest) *flight {
	if release := c.locks.tryLock(blob); release != nil {
		release() // a probe: whoever claims it takes it again
		return nil
	}
	return c.startOtherProcessFlightLocked(p, blob)
}

// startOtherProcessFlightLocked starts a flight of blob owned by another
// process, watched until its lock is free. c.mu must be held.
func (c *Coordinator) startOtherProcessFlightLocked(p *Pull, blob digest.Digest) *flight {
	f := &flight{done: make(chan struct{})}
	c.flights[blob] = f
	go c.watchOtherProcess(blob, f, p.reusable)
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

// mayWaitLocked reports whether p may wait for f, the flight of blob:
// someone else owns it and waiting closes no cycle (invariants 3 and 8).
// c.mu must be held.
func (c *Coordinator) mayWaitLocked(p *Pull, blob digest.Digest, f *flight) bool {
	switch {
	case f.owner == p:
		return false
	case f.owner == nil:
		return !p.claimsAbove(blob)
	default:
		return !c.reachesLocked(f.owner, p)
	}
}

// claimsAbove reports whether p owns a flight of a layer above blob in its
// image.
func (p *Pull) claimsAbove(blob digest.Digest) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	above := false
	for _, l := range p.layers {
		if above && p.claims[l] != nil {
			return true
		}
		above = above || l == blob
	}
	return false
}

// wait waits for f, another pull's flight of blob, and says how the wait
// ended. It is called with c.mu held, and releases it.
func (p *Pull) wait(blob digest.Digest, f *flight) WaitEnd {
	c := p.c
	c.addWaitLocked(p, f.owner, +1)
	c.mu.Unlock()

	start := time.Now()
	if p.OnWait != nil {
		p.OnWait(WaitEvent{Blob: blob, Owner: f.ownerName()})
	}
	end := p.await(blob, f)
	c.mu.Lock()
	c.addWaitLocked(p, f.owner, -1)
	c.mu.Unlock()
	p.mu.Lock()
	p.waitEnds[blob] = end
	p.mu.Unlock()
	if p.OnWait != nil {
		p.OnWait(WaitEvent{Blob: blob, Owner: f.ownerName(), End: end, Waited: time.Since(start)})
	}
	return end
}

// await blocks until f ends, the pull is cancelled, or the store has the
// layer (invariant 5).
func (p *Pull) await(blob digest.Digest, f *flight) WaitEnd {
	tick := time.NewTicker(storePollInterval)
	defer tick.Stop()
	for {
		select {
		case <-f.done:
			return f.end
		case <-p.ctx.Done():
			return Cancelled
		case <-tick.C:
			if p.reusable != nil && p.reusable(blob) {
				return InStore
			}
		}
	}
}

func (c *Coordinator) addWaitLocked(waiter, owner *Pull, delta int) {
	if owner == nil {
		return // another process: it waits for nothing of ours (invariant 8)
	}
	m := c.waitsFor[waiter]
	if m == nil {
		m = map[*Pull]int{}
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
func (c *Coordinator) reachesLocked(from, to *Pull) bool {
	seen := map[*Pull]bool{}
	stack := []*Pull{from}
	for len(stack) > 0 {
		p := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if p == to {
			return true
		}
		if seen[p] {
			continue
		}
		seen[p] = true
		for q := range c.waitsFor[p] {
			stack = append(stack, q)
		}
	}
	return false
}
