package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	digest "github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	imgspecv1 "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"

	"github.com/herd-project/herd/tests/internal/testimage"
	"github.com/herd-project/herd/tests/internal/teststore"
)

// The real set: Debian bookworm images made of real packages, whose files
// are what synthetic content cannot be (many small files, binaries, text,
// links; gzip ratios as they come). A debootstrap minbase root filesystem
// is the base layer every image shares; each app layer is what
// `apt-get install --no-install-recommends PKG` adds in a copy of its
// parent's tree (layerdiff.go). It is built once, as root, from the Debian
// mirror apt uses here (about 2 minutes and 3 GB of scratch the first
// time, then as long again to push it in gzip and zstd:chunked), and kept
// as layer tars under the cache's real-vN directory.

// realVersion changes whenever the recipe below does, so that an older
// build is never pushed as the current set.
const realVersion = 1

// realLayer is one layer of the real set: the base (debootstrap), or the
// package installed over Parent's tree.
type realLayer struct {
	Name    string        `json:"name"`
	Parent  string        `json:"parent,omitempty"`
	Package string        `json:"package,omitempty"`
	Digest  digest.Digest `json:"digest"` // of the uncompressed tar: the DiffID
	Size    int64         `json:"size"`
}

type realImage struct {
	Repo   string   `json:"repo"`
	Layers []string `json:"layers"` // bottom to top, by realLayer.Name
}

// realIndex is images.json beside the tars: what was built, from where.
type realIndex struct {
	Suite        string      `json:"suite"`
	Mirror       string      `json:"mirror"`
	Built        time.Time   `json:"built"`
	BuildSeconds float64     `json:"buildSeconds"`
	Layers       []realLayer `json:"layers"`
	Images       []realImage `json:"images"`
}

const realSuite = "bookworm"

// realRecipe is built in order: a parent before its children.
var realRecipe = []realLayer{
	{Name: "base"},
	{Name: "python3", Parent: "base", Package: "python3"},
	{Name: "python3-numpy", Parent: "base", Package: "python3-numpy"},
	{Name: "nodejs", Parent: "base", Package: "nodejs"},
	{Name: "jre", Parent: "base", Package: "openjdk-17-jre-headless"},
	{Name: "gcc", Parent: "base", Package: "gcc"},
	{Name: "git", Parent: "base", Package: "git"},
	{Name: "perl", Parent: "base", Package: "perl"},
	// git over python3: a third layer, and a second layer two images share.
	{Name: "python3-git", Parent: "python3", Package: "git"},
}

var realImages = []realImage{
	{Repo: "python3", Layers: []string{"base", "python3"}},
	{Repo: "python3-numpy", Layers: []string{"base", "python3-numpy"}},
	{Repo: "nodejs", Layers: []string{"base", "nodejs"}},
	{Repo: "jre", Layers: []string{"base", "jre"}},
	{Repo: "gcc", Layers: []string{"base", "gcc"}},
	{Repo: "git", Layers: []string{"base", "git"}},
	{Repo: "perl", Layers: []string{"base", "perl"}},
	{Repo: "python3-git", Layers: []string{"base", "python3", "python3-git"}},
}

func realDir(cacheRoot string) string {
	return filepath.Join(cacheRoot, fmt.Sprintf("real-v%d", realVersion))
}

func (idx *realIndex) layer(name string) realLayer {
	for _, l := range idx.Layers {
		if l.Name == name {
			return l
		}
	}
	panic("real set: no layer " + name) // the recipe names only its own layers
}

