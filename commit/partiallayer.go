package commit

import (
	"context"
	"errors"
	"fmt"
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
//     WholeLayers.Partial serves the first read from herd's copy.
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
		layer, err = f.store.ApplyStagedLayer(storage.ApplyStagedLayerOptions{
			ID: f.id, ParentLayer: f.parent, DiffOutput: out, DiffOptions: &drivers.ApplyDiffWithDifferOpts{},
		})
		if err != nil && !errors.Is(err, storage.ErrDuplicateID) {
			_ = f.store.CleanupStagedLayer(out)
			return nil, s.commitFailed(blob, f.parent, err)
		}
		if err != nil {
			_ = f.store.CleanupStagedLayer(out)
			if layer, err = f.store.Layer(f.id); err != nil {
				return nil, s.commitFailed(blob, f.parent, err)
			}
		}
		// As Store.ApplyStagedLayer: what containers/image keeps is the
		// staging directory's name.
		out.BigData, out.Artifacts = nil, nil
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
	w.Progress(types.ProgressProperties{Event: types.ProgressEventDone, Artifact: f.info, Offset: uint64(f.bytes), OffsetUpdate: uint64(f.bytes - f.reported)})
	return layer, nil
}

// partialProgress reports a partial pull's progress as containers/image's
// events would: "read", at most every ProgressInterval, with what the
// registry sent.
type partialProgress struct {
	fetch *wholeFetch
	w     *WholeLayers

	mu   sync.Mutex // pkg/chunked may read several streams at once
	last time.Time  // of the last "read" event
}

func (p *partialProgress) fetched(n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	f := p.fetch
	f.bytes += int64(n)
	if now := time.Now(); now.Sub(p.last) >= p.w.ProgressInterval {
		p.w.Progress(types.ProgressProperties{Event: types.ProgressEventRead, Artifact: f.info, Offset: uint64(f.bytes), OffsetUpdate: uint64(f.bytes - f.reported)})
		f.reported, p.last = f.bytes, now
	}
}
