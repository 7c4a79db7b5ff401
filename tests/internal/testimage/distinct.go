package testimage

import (
	digest "github.com/opencontainers/go-digest"
	"go.podman.io/image/v5/types"
)

// DistinctLayers lists the layer blobs of images, each once, in the order
// they first appear: what a pull of all of them needs from the registry.
func DistinctLayers(images ...Pushed) []types.BlobInfo {
	seen := map[digest.Digest]bool{}
	var out []types.BlobInfo
	for _, p := range images {
		for _, l := range p.Layers {
			if !seen[l.Digest] {
				seen[l.Digest] = true
				out = append(out, l)
			}
		}
	}
	return out
}

// UniqueLayerBytes is the size of images' distinct layer blobs, each
// counted once: the least a pull of all of them must fetch.
func UniqueLayerBytes(images ...Pushed) int64 {
	var n int64
	for _, l := range DistinctLayers(images...) {
		n += l.Size
	}
	return n
}

// ServedLayerBytes is what reg served for images' layer blobs: every
// request for a blob counts, but a blob that several images share is looked
// up once. reg is a testregistry.Registry (an interface, as that package's
// tests import this one).
func ServedLayerBytes(reg interface{ BlobBytes(digest.Digest) int64 }, images ...Pushed) int64 {
	var n int64
	for _, l := range DistinctLayers(images...) {
		n += reg.BlobBytes(l.Digest)
	}
	return n
}
