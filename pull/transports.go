package pull

import (
	"context"
	"fmt"
	"strings"

	"github.com/distribution/reference"
	imgspecv1 "github.com/opencontainers/image-spec/specs-go/v1"
	"go.podman.io/image/v5/directory"
	"go.podman.io/image/v5/docker"
	dockerarchive "go.podman.io/image/v5/docker/archive"
	ociarchive "go.podman.io/image/v5/oci/archive"
	ocilayout "go.podman.io/image/v5/oci/layout"
	"go.podman.io/image/v5/types"
)

// sourceTransports are the containers/image transports herd pulls from
// besides a registry reference without one, as podman pull does: docker://
// (a registry, by habit of skopeo users) and the local layouts and archives
// of air-gapped sites. herd names them itself rather than import
// alltransports, which would bring the Docker daemon's client too.
var sourceTransports = map[string]types.ImageTransport{
	docker.Transport.Name():        docker.Transport,
	ocilayout.Transport.Name():     ocilayout.Transport,
	ociarchive.Transport.Name():    ociarchive.Transport,
	dockerarchive.Transport.Name(): dockerarchive.Transport,
	directory.Transport.Name():     directory.Transport,
}

// parseTransport returns the image reference input names through one of
// sourceTransports, or nil if input has no transport prefix (a registry
// reference, maybe a short name). A host with a port whose name is a
// transport's ("oci:5000/x") is taken for the transport, as podman does.
func parseTransport(input string) (types.ImageReference, error) {
	name, within, ok := strings.Cut(input, ":")
	transport := sourceTransports[name]
	if !ok || transport == nil {
		return nil, nil
	}
	ref, err := transport.ParseReference(within)
	if err != nil {
		return nil, fmt.Errorf("not a valid %s: reference: %w", name, err)
	}
	return ref, nil
}

// CheckReference reports an input that can name no image: neither a
// reference through one of sourceTransports nor a registry reference (a
// short name or a full one, with a tag, a digest or both).
func CheckReference(input string) error {
	ref, err := parseTransport(input)
	if err != nil || ref != nil {
		return err
	}
	_, err = reference.ParseNormalizedNamed(input)
	return err
}

// resolveTransport inspects an image named through a transport. A docker://
// reference is a registry's, normalized as podman does (docker.io), with no
// short-name resolution. Any other is a local layout or archive, named in
// the store as podman names it (storeNames).
func resolveTransport(ctx context.Context, sys *types.SystemContext, input string, ref types.ImageReference) (*target, error) {
	if ref.Transport() == docker.Transport {
		t, err := inspect(ctx, sys, ref.DockerReference())
		if err != nil {
			return nil, explain(sys, ref.DockerReference(), err)
		}
		t.inputs = []string{input}
		return t, nil
	}
	names, err := storeNames(sys, ref)
	if err != nil {
		return nil, fmt.Errorf("naming %s: %w", input, err)
	}
	src, err := ref.NewImageSource(ctx, sys)
	if err != nil {
		return nil, err
	}
	t, err := inspectSource(ctx, sys, src)
	if err != nil {
		_ = src.Close()
		return nil, err
	}
	t.inputs = []string{input}
	if len(names) > 0 {
		t.named, t.aliases = names[0], names[1:]
	}
	t.source = &resolvedSource{ImageReference: ref, opened: src}
	return t, nil
}

// storeNames are the names an image from a local layout or archive gets in
// the store, as podman (containers/common's libimage) gives them: an OCI
// layout's or archive's reference name, a docker archive's tags, each
// normalized by localName; none for a dir: or for an image without a name
// (the store then knows it by ID only, as podman's <none>).
func storeNames(sys *types.SystemContext, ref types.ImageReference) ([]reference.Named, error) {
	var raw []string
	switch ref.Transport() {
	case ocilayout.Transport:
		if _, name, ok := strings.Cut(ref.StringWithinTransport(), ":"); ok && name != "" {
			raw = []string{name}
		}
	case ociarchive.Transport:
		desc, err := ociarchive.LoadManifestDescriptorWithContext(sys, ref)
		if err != nil {
			return nil, err
		}
		if name := desc.Annotations[imgspecv1.AnnotationRefName]; name != "" {
			raw = []string{name}
		}
	case dockerarchive.Transport:
		reader, readerRef, err := dockerarchive.NewReaderForReference(sys, ref)
		if err != nil {
			return nil, err
		}
		defer reader.Close()
		if raw, err = reader.ManifestTagsForReference(readerRef); err != nil {
			return nil, err
		}
	}
	var names []reference.Named
	for _, s := range raw {
		named, err := localName(s)
		if err != nil {
			return nil, fmt.Errorf("the image's name %q: %w", s, err)
		}
		names = append(names, named)
	}
	return names, nil
}

// localName normalizes the name a local image carries as podman's
// libimage.NormalizeName does (herd does not import libimage, which brings
// podman's whole image runtime): a name without a registry is put under
// localhost/, docker.io names get their library/, and a name without tag or
// digest gets :latest.
func localName(s string) (reference.Named, error) {
	ref, err := reference.Parse(s)
	if err != nil {
		return nil, err
	}
	named, ok := ref.(reference.Named)
	if !ok {
		return nil, fmt.Errorf("not a name")
	}
	if domain := reference.Domain(named); !strings.ContainsAny(domain, ".:") && domain != "localhost" {
		s = "localhost/" + ref.String()
	}
	if named, err = reference.ParseNormalizedNamed(s); err != nil {
		return nil, err
	}
	return reference.TagNameOnly(named), nil
}
