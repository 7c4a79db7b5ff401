package commit

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync/atomic"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"
	"go.podman.io/image/v5/pkg/blobinfocache/none"
	"go.podman.io/image/v5/types"
	"go.podman.io/storage"
	drivers "go.podman.io/storage/drivers"
	"go.podman.io/storage/pkg/archive"
	"go.podman.io/storage/pkg/chunked"
)

// Whole layers that herd fetches itself, so that each is decompressed once.
//
// containers/image writes a fully fetched blob to a temporary file and
// decompresses it on the way, only to compute its DiffID; containers/storage
// decompresses it again when the layer is committed. On a pull that the
// cores limit (gzip inflates at about 250 MiB/s per core on these machines)
// that first decompression is a third of the CPU, and containers/image has
// no option to skip it. So when a pull claims a whole layer (gzip, zstd or
// uncompressed; herd pulls zstd:chunked partially, partiallayer.go), the
// Store answers containers/image's lookup with the layer it is about to
// make, and fetches the blob itself in the background, through
// containers/image's own ImageSource (its registry client, credentials,
// mirrors and reconnection of a cut body), to a file in the run's temporary
// directory, checking its size and digest on the way. containers/image takes
// the blob as reused and goes on with the image's other layers; when it
// commits the layer, once every lower one is committed, it asks the store
// for the layer by ID (commitLayer), and the Store applies the file then,
// one decompression feeding the DiffID check, the tar check and the apply.
//
// This is herd doing by hand what copy.Image does (fetch, verify, commit a
// blob), for that one decompression. For containers/image to take the layer
// as its own, the layer ID must be the one it computes: the chain of the
// config's DiffIDs (layerChain). So herd reads each image's config once
// more than containers/image does (a few KiB), and leaves to
// containers/image every layer with a zstd:chunked layer at or below it
// when herd does not pull those partially itself (containers/image may
// name a layer it pulls partially by its TOC digest), every image that
// lists a blob twice (invariant 7), and (the pull engine decides)
// encrypted and foreign layers. A layer whose ID is in the store already
// (the same content in another compression) is left to containers/image
// too, which finds it by that ID once it has fetched the blob.
//
// The placeholder keeps the invariants of coordinator.go: the blob's flight
// stays the image's until the layer is committed or the image's copy.Image
// returns (the "skipped" event of the reuse ends nothing, Image.Progress);
// the fetch takes a --jobs slot of its own (LayerFetches.Slot), or the one
// of the commit that waits for it (takeSlot), and once it has it needs
// nothing from another pull (a partial pull's waits for layers with some
// of its files come before, in the wait graph: partiallayer.go). One thing
// changes for the image's other layers:
// containers/image commits the layers queued above a layer inside the call
// that commits it, so a lower layer's "done" or "skipped" event may come
// only once the fetches of the whole layers above it have ended.

// LayerFetches is what an image's Store needs to fetch its layers itself,
// whole, or partially with Partial (Image.FetchLayers).
type LayerFetches struct {
	// Source is the image's source; only GetBlob is called, from several
	// goroutines at once (the caller checks HasThreadSafeGetBlob).
	Source types.ImageSource
	// DiffIDs returns the DiffIDs of the image's layers from its config, in
	// the order of the Plan's layers, or an error if they cannot be known
	// (then containers/image fetches every layer itself).
	DiffIDs func(context.Context) ([]digest.Digest, error)
	// Cache is the blob-info cache containers/image uses. A fetched blob's
	// DiffID is recorded there once checked, as containers/image records
	// the blobs it fetches: later lookups by DiffID rely on it.
	Cache types.BlobInfoCache
	// TempDir is where blobs are kept until they are applied.
	TempDir string
	// Slot takes one of the run's --jobs slots for a fetch, waiting for
	// one, and returns what gives it back.
	Slot func(context.Context) (release func(), err error)
	// Lend lends the run the slot that containers/image's commit of a
	// layer holds while it waits for the layer's fetch (which may need a
	// slot), and returns what takes it back. The commit does not hold the
	// image's destination lock meanwhile, so the image's other layers go
	// on and free their slots.
	Lend func() (reclaim func())
	// Progress reports each fetch as containers/image's progress events
	// would: "new", a "read" at most every ProgressInterval, and "done"
	// once the layer is committed.
	Progress         func(types.ProgressProperties)
	ProgressInterval time.Duration
	// Partial, if set, lets the Store pull the zstd:chunked layers it
	// claims partially itself (partiallayer.go): it returns what reads
	// parts of layer for containers/storage's pkg/chunked, calling fetched
	// with what the registry sends. Layers is then the image's layers as
	// its manifest lists them, with the annotations that say where each
	// one's TOC is.
	Partial func(ctx context.Context, layer types.BlobInfo, fetched func(bytes int)) chunked.ImageSourceSeekable
	Layers  []types.BlobInfo
}

