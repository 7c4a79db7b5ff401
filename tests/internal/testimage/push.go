package testimage

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	digest "github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	imgspecv1 "github.com/opencontainers/image-spec/specs-go/v1"
	"go.podman.io/image/v5/copy"
	"go.podman.io/image/v5/docker"
	"go.podman.io/image/v5/manifest"
	"go.podman.io/image/v5/oci/layout"
	"go.podman.io/image/v5/pkg/compression"
	"go.podman.io/image/v5/signature"
	"go.podman.io/image/v5/types"
)

// Platform of an image; empty fields default to linux/amd64.
type Platform struct {
	OS, Arch, Variant string
}

// Image is a test image: layers bottom to top, and its platform.
type Image struct {
	Layers   []Layer
	Platform Platform
}

// Pushed describes an image as it ended up in the registry.
type Pushed struct {
	Ref            string // "HOST/repo:tag" (PushIndex instances: "HOST/repo@digest")
	ManifestDigest digest.Digest
	Layers         []types.BlobInfo // compressed blobs as in the pushed manifest, with annotations (zstd:chunked TOC)
	DiffIDs        []digest.Digest  // uncompressed tar digests, as in the config
	ConfigDigest   digest.Digest
}

// Pusher pushes images to one registry. It keeps a blob-info cache in
// workDir shared by all its pushes: that cache is what makes containers/image
// reuse the compressed blob already in the registry for a layer shared by
// several images, so the registry holds (and pulls can dedup) one blob per
// layer. Safe for concurrent use.
type Pusher struct {
	host    string
	workDir string
}

// NewPusher returns a Pusher for the registry at host ("127.0.0.1:PORT"),
// keeping its cache and temporary files in workDir (which must exist and
// should outlive all pushes, e.g. t.TempDir()).
func NewPusher(host string, workDir string) *Pusher {
	return &Pusher{host: host, workDir: workDir}
}

// Push pushes img to HOST/repoTag with its layers compressed as compression:
// "gzip", "zstd" or "zstd:chunked".
func (p *Pusher) Push(ctx context.Context, repoTag string, img Image, compression string) (Pushed, error) {
	dir, err := os.MkdirTemp(p.workDir, "layout-")
	if err != nil {
		return Pushed{}, fmt.Errorf("creating OCI layout dir: %w", err)
	}
	defer os.RemoveAll(dir)

	desc, diffIDs, err := writeImage(dir, img)
	if err != nil {
		return Pushed{}, err
	}
	if err := WriteLayoutIndex(dir, desc); err != nil {
		return Pushed{}, err
	}
	return p.PushLayout(ctx, dir, "", repoTag, diffIDs, compression)
}

// PushLayout pushes the image of the OCI layout at dir called name (its
// org.opencontainers.image.ref.name annotation; "" for a layout of one
// image) to HOST/repoTag with its layers compressed as compression.
// diffIDs are the image's, as its config lists them.
func (p *Pusher) PushLayout(ctx context.Context, dir, name, repoTag string, diffIDs []digest.Digest, compression string) (Pushed, error) {
	ref := p.host + "/" + repoTag
	manifestBytes, err := p.copy(ctx, dir, name, ref, compression)
	if err != nil {
		return Pushed{}, fmt.Errorf("pushing %s (%s): %w", ref, compression, err)
	}
	return parsePushed(ref, manifestBytes, diffIDs)
}

