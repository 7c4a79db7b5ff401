package main

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// TestLayerDiff builds a small parent tree and a child changed in every way
// the real set's layers meet (apt-get install in a copy of the parent), and
// checks the layer: the changed and added entries only, every directory
// above them, whiteouts for what the child lacks, and symlinks, hard links,
// modes and owners as on disk.
func TestLayerDiff(t *testing.T) {
	parent, child := filepath.Join(t.TempDir(), "parent"), filepath.Join(t.TempDir(), "child")
	files := map[string]string{
		"etc/keep": "a", "etc/change": "old", "etc/mode": "m", "etc/touched": "same",
		"usr/lib/deep/dir/existing": "e", "usr/bin/tool": "t",
		"gone": "g", "gonedir/a/b": "b", "dev/null": "device stand-in",
	}
	for _, root := range []string{parent, child} {
		for name, data := range files {
			write(t, filepath.Join(root, name), data, 0o644)
		}
		must(t, os.Symlink("etc/keep", filepath.Join(root, "link")))
	}

	write(t, filepath.Join(child, "etc/change"), "new", 0o644)
	must(t, os.Chmod(filepath.Join(child, "etc/mode"), 0o755))
	// The same bytes written again: only the mtime moves.
	write(t, filepath.Join(child, "etc/touched"), "same", 0o644)
	later := time.Now().Add(time.Hour)
	must(t, os.Chtimes(filepath.Join(child, "etc/touched"), later, later))
	write(t, filepath.Join(child, "usr/lib/deep/dir/added"), "new file", 0o644)
	must(t, os.Remove(filepath.Join(child, "link")))
	must(t, os.Symlink("etc/change", filepath.Join(child, "link")))
	must(t, os.Symlink("usr/bin/tool", filepath.Join(child, "newlink")))
	write(t, filepath.Join(child, "opt/h1"), "linked", 0o644)
	must(t, os.Link(filepath.Join(child, "opt/h1"), filepath.Join(child, "opt/h2")))
	write(t, filepath.Join(child, "opt/suid"), "s", 0o755)
	must(t, os.Chmod(filepath.Join(child, "opt/suid"), os.ModeSetuid|0o755))
	must(t, os.Remove(filepath.Join(child, "gone")))
	must(t, os.RemoveAll(filepath.Join(child, "gonedir")))
	write(t, filepath.Join(child, "dev/newdev"), "not image content", 0o644)
	root := os.Geteuid() == 0
	if root {
		must(t, os.Lchown(filepath.Join(child, "etc/keep"), 1000, 1000))
	}

	entries, err := diffTrees(parent, child)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.name)
	}
	want := []string{".wh.gone", ".wh.gonedir", "etc", "etc/change", "etc/keep", "etc/mode", "link", "newlink",
		"opt", "opt/h1", "opt/h2", "opt/suid", "usr", "usr/lib", "usr/lib/deep", "usr/lib/deep/dir", "usr/lib/deep/dir/added"}
	if !root {
		want = slices.DeleteFunc(want, func(s string) bool { return s == "etc/keep" })
	}
	if !slices.Equal(names, want) {
		t.Fatalf("layer entries:\n got %q\nwant %q", names, want)
	}

	var buf bytes.Buffer
	if err := writeLayer(&buf, child, entries); err != nil {
		t.Fatal(err)
	}
	got := map[string]*tar.Header{}
	content := map[string]string{}
	var order []string
	tr := tar.NewReader(&buf)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		got[hdr.Name], content[hdr.Name] = hdr, string(b)
		order = append(order, hdr.Name)
	}
	if len(order) != len(want) {
		t.Errorf("the tar has %d entries, want %d: %q", len(order), len(want), order)
	}
	for _, d := range []string{"etc/", "opt/", "usr/", "usr/lib/", "usr/lib/deep/", "usr/lib/deep/dir/"} {
		if h := got[d]; h == nil || h.Typeflag != tar.TypeDir || h.Mode != 0o755 {
			t.Errorf("%s: %+v, want a directory entry with mode 0755", d, h)
		}
	}
	check := func(name string, typ byte, mode int64, body, link string) {
		t.Helper()
		h := got[name]
		if h == nil {
			t.Errorf("%s: not in the tar", name)
			return
		}
		if h.Typeflag != typ || h.Mode != mode || content[name] != body || h.Linkname != link {
			t.Errorf("%s: type %c mode %o content %q link %q; want %c %o %q %q", name, h.Typeflag, h.Mode, content[name], h.Linkname, typ, mode, body, link)
		}
	}
	check("etc/change", tar.TypeReg, 0o644, "new", "")
	check("etc/mode", tar.TypeReg, 0o755, "m", "")
	check("usr/lib/deep/dir/added", tar.TypeReg, 0o644, "new file", "")
	check("link", tar.TypeSymlink, 0o777, "", "etc/change")
	check("newlink", tar.TypeSymlink, 0o777, "", "usr/bin/tool")
	check("opt/h1", tar.TypeReg, 0o644, "linked", "")
	check("opt/h2", tar.TypeLink, 0o644, "", "opt/h1")
	check("opt/suid", tar.TypeReg, 0o4755, "s", "")
	check(".wh.gone", tar.TypeReg, 0o644, "", "")
	check(".wh.gonedir", tar.TypeReg, 0o644, "", "")
	if root {
		if h := got["etc/keep"]; h == nil || h.Uid != 1000 || h.Gid != 1000 {
			t.Errorf("etc/keep: %+v, want owner 1000:1000", h)
		}
	}

	// The base layer: every file of the tree, device contents left out.
	base, err := diffTrees("", parent)
	if err != nil {
		t.Fatal(err)
	}
	names = nil
	for _, e := range base {
		names = append(names, e.name)
	}
	want = []string{"dev", "etc", "etc/change", "etc/keep", "etc/mode", "etc/touched", "gone", "gonedir", "gonedir/a", "gonedir/a/b",
		"link", "usr", "usr/bin", "usr/bin/tool", "usr/lib", "usr/lib/deep", "usr/lib/deep/dir", "usr/lib/deep/dir/existing"}
	if !slices.Equal(names, want) {
		t.Errorf("base layer entries:\n got %q\nwant %q", names, want)
	}
}

func write(t *testing.T, path, data string, mode os.FileMode) {
	t.Helper()
	must(t, os.MkdirAll(filepath.Dir(path), 0o755))
	must(t, os.WriteFile(path, []byte(data), mode))
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