// wholeFetch is one whole layer herd fetches for an image.
type wholeFetch struct {
	info       types.BlobInfo
	partial    bool // a zstd:chunked layer, staged by pkg/chunked; else fetched whole to file
	diffID     digest.Digest
	id, parent string                          // the layer's storage ID, and its parent's
	fetched    chan struct{}                   // closed when the fetch has ended
	handoff    chan struct{}                   // the layer's commit lends the fetch its slot
	ownSlot    atomic.Bool                     // the fetch holds a slot of its own
	waiting    atomic.Bool                     // for another pull's fetch, at the layer's commit (commitwait.go)
	found      bool                            // that wait ended with the layer in the store
	file       *os.File                        // the checked blob, once fetched whole
	staged     *drivers.DriverWithDifferOutput // the staged layer, once pulled partially
	store      storage.Store                   // where it is staged
	bytes      int64                           // read from the source
	reported   int64                           // of which "read" events reported
	err        error                           // why the fetch failed
}

// report sends w's progress event of kind event for f's transfer, as
// containers/image would: what was read so far, and since the last report.
func (f *wholeFetch) report(w *LayerFetches, event types.ProgressEvent) {
	w.Progress(types.ProgressProperties{Event: event, Artifact: f.info, Offset: uint64(f.bytes), OffsetUpdate: uint64(f.bytes - f.reported)})
	f.reported = f.bytes
}

// placeholder is what the lookup returns for the layer before it exists:
// containers/image reads the DiffID and size of a layer it reuses.
func (f *wholeFetch) placeholder() storage.Layer {
	return storage.Layer{ID: f.id, Parent: f.parent, CompressedDigest: f.info.Digest, CompressedSize: f.info.Size, UncompressedDigest: f.diffID}
}

// FetchLayers lets this image's Store fetch the layers it claims itself
// (see above, and partiallayer.go), and make its waits at the layers'
// commits (commitwait.go). Call it before copy.Image starts, and
// EndLayerFetches once it has returned.
func (img *Image) FetchLayers(w *LayerFetches) {
	if w == nil {
		return
	}
	img.whole = w
	img.wholeCtx, img.wholeCancel = context.WithCancel(img.ctx)
}

// EndLayerFetches stops the fetches and waits still under way (copy.Image
// failed before it committed their layers) and removes the files and
// staged layers not applied.
func (img *Image) EndLayerFetches() {
	if img.whole == nil {
		return
	}
	img.wholeCancel()
	img.wholeRunning.Wait()
	img.mu.Lock()
	defer img.mu.Unlock()
	for _, f := range img.wholeFetches {
		f.discard()
	}
}

// LayerFetchError is the first failure of a layer the image's Store fetched
// itself, or nil. containers/image reports it only as a layer it cannot
// find ("layer for blob … not found"): the pull engine reports this instead.
func (img *Image) LayerFetchError() error {
	img.mu.Lock()
	defer img.mu.Unlock()
	return img.wholeErr
}

// startWholeFetch starts fetching blob, which this image has claimed, if
// herd can pull its layer itself (ownLayer); it returns nil if not.
func (s *Store) startWholeFetch(blob digest.Digest) *wholeFetch {
	f := s.ownLayer(blob)
	if f == nil {
		return nil
	}
	img := s.image
	img.register(f, true)
	how := "whole-layer fetch"
	if f.partial {
		how = "partial pull"
	}
	logrus.Debugf("%s: fetching blob %s itself, for layer %s (%s)", img.name, blob, f.id, how)
	img.wholeRunning.Add(1)
	go func() {
		defer img.wholeRunning.Done()
		defer close(f.fetched)
		f.err = s.fetch(f)
		if f.err == nil {
			img.hooks.CommitStarted(blob) // fetched: the rest is the commit's
		}
	}()
	return f
}

