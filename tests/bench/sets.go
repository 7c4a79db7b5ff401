package main

import (
	"fmt"
	"math"
	"math/rand"
	"slices"

	"github.com/herd-project/herd/tests/internal/testimage"
)

// The image sets. Sizes are uncompressed tar content; the generated content
// compresses about 2.5x with gzip (testimage's word-and-noise content, close
// to real images), so a 75 MiB layer is a ~30 MiB blob.
//
// fleet is shaped like a host's set of public images: a Debian-like OS base
// (~30 MiB compressed) under six images, an Alpine-like one under two, a
// Python-like runtime (~100 MiB compressed) shared by half, a Node-like one
// by a quarter, dependency layers shared by pairs, and small app layers of
// each image's own. fleet16 is the same shape twice over (16 images, each
// with its own app layer), fleet64 eight times over (how herd grows with the
// number of images). same is one image under 10 tags (the N
// concurrent pulls of one image case). similar is a base plus an app bundle
// that differs from image to image in a few files: what zstd:chunked
// partial pulls are for. (real, made of Debian packages, is in real.go.)

const mib = 1 << 20

// scale shrinks every size (and some counts) for -quick.
type scale struct {
	size    float64 // multiplies layer sizes
	fleet   int     // images in fleet
	fleet16 int     // images in fleet16
	fleet64 int     // images in fleet64
	tags    int     // tags in same
	similar int     // images in similar
}

var (
	fullScale  = scale{size: 1, fleet: 8, fleet16: 16, fleet64: 64, tags: 10, similar: 8}
	quickScale = scale{size: 1.0 / 64, fleet: 4, fleet16: 6, fleet64: 8, tags: 3, similar: 3}
)

// setNames lists every set, in table order: the generated ones, then real
// (real.go), which -sets names only when asked, as its first build needs
// root, the Debian mirror and minutes.
var (
	generatedSets = []string{"fleet", "fleet16", "fleet64", "same", "similar"}
	setNames      = append(slices.Clone(generatedSets), "real")
)

// imageSpec is one image to push: repository (under the set and
// compression), its tags, and its layers bottom to top.
type imageSpec struct {
	repo   string
	tags   []string
	layers []testimage.Layer
}

// generator makes each distinct layer once per process.
type generator struct {
	sc     scale
	layers map[string]testimage.Layer
}

func newGenerator(sc scale) *generator {
	return &generator{sc: sc, layers: map[string]testimage.Layer{}}
}

// layer returns the layer called name, of about size uncompressed bytes
// (before scaling), generated deterministically from the name.
func (g *generator) layer(name string, size int64) testimage.Layer {
	if l, ok := g.layers[name]; ok {
		return l
	}
	l := contentLayer(name, int64(float64(size)*g.sc.size))
	g.layers[name] = l
	return l
}

// set returns the images of set name.
func (g *generator) set(name string) ([]imageSpec, error) {
	switch name {
	case "fleet":
		return g.fleet(g.sc.fleet), nil
	case "fleet16":
		return g.fleet(g.sc.fleet16), nil
	case "fleet64":
		return g.fleet(g.sc.fleet64), nil
	case "same":
		tags := make([]string, g.sc.tags)
		for i := range tags {
			tags[i] = fmt.Sprintf("t%d", i)
		}
		return []imageSpec{{repo: "app", tags: tags, layers: []testimage.Layer{
			g.layer("base-debian", 75*mib), g.layer("runtime-python", 250*mib), g.layer("app-same", 5*mib),
		}}}, nil
	case "similar":
		bundle := g.layer("bundle", 50*mib)
		var out []imageSpec
		for i := range g.sc.similar {
			top := bundle
			if i > 0 {
				// About 5 of ~750 files differ from image to image.
				top = testimage.SimilarLayer(bundle, int64(1000+i), 5)
			}
			out = append(out, imageSpec{repo: fmt.Sprintf("app%d", i), tags: []string{"latest"},
				layers: []testimage.Layer{g.layer("base-debian", 75*mib), top}})
		}
		return out, nil
	}
	return nil, fmt.Errorf("unknown image set %q (want one of %v)", name, setNames)
}

// fleet returns n images; image i has the shape of pattern i%8 and its own
// app layer.
func (g *generator) fleet(n int) []imageSpec {
	var out []imageSpec
	for i := range n {
		app := g.layer(fmt.Sprintf("app%d", i), int64(1+i%4)*5*mib/2)
		var layers []testimage.Layer
		switch i % 8 {
		case 0, 1:
			layers = []testimage.Layer{g.layer("base-debian", 75*mib), g.layer("runtime-python", 250*mib), g.layer("deps-1", 20*mib), app}
		case 2:
			layers = []testimage.Layer{g.layer("base-debian", 75*mib), g.layer("runtime-python", 250*mib), g.layer("deps-2", 20*mib), app}
		case 3:
			layers = []testimage.Layer{g.layer("base-debian", 75*mib), g.layer("runtime-python", 250*mib), app}
		case 4, 5:
			layers = []testimage.Layer{g.layer("base-debian", 75*mib), g.layer("runtime-node", 112*mib), app}
		case 6, 7:
			// A statically linked service on a small base.
			layers = []testimage.Layer{g.layer("base-alpine", 8*mib), g.layer(fmt.Sprintf("app%d-bin", i), 20*mib), app}
		}
		out = append(out, imageSpec{repo: fmt.Sprintf("app%d", i), tags: []string{"latest"}, layers: layers})
	}
	return out
}

// contentLayer returns a layer of about size bytes whose file sizes follow a
// log-uniform distribution between 256 B and 512 KiB (most files small, most
// bytes in larger files, as in OS and runtime layers), with testimage's
// semi-compressible content, all deterministic by name.
func contentLayer(name string, size int64) testimage.Layer {
	seed := int64(0)
	for _, c := range name {
		seed = seed*131 + int64(c)
	}
	rng := rand.New(rand.NewSource(seed))
	var l testimage.Layer
	var total int64
	for i := 0; total < size; i++ {
		n := int64(math.Exp(math.Log(256) + rng.Float64()*(math.Log(512<<10)-math.Log(256))))
		n = min(n, size-total)
		if n <= 0 {
			n = 1
		}
		// testimage's content generator, one file at a time; its seed is ours.
		data := testimage.RandomLayer(rng.Int63(), 1, int(n)).Files[0].Data
		l.Files = append(l.Files, testimage.File{Path: fmt.Sprintf("%s/d%02d/f%05d", name, i%23, i), Data: data})
		total += n
	}
	return l
}
