package pull

import (
	"slices"
	"testing"

	digest "github.com/opencontainers/go-digest"
	"go.podman.io/image/v5/types"
)

// Images start with the most bytes of their own first; shared layers, a
// layer listed twice and unresolved inputs do not count.
func TestStartOrder(t *testing.T) {
	layer := func(name string, size int64) types.BlobInfo {
		return types.BlobInfo{Digest: digest.FromString(name), Size: size}
	}
	base := layer("base", 1000)
	targets := []*target{
		{layers: []types.BlobInfo{base, layer("small", 10)}},
		nil, // did not resolve
		{layers: []types.BlobInfo{base, layer("large", 500)}},
		{layers: []types.BlobInfo{base, layer("twice", 100), layer("twice", 100)}}, // its own, once
		{layers: []types.BlobInfo{base, layer("medium", 150)}},
	}
	if got, want := startOrder(targets), []int{2, 4, 3, 0}; !slices.Equal(got, want) {
		t.Errorf("start order %v, want %v (largest own bytes first, input order among equals)", got, want)
	}
}