// ownLayer returns the layer this image makes from blob, not yet fetched,
// if herd can pull it itself: whole, or partially (FetchedByHerd), with
// the ID containers/image will ask for; nil if not.
func (s *Store) ownLayer(blob digest.Digest) *wholeFetch {
	img := s.image
	w := img.whole
	if w == nil || img.LayerFetchError() != nil {
		return nil // after a failure, containers/image reports it (Store.Layer)
	}
	index, whole := FetchedByHerd(img.planned, blob, w.Partial != nil)
	if !whole || blob.Validate() != nil || s.Store.PullOptions()["convert_images"] == "true" {
		// Or containers/image is to convert layers to zstd:chunked as it
		// pulls them (storage.conf).
		return nil
	}
	diffIDs, err := w.DiffIDs(img.ctx)
	if err != nil || len(diffIDs) != len(img.planned) {
		return nil // containers/image reports what is wrong with the config
	}
	parent, id := layerChain(diffIDs[:index+1])
	if _, err := s.Store.Layer(id); err == nil {
		return nil // made from another blob of the same content: containers/image finds it by ID
	}
	f := &wholeFetch{
		info:   types.BlobInfo{Digest: blob, Size: img.planned[index].Size},
		diffID: diffIDs[index], id: id, parent: parent, store: s.Store,
		fetched: make(chan struct{}), handoff: make(chan struct{}, 1),
	}
	if img.planned[index].TOC != "" {
		if len(w.Layers) != len(img.planned) || w.Layers[index].Digest != blob {
			return nil
		}
		f.partial, f.info = true, w.Layers[index] // with the annotations pkg/chunked reads
	}
	return f
}

// register makes f the layer that containers/image's commit of f's ID
// gets (Store.Layer); fetching says that herd fetches its blob (its
// progress events are herd's, Image.Progress).
func (img *Image) register(f *wholeFetch, fetching bool) {
	img.mu.Lock()
	defer img.mu.Unlock()
	if img.wholeFetches == nil {
		img.wholeFetches = map[string]*wholeFetch{}
		img.wholeBlobs = map[digest.Digest]bool{}
	}
	img.wholeFetches[f.id] = f
	if fetching {
		img.wholeBlobs[f.info.Digest] = true
	}
}

// FetchedByHerd returns blob's index among an image's planned layers, and
// whether herd fetches it itself, whole or partially, when the image
// claims it (the pull engine's dry run asks the same): a layer of the
// manifest in an image that lists no blob twice (invariant 7: its one copy
// at a time holds its only slot), and, unless herd pulls zstd:chunked
// layers partially itself (partial), with no zstd:chunked layer at or
// below it: containers/image may name a layer it pulls partially by its
// TOC digest, and the layers above it by that name.
func FetchedByHerd(layers []Layer, blob digest.Digest, partial bool) (int, bool) {
	if listsTwice(layers) {
		return -1, false
	}
	for i, l := range layers {
		if l.TOC != "" && !partial {
			return -1, false
		}
		if l.Blob == blob {
			return i, true
		}
	}
	return -1, false
}

// layerChain returns the storage IDs of the layer whose DiffIDs (lowest
// first) are diffIDs and of its parent ("" for a base layer), as
// containers/image's storage destination computes them (layerID in its
// storage_dest.go, for a layer not identified by a TOC): the base's DiffID,
// then the digest of "PARENT+DIFFID" for each layer above.
func layerChain(diffIDs []digest.Digest) (parent, id string) {
	for _, d := range diffIDs {
		parent = id
		if parent == "" {
			id = d.Encoded()
		} else {
			id = digest.Canonical.FromString(parent + "+" + d.Encoded()).Encoded()
		}
	}
	return parent, id
}

// fetch fetches f's layer under a --jobs slot: partially if it is a
// zstd:chunked layer pkg/chunked can pull so, else its whole blob to a
// file.
func (s *Store) fetch(f *wholeFetch) error {
	ctx := s.image.wholeCtx
	if f.partial {
		if err := s.awaitSharedFiles(ctx, f); err != nil {
			return err
		}
	}
	release, err := s.takeSlot(ctx, f)
	if err != nil {
		return err
	}
	defer release()
	if f.partial {
		leave, err := s.image.c.stagings.enter(ctx, s.image.c.needed(f.info.Digest), f.info.Size)
		if err != nil {
			return err
		}
		defer leave()
	}
	s.image.whole.Progress(types.ProgressProperties{Event: types.ProgressEventNewArtifact, Artifact: f.info})
	if f.partial {
		err := s.stage(ctx, f)
		if _, fallback := errors.AsType[chunked.ErrFallbackToOrdinaryLayerDownload](err); !fallback {
			return err
		}
		logrus.Debugf("%s: fetching blob %s whole: %v", s.image.name, f.info.Digest, err)
		f.partial = false
	}
	return s.fetchToFile(ctx, f)
}

