package pull

import (
	"context"

	digest "github.com/opencontainers/go-digest"
	"go.podman.io/image/v5/pkg/blobinfocache"

	"github.com/herd-project/herd/commit"
)

// Preview is what a pull of a list of images would do, read from their
// manifests and the store alone: no blob is fetched (herd pull --dry-run).
// Byte counts are the compressed sizes the manifests declare. A pull
// fetches what ToFetch says, configs included (twice for an image of which
// herd fetches a whole layer itself: it reads the config for the layer's
// ID, see commit/wholelayer.go), except that a zstd:chunked layer may be
// pulled partially: then it fetches less.
type Preview struct {
	Images []ImagePreview
	Totals PreviewTotals
}

// ImagePreview is one distinct image of the list, in input order.
type ImagePreview struct {
	// Result says what the reference resolved to (Reference, Digest,
	// Platform, Layers), or why it did not (Err).
	Result *Result
	// Bytes is the size of the image's layers and config.
	Bytes int64
	// Shared is the size of its layers that another image of the list has too.
	Shared int64
	// InStore is the size of its layers the store already has.
	InStore int64
	// ToFetch is what a pull would fetch for it: its config (twice if herd
	// fetches one of its whole layers itself), and its layers the store
	// lacks unless an image earlier in the list fetches them.
	ToFetch int64
}

// PreviewTotals add up a preview: Bytes over every image; Unique, InStore
// and ToFetch over distinct blobs, each counted once.
type PreviewTotals struct {
	Images, Failed, Layers          int
	Bytes, Unique, InStore, ToFetch int64
}

// Plan resolves every input as Run does and says what a pull of them would
// fetch, without pulling.
func Plan(ctx context.Context, inputs []string, opts Options) Preview {
	opts.setDefaults()
	targets, results := resolveAll(ctx, dedupStrings(inputs), opts)
	diffIDs, _ := blobinfocache.DefaultCache(opts.System).(commit.DiffIDs) // as Run's coordinator looks
	needs := needsOf(targets)                                              // images per layer blob
	var p Preview
	counted := map[digest.Digest]bool{} // blobs already counted for an image above
	for i, t := range targets {
		r := results[i]
		r.Attempts = 0 // nothing was attempted
		img := ImagePreview{Result: r}
		p.Totals.Images++
		if t == nil {
			p.Totals.Failed++
			p.Images = append(p.Images, img)
			continue
		}
		kept := t.local != nil // --policy keeps the stored image: nothing is fetched for it
		img.Bytes = t.config.Size
		p.Totals.Bytes += t.config.Size
		if !kept {
			img.ToFetch = t.config.Size
		}
		if !counted[t.config.Digest] && !kept {
			counted[t.config.Digest] = true
			p.Totals.Unique += t.config.Size
			p.Totals.ToFetch += t.config.Size
		}
		// herd reads the config again for a whole layer it fetches itself.
		configAgain := false
		for _, l := range t.distinctLayers() { // one listed again reuses its first occurrence
			img.Bytes += l.Size
			p.Totals.Bytes += l.Size
			if needs[l.Digest] > 1 {
				img.Shared += l.Size
			}
			inStore := kept || commit.Findable(opts.Store, diffIDs, l.Digest, tocDigest(l))
			if inStore {
				img.InStore += l.Size
			}
			if counted[l.Digest] {
				continue
			}
			counted[l.Digest] = true
			p.Totals.Layers++
			p.Totals.Unique += l.Size
			if inStore {
				p.Totals.InStore += l.Size
			} else {
				img.ToFetch += l.Size
				p.Totals.ToFetch += l.Size
				configAgain = configAgain || t.fetchesItself(l.Digest, opts.Store)
			}
		}
		if configAgain {
			img.ToFetch += t.config.Size
			p.Totals.ToFetch += t.config.Size
		}
		p.Images = append(p.Images, img)
		t.source.close()
	}
	return p
}