// loadReal reads the real set from dir, building it first if it is not there.
func loadReal(ctx context.Context, dir string, logf func(string, ...any)) (*realIndex, error) {
	b, err := os.ReadFile(filepath.Join(dir, "images.json"))
	if err == nil {
		var idx realIndex
		if err := json.Unmarshal(b, &idx); err != nil {
			return nil, fmt.Errorf("reading %s (delete the directory to rebuild it): %w", filepath.Join(dir, "images.json"), err)
		}
		return &idx, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	return buildReal(ctx, dir, logf)
}

// buildReal builds every layer of the recipe into dir/layers/NAME.tar and
// writes dir/images.json last, so an interrupted build is started over.
func buildReal(ctx context.Context, dir string, logf func(string, ...any)) (*realIndex, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("building the real image set needs root (debootstrap, chroot); run the benchmark as root once")
	}
	if _, err := exec.LookPath("debootstrap"); err != nil {
		return nil, fmt.Errorf("building the real image set needs debootstrap (apt-get install debootstrap): %w", err)
	}
	start := time.Now()
	idx := &realIndex{Suite: realSuite, Mirror: debianMirror(), Images: realImages}
	build, layers := filepath.Join(dir, "build"), filepath.Join(dir, "layers")
	teststore.UnmountBelow(build) // a /proc an interrupted build left mounted
	if err := os.RemoveAll(build); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(build, 0o755); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(layers, 0o755); err != nil {
		return nil, err
	}
	defer func() {
		teststore.UnmountBelow(build)
		_ = os.RemoveAll(build)
	}()
	logPath := filepath.Join(dir, "build.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	run := func(name string, args ...string) error {
		c := exec.CommandContext(ctx, name, args...)
		c.Stdout, c.Stderr = logFile, logFile
		c.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive", "LC_ALL=C")
		fmt.Fprintf(logFile, "+ %s %s\n", name, strings.Join(args, " "))
		if err := c.Run(); err != nil {
			return fmt.Errorf("%s %s: %w (output in %s)", name, strings.Join(args, " "), err, logPath)
		}
		return nil
	}

	logf("real set: building it once into %s from %s (about 2 minutes, 3 GB of scratch; log in %s)", dir, idx.Mirror, logPath)
	for _, l := range realRecipe {
		root := filepath.Join(build, l.Name)
		parent := ""
		if l.Parent == "" {
			if err := run("debootstrap", "--variant=minbase", realSuite, root, idx.Mirror); err != nil {
				return nil, err
			}
		} else {
			parent = filepath.Join(build, l.Parent)
			if err := run("cp", "-a", parent, root); err != nil {
				return nil, err
			}
			if err := aptInstall(root, l.Package, run); err != nil {
				return nil, err
			}
		}
		if err := cleanApt(root); err != nil {
			return nil, err
		}
		entries, err := diffTrees(parent, root)
		if err != nil {
			return nil, fmt.Errorf("real set: layer %s: %w", l.Name, err)
		}
		if l.Digest, l.Size, err = writeLayerFile(filepath.Join(layers, l.Name+".tar"), root, entries); err != nil {
			return nil, fmt.Errorf("real set: layer %s: %w", l.Name, err)
		}
		idx.Layers = append(idx.Layers, l)
		logf("real set: layer %-13s %6d entries, %6.1f MiB (%s)", l.Name, len(entries), float64(l.Size)/mib, time.Since(start).Round(time.Second))
	}
	idx.Built, idx.BuildSeconds = time.Now().UTC(), time.Since(start).Seconds()
	b, err := json.MarshalIndent(idx, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "images.json"), b, 0o644); err != nil {
		return nil, err
	}
	return idx, nil
}

// aptInstall installs pkg in the tree at root, as a Dockerfile's RUN
// apt-get would: /proc mounted, the host's resolv.conf for the mirror's
// name, both put back as they were afterwards so they are not in the layer.
func aptInstall(root, pkg string, run func(string, ...string) error) error {
	proc := filepath.Join(root, "proc")
	if err := unix.Mount("proc", proc, "proc", 0, ""); err != nil {
		return fmt.Errorf("mounting /proc in %s: %w", root, err)
	}
	defer func() { _ = unix.Unmount(proc, unix.MNT_DETACH) }()
	// The tree's own resolv.conf (debootstrap's copy, or a symlink) is set
	// aside whole and put back, so that not even its mode changes.
	resolv := filepath.Join(root, "etc", "resolv.conf")
	aside := resolv + ".herd-bench"
	hadOwn := os.Rename(resolv, aside) == nil
	defer func() {
		_ = os.Remove(resolv)
		if hadOwn {
			_ = os.Rename(aside, resolv)
		}
	}()
	host, err := os.ReadFile("/etc/resolv.conf")
	if err != nil {
		return err
	}
	if err := os.WriteFile(resolv, host, 0o644); err != nil {
		return err
	}
	if err := run("chroot", root, "apt-get", "update"); err != nil {
		return err
	}
	return run("chroot", root, "apt-get", "install", "-y", "--no-install-recommends", pkg)
}

// cleanApt removes apt's downloads and package lists, as image builds do.
func cleanApt(root string) error {
	for _, pattern := range []string{"var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*"} {
		matches, err := filepath.Glob(filepath.Join(root, pattern))
		if err != nil {
			return err
		}
		for _, m := range matches {
			if err := os.RemoveAll(m); err != nil {
				return err
			}
		}
	}
	return nil
}

// writeLayerFile writes a layer tar to path and returns its digest and size.
func writeLayerFile(path, root string, entries []diffEntry) (digest.Digest, int64, error) {
	f, err := os.Create(path + ".tmp")
	if err != nil {
		return "", 0, err
	}
	h := sha256.New()
	w := bufio.NewWriterSize(io.MultiWriter(f, h), 1<<20)
	err = writeLayer(w, root, entries)
	if err == nil {
		err = w.Flush()
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", 0, err
	}
	fi, err := os.Stat(path + ".tmp")
	if err != nil {
		return "", 0, err
	}
	return digest.NewDigestFromEncoded(digest.SHA256, hex.EncodeToString(h.Sum(nil))), fi.Size(), os.Rename(path+".tmp", path)
}