// fetchToFile fetches f's blob into a file, checking its size and digest.
func (s *Store) fetchToFile(ctx context.Context, f *wholeFetch) error {
	w := s.image.whole
	body, _, err := w.Source.GetBlob(ctx, f.info, none.NoCache)
	if err != nil {
		return err
	}
	defer body.Close()
	file, err := os.CreateTemp(w.TempDir, "layer-*")
	if err != nil {
		return err
	}
	blob := &blobReader{body: body, fetch: f, w: w, digester: f.info.Digest.Algorithm().Digester(), last: time.Now()}
	if _, err := io.Copy(file, blob); err != nil {
		removeFile(file)
		return err
	}
	f.file = file
	return nil
}

// takeSlot waits for a --jobs slot for f's fetch: one of the run's, or the
// one that containers/image's commit of the layer holds while it waits for
// the fetch (a handoff: that commit cannot go on before the fetch ends, and
// without it, commits waiting for fetches could hold every slot).
func (s *Store) takeSlot(ctx context.Context, f *wholeFetch) (func(), error) {
	type taken struct {
		release func()
		err     error
	}
	actx, cancel := context.WithCancel(ctx)
	defer cancel()
	got := make(chan taken, 1)
	go func() {
		release, err := s.image.whole.Slot(actx)
		got <- taken{release, err}
	}()
	select {
	case t := <-got:
		if t.err == nil {
			f.ownSlot.Store(true)
		}
		return t.release, t.err
	case <-f.handoff:
		cancel()
		if t := <-got; t.err == nil {
			t.release() // taken meanwhile: not needed
		}
		return func() {}, nil
	}
}

// Layer is where containers/image's commit of a layer herd fetches waits
// for the fetch, and then has the Store apply it.
func (s *Store) Layer(id string) (*storage.Layer, error) {
	img := s.image
	img.mu.Lock()
	f := img.wholeFetches[id]
	delete(img.wholeFetches, id) // applied once; a later lookup finds the layer in the store
	img.mu.Unlock()
	if f == nil {
		return s.Store.Layer(id)
	}
	layer, err := s.applyWhole(f)
	if err != nil && !f.found {
		err = &FetchError{Blob: f.info.Digest, Fetched: f.err == nil, Err: err}
		img.mu.Lock()
		if img.wholeErr == nil {
			img.wholeErr = err
		}
		img.mu.Unlock()
	}
	return layer, err
}

// applyWhole waits for f's fetch and commits its layer, decompressing the
// blob once.
func (s *Store) applyWhole(f *wholeFetch) (*storage.Layer, error) {
	w := s.image.whole
	select {
	case <-f.fetched:
	default:
		if f.ownSlot.Load() || f.waiting.Load() {
			// This commit's slot idles while it waits: the run may use it.
			reclaim := w.Lend()
			<-f.fetched
			reclaim()
		} else {
			select {
			case f.handoff <- struct{}{}: // the fetch may take this commit's slot
			default:
			}
			<-f.fetched
		}
	}
	if f.err != nil {
		return nil, f.err
	}
	if f.found {
		// Committed by another pull: this ID, or containers/image copies
		// the layer it finds under another one.
		return s.Store.Layer(f.id)
	}
	if f.staged != nil {
		return s.applyStaged(f)
	}
	defer f.discard()
	layer, err := s.applyFile(f)
	if errors.Is(err, storage.ErrDuplicateID) {
		// Another pull committed the same content from another blob (the
		// layer in another compression) meanwhile: that is the layer.
		layer, err = s.adopt(f)
	}
	if err != nil {
		return nil, err
	}
	f.report(w, types.ProgressEventDone)
	return layer, nil
}

// applyFile commits f's layer from its file, checking the tar against the
// config's DiffID on the way.
func (s *Store) applyFile(f *wholeFetch) (*storage.Layer, error) {
	layerTar, closeTar, err := f.layerTar()
	if err != nil {
		return nil, err
	}
	defer closeTar()
	options := &storage.LayerOptions{OriginalDigest: f.info.Digest, UncompressedDigest: f.diffID}
	if f.info.Size >= 0 {
		options.OriginalSize = &f.info.Size
	}
	layer, _, err := s.apply(f.id, f.parent, nil, "", false, options, layerTar)
	if err != nil {
		return nil, err
	}
	if !layerTar.verified {
		// containers/storage reads a layer's diff to its end before it
		// commits it; if it ever stops doing so, a layer whose DiffID was
		// not checked must not stay.
		_ = s.Store.DeleteLayer(layer.ID)
		return nil, errors.New("containers/storage committed the layer before reading it to the end")
	}
	s.image.whole.Cache.RecordDigestUncompressedPair(f.info.Digest, f.diffID)
	return layer, nil
}

