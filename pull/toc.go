package pull

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"sync"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"
	"go.podman.io/image/v5/pkg/compression"
	"go.podman.io/image/v5/types"
	"go.podman.io/storage"
	drivers "go.podman.io/storage/drivers"
	"go.podman.io/storage/pkg/chunked"
	"golang.org/x/sync/errgroup"

	"github.com/herd-project/herd/commit"
)

// The files of zstd:chunked layers, read from their TOCs before the pulls
// start, so that the coordinator pulls layers with many of the same files
// one after the other (commit/similar.go). A TOC is a few hundred KiB at
// most, and containers/image reads it again when it pulls the layer:
// nothing lets herd hand it over. So herd reads TOCs only when it may use
// them: when partial pulls are on and at least two images of the run have
// zstd:chunked layers that the store does not have (the layers of one
// image are never held back for each other).

// manifestPositionKey is the annotation that says where a zstd:chunked
// layer's TOC is in its blob, as "offset:length:uncompressedLength:type"
// (containers/storage's pkg/chunked/internal/minimal.ManifestInfoKey).
const manifestPositionKey = "io.github.containers.zstd-chunked.manifest-position"

// maxTOCSize is the largest TOC herd reads, compressed or not: the limit
// containers/storage's pkg/chunked sets itself (maxTocSize), beyond which
// it does not pull the layer partially.
const maxTOCSize = 150 << 20

// layerFilesOf reads the TOCs of the distinct zstd:chunked layers of
// targets that the store does not have, in parallel (at most Jobs at
// once), and returns each one's files by blob. It leaves out a layer every
// image needs (a common base): every image waits for it anyway. A TOC that
// cannot be read only leaves its layer out of the ordering: the pull
// reports what is wrong with the layer, if anything is.
func layerFilesOf(ctx context.Context, targets []*target, opts *Options, diffIDs commit.DiffIDs, tocs *readTOCs) map[digest.Digest]commit.Files {
	if !pullsPartially(opts.Store) {
		return nil
	}
	type candidate struct {
		src   types.ImageSource
		layer types.BlobInfo
		toc   digest.Digest
	}
	var pulled []*target
	for _, t := range targets {
		if t != nil && t.local == nil {
			pulled = append(pulled, t)
		}
	}
	needs := needsOf(pulled)
	var candidates []candidate
	seen := map[digest.Digest]bool{}
	images := 0 // with candidates
	for _, t := range pulled {
		before := len(candidates)
		for _, l := range t.distinctLayers() {
			toc := tocDigest(l)
			if toc == "" || seen[l.Digest] || needs[l.Digest] == len(pulled) || commit.Findable(opts.Store, diffIDs, l.Digest, toc) {
				continue
			}
			seen[l.Digest] = true
			if src := t.source.next(ctx, opts.System); src != nil {
				candidates = append(candidates, candidate{src, l, toc})
			}
		}
		if len(candidates) > before {
			images++
		}
	}
	if images < 2 {
		return nil
	}
	start := time.Now()
	files := make([]commit.Files, len(candidates))
	var g errgroup.Group
	g.SetLimit(opts.Jobs)
	for i, c := range candidates {
		g.Go(func() error {
			f, raw, err := layerFiles(ctx, c.src, c.layer, c.toc)
			if err != nil {
				logrus.Debugf("not ordering blob %s by its files: %v", c.layer.Digest, err)
			}
			files[i] = f
			tocs.keep(c.layer.Digest, raw)
			return nil
		})
	}
	_ = g.Wait()
	byBlob := map[digest.Digest]commit.Files{}
	for i, c := range candidates {
		if files[i] != nil {
			byBlob[c.layer.Digest] = files[i]
		}
	}
	logrus.Debugf("read the TOCs of %d of %d zstd:chunked layers in %s", len(byBlob), len(candidates), time.Since(start).Round(time.Millisecond))
	return byBlob
}

// pullsPartially reports whether containers/image pulls zstd:chunked layers
// into store partially: the pull option is on and the graph driver can
// stage a layer from a differ (overlay).
func pullsPartially(store storage.Store) bool {
	if !strings.EqualFold(store.PullOptions()["enable_partial_images"], "true") {
		return false
	}
	driver, err := store.GraphDriver()
	if err != nil {
		return false
	}
	_, ok := driver.(drivers.DriverWithDiffer)
	return ok
}

