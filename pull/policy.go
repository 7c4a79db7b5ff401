package pull

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/distribution/reference"
	"github.com/sirupsen/logrus"
	"go.podman.io/image/v5/docker"
	"go.podman.io/image/v5/pkg/shortnames"
	istorage "go.podman.io/image/v5/storage"
	"go.podman.io/image/v5/types"
	"go.podman.io/storage"
)

// PullPolicy is podman pull's --policy: whether an image the store already
// has is pulled again. It follows containers/common's libimage
// (config.PullPolicy, Runtime.Pull), whose package herd does not import for
// the sake of these four words.
type PullPolicy string

const (
	// PullAlways pulls every image (the default, as podman pull's).
	PullAlways PullPolicy = "always"
	// PullMissing pulls only images the store does not have.
	PullMissing PullPolicy = "missing"
	// PullNewer pulls an image the store has only when the registry's
	// manifest for it differs from the store's.
	PullNewer PullPolicy = "newer"
	// PullNever pulls nothing: an image the store lacks fails.
	PullNever PullPolicy = "never"
)

// ParsePullPolicy reads a --policy value as podman does (its aliases
// included, any case), except that "" is refused rather than taken for
// "missing": an empty value is most likely an unset shell variable.
func ParsePullPolicy(s string) (PullPolicy, error) {
	switch strings.ToLower(s) {
	case "always":
		return PullAlways, nil
	case "missing", "ifmissing", "ifnotpresent":
		return PullMissing, nil
	case "newer", "ifnewer":
		return PullNewer, nil
	case "never":
		return PullNever, nil
	}
	return "", fmt.Errorf("unsupported pull policy %q: want always, missing, newer or never", s)
}

// resolveInput is resolveWithRetries under the run's pull policy. With any
// policy but always, the store is asked first, by the names the input
// stands for locally (lookupLocal); what it finds decides:
//   - missing, never: the stored image is used, and no registry is asked;
//     never fails an input the store lacks.
//   - newer: the registry's manifest is read for the name the store knows
//     the image by (as libimage: no short-name dance for an image already
//     there); the image is pulled only if its digest is none of the stored
//     image's. If the registry cannot be read the stored image is used,
//     with a warning.
//
// A target the policy keeps has target.local set and is not pulled.
func resolveInput(ctx context.Context, opts Options, input string) (*target, int, error) {
	policy := opts.PullPolicy
	if policy == "" || policy == PullAlways {
		return resolveWithRetries(ctx, opts, input)
	}
	local := input
	if ref, err := parseTransport(input); err != nil || ref != nil {
		if err != nil || ref.Transport() != docker.Transport {
			// A layout or archive on this machine is read whatever the
			// policy, as podman does: there is no registry to spare, and its
			// layers the store has are reused.
			return resolveWithRetries(ctx, opts, input)
		}
		local = ref.DockerReference().String() // docker://NAME: the name, normalized
	}
	named, img, err := lookupLocal(opts.Store, opts.System, local)
	if err != nil {
		return nil, 0, fmt.Errorf("pulling %s: looking for it in the store: %w", input, err)
	}
	if policy == PullMissing && customPlatform(opts.System) {
		// As libimage: a stored image may declare a platform it is not for,
		// so with --platform, --os, --arch or --variant the registry decides.
		policy = PullNewer
	}
	switch {
	case img == nil && policy == PullNever:
		return nil, 0, fmt.Errorf("pulling %s: the pull policy is never and the image is not in the store: %w", input, storage.ErrImageUnknown)
	case img == nil:
		return resolveWithRetries(ctx, opts, input)
	case policy != PullNewer:
		t, err := stored(ctx, opts, input, named, img)
		return t, 0, err
	}

	// As libimage, a failed check is not retried: the stored image will do.
	once := opts
	once.Retries = 0
	remote, attempts, err := resolveWithRetries(ctx, once, named.String())
	switch {
	case err != nil && ctx.Err() != nil:
		return nil, attempts, err
	case err != nil:
		logrus.Warnf("%s: using the image in the store: could not check the registry for a newer one: %v", input, err)
	case img.Digest != remote.instance && !slices.Contains(img.Digests, remote.instance):
		remote.inputs = []string{input}
		return remote, attempts, nil
	}
	t, err := stored(ctx, opts, input, named, img)
	if remote != nil {
		remote.source.close()
		if t != nil { // what the registry says the name is: the list's digest too
			t.digest, t.instance = remote.digest, remote.instance
		}
	}
	return t, 0, err
}

