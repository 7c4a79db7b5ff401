package commit

import (
	"slices"

	digest "github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"
	"go.podman.io/image/v5/types"
	"go.podman.io/storage"
)

// Waits made at a layer's commit, so that the waiting image's other layers
// go on meanwhile.
//
// containers/image holds an image's destination lock while it looks a
// layer up, so a pull that waits in the lookup for a base layer another
// pull stages holds up every other layer of its image. On the real image
// set in zstd:chunked that left one of two cores idle while the first
// image staged the shared base: the others' own layers, which do not need
// the base until their commits, could not start. So where herd pulls an
// image's layers itself (partially, or whole: wholelayer.go), a lookup
// that would wait for another pull of this process answers at once with
// the layer it waits for, as a placeholder, and the wait goes on in the
// background. containers/image takes the blob as reused and goes on with
// the image's other layers; it commits the layer once every lower one is
// committed, asking the store for it by ID (Store.Layer), which waits for
// the background wait's end, lending the run the slot that commit holds.
// Then:
//   - the layer is in the store under that ID (the owner committed it, the
//     usual end): containers/image takes it;
//   - the store has a layer a lookup of the blob finds, under another ID
//     (the owner's image has other layers below it): containers/image
//     copies that layer, as after a wait in the lookup;
//   - else the owner failed: the image decides again, as a lookup would
//     (waits for whoever claimed the blob since, or claims it), and pulls
//     the layer itself.
//
// The wait is in the wait graph from the decision to its end (invariant
// 3): until it ends the image commits nothing above the layer, so any
// flight of the image above it waits on the owner too. The graph knows
// images, not layers: an image waiting for the owner's base at its commit
// would, if it then claimed a layer above the base that the owner needs
// too, look to the owner like a pull that waits for it, and the owner
// would fetch that layer again rather than wait. So a wait is left to the
// commit only for a layer with no layer above it that another image of
// the run needs (sharedAbove): an image's topmost shared layer, typically
// its base below its own layers. Waits for another process's flight stay
// in the lookup (invariant 8), and so do all waits while other herd
// processes pull into the store: an image that waits at a commit claims
// the layers above it early, and invariant 8's reasoning about cycles
// across processes, which no process can see whole, assumes it cannot.

// commitWait is the state of a wait made at its layer's commit, for the
// progress events of the layer's blob.
type commitWait struct {
	ended    bool     // the wait is over: the layer is in the store, or the image pulls it
	how      Obtained // how the blob was obtained, once the wait ended with the layer in the store
	reported bool     // a "skipped" event reported how
}

// startCommitWait leaves the wait for fl, another pull's flight of layer's
// blob, which decide has put in the wait graph, to the layer's commit, and
// returns what containers/image's lookup gets: the layer as a placeholder.
func (s *Store) startCommitWait(layer *wholeFetch, fl *flight) storage.Layer {
	img := s.image
	blob := layer.info.Digest
	layer.waiting.Store(true)
	img.register(layer, false)
	img.mu.Lock()
	if img.commitWaits == nil {
		img.commitWaits = map[digest.Digest]*commitWait{}
	}
	img.commitWaits[blob] = &commitWait{}
	img.mu.Unlock()
	logrus.Debugf("%s: blob %s is fetched by %s: waiting for it at the commit of layer %s", img.name, blob, fl.ownerName(), layer.id)
	img.wholeRunning.Add(1)
	go func() {
		defer img.wholeRunning.Done()
		defer close(layer.fetched)
		layer.err = s.awaitAtCommit(layer, fl)
	}()
	return layer.placeholder()
}

// awaitAtCommit waits for fl, then finds the layer in the store, or pulls
// it itself if the owner failed.
func (s *Store) awaitAtCommit(layer *wholeFetch, fl *flight) error {
	img := s.image
	blob := layer.info.Digest
	for {
		if fl != nil {
			if img.waitOut(img.wholeCtx, blob, blob, fl, true) == Cancelled {
				return img.wholeCtx.Err()
			}
		}
		if _, err := s.Store.Layer(layer.id); err == nil || s.reusable(blob) {
			layer.found = true
			s.commitWaitEnded(layer, true)
			return nil
		}
		// The owner failed (or its layer is gone already): decide again.
		var d decision
		switch d, fl = img.decide(blob, nil, img.c.shared(blob), true); d {
		case waitAtCommit:
			continue
		case lookAgain, claimAgain:
			fl = nil
			continue
		}
		if err := img.ctx.Err(); err != nil {
			return err
		}
		// Claimed, or waiting would close a cycle (a duplicate fetch).
		logrus.Debugf("%s: the fetch of blob %s it waited for at its commit failed: pulling it itself", img.name, blob)
		s.commitWaitEnded(layer, false)
		layer.waiting.Store(false)
		err := s.fetch(layer)
		if err == nil {
			img.hooks.CommitStarted(blob)
		}
		return err
	}
}

// commitWaitEnded records the end of the wait at layer's commit: found,
// the layer is in the store, and the image reports its blob as waited for
// (or reused) with a "skipped" event, unless containers/image's own comes
// first; else the image pulls the layer, and reports that as it goes.
func (s *Store) commitWaitEnded(layer *wholeFetch, found bool) {
	img := s.image
	blob := layer.info.Digest
	img.mu.Lock()
	w := img.commitWaits[blob]
	w.ended = true
	if !found {
		w.reported = true // containers/image's "skipped" event reports nothing
		img.wholeBlobs[blob] = true
	} else if end := img.waitEnds[blob]; end == Committed || end == InStore {
		w.how = Waited
	} else {
		w.how = Reused
	}
	img.mu.Unlock()
	if found {
		img.whole.Progress(types.ProgressProperties{Event: types.ProgressEventSkipped, Artifact: layer.info})
	}
}

// commitWaitSkipped says what a "skipped" event of blob reports, and
// whether blob's wait was made at its commit: nothing until the wait has
// ended, then how the blob was obtained, once.
func (img *Image) commitWaitSkipped(blob digest.Digest) (Obtained, bool) {
	img.mu.Lock()
	defer img.mu.Unlock()
	w := img.commitWaits[blob]
	if w == nil {
		return NotEnded, false
	}
	if !w.ended || w.reported {
		return NotEnded, true
	}
	w.reported = true
	return w.how, true
}

// sharedAbove reports whether a layer above blob in img is one that
// another image of the run needs too.
func (img *Image) sharedAbove(blob digest.Digest) bool {
	return slices.ContainsFunc(img.layersAbove(blob), func(l digest.Digest) bool { return img.c.needs[l] > 1 })
}
