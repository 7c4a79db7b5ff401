package commit

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"

	"go.podman.io/storage"
	"go.podman.io/storage/pkg/archive"
)

// Layers are checked here because containers/storage contains some
// hostile tars instead of rejecting them. It unpacks a layer in a chroot of
// the layer's directory, so an entry named "../x" lands inside the layer as
// "x", and a file written through an absolute symlink lands under the
// layer too: nothing escapes the store, but the layer's recorded tar
// headers (tar-split) no longer match its files, so containers/storage's
// own check reports it broken and the image cannot be saved or pushed
// again. A hard link to a file outside the layer it does reject, with
// "unpacking failed (... no such file or directory)". The check turns all
// three into a refusal that says which entry and why, before the layer is
// committed. It reads the tar on another goroutine, in step with
// containers/storage, from the one decompression they share
// (decompressOnce); layers from partial (zstd:chunked) pulls are built by
// pkg/chunked from their TOC and are not checked here.

// decompressOnce returns the layer's tar decompressed, for the check and
// containers/storage to share one decompression, with the options that make
// containers/storage record the layer as if it had decompressed it itself
// (containers/image has already decompressed it once, to compute its
// DiffID while it wrote the blob: two decompressions per layer instead of
// three). containers/storage takes the compressed digest and size and the
// DiffID from the options, and decompresses nothing it is given
// uncompressed; it then records the layer's compression as "none", as for a
// layer podman loads from a docker archive, which is what it uses when it
// hands the layer's diff out without being told a compression.
//
// This holds only when containers/image gives the blob as its file (whose
// size is the compressed size) and the digests: otherwise diff goes on as it
// is, and is decompressed twice here.
func decompressOnce(diff io.Reader, options *storage.LayerOptions) (io.Reader, *storage.LayerOptions, func()) {
	noop := func() {}
	file, ok := diff.(*os.File)
	if !ok || options == nil || options.OriginalDigest == "" || options.UncompressedDigest == "" {
		return diff, options, noop
	}
	info, err := file.Stat()
	if err != nil || !info.Mode().IsRegular() {
		return diff, options, noop
	}
	if options.OriginalSize != nil && *options.OriginalSize != info.Size() {
		return diff, options, noop // not the blob's file as expected: leave it to containers/storage
	}
	tarStream, err := archive.DecompressStream(file)
	if err != nil {
		// Not a stream it can read: containers/storage reports that, from
		// the blob's start.
		_, _ = file.Seek(0, io.SeekStart)
		return diff, options, noop
	}
	opts := *options
	size := info.Size()
	opts.OriginalSize = &size
	return tarStream, &opts, func() { _ = tarStream.Close() }
}

// unsafeEntry is a tar entry herd refuses.
type unsafeEntry struct {
	name, reason string
}

func (e *unsafeEntry) Error() string {
	return fmt.Sprintf("refusing the layer: tar entry %q %s", e.name, e.reason)
}

// layerCheck passes a layer's blob through to containers/storage while a
// goroutine reads the tar headers in it. When the check finds an unsafe
// entry, the next Read returns that error, so containers/storage abandons
// the layer; the end of the blob is held back until the check is done, so
// that an unsafe entry near the end is not missed: containers/storage
// reads a layer to its end before it commits it.
type layerCheck struct {
	src  io.Reader
	pw   *io.PipeWriter
	done chan struct{}
	err  error // the unsafe entry, if any; set before done is closed
}

func newLayerCheck(blob io.Reader) *layerCheck {
	pr, pw := io.Pipe()
	c := &layerCheck{src: blob, pw: pw, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		err := checkTar(pr)
		var unsafe *unsafeEntry
		if errors.As(err, &unsafe) {
			c.err = unsafe
			_ = pr.CloseWithError(unsafe)
			return
		}
		// Anything else (a corrupt stream) is containers/storage's to report.
		_, _ = io.Copy(io.Discard, pr)
	}()
	return c
}

func (c *layerCheck) Read(p []byte) (int, error) {
	n, err := c.src.Read(p)
	if n > 0 {
		if _, werr := c.pw.Write(p[:n]); werr != nil {
			<-c.done
			return n, c.err
		}
	}
	if err != nil {
		_ = c.pw.CloseWithError(err)
		<-c.done
		if c.err != nil {
			return n, c.err
		}
	}
	return n, err
}

// result ends the check and returns the unsafe entry found, if any.
func (c *layerCheck) result() error {
	_ = c.pw.CloseWithError(io.ErrUnexpectedEOF) // in case containers/storage stopped reading early
	<-c.done
	return c.err
}

// checkTar reads the (possibly compressed) tar in r and returns an
// *unsafeEntry for the first entry that leaves the layer: a name with a
// ".." component, a write through a symlink the layer itself made, or a
// hard link to something that is not earlier in the layer.
func checkTar(r io.Reader) error {
	tarStream, err := archive.DecompressStream(r)
	if err != nil {
		return err
	}
	defer tarStream.Close()
	tr := tar.NewReader(tarStream)
	symlinks := map[string]string{} // path in the layer → link target
	seen := map[string]bool{}       // non-directory entries so far
	for {
		h, err := tr.Next()
		if err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
		name, ok := layerPath(h.Name)
		if !ok {
			return &unsafeEntry{h.Name, `has a ".." path component, which would leave the layer`}
		}
		if link, target := throughSymlink(name, symlinks); link != "" {
			return &unsafeEntry{h.Name, fmt.Sprintf("is written through symlink %q (to %q) made earlier in the layer", link, target)}
		}
		switch h.Typeflag {
		case tar.TypeLink:
			target, ok := layerPath(h.Linkname)
			switch {
			case !ok:
				return &unsafeEntry{h.Name, fmt.Sprintf(`is a hard link to %q, whose ".." path component leaves the layer`, h.Linkname)}
			case !seen[target]:
				// Also covers a target through a symlink: writing there was refused.
				return &unsafeEntry{h.Name, fmt.Sprintf("is a hard link to %q, which is not in the layer", h.Linkname)}
			}
		case tar.TypeSymlink:
			symlinks[name] = h.Linkname
		}
		if h.Typeflag != tar.TypeSymlink {
			delete(symlinks, name) // replaced by a real entry
		}
		if h.Typeflag != tar.TypeDir {
			seen[name] = true
		}
	}
}

// layerPath is an entry's path relative to the layer's root ("/a/b" and
// "./a/b" are "a/b", as containers/storage reads them), and false if any
// component is "..".
func layerPath(name string) (string, bool) {
	for _, part := range strings.Split(name, "/") {
		if part == ".." {
			return "", false
		}
	}
	return strings.TrimPrefix(path.Clean("/"+name), "/"), true
}

// throughSymlink returns the symlink among name's parent directories, if
// any, and its target.
func throughSymlink(name string, symlinks map[string]string) (string, string) {
	for dir := path.Dir(name); dir != "." && dir != "/"; dir = path.Dir(dir) {
		if target, ok := symlinks[dir]; ok {
			return dir, target
		}
	}
	return "", ""
}
