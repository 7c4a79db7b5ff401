package commit

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"strings"
	"testing"
)

type entry struct {
	name, link string
	typ        byte
}

func tarball(t *testing.T, gz bool, entries ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	var w io.Writer = &buf
	var zw *gzip.Writer
	if gz {
		zw = gzip.NewWriter(&buf)
		w = zw
	}
	tw := tar.NewWriter(w)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: 0o644}
		data := []byte("content of " + e.name)
		if e.typ == tar.TypeReg {
			h.Size = int64(len(data))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if e.typ == tar.TypeReg {
			if _, err := tw.Write(data); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if zw != nil {
		if err := zw.Close(); err != nil {
			t.Fatal(err)
		}
	}
	return buf.Bytes()
}

func TestCheckTar(t *testing.T) {
	reg := func(n string) entry { return entry{name: n, typ: tar.TypeReg} }
	dir := func(n string) entry { return entry{name: n, typ: tar.TypeDir} }
	sym := func(n, to string) entry { return entry{name: n, link: to, typ: tar.TypeSymlink} }
	hard := func(n, to string) entry { return entry{name: n, link: to, typ: tar.TypeLink} }
	for _, c := range []struct {
		name    string
		entries []entry
		refuse  string // "" for a layer that must pass
	}{
		{"ordinary", []entry{dir("usr/"), dir("usr/bin/"), reg("usr/bin/a"), hard("usr/bin/b", "usr/bin/a"),
			sym("bin", "usr/bin"), sym("etc/alt", "/usr/bin/a"), reg("usr/.wh.gone"), reg("./etc/x"), reg("/abs/y")}, ""},
		{"symlink replaced by a directory", []entry{sym("a", "/b"), dir("a/"), reg("a/x")}, ""},
		{"hard link to a ./ name", []entry{reg("./a"), hard("b", "a")}, ""},
		{"dot-dot", []entry{reg("../x")}, `"../x" has a ".." path component`},
		{"dot-dot inside", []entry{reg("a/../../x")}, `".." path component`},
		{"write through absolute symlink", []entry{sym("s", "/etc"), reg("s/passwd")}, `"s/passwd" is written through symlink "s" (to "/etc")`},
		{"write through relative symlink deeper", []entry{sym("a/s", "../../.."), reg("a/s/b/c")}, `through symlink "a/s"`},
		{"hard link outside", []entry{hard("h", "/etc/shadow")}, `hard link to "/etc/shadow", which is not in the layer`},
		{"hard link up", []entry{reg("a"), hard("h", "../a")}, `".." path component leaves the layer`},
		{"hard link to a later entry", []entry{hard("h", "a"), reg("a")}, "not in the layer"},
		{"hard link through a symlink", []entry{sym("s", "/etc"), reg("f"), hard("h", "s/f")}, "not in the layer"},
	} {
		for _, gz := range []bool{false, true} {
			err := checkTar(bytes.NewReader(tarball(t, gz, c.entries...)))
			var unsafe *unsafeEntry
			switch {
			case c.refuse == "" && err != nil:
				t.Errorf("%s (gzip %v): refused: %v", c.name, gz, err)
			case c.refuse != "" && (!errors.As(err, &unsafe) || !strings.Contains(err.Error(), c.refuse)):
				t.Errorf("%s (gzip %v): got %v, want a refusal saying %s", c.name, gz, err, c.refuse)
			}
		}
	}
}

// The check passes a safe layer through byte for byte, and fails the read
// of an unsafe one.
func TestLayerCheckReader(t *testing.T) {
	safe := tarball(t, true, entry{name: "a", typ: tar.TypeReg}, entry{name: "b", link: "a", typ: tar.TypeLink})
	c := newLayerCheck(bytes.NewReader(safe))
	got, err := io.ReadAll(c)
	if err != nil || !bytes.Equal(got, safe) || c.result() != nil {
		t.Errorf("safe layer: read %d of %d bytes, err %v, result %v", len(got), len(safe), err, c.result())
	}

	unsafe := tarball(t, true, entry{name: "a", typ: tar.TypeReg}, entry{name: "../b", typ: tar.TypeReg})
	c = newLayerCheck(bytes.NewReader(unsafe))
	_, err = io.ReadAll(c)
	var u *unsafeEntry
	if !errors.As(err, &u) || !errors.As(c.result(), &u) {
		t.Errorf("unsafe layer: read error %v, result %v; want the unsafe entry from both", err, c.result())
	}

	// A reader that stops early still ends the check.
	c = newLayerCheck(bytes.NewReader(safe))
	_, _ = c.Read(make([]byte, 10))
	if err := c.result(); err != nil {
		t.Errorf("a check ended early reports %v", err)
	}
}