// PushIndex pushes every image as its own manifest plus an OCI index
// referencing them (with their platforms) as HOST/repoTag. It returns the
// index digest and the instances in the order of imgs.
func (p *Pusher) PushIndex(ctx context.Context, repoTag string, imgs []Image, compression string) (digest.Digest, []Pushed, error) {
	dir, err := os.MkdirTemp(p.workDir, "layout-")
	if err != nil {
		return "", nil, fmt.Errorf("creating OCI layout dir: %w", err)
	}
	defer os.RemoveAll(dir)

	descs := make([]imgspecv1.Descriptor, len(imgs))
	diffIDs := make([][]digest.Digest, len(imgs))
	for i, img := range imgs {
		if descs[i], diffIDs[i], err = writeImage(dir, img); err != nil {
			return "", nil, err
		}
		plat := img.Platform.withDefaults()
		descs[i].Platform = &imgspecv1.Platform{OS: plat.OS, Architecture: plat.Arch, Variant: plat.Variant}
	}
	indexDesc, err := WriteJSONBlob(dir, imgspecv1.MediaTypeImageIndex, imgspecv1.Index{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: imgspecv1.MediaTypeImageIndex,
		Manifests: descs,
	})
	if err != nil {
		return "", nil, err
	}
	if err := WriteLayoutIndex(dir, indexDesc); err != nil {
		return "", nil, err
	}

	ref := p.host + "/" + repoTag
	indexBytes, err := p.copy(ctx, dir, "", ref, compression)
	if err != nil {
		return "", nil, fmt.Errorf("pushing index %s (%s): %w", ref, compression, err)
	}
	indexDigest, err := manifest.Digest(indexBytes)
	if err != nil {
		return "", nil, fmt.Errorf("digesting pushed index: %w", err)
	}
	index, err := manifest.OCI1IndexFromManifest(indexBytes)
	if err != nil {
		return "", nil, fmt.Errorf("parsing pushed index %s: %w", ref, err)
	}
	if len(index.Manifests) != len(imgs) {
		return "", nil, fmt.Errorf("pushed index %s has %d instances, want %d", ref, len(index.Manifests), len(imgs))
	}

	// The compressed instance manifests exist only in the registry.
	srcRef, err := docker.ParseReference("//" + ref)
	if err != nil {
		return "", nil, fmt.Errorf("parsing %s: %w", ref, err)
	}
	src, err := srcRef.NewImageSource(ctx, p.sys(nil))
	if err != nil {
		return "", nil, fmt.Errorf("reading back %s: %w", ref, err)
	}
	defer src.Close()
	repo := srcRef.DockerReference().Name()
	pushed := make([]Pushed, len(imgs))
	for i, d := range index.Manifests {
		mb, _, err := src.GetManifest(ctx, &d.Digest)
		if err != nil {
			return "", nil, fmt.Errorf("reading back instance %s of %s: %w", d.Digest, ref, err)
		}
		if pushed[i], err = parsePushed(repo+"@"+d.Digest.String(), mb, diffIDs[i]); err != nil {
			return "", nil, err
		}
	}
	return indexDigest, pushed, nil
}

// copy pushes the entry called name of the OCI layout at dir ("" for its
// single entry) to docker://ref and returns the manifest (or index) as
// pushed.
func (p *Pusher) copy(ctx context.Context, dir, name, ref, compressionName string) ([]byte, error) {
	switch compressionName {
	case "gzip", "zstd", "zstd:chunked":
	default:
		return nil, fmt.Errorf("unsupported compression %q (want gzip, zstd or zstd:chunked)", compressionName)
	}
	algo, err := compression.AlgorithmByName(compressionName)
	if err != nil {
		return nil, fmt.Errorf("compression %q: %w", compressionName, err)
	}
	policy, err := signature.NewPolicyContext(&signature.Policy{
		Default: []signature.PolicyRequirement{signature.NewPRInsecureAcceptAnything()},
	})
	if err != nil {
		return nil, fmt.Errorf("creating signature policy: %w", err)
	}
	defer func() { _ = policy.Destroy() }()

	srcRef, err := layout.NewReference(dir, name)
	if err != nil {
		return nil, fmt.Errorf("opening OCI layout %s: %w", dir, err)
	}
	destRef, err := docker.ParseReference("//" + ref)
	if err != nil {
		return nil, fmt.Errorf("parsing %s: %w", ref, err)
	}
	return copy.Image(ctx, policy, destRef, srcRef, &copy.Options{
		SourceCtx:      p.sys(nil),
		DestinationCtx: p.sys(&algo),
		// Without this, a registry already holding the layer in another
		// compression makes containers/image reuse that blob instead.
		ForceCompressionFormat: true,
		ImageListSelection:     copy.CopyAllImages,
	})
}

// sys is the SystemContext for both ends of a push: plain-HTTP registry,
// shared blob-info cache, temporary files kept in workDir.
func (p *Pusher) sys(algo *compression.Algorithm) *types.SystemContext {
	return &types.SystemContext{
		DockerInsecureSkipTLSVerify: types.OptionalBoolTrue,
		BlobInfoCacheDir:            filepath.Join(p.workDir, "blob-info-cache"),
		BigFilesTemporaryDir:        p.workDir,
		CompressionFormat:           algo,
	}
}

func parsePushed(ref string, manifestBytes []byte, diffIDs []digest.Digest) (Pushed, error) {
	md, err := manifest.Digest(manifestBytes)
	if err != nil {
		return Pushed{}, fmt.Errorf("digesting manifest of %s: %w", ref, err)
	}
	m, err := manifest.OCI1FromManifest(manifestBytes)
	if err != nil {
		return Pushed{}, fmt.Errorf("parsing manifest of %s: %w", ref, err)
	}
	res := Pushed{Ref: ref, ManifestDigest: md, DiffIDs: diffIDs, ConfigDigest: m.ConfigInfo().Digest}
	for _, l := range m.LayerInfos() {
		res.Layers = append(res.Layers, l.BlobInfo)
	}
	return res, nil
}

