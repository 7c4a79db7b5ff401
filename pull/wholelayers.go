package pull

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"

	digest "github.com/opencontainers/go-digest"
	"go.podman.io/image/v5/pkg/blobinfocache/none"
	"go.podman.io/image/v5/types"
	"go.podman.io/storage"
	"go.podman.io/storage/pkg/chunked"

	"github.com/herd-project/herd/commit"
)

// layerFetches lets the attempt's Store fetch the layers it claims itself,
// whole layers decompressed once (commit/wholelayer.go) and zstd:chunked
// ones partially (commit/partiallayer.go), through src, the
// source this attempt's copy.Image reads, under the run's --jobs slots;
// their progress goes where containers/image's goes. It returns nil when
// src cannot serve blobs to several goroutines at once (some archive
// transports) or the image has no config (Docker schema 1): then
// containers/image fetches every layer.
func (ip *imagePull) layerFetches(src types.ImageSource, progress chan<- types.ProgressProperties) *commit.LayerFetches {
	if !ip.target.mayFetchItself(src) {
		return nil
	}
	config := &configDiffIDs{src: src, config: ip.target.config, counted: func(n int64) {
		ip.mu.Lock()
		ip.fetched[ip.target.config.Digest] += n
		ip.mu.Unlock()
	}}
	w := &commit.LayerFetches{
		Source:  src,
		DiffIDs: config.get,
		Cache:   ip.cache,
		TempDir: bigFilesDir(ip.opts.System),
		Slot: func(ctx context.Context) (func(), error) {
			if err := ip.slots.sem.Acquire(ctx, 1); err != nil {
				return nil, err
			}
			return func() { ip.slots.sem.Release(1) }, nil
		},
		Lend: func() func() {
			lent := ip.slots.lend(1) // the waiting layer's: its others go on
			return func() { ip.slots.reclaim(lent) }
		},
		Progress:         func(pp types.ProgressProperties) { progress <- pp },
		ProgressInterval: progressInterval,
	}
	if herdPullsPartially(ip.opts.Store, src) {
		w.Layers = ip.target.layers
		w.Partial = func(ctx context.Context, layer types.BlobInfo, fetched func(bytes int)) chunked.ImageSourceSeekable {
			return &blobParts{ctx: ctx, src: src, blob: layer, read: ip.tocs.take(layer.Digest), fetched: fetched}
		}
	}
	return w
}

// herdPullsPartially reports whether herd pulls the zstd:chunked layers it
// claims partially itself (commit/partiallayer.go): containers/image would
// pull them partially (pullsPartially), src reads parts of blobs, and
// containers/storage computes each layer's DiffID, which herd checks
// against the config's. storage.conf's
// insecure_allow_unpredictable_image_contents turns that off; herd leaves
// such layers to containers/image, which knows what to trust then.
func herdPullsPartially(store storage.Store, src types.ImageSource) bool {
	ranged, ok := src.(interface{ SupportsGetBlobAt() bool })
	return ok && ranged.SupportsGetBlobAt() && pullsPartially(store) &&
		!strings.EqualFold(store.PullOptions()["insecure_allow_unpredictable_image_contents"], "true")
}

// mayFetchItself reports whether herd may fetch the image's layers itself
// through src (layerFetches): not for an image with an encrypted
// layer, or one served from other URLs than the registry's (foreign
// layers), which containers/image knows how to handle.
func (t *target) mayFetchItself(src types.ImageSource) bool {
	if src == nil || !src.HasThreadSafeGetBlob() || t.config.Digest == "" {
		return false
	}
	for _, l := range t.layers {
		if strings.HasSuffix(l.MediaType, "+encrypted") || len(l.URLs) > 0 {
			return false
		}
	}
	return true
}

// fetchesItself reports whether herd fetches blob itself, whole or
// partially, if this image is to fetch it into store (for a dry run: the
// store's content aside).
func (t *target) fetchesItself(blob digest.Digest, store storage.Store) bool {
	if t.source == nil || !t.mayFetchItself(t.source.opened) {
		return false
	}
	_, whole := commit.FetchedByHerd(planLayers(t), blob, herdPullsPartially(store, t.source.opened))
	return whole
}

// bigFilesDir is where containers/image keeps blobs it fetches.
func bigFilesDir(sys *types.SystemContext) string {
	if sys != nil && sys.BigFilesTemporaryDir != "" {
		return sys.BigFilesTemporaryDir
	}
	return "/var/tmp" // containers/image's default
}

// maxConfigSize bounds the config herd reads for its DiffIDs: the bound
// containers/image applies to configs (its internal iolimits).
const maxConfigSize = 4 << 20

// configDiffIDs reads an image's config once, for the DiffIDs of its
// layers: a whole layer's storage ID is the chain of DiffIDs below it, and
// is needed before the layer arrives. containers/image reads the config
// too, through its own calls, so it is fetched twice (a few KiB); it has
// no way to share it.
type configDiffIDs struct {
	src     types.ImageSource
	config  types.BlobInfo
	counted func(bytes int64) // what the registry sent, for the summary

	once    sync.Once
	diffIDs []digest.Digest
	err     error
}

func (c *configDiffIDs) get(ctx context.Context) ([]digest.Digest, error) {
	c.once.Do(func() { c.diffIDs, c.err = c.read(ctx) })
	return c.diffIDs, c.err
}

func (c *configDiffIDs) read(ctx context.Context) ([]digest.Digest, error) {
	if err := c.config.Digest.Validate(); err != nil {
		return nil, err
	}
	if c.config.Size > maxConfigSize {
		return nil, errors.New("config too large")
	}
	body, _, err := c.src.GetBlob(ctx, c.config, none.NoCache)
	if err != nil {
		return nil, err
	}
	defer body.Close()
	blob, err := io.ReadAll(io.LimitReader(body, maxConfigSize+1))
	c.counted(int64(len(blob)))
	if err != nil {
		return nil, err
	}
	if got := c.config.Digest.Algorithm().FromBytes(blob); got != c.config.Digest {
		return nil, fmt.Errorf("config digest %s, want %s", got, c.config.Digest)
	}
	var config struct {
		RootFS struct {
			DiffIDs []digest.Digest `json:"diff_ids"`
		} `json:"rootfs"`
	}
	if err := json.Unmarshal(blob, &config); err != nil {
		return nil, err
	}
	for _, d := range config.RootFS.DiffIDs {
		if err := d.Validate(); err != nil {
			return nil, err
		}
	}
	return config.RootFS.DiffIDs, nil
}
