package commit

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	digest "github.com/opencontainers/go-digest"
	"go.podman.io/image/v5/types"
	"go.podman.io/storage"
	drivers "go.podman.io/storage/drivers"
	"go.podman.io/storage/pkg/chunked"
)

// zstd:chunked layers that herd pulls partially itself, the way it fetches
// whole layers itself (wholelayer.go): the lookup answers containers/image
// with the layer about to be made, herd stages it in the background, and
// containers/image's commit of the layer (Store.Layer) applies the staged
// layer under the ID containers/image computes, the chain of the config's
// DiffIDs.
//
// This is what containers/image's storage destination does in
// PutBlobPartial and at its commit: chunked.NewDiffer, PrepareStagedLayer,
// the check of the layer's DiffID (which containers/storage computes from
// what it staged) against the config's, ApplyStagedLayer, and the
// blob-info cache's records. herd does it by hand for three things that
// containers/image cannot give:
//   - The TOC is read once. herd reads TOCs before the pulls start, to
//     order layers with many of the same files (similar.go); through
//     containers/image, pkg/chunked would read each TOC again. herd's
//     LayerFetches.Partial serves the first read from herd's copy.
//   - One pkg/chunked layers cache for the run. pkg/chunked keeps one per
//     store value and rebuilds it for each; containers/image gives it the
//     image's Store, herd the shared store.
//   - The image's lock is not held while the layer stages: containers/image
//     takes the layer as reused and goes on with the image's other layers.
//
// A layer pkg/chunked cannot pull partially (ErrFallbackToOrdinaryLayerDownload:
// a registry without ranged reads, a TOC too big) is fetched whole instead,
// as containers/image would.

// stage pulls f's layer partially into a staging directory of the store,
// and checks it against the config's DiffID.
func (s *Store) stage(ctx context.Context, f *wholeFetch) error {
	w := s.image.whole
	progress := &partialProgress{fetch: f, w: w, last: time.Now()}
	parts := w.Partial(ctx, f.info, progress.fetched)
	// The shared store, not s: its pkg/chunked layers cache is the run's.
	differ, err := chunked.NewDiffer(ctx, f.store, f.info.Digest, f.info.Size, f.info.Annotations, parts)
	if err != nil {
		return err
	}
	defer differ.Close()
	out, err := f.store.PrepareStagedLayer(nil, differ)
	if err != nil {
		return fmt.Errorf("staging a partially-pulled layer: %w", err)
	}
	out.Differ = nil // what it alone holds is garbage now (Store.PrepareStagedLayer)
	switch {
	case out.UncompressedDigest != f.diffID:
		err = fmt.Errorf("the layer does not match config's DiffID %q (its content has %q)", f.diffID, out.UncompressedDigest)
	case out.CompressedDigest != "" && out.CompressedDigest != f.info.Digest:
		err = fmt.Errorf("containers/storage staged the layer of blob %s", out.CompressedDigest)
	}
	if err != nil {
		_ = f.store.CleanupStagedLayer(out)
		return err
	}
	f.staged = out
	return nil
}

// applyStaged commits f's staged layer.
func (s *Store) applyStaged(f *wholeFetch) (*storage.Layer, error) {
	out := f.staged
	f.staged = nil
	blob := f.info.Digest
	// ApplyStagedLayer would apply the staged files onto a layer that has
	// the ID already (another pull made the same content from another
	// blob); that layer is the one.
	layer, err := f.store.Layer(f.id)
	if err == nil {
		_ = f.store.CleanupStagedLayer(out)
	} else {
		s.image.c.awaitDriverProbe()
		layer, err = f.store.ApplyStagedLayer(storage.ApplyStagedLayerOptions{
			ID: f.id, ParentLayer: f.parent, DiffOutput: out, DiffOptions: &drivers.ApplyDiffWithDifferOpts{},
		})
		if err != nil {
			_ = f.store.CleanupStagedLayer(out)
			if errors.Is(err, storage.ErrDuplicateID) { // made meanwhile
				layer, err = f.store.Layer(f.id)
			}
			if err != nil {
				return nil, s.commitFailed(blob, f.parent, err)
			}
		}
	}
	w := s.image.whole
	if toc := s.image.c.blobToTOC[blob]; toc != "" {
		if cache, ok := w.Cache.(interface {
			RecordTOCUncompressedPair(toc, uncompressed digest.Digest)
		}); ok {
			cache.RecordTOCUncompressedPair(toc, f.diffID)
		}
	}
	if out.CompressedDigest == blob {
		w.Cache.RecordDigestUncompressedPair(blob, f.diffID)
	}
	s.committed(blob, true)
	f.report(w, types.ProgressEventDone)
	return layer, nil
}

// partialProgress reports a partial pull's progress as containers/image's
// events would: "read", at most every ProgressInterval, with what the
// registry sent.
type partialProgress struct {
	fetch *wholeFetch
	w     *LayerFetches

	mu   sync.Mutex // pkg/chunked may read several streams at once
	last time.Time  // of the last "read" event
}

