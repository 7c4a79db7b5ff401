package pull

import (
	"cmp"
	"slices"

	digest "github.com/opencontainers/go-digest"
	"go.podman.io/image/v5/types"

	"github.com/herd-project/herd/commit"
)

// startOrder is the order in which the images' copies start: the most bytes
// of their own first (layers no other image of the run needs), the input
// order among equals; images that did not resolve are left out. Every
// image's layers queue for the shared --jobs slots in layer order, and the
// slots are handed out first come, first served, so the images started
// first get the link first: an image whose large layer of its own starts
// last would be the run's tail, one layer fetched and applied on one core
// while the rest are done. Shared layers gain nothing from going first or
// last: one image fetches them, the others wait and lend their slots.
func startOrder(targets []*target) []int {
	needs := needsOf(targets)
	own := make([]int64, len(targets))
	var order []int
	for i, t := range targets {
		if t == nil {
			continue
		}
		order = append(order, i)
		for _, l := range t.distinctLayers() {
			if needs[l.Digest] == 1 {
				own[i] += l.Size
			}
		}
	}
	slices.SortStableFunc(order, func(a, b int) int { return cmp.Compare(own[b], own[a]) })
	return order
}

// needsOf says how many of the targets need each layer blob, those the pull
// policy keeps included (commit.Plan.Needs).
func needsOf(targets []*target) map[digest.Digest]int {
	var all commit.Plan
	for _, t := range targets {
		if t != nil {
			all = append(all, commit.PlannedImage{Layers: planLayers(t)})
		}
	}
	return all.Needs()
}

// planOf is what the coordinator needs to know of the run before it starts:
// every image's layers, by the image's index in the run (an image that did
// not resolve has none).
func planOf(targets []*target, results []*Result) commit.Plan {
	plan := make(commit.Plan, len(targets))
	for i, t := range targets {
		plan[i].Name = results[i].Name()
		if t == nil || t.local != nil { // nothing to pull
			continue
		}
		plan[i].Layers = planLayers(t)
	}
	return plan
}

// distinctLayers are t's layer blobs, each once (a manifest may list one
// twice: commit's invariant 7), lowest first.
func (t *target) distinctLayers() []types.BlobInfo {
	var layers []types.BlobInfo
	seen := map[digest.Digest]bool{}
	for _, l := range t.layers {
		if !seen[l.Digest] {
			seen[l.Digest] = true
			layers = append(layers, l)
		}
	}
	return layers
}

func planLayers(t *target) []commit.Layer {
	layers := make([]commit.Layer, len(t.layers))
	for i, l := range t.layers {
		layers[i] = commit.Layer{Blob: l.Digest, Size: l.Size, TOC: tocDigest(l)}
	}
	return layers
}