// debianMirror is the Debian mirror apt uses here for the suite: the URIs
// of a deb822 stanza (sources.list.d/*.sources) or the URL of a one-line
// entry (sources.list, *.list) naming it; deb.debian.org if none does.
func debianMirror() string {
	files, _ := filepath.Glob("/etc/apt/sources.list.d/*.sources")
	lists, _ := filepath.Glob("/etc/apt/sources.list.d/*.list")
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, stanza := range strings.Split(string(b), "\n\n") {
			fields := map[string][]string{}
			for _, line := range strings.Split(stanza, "\n") {
				if k, v, ok := strings.Cut(line, ":"); ok && !strings.HasPrefix(line, "#") {
					fields[strings.ToLower(strings.TrimSpace(k))] = strings.Fields(v)
				}
			}
			if slices.Contains(fields["types"], "deb") && slices.Contains(fields["suites"], realSuite) && len(fields["uris"]) > 0 {
				return fields["uris"][0]
			}
		}
	}
	for _, f := range append([]string{"/etc/apt/sources.list"}, lists...) {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			fs := strings.Fields(line)
			if len(fs) > 1 && fs[0] == "deb" && strings.HasPrefix(fs[1], "[") { // deb [options] URL suite
				for len(fs) > 1 && !strings.HasSuffix(fs[1], "]") {
					fs = slices.Delete(fs, 1, 2)
				}
				fs = slices.Delete(fs, 1, 2)
			}
			if len(fs) > 2 && fs[0] == "deb" && fs[2] == realSuite {
				return fs[1]
			}
		}
	}
	return "http://deb.debian.org/debian"
}

// pushReal pushes the real set with pusher as real/COMPRESSION/REPO:latest,
// from an OCI layout in work whose layer blobs are hard links to the tars
// (or copies, across filesystems).
func pushReal(ctx context.Context, pusher *testimage.Pusher, work, dir string, idx *realIndex, comp string) ([]testimage.Pushed, error) {
	lay, err := os.MkdirTemp(work, "real-layout-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(lay)
	blobs := filepath.Join(lay, "blobs", "sha256")
	if err := os.MkdirAll(blobs, 0o755); err != nil {
		return nil, err
	}
	for _, l := range idx.Layers {
		src, dst := filepath.Join(dir, "layers", l.Name+".tar"), filepath.Join(blobs, l.Digest.Encoded())
		if err := os.Link(src, dst); err != nil {
			if err := run1("cp", src, dst); err != nil {
				return nil, err
			}
		}
	}
	var entries []imgspecv1.Descriptor
	for _, img := range idx.Images {
		cfg := imgspecv1.Image{
			Platform: imgspecv1.Platform{OS: "linux", Architecture: runtime.GOARCH},
			Config: imgspecv1.ImageConfig{Cmd: []string{"/bin/bash"},
				Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}},
			RootFS: imgspecv1.RootFS{Type: "layers"},
		}
		m := imgspecv1.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: imgspecv1.MediaTypeImageManifest}
		for _, name := range img.Layers {
			l := idx.layer(name)
			cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, l.Digest)
			created := fmt.Sprintf("debootstrap --variant=minbase %s", idx.Suite)
			if l.Package != "" {
				created = "apt-get install --no-install-recommends " + l.Package
			}
			cfg.History = append(cfg.History, imgspecv1.History{CreatedBy: created})
			m.Layers = append(m.Layers, imgspecv1.Descriptor{MediaType: imgspecv1.MediaTypeImageLayer, Digest: l.Digest, Size: l.Size})
		}
		if m.Config, err = testimage.WriteJSONBlob(lay, imgspecv1.MediaTypeImageConfig, cfg); err != nil {
			return nil, err
		}
		md, err := testimage.WriteJSONBlob(lay, imgspecv1.MediaTypeImageManifest, m)
		if err != nil {
			return nil, err
		}
		md.Annotations = map[string]string{imgspecv1.AnnotationRefName: img.Repo}
		entries = append(entries, md)
	}
	if err := testimage.WriteLayoutIndex(lay, entries...); err != nil {
		return nil, err
	}

	var out []testimage.Pushed
	for _, img := range idx.Images {
		path := fmt.Sprintf("real/%s/%s:latest", strings.ReplaceAll(comp, ":", "-"), img.Repo)
		var diffIDs []digest.Digest
		for _, name := range img.Layers {
			diffIDs = append(diffIDs, idx.layer(name).Digest)
		}
		p, err := pusher.PushLayout(ctx, lay, img.Repo, path, diffIDs, comp)
		if err != nil {
			return nil, err
		}
		p.Ref = path // the cache's references name no registry host
		out = append(out, p)
	}
	return out, nil
}

// realPushed reports whether pushed is idx's build as pushed (and not an
// earlier build's, whose tars were deleted and rebuilt since).
func realPushed(pushed []testimage.Pushed, idx *realIndex) bool {
	if len(pushed) != len(idx.Images) {
		return false
	}
	for i, img := range idx.Images {
		var want []digest.Digest
		for _, name := range img.Layers {
			want = append(want, idx.layer(name).Digest)
		}
		if !slices.Equal(pushed[i].DiffIDs, want) {
			return false
		}
	}
	return true
}

func run1(name string, args ...string) error {
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, out)
	}
	return nil
}
