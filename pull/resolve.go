package pull

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"

	"github.com/distribution/reference"
	"github.com/docker/distribution/registry/api/errcode"
	digest "github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"
	"go.podman.io/image/v5/docker"
	"go.podman.io/image/v5/manifest"
	"go.podman.io/image/v5/pkg/docker/config"
	"go.podman.io/image/v5/pkg/shortnames"
	"go.podman.io/image/v5/pkg/sysregistriesv2"
	"go.podman.io/image/v5/transports"
	"go.podman.io/image/v5/types"
	"go.podman.io/storage"
	"go.podman.io/storage/pkg/chunked/toc"
)

// target is one distinct manifest to pull, and everything known about it
// before its copy.Image starts.
type target struct {
	inputs    []string
	named     reference.Named           // the candidate that resolved; nil for a local image without a name (storeNames)
	candidate *shortnames.PullCandidate // nil unless a short name resolved
	digest    digest.Digest             // of the manifest the reference names
	instance  digest.Digest             // of the per-platform manifest
	platform  string
	layers    []types.BlobInfo
	config    types.BlobInfo
	aliases   []reference.Named // other names of the same manifest, from other inputs
	source    *resolvedSource   // what copy.Image reads the image from
	// local is the stored image the pull policy keeps instead of pulling
	// (policy.go); then there is no source.
	local *storage.Image
}

// reference is what the target is pulled as: its name, or for a local
// image without one the transport's string (oci:DIR, dir:DIR, ...).
func (t *target) reference() string {
	if t.named != nil {
		return t.named.String()
	}
	return transports.ImageName(t.source.ImageReference)
}

// unnamedID is the image ID the store gives an image without a name, as
// containers/image's storage destination computes it (its config's digest),
// so that herd can name the destination and find the image; "" for a named
// target.
func (t *target) unnamedID() string {
	if t.named != nil {
		return ""
	}
	return t.config.Digest.Encoded()
}

// resolvedSource is the reference herd gives copy.Image as the image's
// source. Its first NewImageSource returns the source resolve opened and
// read the manifest from, so copy.Image reads the manifest from that
// source's cache instead of asking the registry again: a second GET counts
// against registries' pull limits, and a tag moved in between would store
// another image than the one herd planned and deduplicated on. Later
// attempts (retries) open a source by the resolved digest, for the same
// reason. The source handed out is containers/image's own, not a wrapper:
// wrapping would drop its private methods, and with them partial pulls.
type resolvedSource struct {
	types.ImageReference // NAME@DIGEST

	mu     sync.Mutex
	opened types.ImageSource // until handed out
}

func (r *resolvedSource) NewImageSource(ctx context.Context, sys *types.SystemContext) (types.ImageSource, error) {
	r.mu.Lock()
	src := r.opened
	r.opened = nil
	r.mu.Unlock()
	if src != nil {
		return src, nil
	}
	return r.ImageReference.NewImageSource(ctx, sys)
}