// layerFiles reads the TOC of layer, a zstd:chunked blob, through src and
// returns its regular files, and the TOC as the blob holds it (compressed).
// The TOC is checked against toc, its digest.
//
// containers/storage parses TOCs in an internal package (pkg/chunked's
// minimal.TOC), so herd decodes the few fields it needs itself; their
// format is zstd:chunked's, which images in registries carry.
func layerFiles(ctx context.Context, src types.ImageSource, layer types.BlobInfo, toc digest.Digest) (commit.Files, []byte, error) {
	offset, length, uncompressed, err := tocPosition(layer)
	if err != nil {
		return nil, nil, err
	}
	if length > maxTOCSize || uncompressed > maxTOCSize {
		return nil, nil, fmt.Errorf("TOC of %d bytes (%d uncompressed) is too big", length, uncompressed)
	}
	compressed, err := getBlobRange(ctx, src, layer, offset, length)
	if err != nil {
		return nil, nil, fmt.Errorf("reading the TOC: %w", err)
	}
	if got := toc.Algorithm().FromBytes(compressed); got != toc {
		return nil, nil, fmt.Errorf("TOC has digest %s, want %s", got, toc)
	}
	dec, err := compression.ZstdDecompressor(bytes.NewReader(compressed))
	if err != nil {
		return nil, nil, fmt.Errorf("decompressing the TOC: %w", err)
	}
	defer dec.Close()
	var parsed struct {
		Entries []struct {
			Type   string        `json:"type"`
			Size   int64         `json:"size"`
			Digest digest.Digest `json:"digest"`
		} `json:"entries"`
	}
	if err := json.NewDecoder(io.LimitReader(dec, int64(uncompressed))).Decode(&parsed); err != nil {
		return nil, nil, fmt.Errorf("decoding the TOC: %w", err)
	}
	files := commit.Files{}
	for _, e := range parsed.Entries {
		if e.Type == "reg" && e.Size > 0 && e.Digest != "" {
			files[e.Digest] = e.Size
		}
	}
	return files, compressed, nil
}

// tocPosition is where layer's annotations say its TOC is in the blob.
func tocPosition(layer types.BlobInfo) (offset, length, uncompressed uint64, err error) {
	var kind uint64
	if _, err := fmt.Sscanf(layer.Annotations[manifestPositionKey], "%d:%d:%d:%d", &offset, &length, &uncompressed, &kind); err != nil {
		return 0, 0, 0, fmt.Errorf("reading annotation %s: %w", manifestPositionKey, err)
	}
	if kind != 1 { // minimal.ManifestTypeCRFS, the only one
		return 0, 0, 0, fmt.Errorf("TOC of unknown type %d", kind)
	}
	return offset, length, uncompressed, nil
}

// readTOCs keeps the TOCs herd read to order the layers until the layer's
// partial pull reads its TOC (blobParts): the registry then sends each one
// once. It is safe for concurrent use.
type readTOCs struct {
	mu   sync.Mutex
	tocs map[digest.Digest][]byte // by blob
}

func (r *readTOCs) keep(blob digest.Digest, toc []byte) {
	if toc == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.tocs == nil {
		r.tocs = map[digest.Digest][]byte{}
	}
	r.tocs[blob] = toc
}

// take returns blob's TOC, and forgets it: a layer is staged once.
func (r *readTOCs) take(blob digest.Digest) []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	toc := r.tocs[blob]
	delete(r.tocs, blob)
	return toc
}

// blobParts serves pkg/chunked's ranged reads of one zstd:chunked blob
// (its ImageSourceSeekable) through the image's source, for herd's own
// partial pull of the layer (commit/partiallayer.go), and counts what the
// registry sends. pkg/chunked's first read asks for the TOC (and the
// tar-split after it): if herd read that TOC already to order the layers,
// it is served from that copy.
type blobParts struct {
	ctx     context.Context
	src     types.ImageSource
	blob    types.BlobInfo
	toc     []byte          // read already, or nil; served once
	fetched func(bytes int) // what the registry sent
}

func (p *blobParts) GetBlobAt(chunks []chunked.ImageSourceChunk) (chan io.ReadCloser, chan error, error) {
	var first io.ReadCloser // the TOC, from herd's copy
	if toc := p.toc; toc != nil && len(chunks) > 0 {
		p.toc = nil
		if offset, length, _, err := tocPosition(p.blob); err == nil && chunks[0].Offset == offset && chunks[0].Length == length && uint64(len(toc)) == length {
			first, chunks = io.NopCloser(bytes.NewReader(toc)), chunks[1:]
		}
	}
	var fromStreams chan io.ReadCloser
	var fromErrs chan error
	if len(chunks) > 0 {
		var err error
		if fromStreams, fromErrs, err = getBlobAt(p.ctx, p.src, p.blob, chunks); err != nil {
			return nil, nil, err
		}
	}
	// One goroutine hands both on, in their order, and closes them once
	// every stream is handed over: pkg/chunked takes a closed error channel
	// for an answer that ended short.
	streams, errs := make(chan io.ReadCloser), make(chan error)
	go func() {
		defer close(streams)
		defer close(errs)
		if first != nil {
			// The registry sent these bytes once, before the pulls started:
			// the summary counts them here, with the layer.
			streams <- &countedStream{ReadCloser: first, fetched: p.fetched}
		}
		for fromStreams != nil || fromErrs != nil {
			select {
			case r, ok := <-fromStreams:
				if !ok {
					fromStreams = nil
					continue
				}
				streams <- &countedStream{ReadCloser: r, fetched: p.fetched}
			case err, ok := <-fromErrs:
				if !ok {
					fromErrs = nil
					continue
				}
				errs <- err
			}
		}
	}()
	return streams, errs, nil
}

