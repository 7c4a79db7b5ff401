// Package testimage builds small deterministic container images and pushes
// them to a registry with containers/image, in gzip, zstd or zstd:chunked.
package testimage

import (
	"archive/tar"
	"bytes"
	"fmt"
	"math/rand"
	"path"
	"slices"
	"strings"
	"time"

	digest "github.com/opencontainers/go-digest"
)

// File is a regular file in a layer. Paths are relative ("usr/bin/x").
type File struct {
	Path string
	Data []byte
	Mode int64 // permission bits; 0 means 0644
}

// Layer is the content of one tar layer.
type Layer struct {
	Files []File
}

// tarTime is the fixed mtime of every entry, so equal content always yields
// an equal tar (and equal DiffID).
var tarTime = time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)

// Tar returns the layer as a deterministic tar: entries sorted by path, fixed
// mtime, uid/gid 0, and an explicit directory entry for every parent
// directory (zstd:chunked file reuse fails intermittently without them).
func (l Layer) Tar() []byte {
	files := slices.Clone(l.Files)
	slices.SortStableFunc(files, func(a, b File) int { return strings.Compare(cleanPath(a.Path), cleanPath(b.Path)) })

	dirs := map[string]bool{}
	for _, f := range files {
		for d := path.Dir(cleanPath(f.Path)); d != "."; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	type entry struct {
		name string
		file *File // nil for directories
	}
	var entries []entry
	for d := range dirs {
		entries = append(entries, entry{name: d + "/"})
	}
	for i := range files {
		entries = append(entries, entry{name: cleanPath(files[i].Path), file: &files[i]})
	}
	// Sorting by name puts each directory ("a/") before its contents ("a/x").
	slices.SortStableFunc(entries, func(a, b entry) int { return strings.Compare(a.name, b.name) })

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := &tar.Header{Name: e.name, ModTime: tarTime, Format: tar.FormatPAX}
		if e.file == nil {
			hdr.Typeflag, hdr.Mode = tar.TypeDir, 0o755
		} else {
			hdr.Typeflag, hdr.Mode, hdr.Size = tar.TypeReg, e.file.Mode, int64(len(e.file.Data))
			if hdr.Mode == 0 {
				hdr.Mode = 0o644
			}
		}
		// Writing to a bytes.Buffer cannot fail; header errors are
		// programming errors in the fixture (e.g. a bad mode).
		if err := tw.WriteHeader(hdr); err != nil {
			panic(fmt.Sprintf("testimage: tar header %q: %v", e.name, err))
		}
		if e.file != nil {
			if _, err := tw.Write(e.file.Data); err != nil {
				panic(fmt.Sprintf("testimage: tar data %q: %v", e.name, err))
			}
		}
	}
	if err := tw.Close(); err != nil {
		panic(fmt.Sprintf("testimage: closing tar: %v", err))
	}
	return buf.Bytes()
}

// DiffID is the digest of the uncompressed tar, as in the config's rootfs.
func (l Layer) DiffID() digest.Digest {
	return digest.FromBytes(l.Tar())
}

func cleanPath(p string) string {
	return strings.TrimPrefix(path.Clean("/"+p), "/")
}

// words makes generated content compress like real files (gzip 2-3x):
// repeated tokens interleaved with incompressible random bytes.
var words = strings.Fields(`the of and to in is that for it as with was on be by this are
from at or an have not which but all were when we there can been has more if will
one would each their what so up out about into than them only other its time some
could these two may first then do any like my now over such our man me even most
layer image blob chunk digest manifest config tar zstd gzip registry storage pull`)

// RandomLayer returns `files` files of fileSize bytes each, deterministic by
// seed, spread across a few directories. File paths include the seed, so
// layers with different seeds do not shadow each other in an image.
func RandomLayer(seed int64, files int, fileSize int) Layer {
	rng := rand.New(rand.NewSource(seed))
	l := Layer{Files: make([]File, files)}
	for i := range files {
		l.Files[i] = File{
			Path: fmt.Sprintf("opt/layer%d/dir%d/file%04d", seed, i%4, i),
			Data: randomContent(rng, fileSize),
		}
	}
	return l
}

// SimilarLayer returns base with `changed` of its files (chosen by seed)
// given new content of the same size: a different blob sharing most files,
// which is what zstd:chunked chunk reuse needs.
func SimilarLayer(base Layer, seed int64, changed int) Layer {
	rng := rand.New(rand.NewSource(seed))
	l := Layer{Files: slices.Clone(base.Files)}
	for _, i := range rng.Perm(len(l.Files))[:min(changed, len(l.Files))] {
		l.Files[i].Data = randomContent(rng, len(l.Files[i].Data))
	}
	return l
}

func randomContent(rng *rand.Rand, size int) []byte {
	b := make([]byte, 0, size+16)
	for len(b) < size {
		if rng.Intn(100) < 85 {
			b = append(b, words[rng.Intn(len(words))]...)
			b = append(b, ' ')
		} else {
			for range 4 {
				b = append(b, byte(rng.Intn(256)))
			}
		}
	}
	return b[:size]
}