func (p *partialProgress) fetched(n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	f := p.fetch
	f.bytes += int64(n)
	if now := time.Now(); now.Sub(p.last) >= p.w.ProgressInterval {
		f.report(p.w, types.ProgressEventRead)
		p.last = now
	}
}

// awaitSharedFiles waits, before the partial pull of f's layer, for the
// commits of layers in flight that hold some of its files
// (sharingFlightLocked): of the layers below it in its image, and, if no
// other pull waits for f's layer (it has no reason to hurry), of other
// images' layers that others need. Its differ then finds those files in
// the store instead of fetching them again. Layers with many of the same
// files are ordered in their lookups already (similar.go); these waits,
// for smaller overlaps and within an image, are made here, in the
// background, where they hold up nothing else of the image, and are in the
// wait graph (invariant 3) until they end.
func (s *Store) awaitSharedFiles(ctx context.Context, f *wholeFetch) error {
	img := s.image
	c := img.c
	blob := f.info.Digest
	ownOnly := c.needed(blob)
	for {
		c.mu.Lock()
		other, fl := c.sharingFlightLocked(img, blob, ownOnly)
		if fl == nil {
			c.mu.Unlock()
			return nil
		}
		c.addWaitLocked(img, fl.owner, +1) // a layer of img's own: a loop, which no check follows
		c.mu.Unlock()
		f.waiting.Store(true) // the layer's commit lends its slot meanwhile
		end := img.waitOut(ctx, blob, other, fl, true)
		f.waiting.Store(false)
		if end == Cancelled {
			return ctx.Err()
		}
	}
}

// needed reports whether pulls other than the one that stages blob's
// layer wait for it, or may.
func (c *Coordinator) needed(blob digest.Digest) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.neededLocked(blob)
}

// neededLocked is needed with c.mu held: another image of the run has the
// blob, or a layer with many of its files (similar.go) is still to be
// pulled (not claimed, not committed) and may wait for it.
func (c *Coordinator) neededLocked(blob digest.Digest) bool {
	if c.needs[blob] > 1 {
		return true
	}
	for _, l := range c.sim.waiters[blob] {
		if c.flights[l] == nil && !c.committedBlobs[l] {
			return true
		}
	}
	return false
}

// stagingGate orders the partial pulls of a run by who waits for them.
// Staging a layer is CPU work (zstd, sha256 and crc64 over every file, and
// containers/storage's rebuild of the tar to compute the DiffID, on one
// core), and the pulls that wait for a layer (a shared base) wait for all
// of it. Started together with layers nobody waits for, that layer gets a
// share of the cores and ends last, and every image's commits wait for
// it. So while a layer others need is being staged, a partial pull that
// nobody waits for starts only when fewer partial pulls than cores are
// under way: it fills a core the others leave idle (the one-core end of a
// base's staging), and takes none from them. Of those waiting, the largest
// layer starts first: started last, it would end the run on one core. At
// other times only --jobs bounds partial pulls.
//
// A pull enters the gate holding its --jobs slot, so every pull counted
// under way, or waiting at the gate, holds one and ends without waiting
// for anything but the gate: the gate never holds up a pull the counted
// ones need, and the largest waiting one may always start when a core is
// free.
type stagingGate struct {
	cores int

	mu      sync.Mutex
	running int           // partial pulls under way
	needed  int           // of which others wait for
	waiting []int64       // sizes of the pulls nobody waits for, waiting
	changed chan struct{} // closed, and replaced, when one starts or ends
}

func newStagingGate(cores int) *stagingGate {
	return &stagingGate{cores: cores, changed: make(chan struct{})}
}

// enter waits until a partial pull of a layer of size bytes may start
// (needed: others wait for its layer) and counts it under way; leave ends
// it.
func (g *stagingGate) enter(ctx context.Context, needed bool, size int64) (leave func(), err error) {
	g.mu.Lock()
	if !needed {
		g.waiting = append(g.waiting, size)
	}
	for !needed && g.needed > 0 && (g.running >= g.cores || size < slices.Max(g.waiting)) {
		changed := g.changed
		g.mu.Unlock()
		select {
		case <-changed:
		case <-ctx.Done():
			g.mu.Lock()
			g.notWaitingLocked(size)
			g.mu.Unlock()
			return nil, ctx.Err()
		}
		g.mu.Lock()
	}
	if !needed {
		g.notWaitingLocked(size)
	}
	g.running++
	if needed {
		g.needed++
	}
	g.mu.Unlock()
	return func() {
		g.mu.Lock()
		defer g.mu.Unlock()
		g.running--
		if needed {
			g.needed--
		}
		g.changedLocked()
	}, nil
}

// notWaitingLocked takes a pull of size bytes off the waiting ones.
func (g *stagingGate) notWaitingLocked(size int64) {
	i := slices.Index(g.waiting, size)
	g.waiting = slices.Delete(g.waiting, i, i+1)
	g.changedLocked()
}

func (g *stagingGate) changedLocked() {
	close(g.changed)
	g.changed = make(chan struct{})
}
