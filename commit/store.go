package commit

import (
	"errors"
	"fmt"
	"io"
	"io/fs"

	digest "github.com/opencontainers/go-digest"
	"go.podman.io/storage"
	drivers "go.podman.io/storage/drivers"
)

// Store is one image's view of the shared store: every call goes to the
// shared store; the lookup and the commits defined below also talk to the
// Coordinator and report to the image's Hooks.
//
// It must stay a pointer type: containers/storage's pkg/chunked keeps a
// cache keyed on the store value it is given, and compares it with ==.
type Store struct {
	storage.Store
	image *Image
}

// Store returns the decorator to hand to containers/image for this image.
func (img *Image) Store(shared storage.Store) *Store {
	s := &Store{Store: shared, image: img}
	img.reusable = s.reusable
	return s
}

// LayersByCompressedDigest is where a pull that misses a blob another pull
// is fetching waits for it; see the package comment.
func (s *Store) LayersByCompressedDigest(d digest.Digest) ([]storage.Layer, error) {
	below := s.image.lookingUp(d)
	for {
		layers, err := s.Store.LayersByCompressedDigest(d)
		if len(layers) > 0 || (err != nil && !errors.Is(err, storage.ErrLayerUnknown)) {
			return layers, err
		}
		if s.reusableUnderOtherDigest(d) {
			// A partially pulled layer has no compressed digest, and a layer
			// from another compression of the same content has another one;
			// containers/image finds them by TOC or DiffID right after this
			// miss. Claiming the blob would only make other pulls wait.
			return layers, err
		}
		var missing []digest.Digest
		for _, b := range below {
			if !s.reusable(b) {
				missing = append(missing, b)
			}
		}
		var atCommit *wholeFetch // the layer, if a wait for it can be made at its commit
		if w := s.image.whole; w != nil && w.Partial != nil && !s.image.sharedAbove(d) {
			atCommit = s.ownLayer(d)
		}
		switch decision, f := s.image.decide(d, missing, s.image.c.shared(d), atCommit != nil); decision {
		case waitAtCommit:
			return []storage.Layer{s.startCommitWait(atCommit, f)}, nil
		case lookAgain:
			// A partial pull's layer has no compressed digest, so this may
			// still miss; containers/image then finds it by TOC or DiffID.
			return s.Store.LayersByCompressedDigest(d)
		case claimAgain:
			continue
		default:
			// This pull fetches the blob: herd itself if it is a whole
			// layer it can (wholelayer.go), else containers/image.
			if s.image.owns(d) {
				// Another process may have committed the layer and let go
				// of its lock between the lookup above and the claim.
				if again, aerr := s.Store.LayersByCompressedDigest(d); len(again) > 0 {
					return again, aerr
				}
				if f := s.startWholeFetch(d); f != nil {
					return []storage.Layer{f.placeholder()}, nil
				}
			}
			return layers, err
		}
	}
}

// reusable reports whether containers/image's lookup of blob
// (TryReusingBlobWithOptions) would find a layer in the store (Findable).
func (s *Store) reusable(blob digest.Digest) bool {
	return Findable(s.Store, s.image.c.diffIDs, blob, s.image.c.blobToTOC[blob])
}

// reusableUnderOtherDigest is reusable without the lookup by blob's own
// compressed digest, for callers that have just made it.
func (s *Store) reusableUnderOtherDigest(blob digest.Digest) bool {
	return findableUnderOtherDigest(s.Store, s.image.c.diffIDs, blob, s.image.c.blobToTOC[blob])
}

// Findable reports whether containers/image's lookup of blob
// (TryReusingBlobWithOptions) would find a layer in store, the same ways it
// looks: made from blob itself, partially pulled from it (by toc, its
// zstd:chunked TOC digest, if it has one), or with the DiffID that the
// blob-info cache diffIDs (may be nil) records for blob (once any pull
// fetched it whole) or for its TOC digest (once any pull pulled it
// partially), whatever blob that layer was made from.
func Findable(store storage.Store, diffIDs DiffIDs, blob, toc digest.Digest) bool {
	return hasLayers(store.LayersByCompressedDigest(blob)) || findableUnderOtherDigest(store, diffIDs, blob, toc)
}