// next returns the source the next copy.Image of the image will read: the
// one resolve opened (or an earlier attempt left unused), or a new one by
// digest. Opening it before copy.Image lets herd fetch whole layers through
// the same source while copy.Image runs (layerFetches). nil if it cannot be
// opened: copy.Image then opens it itself and reports why it cannot.
func (r *resolvedSource) next(ctx context.Context, sys *types.SystemContext) types.ImageSource {
	if r == nil { // a target the pull policy keeps
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.opened == nil {
		src, err := r.ImageReference.NewImageSource(ctx, sys)
		if err != nil {
			return nil
		}
		r.opened = src
	}
	return r.opened
}

// close closes the source resolve opened, if copy.Image never took it.
func (r *resolvedSource) close() {
	if r == nil { // a target the pull policy keeps
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.opened != nil {
		_ = r.opened.Close()
		r.opened = nil
	}
}

// resolve turns what the user typed into a target: a reference through a
// transport (transports.go) as it says; short names through
// registries.conf (containers/image's pkg/shortnames, as podman does), then
// the first candidate whose manifest can be read. The manifest is read here,
// before copy.Image, so that tags naming the same manifest are pulled once
// and so that the coordinator knows every layer's TOC digest up front.
func resolve(ctx context.Context, sys *types.SystemContext, interactive bool, input string) (*target, error) {
	if ref, err := parseTransport(input); err != nil || ref != nil {
		if err != nil {
			return nil, err
		}
		return resolveTransport(ctx, sys, input, ref)
	}
	resolved, err := resolveShortName(sys, interactive, withoutTagIfDigested(input))
	if err != nil {
		return nil, err
	}
	if d := resolved.Description(); d != "" {
		logrus.Infof("%s: %s", input, d)
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
		errs = append(errs, explain(sys, c.Value, err))
	}
	return nil, resolved.FormatPullErrors(errs)
}

// withoutTagIfDigested drops the tag of a reference that has both a tag
// and a digest (NAME:TAG@DIGEST), as podman does: the digest names the
// image, and containers/image refuses references with both. The name is
// kept as typed, so a short name still goes through registries.conf.
func withoutTagIfDigested(input string) string {
	ref, err := reference.Parse(input)
	if err != nil {
		return input // short-name resolution reports it
	}
	named, isNamed := ref.(reference.Named)
	_, tagged := ref.(reference.Tagged)
	digested, hasDigest := ref.(reference.Digested)
	if !isNamed || !tagged || !hasDigest {
		return input
	}
	return named.Name() + "@" + digested.Digest().String()
}

// promptMu keeps shortnames.Resolve's terminal prompts (enforcing or
// permissive mode, an ambiguous short name, herd on a terminal) one at a
// time: inputs are resolved in parallel. Resolve itself only reads
// configuration, so serialising it costs nothing.
var promptMu sync.Mutex

// resolveShortName is shortnames.Resolve, with the error for an ambiguous
// short name that cannot be asked about (short-name-mode "enforcing", not
// interactive) saying which registries it could come from and what to do.
func resolveShortName(sys *types.SystemContext, interactive bool, input string) (*shortnames.Resolved, error) {
	promptMu.Lock()
	resolved, err := shortnames.Resolve(sys, input)
	promptMu.Unlock()
	if err == nil || !shortnames.IsShortName(input) {
		return resolved, err
	}
	// The same conditions as shortnames.Resolve's for that error.
	if mode, merr := sysregistriesv2.GetShortNameMode(sys); merr != nil || mode != types.ShortNameModeEnforcing || interactive {
		return nil, err
	}
	// "disabled" lists the candidates without asking; if there are several,
	// ambiguity is what failed.
	disabled := types.ShortNameModeDisabled
	var quiet types.SystemContext
	if sys != nil {
		quiet = *sys
	}
	quiet.ShortNameMode = &disabled
	all, aerr := shortnames.Resolve(&quiet, input)
	if aerr != nil || len(all.PullCandidates) < 2 {
		return nil, err
	}
	var names []string
	for _, c := range all.PullCandidates {
		names = append(names, c.Value.String())
	}
	return nil, fmt.Errorf("short name %q is ambiguous: it could be %s (unqualified-search-registries in %s); short-name-mode is enforcing and herd can only ask which on a terminal, so give a fully qualified name or add an alias to registries.conf: %w",
		input, strings.Join(names, " or "), sysregistriesv2.ConfigurationSourceDescription(sys), err)
}

// explain puts in front of containers/image's error for a registry that
// refused herd, or whose certificate herd cannot verify, what the user can
// change. containers/image says what happened but not which flag or file
// would fix it, and cannot tell missing credentials from refused ones.
func explain(sys *types.SystemContext, named reference.Named, err error) error {
	host := reference.Domain(named)
	switch {
	case isAuthError(err):
		// Only whether there are credentials is told, never what they are.
		creds, cerr := config.GetCredentialsForRef(sys, named)
		if cerr == nil && creds != (types.DockerAuthConfig{}) {
			return fmt.Errorf("registry %s refused the credentials herd has for it (from --creds, --authfile, $REGISTRY_AUTH_FILE, auth.json or a credential helper): check them: %w", host, err)
		}
		return fmt.Errorf("registry %s requires credentials and herd has none for it: give --creds USER:PASSWORD or --authfile, set $REGISTRY_AUTH_FILE, or log in with podman login: %w", host, err)
	case isCertError(err):
		return fmt.Errorf("the TLS certificate of registry %s cannot be verified: put its CA certificate in /etc/containers/certs.d/%s/ca.crt (or in a directory given with --cert-dir), or use --tls-verify=false for a registry you trust: %w", host, host, err)
	case strings.Contains(err.Error(), "server gave HTTP response to HTTPS client"): // net/http's unexported error
		return fmt.Errorf("registry %s answers plain HTTP, not HTTPS: if that is intended, set insecure = true for it in registries.conf, or use --tls-verify=false: %w", host, err)
	case wantsClientCert(err):
		return fmt.Errorf("registry %s wants a client certificate that it trusts: put it in /etc/containers/certs.d/%s/client.cert and its key in client.key (or in a directory given with --cert-dir): %w", host, host, err)
	}
	return err
}

// wantsClientCert reports whether the registry ended the TLS handshake
// because herd sent no client certificate, or one it does not trust.
// crypto/tls reports an alert from the server as a net.OpError "remote
// error" around its unexported alert type, so the alert's text is all there
// is to go by: "tls: bad certificate", "tls: unknown certificate authority",
// "tls: certificate required".
func wantsClientCert(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "remote error" && strings.Contains(op.Err.Error(), "certificate")
}

// isAuthError reports whether a registry answered 401 or 403: as an
// ErrUnauthorizedForCredentials (token auth), as a distribution error code
// (manifest and blob requests), or as a bare status.
func isAuthError(err error) bool {
	if errors.As(err, new(docker.ErrUnauthorizedForCredentials)) {
		return true
	}
	var e errcode.Error
	var code errcode.ErrorCode
	if errors.As(err, &e) {
		code = e.Code
	} else {
		errors.As(err, &code)
	}
	if code == errcode.ErrorCodeUnauthorized || code == errcode.ErrorCodeDenied {
		return true
	}
	var status docker.UnexpectedHTTPStatusError
	return errors.As(err, &status) && (status.StatusCode == http.StatusUnauthorized || status.StatusCode == http.StatusForbidden)
}

// isCertError reports whether the registry's certificate failed verification.
func isCertError(err error) bool {
	return errors.As(err, new(*tls.CertificateVerificationError)) ||
		errors.As(err, new(x509.UnknownAuthorityError)) ||
		errors.As(err, new(x509.HostnameError)) ||
		errors.As(err, new(x509.CertificateInvalidError))
}

// inspect reads the manifest named (and, for a list, the instance chosen
// for the platform in sys) and returns what a pull of it needs to know,
// with the source it read them from still open (target.source).
func inspect(ctx context.Context, sys *types.SystemContext, named reference.Named) (_ *target, err error) {
	ref, err := docker.NewReference(reference.TagNameOnly(named))
	if err != nil {
		return nil, err
	}
	src, err := ref.NewImageSource(ctx, sys)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			_ = src.Close()
		}
	}()
	t, err := inspectSource(ctx, sys, src)
	if err != nil {
		return nil, err
	}
	t.named = ref.DockerReference()
	pinned, err := reference.WithDigest(reference.TrimNamed(t.named), t.digest)
	if err != nil {
		return nil, err
	}
	byDigest, err := docker.NewReference(pinned)
	if err != nil {
		return nil, err
	}
	t.source = &resolvedSource{ImageReference: byDigest, opened: src}
	return t, nil
}

