package cmd

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/spf13/pflag"
	"go.podman.io/image/v5/types"
	"go.podman.io/storage"
	"go.podman.io/storage/pkg/configfile"
	"go.podman.io/storage/pkg/unshare"
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
// and applies the flags the way podman does. (open then follows the user's
// podman where no storage.conf and no flag says which store.)
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

// StoreOptions are the store options herd pull resolves from storage flags
// (args: --root, --runroot, --storage-driver, --storage-opt, --pull-option)
// on top of storage.conf, so that another program (the benchmark's
// baseline) opens exactly the store herd would. Not included: the rootless
// case with no storage.conf and no store flag, where herd asks podman.
func StoreOptions(args ...string) (storagetypes.StoreOptions, error) {
	var o storageOptions
	fs := pflag.NewFlagSet("storage", pflag.ContinueOnError)
	fs.SetOutput(io.Discard) // the error says it all
	o.flags(fs)
	if err := fs.Parse(args); err != nil {
		return storagetypes.StoreOptions{}, fmt.Errorf("storage flags %q: %w", args, err)
	}
	if fs.NArg() > 0 {
		return storagetypes.StoreOptions{}, fmt.Errorf("storage flags %q: %q is not a flag", args, fs.Arg(0))
	}
	return o.storeOptions(fs)
}

func (o *storageOptions) open(fs *pflag.FlagSet) (storage.Store, error) {
	opts, err := o.storeOptions(fs)
	if err != nil {
		return nil, err
	}
	// Here rather than in storeOptions, which stays free of side effects
	// (the fuzz tests call it): this may run podman.
	fromPodman := false
	if o.root == "" && o.runroot == "" && !fs.Changed("storage-driver") && perUserStore() && !storageConfApplies() {
		fromPodman = usePodmanStore(&opts, !fs.Changed("storage-opt"))
	}
	sweepProbeDirs(opts.GraphRoot, false) // what killed runs left in the overlay driver's home (leftovers.go)
	store, err := storage.GetStore(opts)
	if err != nil {
		if fromPodman {
			return nil, fmt.Errorf("opening the store the user's podman uses (podman info: driver %s, graph root %s, run root %s; no storage.conf): %w", opts.GraphDriverName, opts.GraphRoot, opts.RunRoot, err)
		}
		return nil, fmt.Errorf("opening the store at %s: %w", opts.GraphRoot, err)
	}
	return store, nil
}

// perUserStore is containers/storage's own test for using the user's
// private store (~/.local/share/containers/storage): rootless, and not root
// inside a user namespace of its own (a container).
func perUserStore() bool {
	return unshare.IsRootless() && unshare.GetRootlessUID() != 0
}

// storageConfApplies reports whether containers/storage read any
// storage.conf (CONTAINERS_STORAGE_CONF, the user's, /etc's, /usr/share's, or
// a drop-in), searching exactly as DefaultStoreOptions did.
func storageConfApplies() bool {
	for item, err := range configfile.Read(&configfile.File{
		Name: "storage", Extension: "conf", EnvironmentName: "CONTAINERS_STORAGE_CONF",
		UserId: unshare.GetRootlessUID(),
	}) {
		// An unreadable file counts as configuration: the user meant one.
		if err != nil || item != nil {
			return true
		}
	}
	return false
}

// podmanInfo is what herd reads of `podman info --format json`.
type podmanInfo struct {
	Host struct {
		ServiceIsRemote bool `json:"serviceIsRemote"`
	} `json:"host"`
	Store struct {
		Driver    string `json:"graphDriverName"`
		GraphRoot string `json:"graphRoot"`
		RunRoot   string `json:"runRoot"`
		// "overlay.mountopt": "nodev", or for a mount_program
		// {"Executable": "/usr/bin/fuse-overlayfs", "Package": ..., ...}.
		GraphOptions map[string]any `json:"graphOptions"`
	} `json:"store"`
}