func findableUnderOtherDigest(store storage.Store, diffIDs DiffIDs, blob, toc digest.Digest) bool {
	if toc != "" && hasLayers(store.LayersByTOCDigest(toc)) {
		return true
	}
	if diffIDs == nil {
		return false
	}
	if diffID := diffIDs.UncompressedDigest(blob); diffID != "" && diffID != blob && hasLayers(store.LayersByUncompressedDigest(diffID)) {
		return true
	}
	if toc != "" {
		if diffID := diffIDs.UncompressedDigestForTOC(toc); diffID != "" && hasLayers(store.LayersByUncompressedDigest(diffID)) {
			return true
		}
	}
	return false
}

func hasLayers(layers []storage.Layer, err error) bool { return err == nil && len(layers) > 0 }

// PutLayer commits a fully fetched (or locally copied) layer, and ends the
// flight of the blob it was made from. The layer's tar is checked on the
// way in (tarcheck.go): an unsafe one is refused and never committed.
func (s *Store) PutLayer(id, parent string, names []string, mountLabel string, writeable bool, options *storage.LayerOptions, diff io.Reader) (*storage.Layer, int64, error) {
	if options != nil && options.OriginalDigest != "" {
		s.image.hooks.CommitStarted(options.OriginalDigest)
	}
	diff, options, closeDiff := decompressOnce(diff, options)
	defer closeDiff()
	return s.apply(id, parent, names, mountLabel, writeable, options, diff)
}

// apply is PutLayer once the diff is what containers/storage is to read:
// the tar check, the commit, and its report.
func (s *Store) apply(id, parent string, names []string, mountLabel string, writeable bool, options *storage.LayerOptions, diff io.Reader) (*storage.Layer, int64, error) {
	check := newLayerCheck(diff)
	s.image.c.awaitDriverProbe()
	layer, size, err := s.Store.PutLayer(id, parent, names, mountLabel, writeable, options, check)
	if unsafe := check.result(); unsafe != nil {
		if err == nil && layer != nil {
			// Not reached while containers/storage reads a layer to its end
			// before committing it; if it ever stops doing so, undo.
			_ = s.Store.DeleteLayer(layer.ID)
		}
		return nil, -1, unsafe
	}
	if err != nil {
		var blob digest.Digest
		if options != nil {
			blob = options.OriginalDigest
		}
		return layer, size, s.commitFailed(blob, parent, err)
	}
	if layer != nil && layer.CompressedDigest != "" {
		s.committed(layer.CompressedDigest, false)
	}
	return layer, size, err
}

// PrepareStagedLayer stages a partially pulled (zstd:chunked) layer, and
// drops the staged output's reference to the differ that staged it, so
// that the differ is garbage once containers/image's PutBlobPartial
// returns, with what it alone holds: a zstd decoder with an 8 MiB window, a
// 2 MiB copy buffer, and pkg/chunked's layers cache as it was when this
// pull started (each per-image Store gets a cache of its own: pkg/chunked
// keeps one per store value). The output keeps the differ in a field that
// neither containers/storage nor containers/image reads, and
// containers/image keeps the output until the image's copy.Image ends, so
// without this every partially pulled layer of every image in flight kept
// ~12 MiB: with 16 zstd:chunked images, most of herd's live heap, which
// the garbage collector then doubles.
func (s *Store) PrepareStagedLayer(options *drivers.ApplyDiffWithDifferOpts, differ drivers.Differ) (*drivers.DriverWithDifferOutput, error) {
	out, err := s.Store.PrepareStagedLayer(options, differ)
	if out != nil {
		out.Differ = nil
	}
	return out, err
}

