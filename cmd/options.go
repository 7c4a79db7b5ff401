package cmd

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/pflag"
	"go.podman.io/image/v5/types"
	"go.podman.io/storage"
	storagetypes "go.podman.io/storage/types"
)

// storageOptions are podman's storage flags, resolved on top of
// storage.conf exactly as podman resolves them.
type storageOptions struct {
	root, runroot, driver string
	driverOpts            []string
	pullOpts              []string
	driverChanged         bool
	driverOptsChanged     bool
}

func (o *storageOptions) flags(fs *pflag.FlagSet) {
	fs.StringVar(&o.root, "root", "", "path to the root directory in which data, including images, is stored (default from storage.conf)")
	fs.StringVar(&o.runroot, "runroot", "", "path to the 'run directory' where all state information is stored (default from storage.conf)")
	fs.StringVar(&o.driver, "storage-driver", "", "storage driver: overlay, vfs, ... (default from storage.conf)")
	fs.StringArrayVar(&o.driverOpts, "storage-opt", nil, "storage driver option `KEY=VALUE`; replaces storage.conf's options (repeatable)")
	fs.StringArrayVar(&o.pullOpts, "pull-option", nil, "containers/storage pull option `KEY=VALUE`, e.g. enable_partial_images=false (repeatable)")
}

// storeOptions starts from storage.conf (CONTAINERS_STORAGE_CONF, the
// system file, or the rootless user file; containers/storage knows which)
// and applies the flags the way podman does.
func (o *storageOptions) storeOptions(fs *pflag.FlagSet) (storagetypes.StoreOptions, error) {
	opts, err := storagetypes.DefaultStoreOptions()
	if err != nil {
		return opts, fmt.Errorf("reading storage configuration: %w", err)
	}
	if o.root != "" {
		opts.GraphRoot = o.root
	}
	if o.runroot != "" {
		opts.RunRoot = o.runroot
	}
	if fs.Changed("storage-driver") {
		opts.GraphDriverName = o.driver
		// As podman: options in storage.conf belong to storage.conf's driver.
		opts.GraphDriverOptions = nil
	}
	if fs.Changed("storage-opt") {
		opts.GraphDriverOptions = nil
		for _, opt := range o.driverOpts {
			if opt != "" { // podman: --storage-opt "" clears the list
				opts.GraphDriverOptions = append(opts.GraphDriverOptions, opt)
			}
		}
	}
	pullOpts := map[string]string{}
	for k, v := range opts.PullOptions {
		pullOpts[k] = v
	}
	for _, kv := range o.pullOpts {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return opts, usageErrorf("--pull-option %q: want KEY=VALUE", kv)
		}
		pullOpts[k] = v
	}
	// Partial pulls are what make zstd:chunked worth it; on unless turned off.
	if _, set := pullOpts["enable_partial_images"]; !set {
		pullOpts["enable_partial_images"] = "true"
	}
	opts.PullOptions = pullOpts
	return opts, nil
}

func (o *storageOptions) open(fs *pflag.FlagSet) (storage.Store, error) {
	opts, err := o.storeOptions(fs)
	if err != nil {
		return nil, err
	}
	store, err := storage.GetStore(opts)
	if err != nil {
		return nil, fmt.Errorf("opening the store at %s: %w", opts.GraphRoot, err)
	}
	return store, nil
}

// registryOptions are how herd reaches registries, named as podman names them.
type registryOptions struct {
	tlsVerify       bool
	certDir         string
	authfile        string
	creds           string
	registriesConf  string
	signaturePolicy string
}

func (o *registryOptions) flags(fs *pflag.FlagSet) {
	fs.BoolVar(&o.tlsVerify, "tls-verify", true, "require HTTPS and verify certificates when contacting registries")
	fs.StringVar(&o.certDir, "cert-dir", "", "use certificates at `PATH` (*.crt, *.cert, *.key) to connect to the registry")
	fs.StringVar(&o.authfile, "authfile", "", "path of the authentication file (default: $REGISTRY_AUTH_FILE, then podman's auth.json locations)")
	fs.StringVar(&o.creds, "creds", "", "use `USERNAME:PASSWORD` for accessing the registry")
	fs.StringVar(&o.registriesConf, "registries-conf", "", "path to registries.conf (default: $CONTAINERS_REGISTRIES_CONF, then the system and user files)")
	fs.StringVar(&o.signaturePolicy, "signature-policy", "", "path to a signature verification policy file (default: the user's, then /etc/containers/policy.json)")
}

