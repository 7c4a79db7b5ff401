package pull

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/distribution/reference"
	digest "github.com/opencontainers/go-digest"
	"go.podman.io/image/v5/docker"
	"go.podman.io/image/v5/manifest"
	"go.podman.io/image/v5/pkg/shortnames"
	"go.podman.io/image/v5/types"
	"go.podman.io/storage/pkg/chunked/toc"
)

// target is one distinct manifest to pull, and everything known about it
// before its copy.Image starts.
type target struct {
	inputs    []string
	named     reference.Named // the candidate that resolved
	candidate *shortnames.PullCandidate
	digest    digest.Digest // of the manifest the reference names
	instance  digest.Digest // of the per-platform manifest
	platform  string
	layers    []types.BlobInfo
	aliases   []reference.Named // other names of the same manifest, from other inputs
}

// resolve turns what the user typed into a target: short names through
// registries.conf (containers/image's pkg/shortnames, as podman does), then
// the first candidate whose manifest can be read. The manifest is read here,
// before copy.Image, so that tags naming the same manifest are pulled once
// and so that the coordinator knows every layer's TOC digest up front.
func resolve(ctx context.Context, sys *types.SystemContext, input string) (*target, error) {
	resolved, err := shortnames.Resolve(sys, input)
	if err != nil {
		return nil, err
	}
	var errs []error
	for i := range resolved.PullCandidates {
		c := &resolved.PullCandidates[i]
		t, err := inspect(ctx, sys, c.Value)
		if err == nil {
			t.inputs = []string{input}
			t.candidate = c
			return t, nil
		}
		if errors.Is(err, context.Canceled) {
			return nil, err
		}
		errs = append(errs, err)
	}
	return nil, resolved.FormatPullErrors(errs)
}

// inspect reads the manifest named (and, for a list, the instance chosen
// for the platform in sys) and returns what a pull of it needs to know.
func inspect(ctx context.Context, sys *types.SystemContext, named reference.Named) (*target, error) {
	ref, err := docker.NewReference(reference.TagNameOnly(named))
	if err != nil {
		return nil, err
	}
	src, err := ref.NewImageSource(ctx, sys)
	if err != nil {
		return nil, err
	}
	defer src.Close()
	blob, mimeType, err := src.GetManifest(ctx, nil)
	if err != nil {
		return nil, err
	}
	t := &target{named: ref.DockerReference()}
	if t.digest, err = manifest.Digest(blob); err != nil {
		return nil, err
	}
	t.instance = t.digest
	if manifest.MIMETypeIsMultiImage(mimeType) {
		list, err := manifest.ListFromBlob(blob, mimeType)
		if err != nil {
			return nil, fmt.Errorf("parsing manifest list of %s: %w", named, err)
		}
		if t.instance, err = list.ChooseInstance(sys); err != nil {
			return nil, fmt.Errorf("choosing an image from manifest list %s: %w", named, err)
		}
		if inst, err := list.Instance(t.instance); err == nil && inst.ReadOnly.Platform != nil {
			p := inst.ReadOnly.Platform
			t.platform = strings.TrimSuffix(p.OS+"/"+p.Architecture+"/"+p.Variant, "/")
		}
		if blob, mimeType, err = src.GetManifest(ctx, &t.instance); err != nil {
			return nil, err
		}
	}
	m, err := manifest.FromBlob(blob, manifest.NormalizedMIMEType(mimeType))
	if err != nil {
		return nil, fmt.Errorf("parsing manifest of %s: %w", named, err)
	}
	for _, l := range m.LayerInfos() {
		if !l.EmptyLayer {
			t.layers = append(t.layers, l.BlobInfo)
		}
	}
	return t, nil
}

// tocDigest is the zstd:chunked TOC digest of a layer, or "".
func tocDigest(layer types.BlobInfo) digest.Digest {
	d, err := toc.GetTOCDigest(layer.Annotations)
	if err != nil || d == nil {
		return ""
	}
	return *d
}