// adopt takes the layer with f's ID, which another pull made from another
// blob of the same content, as f's, once f's blob is checked against the
// DiffID: the cache then records the pair, as containers/image would have,
// and the blob's waiters find the layer by it.
func (s *Store) adopt(f *wholeFetch) (*storage.Layer, error) {
	layer, err := s.Store.Layer(f.id)
	if err != nil {
		return nil, err
	}
	layerTar, closeTar, err := f.layerTar()
	if err != nil {
		return nil, err
	}
	defer closeTar()
	if _, err := io.Copy(io.Discard, layerTar); err != nil {
		return nil, err
	}
	s.image.whole.Cache.RecordDigestUncompressedPair(f.info.Digest, f.diffID)
	s.committed(f.info.Digest, false)
	return layer, nil
}

// layerTar is f's blob from its start, decompressed, checked against the
// DiffID at its end. Each call reads the file at offsets of its own: a
// decompressor that containers/storage runs as a process (zstd, unpigz)
// is fed by a goroutine that may still be reading after an earlier
// stream was closed.
func (f *wholeFetch) layerTar() (*diffIDReader, func(), error) {
	tarStream, err := archive.DecompressStream(io.NewSectionReader(f.file, 0, f.bytes))
	if err != nil {
		return nil, nil, err
	}
	return &diffIDReader{tar: tarStream, want: f.diffID, digester: f.diffID.Algorithm().Digester()}, func() { _ = tarStream.Close() }, nil
}

// discard removes what f fetched and no layer was made of.
func (f *wholeFetch) discard() {
	if f.file != nil {
		removeFile(f.file)
		f.file = nil
	}
	if f.staged != nil {
		_ = f.store.CleanupStagedLayer(f.staged)
		f.staged = nil
	}
}

func removeFile(file *os.File) {
	_ = file.Close()
	_ = os.Remove(file.Name())
}

// FetchError is the failure of a whole layer the Store fetched itself: of
// its fetch, or, once the blob was fetched, of the layer's commit.
type FetchError struct {
	Blob    digest.Digest
	Fetched bool // the fetch succeeded; the commit failed
	Err     error
}

func (e *FetchError) Error() string {
	if e.Fetched {
		return fmt.Sprintf("committing the layer of blob %s: %v", e.Blob, e.Err)
	}
	return fmt.Sprintf("fetching blob %s: %v", e.Blob, e.Err)
}

func (e *FetchError) Unwrap() error { return e.Err }

// blobReader reads a blob from its source, reports its progress, and at its
// end checks its size and digest against the manifest's.
type blobReader struct {
	body     io.Reader
	fetch    *wholeFetch
	w        *LayerFetches
	digester digest.Digester
	last     time.Time // of the last "read" event
	err      error     // the blob's end, checked: io.EOF, or why the blob is wrong
}

func (b *blobReader) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	f := b.fetch
	n, err := b.body.Read(p)
	b.digester.Hash().Write(p[:n])
	f.bytes += int64(n)
	if f.info.Size >= 0 && f.bytes > f.info.Size {
		b.err = fmt.Errorf("the registry sent more than the %d bytes the manifest declares", f.info.Size)
		return 0, b.err
	}
	if now := time.Now(); n > 0 && now.Sub(b.last) >= b.w.ProgressInterval {
		f.report(b.w, types.ProgressEventRead)
		b.last = now
	}
	if err == io.EOF {
		b.err = b.end()
		return n, b.err
	}
	return n, err
}

// end checks the whole blob: io.EOF if it is what the manifest says.
func (b *blobReader) end() error {
	f := b.fetch
	if got := b.digester.Digest(); got != f.info.Digest {
		// containers/image's words, which users and scripts know.
		return fmt.Errorf("Digest did not match, expected %s, got %s (%d bytes received)", f.info.Digest, got, f.bytes)
	}
	if f.info.Size >= 0 && f.bytes != f.info.Size {
		return fmt.Errorf("the registry sent %d bytes, the manifest declares %d", f.bytes, f.info.Size)
	}
	return io.EOF
}

// diffIDReader is the layer's tar on its way to containers/storage: at its
// end it checks the tar's digest against the config's DiffID before
// containers/storage sees the end, so a layer that does not match is never
// committed.
type diffIDReader struct {
	tar      io.Reader
	want     digest.Digest
	digester digest.Digester
	verified bool
}

func (r *diffIDReader) Read(p []byte) (int, error) {
	n, err := r.tar.Read(p)
	r.digester.Hash().Write(p[:n])
	if err != io.EOF {
		return n, err
	}
	if got := r.digester.Digest(); got != r.want {
		// containers/image's words for the same check.
		return n, fmt.Errorf("the layer does not match config's DiffID %q (its content has %s)", r.want, got)
	}
	r.verified = true
	return n, io.EOF
}
