package main

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// The real set's layers are what `apt-get install` changed in a root
// filesystem: the files a child tree adds or changes against its parent
// tree, tarred as an image layer. Changed means a different type, content
// (compared byte for byte), link target, mode, owner or device; a file
// apt-get rewrote with the same bytes, whose mtime alone moved, is not in
// the layer, as it would not be in a layer that only differs by it.

// diffEntry is one entry of a layer: a path of the child tree (slash
// separated, relative), or a whiteout for a path the child lacks.
type diffEntry struct {
	name     string
	whiteout bool
}

// skipBelow are directories whose contents are not image content: the
// kernel's and the runtime's (debootstrap makes device nodes in dev/, which
// a rootless store could not create). The directories themselves stay.
var skipBelow = []string{"dev", "proc", "sys"}

// diffTrees lists what child adds or changes against parent ("" for none:
// every file of child), parents first: every directory above a listed
// entry is listed too, with child's metadata, as zstd:chunked needs
// (FACTS.md), whether or not it changed. A path parent has and child lacks
// is a whiteout (one for a whole deleted directory).
func diffTrees(parent, child string) ([]diffEntry, error) {
	listed := map[string]bool{}
	var out []diffEntry
	add := func(e diffEntry) {
		// The directories above e first (they sort before it anyway).
		for d := path.Dir(e.name); d != "." && !listed[d]; d = path.Dir(d) {
			listed[d] = true
			out = append(out, diffEntry{name: d})
		}
		if !listed[e.name] {
			listed[e.name] = true
			out = append(out, e)
		}
	}
	err := walkTree(child, func(rel, name string, d fs.DirEntry) error {
		changed, err := differs(parent, child, rel)
		if err != nil {
			return err
		}
		if changed {
			add(diffEntry{name: name})
		}
		return nil
	})
	if err != nil || parent == "" {
		sortEntries(out)
		return out, err
	}
	err = walkTree(parent, func(rel, name string, d fs.DirEntry) error {
		if _, err := os.Lstat(filepath.Join(child, rel)); errors.Is(err, fs.ErrNotExist) {
			add(diffEntry{name: path.Join(path.Dir(name), ".wh."+path.Base(name)), whiteout: true})
			if d.IsDir() {
				return fs.SkipDir // one whiteout hides everything below
			}
		} else if err != nil {
			return err
		}
		return nil
	})
	sortEntries(out)
	return out, err
}

// walkTree calls fn for every path below root (rel to root, and name, the
// same with slashes), but not for what skipBelow's directories hold.
func walkTree(root string, fn func(rel, name string, d fs.DirEntry) error) error {
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil || rel == "." {
			return err
		}
		name := filepath.ToSlash(rel)
		if slices.Contains(skipBelow, path.Dir(name)) {
			if d.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		return fn(rel, name, d)
	})
}

// sortEntries puts entries in the order a walk would list them, component
// by component, so that each directory comes before what it holds.
func sortEntries(es []diffEntry) {
	slices.SortFunc(es, func(a, b diffEntry) int {
		return slices.Compare(strings.Split(a.name, "/"), strings.Split(b.name, "/"))
	})
}

// differs reports whether child's rel is new or changed against parent's.
func differs(parent, child, rel string) (bool, error) {
	c, err := os.Lstat(filepath.Join(child, rel))
	if err != nil {
		return false, err
	}
	if parent == "" {
		return true, nil
	}
	p, err := os.Lstat(filepath.Join(parent, rel))
	if errors.Is(err, fs.ErrNotExist) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	cs, ps := c.Sys().(*syscall.Stat_t), p.Sys().(*syscall.Stat_t)
	if c.Mode() != p.Mode() || cs.Uid != ps.Uid || cs.Gid != ps.Gid {
		return true, nil
	}
	switch {
	case c.Mode().IsRegular():
		if c.Size() != p.Size() {
			return true, nil
		}
		same, err := sameContent(filepath.Join(parent, rel), filepath.Join(child, rel))
		return !same, err
	case c.Mode()&fs.ModeSymlink != 0:
		ct, err := os.Readlink(filepath.Join(child, rel))
		if err != nil {
			return false, err
		}
		pt, err := os.Readlink(filepath.Join(parent, rel))
		return ct != pt, err
	case c.Mode()&fs.ModeDevice != 0:
		return cs.Rdev != ps.Rdev, nil
	}
	return false, nil // a directory, fifo or socket with the same mode and owner
}