// inspectSource reads src's manifest (and, for a list, the instance chosen
// for the platform in sys): the digests, layers and config of the target,
// whose name and source the caller sets.
func inspectSource(ctx context.Context, sys *types.SystemContext, src types.ImageSource) (*target, error) {
	named := sourceName(src.Reference())
	blob, mimeType, err := src.GetManifest(ctx, nil)
	if err != nil {
		return nil, err
	}
	t := &target{}
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
		if !slices.Contains(manifest.DefaultRequestedManifestMIMETypes, mimeType) {
			// containers/image takes any type it does not know for Docker
			// schema 1 (some CDNs serve manifests as text/plain), so its
			// error would be about schema 1; say what the registry sent.
			return nil, fmt.Errorf("the registry serves the manifest of %s as %q, which is not a manifest type herd can pull (image manifests and indexes of OCI and Docker schema 2, Docker schema 1): %w", named, mimeType, err)
		}
		return nil, fmt.Errorf("parsing manifest of %s: %w", named, err)
	}
	t.config, t.layers = m.ConfigInfo(), layerBlobs(m)
	return t, nil
}

// sourceName is how messages name an image source: its registry reference,
// or the transport's string for a layout or archive.
func sourceName(ref types.ImageReference) string {
	if named := ref.DockerReference(); named != nil && ref.Transport() == docker.Transport {
		return named.String()
	}
	return transports.ImageName(ref)
}

// layerBlobs are the blobs of m's layers, bottom to top, without the
// empty layers Docker schema 1 lists.
func layerBlobs(m manifest.Manifest) []types.BlobInfo {
	var blobs []types.BlobInfo
	for _, l := range m.LayerInfos() {
		if !l.EmptyLayer {
			blobs = append(blobs, l.BlobInfo)
		}
	}
	return blobs
}

// tocDigest is the zstd:chunked TOC digest of a layer, or "".
func tocDigest(layer types.BlobInfo) digest.Digest {
	d, err := toc.GetTOCDigest(layer.Annotations)
	if err != nil || d == nil {
		return ""
	}
	return *d
}