// countedStream counts what a stream of the registry's answer delivers.
type countedStream struct {
	io.ReadCloser
	fetched func(bytes int)
}

func (s *countedStream) Read(p []byte) (int, error) {
	n, err := s.ReadCloser.Read(p)
	if n > 0 {
		s.fetched(n)
	}
	return n, err
}

// getBlobAt reads chunks of blob through src's GetBlobAt, the ranged read
// containers/image's registry source offers for partial pulls, with
// pkg/chunked's ImageSourceSeekable contract: one stream per chunk, in
// order, errors beside them, both channels closed at the end. Its argument
// type lives in containers/image's internal/private package, which herd
// cannot import, so the method is found and called by reflection; sources
// without it fail. A request the registry refuses (no ranges) comes back
// as pkg/chunked's ErrBadRequest, as containers/image's own adapter turns
// it, so that pkg/chunked falls back.
func getBlobAt(ctx context.Context, src types.ImageSource, blob types.BlobInfo, chunks []chunked.ImageSourceChunk) (chan io.ReadCloser, chan error, error) {
	m := reflect.ValueOf(src).MethodByName("GetBlobAt")
	if !m.IsValid() {
		return nil, nil, errors.New("the image source cannot read part of a blob")
	}
	mt := m.Type()
	if mt.NumIn() != 3 || mt.NumOut() != 3 || mt.In(2).Kind() != reflect.Slice || mt.In(2).Elem().Kind() != reflect.Struct ||
		mt.Out(0) != reflect.TypeFor[chan io.ReadCloser]() || mt.Out(1) != reflect.TypeFor[chan error]() {
		return nil, nil, fmt.Errorf("the image source's GetBlobAt is %s, not what herd knows", mt)
	}
	args := reflect.MakeSlice(mt.In(2), len(chunks), len(chunks))
	for i, c := range chunks {
		offset, length := args.Index(i).FieldByName("Offset"), args.Index(i).FieldByName("Length")
		if offset.Kind() != reflect.Uint64 || length.Kind() != reflect.Uint64 {
			return nil, nil, fmt.Errorf("the image source's GetBlobAt takes %s, not what herd knows", mt.In(2))
		}
		offset.SetUint(c.Offset)
		length.SetUint(c.Length)
	}
	out := m.Call([]reflect.Value{reflect.ValueOf(ctx), reflect.ValueOf(blob), args})
	if err, _ := out[2].Interface().(error); err != nil {
		if t := reflect.TypeOf(err); t.Name() == "BadPartialRequestError" && strings.HasSuffix(t.PkgPath(), "/internal/private") {
			return nil, nil, chunked.ErrBadRequest{}
		}
		return nil, nil, err
	}
	return out[0].Interface().(chan io.ReadCloser), out[1].Interface().(chan error), nil
}

// getBlobRange reads length bytes at offset in blob through src (getBlobAt).
func getBlobRange(ctx context.Context, src types.ImageSource, blob types.BlobInfo, offset, length uint64) ([]byte, error) {
	streams, errs, err := getBlobAt(ctx, src, blob, []chunked.ImageSourceChunk{{Offset: offset, Length: length}})
	if err != nil {
		return nil, err
	}
	// Both channels are closed once the chunks are served; an error may come
	// before, between or after the streams, so read both until then.
	var data []byte
	var firstErr error
	for streams != nil || errs != nil {
		select {
		case r, ok := <-streams:
			if !ok {
				streams = nil
				continue
			}
			b, err := io.ReadAll(io.LimitReader(r, int64(length)+1))
			r.Close()
			if err == nil && uint64(len(b)) != length {
				err = fmt.Errorf("got %d bytes, want %d", len(b), length)
			}
			if firstErr == nil {
				data, firstErr = b, err
			}
		case err, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			if firstErr == nil {
				firstErr = err
			}
		}
	}
	if firstErr == nil && data == nil {
		firstErr = errors.New("no data")
	}
	return data, firstErr
}
