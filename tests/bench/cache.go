package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/herd-project/herd/tests/internal/testimage"
	"github.com/herd-project/herd/tests/internal/testregistry"
)

// cacheVersion changes whenever the generated content or set shapes do, so
// an old cache is never mistaken for the current sets.
const cacheVersion = 1

// imageCache is a registry directory holding every set pushed so far, in
// each compression, plus an index of what it holds. Generating and
// compressing the layers is the slow part of a benchmark (minutes for the
// full sets); starting a registry on the directory is instant, so every
// network setting gets its own registry over the same content.
type imageCache struct {
	dir string // registry/ and sets.json
	// sets holds each set's images as pushed, by setKey; their Refs are
	// "set/compression/repo:tag", without the registry host, as every
	// registry serving the cache listens on a port of its own. (A sets.json
	// written before, with only "ref" and the layers' "digest" and "size",
	// reads into these too: encoding/json matches keys regardless of case.)
	sets  map[string][]testimage.Pushed
	scale scale
	root  string // the -cache directory, which also holds the real set's build (real.go)
}

func openCache(dir string, sc scale, name string) (*imageCache, error) {
	c := &imageCache{dir: filepath.Join(dir, fmt.Sprintf("%s-v%d", name, cacheVersion)), sets: map[string][]testimage.Pushed{}, scale: sc, root: dir}
	if err := os.MkdirAll(c.registryDir(), 0o755); err != nil {
		return nil, fmt.Errorf("creating the image cache: %w", err)
	}
	b, err := os.ReadFile(c.indexPath())
	if errors.Is(err, fs.ErrNotExist) {
		return c, nil
	}
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(b, &c.sets); err != nil {
		return nil, fmt.Errorf("reading the image cache index %s (delete the directory to rebuild it): %w", c.indexPath(), err)
	}
	return c, nil
}

func (c *imageCache) registryDir() string { return filepath.Join(c.dir, "registry") }
func (c *imageCache) indexPath() string   { return filepath.Join(c.dir, "sets.json") }

func setKey(set, compression string) string { return set + "/" + compression }

// ensure pushes every (set, compression) the cache does not hold yet,
// building the real set first if it was never built.
func (c *imageCache) ensure(ctx context.Context, sets, compressions []string, logf func(string, ...any)) error {
	var real *realIndex
	if slices.Contains(sets, "real") {
		var err error
		if real, err = loadReal(ctx, realDir(c.root), logf); err != nil {
			return err
		}
	}
	var missing [][2]string
	for _, s := range sets {
		for _, comp := range compressions {
			pushed, ok := c.sets[setKey(s, comp)]
			if !ok || (s == "real" && !realPushed(pushed, real)) {
				missing = append(missing, [2]string{s, comp})
			}
		}
	}
	if len(missing) == 0 {
		return nil
	}
	reg, err := testregistry.Start(ctx, testregistry.Options{RootDirectory: c.registryDir(), Quiet: true})
	if err != nil {
		return err
	}
	defer reg.Close()
	work, err := os.MkdirTemp(c.dir, "push-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	pusher := testimage.NewPusher(reg.Host, work)
	gen := newGenerator(c.scale)
	for _, m := range missing {
		set, comp := m[0], m[1]
		var images []testimage.Pushed
		if set == "real" {
			logf("pushing the real set (%s) in %s into the image cache %s", realDir(c.root), comp, c.dir)
			images, err = pushReal(ctx, pusher, work, realDir(c.root), real, comp)
		} else {
			logf("generating and pushing %s in %s into the image cache %s", set, comp, c.dir)
			images, err = pushGenerated(ctx, pusher, gen, set, comp)
		}
		if err != nil {
			return err
		}
		c.sets[setKey(set, comp)] = images
		// Saved after each set, so an interrupted build keeps what it pushed.
		b, err := json.MarshalIndent(c.sets, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(c.indexPath()+".tmp", b, 0o644); err != nil {
			return err
		}
		if err := os.Rename(c.indexPath()+".tmp", c.indexPath()); err != nil {
			return err
		}
	}
	return nil
}

// pushGenerated pushes a synthetic set (sets.go) as set/compression/repo:tag.
func pushGenerated(ctx context.Context, pusher *testimage.Pusher, gen *generator, set, comp string) ([]testimage.Pushed, error) {
	specs, err := gen.set(set)
	if err != nil {
		return nil, err
	}
	var images []testimage.Pushed
	for _, spec := range specs {
		for _, tag := range spec.tags {
			path := fmt.Sprintf("%s/%s/%s:%s", set, strings.ReplaceAll(comp, ":", "-"), spec.repo, tag)
			p, err := pusher.Push(ctx, path, testimage.Image{Layers: spec.layers}, comp)
			if err != nil {
				return nil, err
			}
			p.Ref = path
			images = append(images, p)
		}
	}
	return images, nil
}
