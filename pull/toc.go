package pull

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"
	digest "github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"
	"go.podman.io/image/v5/types"
	"go.podman.io/storage"
	drivers "go.podman.io/storage/drivers"
	"golang.org/x/sync/errgroup"

	"github.com/herd-project/herd/commit"
)

// The files of zstd:chunked layers, read from their TOCs before the pulls
// start, so that the coordinator orders layers with files in common
// (commit/similar.go). A TOC is a few hundred KiB at most, and is read
// once: herd keeps it (readTOCs) for its own partial pull of the layer,
// which reads it first (blobParts). herd reads TOCs only when it may use
// them: when partial pulls are on and at least two images of the run have
// zstd:chunked layers that the store does not have (one image's layers
// alone are not worth the reads).

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
// once), keeps each TOC in tocs for the layer's partial pull, and returns
// each one's files by blob. It leaves out a layer every
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
			f, read, err := layerFiles(ctx, c.src, c.layer, c.toc)
			if err != nil {
				logrus.Debugf("not ordering blob %s by its files: %v", c.layer.Digest, err)
				return nil
			}
			files[i] = f
			tocs.keep(c.layer.Digest, read)
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
// returns its regular files, and the TOC as the blob holds it (compressed)
// with the files the blob holds twice, for the layer's partial pull. The
// TOC is checked against toc, its digest.
func layerFiles(ctx context.Context, src types.ImageSource, layer types.BlobInfo, toc digest.Digest) (commit.Files, *readTOC, error) {
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
	entries, err := decodeTOC(compressed, uncompressed)
	if err != nil {
		return nil, nil, err
	}
	files := commit.Files{}
	for _, e := range entries {
		if e.Type == "reg" && e.Size > 0 && e.Digest != "" {
			files[e.Digest] = e.Size
		}
	}
	return files, &readTOC{compressed, filesHeldTwice(entries)}, nil
}

// tocEntry is what herd reads of an entry of a zstd:chunked TOC: its
// type ("reg" for a regular file, "chunk" for a further chunk of the file
// before it), the file's size and digest, and where its frames are in the
// blob. containers/storage parses TOCs in an internal package (pkg/chunked's
// minimal.FileMetadata), so herd decodes the few fields it needs itself;
// their format is zstd:chunked's, which images in registries carry.
type tocEntry struct {
	Type        string        `json:"type"`
	Size        int64         `json:"size"`
	Digest      digest.Digest `json:"digest"`
	Offset      int64         `json:"offset"`
	EndOffset   int64         `json:"endOffset"`
	ChunkDigest string        `json:"chunkDigest"`
}

// decodeTOC decodes a TOC as the blob holds it (zstd-compressed), which
// uncompresses to uncompressed bytes. It decompresses in one call into a
// buffer of that size, as pkg/chunked does with its TOCs: containers/image's
// ZstdDecompressor streams with several decoders at once, which for a TOC of
// known size takes twice the memory or more.
func decodeTOC(compressed []byte, uncompressed uint64) ([]tocEntry, error) {
	if uncompressed > maxTOCSize {
		return nil, fmt.Errorf("TOC of %d bytes uncompressed is too big", uncompressed)
	}
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(maxTOCSize))
	if err != nil {
		return nil, fmt.Errorf("decompressing the TOC: %w", err)
	}
	defer dec.Close()
	raw, err := dec.DecodeAll(compressed, make([]byte, 0, uncompressed))
	if err == nil && uint64(len(raw)) != uncompressed {
		err = fmt.Errorf("%d bytes, where the layer's annotations say %d", len(raw), uncompressed)
	}
	if err != nil {
		return nil, fmt.Errorf("decompressing the TOC: %w", err)
	}
	var parsed struct {
		Entries []tocEntry `json:"entries"`
	}
	if err := json.Unmarshal(raw, &parsed); err != nil {
		return nil, fmt.Errorf("decoding the TOC: %w", err)
	}
	return parsed.Entries, nil
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

// readTOC is a TOC herd read, as the blob holds it (compressed), and the
// files that the blob holds twice by it (samefiles.go).
type readTOC struct {
	compressed []byte
	heldTwice  []blobFile
}

// readTOCs keeps the TOCs herd read to order the layers until the layer's
// partial pull reads its TOC (blobParts): the registry then sends each one
// once. It is safe for concurrent use.
type readTOCs struct {
	mu   sync.Mutex
	tocs map[digest.Digest]*readTOC // by blob
}

func (r *readTOCs) keep(blob digest.Digest, toc *readTOC) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.tocs == nil {
		r.tocs = map[digest.Digest]*readTOC{}
	}
	r.tocs[blob] = toc
}

// take returns blob's TOC, or nil, and forgets it: a layer is staged once.
func (r *readTOCs) take(blob digest.Digest) *readTOC {
	r.mu.Lock()
	defer r.mu.Unlock()
	toc := r.tocs[blob]
	delete(r.tocs, blob)
	return toc
}