// customPlatform reports whether the user chose a platform, which libimage
// takes as a reason to ask the registry even with --policy missing.
func customPlatform(sys *types.SystemContext) bool {
	return sys != nil && sys.OSChoice+sys.ArchitectureChoice+sys.VariantChoice != ""
}

// lookupLocal finds the image input names in the store, asking no
// registry, as libimage's LookupImage does for a reference: a fully
// qualified name as it is; a short name as each name registries.conf makes
// of it without asking (its alias, localhost/NAME, NAME under each
// unqualified-search registry: shortnames.ResolveLocally), then as
// docker.io/NAME; the first name the store has wins. A reference with a
// digest finds the image pulled by that digest (that of its list, too)
// under its repository's name. It returns nil, nil, nil when the store has
// none of them. (libimage also accepts image IDs, which herd's inputs
// cannot be, and checks the image for corruption; herd does not.)
func lookupLocal(store storage.Store, sys *types.SystemContext, input string) (reference.Named, *storage.Image, error) {
	input = withoutTagIfDigested(input)
	candidates, err := shortnames.ResolveLocally(sys, input)
	if err != nil {
		return nil, nil, err
	}
	if shortnames.IsShortName(input) {
		if named, err := reference.ParseDockerRef(input); err == nil {
			candidates = append(candidates, named)
		}
	}
	for _, c := range candidates {
		ref, err := istorage.Transport.NewStoreReference(store, c, "")
		if err != nil {
			return nil, nil, err
		}
		_, img, err := istorage.ResolveReference(ref)
		if errors.Is(err, istorage.ErrNoSuchImage) {
			continue
		}
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", c, err)
		}
		return c, img, nil
	}
	return nil, nil, nil
}

// stored is the target for an image the pull policy keeps as the store has
// it, described by the manifest the store holds for it, read as resolve
// reads a registry's.
func stored(ctx context.Context, opts Options, input string, named reference.Named, img *storage.Image) (*target, error) {
	fail := func(err error) (*target, error) {
		return nil, fmt.Errorf("pulling %s: reading the image in the store (%s): %w", input, img.ID, err)
	}
	ref, err := istorage.Transport.NewStoreReference(opts.Store, nil, img.ID)
	if err != nil {
		return fail(err)
	}
	src, err := ref.NewImageSource(ctx, opts.System)
	if err != nil {
		return fail(err)
	}
	defer src.Close()
	t, err := inspectSource(ctx, opts.System, src)
	if err != nil {
		return fail(err)
	}
	t.inputs, t.named, t.local = []string{input}, named, img
	if d, ok := named.(reference.Digested); ok {
		t.digest = d.Digest() // what the input names: a list's digest, maybe
	}
	return t, nil
}

// keep reports an image the pull policy kept as the store has it: nothing
// was fetched, every layer counts as reused, and Present says why.
func (ip *imagePull) keep(ctx context.Context) {
	start := time.Now()
	r := ip.result
	r.Present, r.ImageID, r.Names = true, ip.target.local.ID, ip.target.local.Names
	for i := range r.Layers {
		r.Layers[i].How = Reused
		ip.emit(Event{Kind: EventLayerDone, Blob: r.Layers[i].Digest, How: Reused, Size: r.Layers[i].Size})
	}
	ip.checkPlatform(ctx) // its platform, and a warning if it is not the one asked for
	r.Duration = time.Since(start)
}