func (pl Platform) withDefaults() Platform {
	if pl.OS == "" {
		pl.OS = "linux"
	}
	if pl.Arch == "" {
		pl.Arch = "amd64"
	}
	return pl
}

// writeImage writes img's uncompressed layers, config and manifest as blobs
// of the OCI layout at dir and returns the manifest descriptor and DiffIDs.
// Layers stay uncompressed here; the push compresses them.
func writeImage(dir string, img Image) (imgspecv1.Descriptor, []digest.Digest, error) {
	plat := img.Platform.withDefaults()
	cfg := imgspecv1.Image{
		Platform: imgspecv1.Platform{OS: plat.OS, Architecture: plat.Arch, Variant: plat.Variant},
		Config:   imgspecv1.ImageConfig{Cmd: []string{"/bin/true"}},
		RootFS:   imgspecv1.RootFS{Type: "layers"},
	}
	var layers []imgspecv1.Descriptor
	for i, l := range img.Layers {
		tarBytes := l.Tar()
		desc, err := writeBlob(dir, imgspecv1.MediaTypeImageLayer, tarBytes)
		if err != nil {
			return imgspecv1.Descriptor{}, nil, fmt.Errorf("writing layer %d: %w", i, err)
		}
		layers = append(layers, desc)
		cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, desc.Digest)
		cfg.History = append(cfg.History, imgspecv1.History{CreatedBy: fmt.Sprintf("testimage layer %d", i)})
	}
	cfgDesc, err := WriteJSONBlob(dir, imgspecv1.MediaTypeImageConfig, cfg)
	if err != nil {
		return imgspecv1.Descriptor{}, nil, fmt.Errorf("writing config: %w", err)
	}
	mDesc, err := WriteJSONBlob(dir, imgspecv1.MediaTypeImageManifest, imgspecv1.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: imgspecv1.MediaTypeImageManifest,
		Config:    cfgDesc,
		Layers:    layers,
	})
	if err != nil {
		return imgspecv1.Descriptor{}, nil, fmt.Errorf("writing manifest: %w", err)
	}
	return mDesc, cfg.RootFS.DiffIDs, nil
}

// WriteJSONBlob writes v, encoded, as a blob of the OCI layout at dir and
// returns its descriptor with mediaType.
func WriteJSONBlob(dir, mediaType string, v any) (imgspecv1.Descriptor, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return imgspecv1.Descriptor{}, fmt.Errorf("encoding %s: %w", mediaType, err)
	}
	return writeBlob(dir, mediaType, b)
}

func writeBlob(dir, mediaType string, data []byte) (imgspecv1.Descriptor, error) {
	d := digest.FromBytes(data)
	blobDir := filepath.Join(dir, "blobs", d.Algorithm().String())
	if err := os.MkdirAll(blobDir, 0o755); err != nil {
		return imgspecv1.Descriptor{}, fmt.Errorf("creating blob dir: %w", err)
	}
	if err := os.WriteFile(filepath.Join(blobDir, d.Encoded()), data, 0o644); err != nil {
		return imgspecv1.Descriptor{}, fmt.Errorf("writing blob %s: %w", d, err)
	}
	return imgspecv1.Descriptor{MediaType: mediaType, Digest: d, Size: int64(len(data))}, nil
}

// WriteLayoutIndex finishes the OCI layout at dir with entries as its
// top-level manifests (or indexes).
func WriteLayoutIndex(dir string, entries ...imgspecv1.Descriptor) error {
	layoutJSON, err := json.Marshal(imgspecv1.ImageLayout{Version: imgspecv1.ImageLayoutVersion})
	if err != nil {
		return fmt.Errorf("encoding oci-layout: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, imgspecv1.ImageLayoutFile), layoutJSON, 0o644); err != nil {
		return fmt.Errorf("writing oci-layout: %w", err)
	}
	index, err := json.Marshal(imgspecv1.Index{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: imgspecv1.MediaTypeImageIndex,
		Manifests: entries,
	})
	if err != nil {
		return fmt.Errorf("encoding index.json: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, imgspecv1.ImageIndexFile), index, 0o644); err != nil {
		return fmt.Errorf("writing index.json: %w", err)
	}
	return nil
}