// usePodmanStore makes opts the store the user's podman uses, as `podman
// info` reports it, and reports whether it did. It is for a rootless user
// with no storage.conf and no store flags, where every containers/storage
// version falls back to defaults of its own and the versions disagree:
// Debian 12's podman 4.3 (storage 1.43) picks vfs and runs under
// /tmp/podman-run-UID or $XDG_RUNTIME_DIR, while herd's storage picks
// overlay and /tmp/storage-run-UID; podman then keeps whatever driver its
// database recorded first. herd's images would be invisible to that user's
// podman, so herd asks podman rather than guessing from its version. Without
// podman the defaults stay; a podman that fails is worth a warning, as herd
// may then pull where podman will not look.
//
// herd runs here inside its own user namespace (the re-exec in pull's run);
// podman sees _CONTAINERS_USERNS_CONFIGURED and answers as the same rootless
// user without making a namespace of its own. This costs one podman start,
// 0.2-0.4 s here, about as long as `podman info` run by the user.
func usePodmanStore(opts *storagetypes.StoreOptions, withOptions bool) bool {
	podman, err := exec.LookPath("podman")
	if err != nil {
		logrus.Debugf("rootless without storage.conf, and no podman to ask which store it uses: keeping containers/storage's defaults (driver %q, graph root %s, run root %s)", opts.GraphDriverName, opts.GraphRoot, opts.RunRoot)
		return false
	}
	start := time.Now()
	info, err := askPodman(podman)
	if err != nil {
		logrus.Warnf("rootless without storage.conf: asking podman which store it uses: %v; pulling into containers/storage's default store (graph root %s, run root %s), which that podman may not read: set the driver in ~/.config/containers/storage.conf, or give --storage-driver, --root and --runroot", err, opts.GraphRoot, opts.RunRoot)
		return false
	}
	s := info.Store
	opts.GraphDriverName, opts.GraphRoot, opts.RunRoot = s.Driver, s.GraphRoot, s.RunRoot
	if withOptions {
		// Without storage.conf podman's options came from the same
		// environment (STORAGE_OPTS) or its own defaults; they belong to
		// its driver.
		opts.GraphDriverOptions = nil
		for k, v := range s.GraphOptions {
			if m, ok := v.(map[string]any); ok {
				v = m["Executable"]
			}
			if v != nil {
				opts.GraphDriverOptions = append(opts.GraphDriverOptions, fmt.Sprintf("%s=%v", k, v))
			}
		}
		slices.Sort(opts.GraphDriverOptions)
	}
	logrus.Debugf("rootless without storage.conf: using the store the user's podman uses (podman info, %v): driver %s, graph root %s, run root %s, options %q",
		time.Since(start).Round(time.Millisecond), s.Driver, s.GraphRoot, s.RunRoot, opts.GraphDriverOptions)
	return true
}

// askPodman runs `podman info` and checks that it names a local store.
func askPodman(podman string) (*podmanInfo, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	c := exec.CommandContext(ctx, podman, "info", "--format", "json")
	c.Stdout, c.Stderr = &stdout, &stderr
	if err := c.Run(); err != nil {
		return nil, fmt.Errorf("%s info: %w: %s", podman, err, strings.TrimSpace(stderr.String()))
	}
	var info podmanInfo
	if err := json.Unmarshal(stdout.Bytes(), &info); err != nil {
		return nil, fmt.Errorf("%s info --format json: %w", podman, err)
	}
	switch s := info.Store; {
	case info.Host.ServiceIsRemote:
		return nil, errors.New("podman talks to a remote service, whose store is not this user's")
	case s.Driver == "" || s.GraphRoot == "" || s.RunRoot == "":
		return nil, fmt.Errorf("%s info names no complete store: driver %q, graph root %q, run root %q", podman, s.Driver, s.GraphRoot, s.RunRoot)
	}
	return &info, nil
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