// systemContext fills what containers/image needs to reach registries.
func (o *registryOptions) systemContext(fs *pflag.FlagSet, sys *types.SystemContext) error {
	sys.DockerCertPath = o.certDir
	sys.SystemRegistriesConfPath = o.registriesConf // "" lets sysregistriesv2 read CONTAINERS_REGISTRIES_CONF itself
	sys.SignaturePolicyPath = o.signaturePolicy
	sys.AuthFilePath = o.authfile
	from := "--authfile"
	if sys.AuthFilePath == "" {
		// podman and skopeo honour this through containers/common, which herd
		// does not depend on; containers/image itself does not read it.
		sys.AuthFilePath, from = os.Getenv("REGISTRY_AUTH_FILE"), "$REGISTRY_AUTH_FILE"
	}
	if sys.AuthFilePath != "" {
		// As podman: containers/image would treat a missing file as "no
		// credentials" and the registry's 401 would hide the typo.
		if _, err := os.Stat(sys.AuthFilePath); err != nil {
			return usageErrorf("%s: credential file is not accessible: %v", from, err)
		}
	}
	if fs.Changed("tls-verify") {
		sys.DockerInsecureSkipTLSVerify = types.NewOptionalBool(!o.tlsVerify)
	}
	if fs.Changed("creds") {
		user, pass, ok := strings.Cut(o.creds, ":")
		if !ok || user == "" {
			// skopeo would prompt for the password; herd runs unattended.
			return usageErrorf("--creds: want USERNAME:PASSWORD")
		}
		sys.DockerAuthConfig = &types.DockerAuthConfig{Username: user, Password: pass}
	}
	return nil
}

// platformOptions pick an image from a manifest list, as podman pull does.
type platformOptions struct {
	platform, os, arch, variant string
}

func (o *platformOptions) flags(fs *pflag.FlagSet) {
	fs.StringVar(&o.platform, "platform", "", "pull images for `OS/ARCH[/VARIANT]` instead of the host's")
	fs.StringVar(&o.os, "os", "", "pull images for `OS` instead of the host's")
	fs.StringVar(&o.arch, "arch", "", "pull images for `ARCH` instead of the host's")
	fs.StringVar(&o.variant, "variant", "", "pull images for architecture `VARIANT` (e.g. v8)")
}

func (o *platformOptions) systemContext(sys *types.SystemContext) error {
	if o.platform != "" {
		if o.os != "" || o.arch != "" || o.variant != "" {
			return usageErrorf("--platform conflicts with --os, --arch and --variant")
		}
		parts := strings.Split(o.platform, "/")
		if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || parts[1] == "" {
			return usageErrorf("--platform %q: want OS/ARCH[/VARIANT]", o.platform)
		}
		sys.OSChoice, sys.ArchitectureChoice = parts[0], parts[1]
		if len(parts) == 3 {
			sys.VariantChoice = parts[2]
		}
		return nil
	}
	sys.OSChoice, sys.ArchitectureChoice, sys.VariantChoice = o.os, o.arch, o.variant
	return nil
}

// blobInfoCacheDir is where every copy.Image of a run, and every later run
// against the same store, shares what it learned about blobs (compressed ↔
// uncompressed ↔ TOC digests). podman keeps it beside its default store
// (/var/lib/containers/cache, ~/.local/share/containers/cache); herd keeps it
// beside whichever store it uses, so that separate stores do not mix facts.
func blobInfoCacheDir(graphRoot string) string {
	return filepath.Join(filepath.Dir(filepath.Clean(graphRoot)), "cache")
}