// ApplyStagedLayer commits a partially pulled (zstd:chunked) layer, and ends
// the flight of the blob it was made from, found through its TOC digest.
func (s *Store) ApplyStagedLayer(args storage.ApplyStagedLayerOptions) (*storage.Layer, error) {
	var blob digest.Digest
	if args.DiffOutput != nil && args.DiffOutput.TOCDigest != "" {
		blob = s.image.c.tocToBlob[args.DiffOutput.TOCDigest]
	}
	if blob != "" {
		s.image.hooks.CommitStarted(blob)
	}
	s.image.c.awaitDriverProbe()
	layer, err := s.Store.ApplyStagedLayer(args)
	if err != nil {
		return layer, s.commitFailed(blob, args.ParentLayer, err)
	}
	if args.DiffOutput != nil {
		// The layer's TOC, as JSON and parsed, is in the store now; what is
		// left of the staged output (containers/image keeps it until the
		// image's copy.Image ends) is its staging directory, for cleanup.
		args.DiffOutput.BigData, args.DiffOutput.Artifacts = nil, nil
	}
	if layer != nil {
		// The layer's own digests say which blob it was made from.
		made := layer.CompressedDigest
		if layer.TOCDigest != "" {
			if b := s.image.c.tocToBlob[layer.TOCDigest]; b != "" {
				made = b
			}
		}
		if made != "" {
			s.committed(made, true)
		}
	}
	return layer, nil
}

// committed ends the flight of blob, whose layer this image committed
// (partially pulled or not), and reports it.
func (s *Store) committed(blob digest.Digest, partial bool) {
	s.image.c.committed(blob)
	s.image.hooks.Committed(blob, partial)
}

// CreateImage records the pulled image; it fails as a commit does when the
// top layer, reused from the store, was removed meanwhile.
func (s *Store) CreateImage(id string, names []string, layer, metadata string, options *storage.ImageOptions) (*storage.Image, error) {
	img, err := s.Store.CreateImage(id, names, layer, metadata, options)
	if err != nil {
		return img, s.commitFailed("", layer, err)
	}
	return img, nil
}

// ErrLayerRemoved is what errors.Is finds in an error of a commit whose
// parent layer (or, for the image itself, top layer) existed when
// containers/image chose to build on it and was gone when it committed:
// another process removed it (podman rmi, podman image prune). A new attempt
// starts from the store as it is now, so it can succeed.
var ErrLayerRemoved = errors.New("layer removed from the store during the pull")

// layerRemovedError names the layer that disappeared.
type layerRemovedError struct {
	layer string
	err   error
}

func (e *layerRemovedError) Error() string {
	return fmt.Sprintf("layer %s, which this image builds on, was removed from the store while herd pulled (by podman rmi or image prune?): %v", e.layer, e.err)
}

func (e *layerRemovedError) Unwrap() []error { return []error{ErrLayerRemoved, e.err} }

// ErrFileVanished is what errors.Is finds in an error of a commit that
// failed because a file or directory containers/storage was writing was
// gone. When several processes write one store, containers/storage's
// recovery of stale temporary directories, which each runs whenever it
// reloads a layer list another changed, can remove a live one: its
// internal/tempdir creates a directory's lock file, closes it and only
// then locks it by path, and a recovery that locks and deletes the file in
// between leaves the directory unprotected (seen in TestConcurrent-
// ProcessesShareOneStore about once in a hundred runs). Nothing of the
// layer is committed, and a new attempt can succeed.
var ErrFileVanished = errors.New("a file of the layer being committed vanished")

// fileVanishedError keeps containers/storage's words.
type fileVanishedError struct{ err error }

func (e *fileVanishedError) Error() string {
	return e.err.Error() + " (removed while it was written: by another process's cleanup of the store's temporary directories?)"
}

func (e *fileVanishedError) Unwrap() []error { return []error{ErrFileVanished, e.err} }

// commitFailed explains err, an error of the commit of blob's layer (or of
// the image) on top of layer parent, and reports it (Hooks.CommitFailed).
func (s *Store) commitFailed(blob digest.Digest, parent string, err error) error {
	switch {
	case parent != "" && errors.Is(err, storage.ErrLayerUnknown):
		if _, lerr := s.Store.Layer(parent); errors.Is(lerr, storage.ErrLayerUnknown) {
			err = &layerRemovedError{layer: parent, err: err}
		}
	case errors.Is(err, fs.ErrNotExist):
		// Not the untar child's errors, which are text: a layer with a
		// link to a file it lacks fails there, and must not be retried.
		err = &fileVanishedError{err: err}
	}
	s.image.hooks.CommitFailed(blob, err)
	return err
}