func sameContent(a, b string) (bool, error) {
	fa, err := os.Open(a)
	if err != nil {
		return false, err
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		return false, err
	}
	defer fb.Close()
	ba, bb := make([]byte, 256<<10), make([]byte, 256<<10)
	for {
		na, errA := io.ReadFull(fa, ba)
		nb, errB := io.ReadFull(fb, bb)
		if !bytes.Equal(ba[:na], bb[:nb]) {
			return false, nil
		}
		if errA == io.EOF || errA == io.ErrUnexpectedEOF {
			return errB == io.EOF || errB == io.ErrUnexpectedEOF, nil
		}
		if errA != nil {
			return false, errA
		}
		if errB != nil {
			return false, errB
		}
	}
}

// writeLayer writes entries of the tree at root as a layer tar: modes
// (with setuid, setgid and sticky bits), owners and mtimes as on disk,
// symlinks as symlinks, and a file hard-linked to one written before it in
// the same layer as a hard link to that one (a link to a lower layer's file
// would be another layer's business). Extended attributes are left out.
func writeLayer(w io.Writer, root string, entries []diffEntry) error {
	tw := tar.NewWriter(w)
	type inode struct{ dev, ino uint64 }
	linked := map[inode]string{}
	for _, e := range entries {
		if e.whiteout {
			hdr := &tar.Header{Name: e.name, Typeflag: tar.TypeReg, Mode: 0o644}
			if err := tw.WriteHeader(hdr); err != nil {
				return err
			}
			continue
		}
		p := filepath.Join(root, filepath.FromSlash(e.name))
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		hdr := &tar.Header{Name: e.name, Mode: tarMode(fi.Mode()), Uid: int(st.Uid), Gid: int(st.Gid),
			ModTime: fi.ModTime().Truncate(1e9)}
		m := fi.Mode()
		switch {
		case m.IsDir():
			hdr.Typeflag, hdr.Name = tar.TypeDir, e.name+"/"
		case m.IsRegular():
			hdr.Typeflag, hdr.Size = tar.TypeReg, fi.Size()
			if st.Nlink > 1 {
				key := inode{uint64(st.Dev), st.Ino}
				if first, ok := linked[key]; ok {
					hdr.Typeflag, hdr.Linkname, hdr.Size = tar.TypeLink, first, 0
				} else {
					linked[key] = e.name
				}
			}
		case m&fs.ModeSymlink != 0:
			if hdr.Linkname, err = os.Readlink(p); err != nil {
				return err
			}
			hdr.Typeflag = tar.TypeSymlink
		case m&fs.ModeDevice != 0:
			hdr.Typeflag = tar.TypeBlock
			if m&fs.ModeCharDevice != 0 {
				hdr.Typeflag = tar.TypeChar
			}
			hdr.Devmajor, hdr.Devminor = int64(unix.Major(st.Rdev)), int64(unix.Minor(st.Rdev))
		case m&fs.ModeNamedPipe != 0:
			hdr.Typeflag = tar.TypeFifo
		default:
			continue // a socket: nothing a layer can hold
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("%s: %w", e.name, err)
		}
		if hdr.Typeflag == tar.TypeReg {
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			_, err = io.Copy(tw, f)
			f.Close()
			if err != nil {
				return fmt.Errorf("%s: %w", e.name, err)
			}
		}
	}
	return tw.Close()
}

// tarMode is a tar header's mode: permission bits plus setuid, setgid and
// sticky, which fs.FileMode keeps elsewhere.
func tarMode(m fs.FileMode) int64 {
	mode := int64(m.Perm())
	if m&fs.ModeSetuid != 0 {
		mode |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		mode |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		mode |= 0o1000
	}
	return mode
}
