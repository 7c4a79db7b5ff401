package tests

import (
	"context"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"go.podman.io/image/v5/copy"
	"go.podman.io/image/v5/docker"
	"go.podman.io/image/v5/signature"
	"go.podman.io/image/v5/transports"
	"go.podman.io/image/v5/types"

	"github.com/herd-project/herd/pull"
	"github.com/herd-project/herd/tests/internal/testimage"
	"github.com/herd-project/herd/tests/internal/testregistry"
)

// copyOut copies a pushed image from the test registry to dest, a
// reference through any transport (an OCI layout, an archive, a dir), as
// skopeo copy would: the test's own layouts and archives.
func copyOut(t *testing.T, from testimage.Pushed, dest string) {
	t.Helper()
	src, err := docker.ParseReference("//" + from.Ref)
	if err != nil {
		t.Fatal(err)
	}
	name, within, _ := strings.Cut(dest, ":")
	transport := transports.Get(name) // registered by herd's pull package, which imports it
	if transport == nil {
		t.Fatalf("no transport %q", name)
	}
	dst, err := transport.ParseReference(within)
	if err != nil {
		t.Fatal(err)
	}
	policy, err := signature.NewPolicyContext(&signature.Policy{Default: []signature.PolicyRequirement{signature.NewPRInsecureAcceptAnything()}})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = policy.Destroy() }()
	sys := &types.SystemContext{DockerInsecureSkipTLSVerify: types.OptionalBoolTrue, BigFilesTemporaryDir: t.TempDir()}
	if _, err := copy.Image(context.Background(), policy, dst, src, &copy.Options{SourceCtx: sys, DestinationCtx: sys}); err != nil {
		t.Fatalf("copying %s to %s: %v", from.Ref, dest, err)
	}
}

// Issue 13, item 2: sources through containers/image's transports, mixed
// with registry references in one run, each named in the store as podman
// names it, and deduplicated against each other where they share layers.
func TestPullFromTransports(t *testing.T) {
	e := newEnv(t, testregistry.Options{})
	image := func(seed int64) testimage.Image {
		return testimage.Image{Layers: []testimage.Layer{baseLayer, ownLayer(seed)}}
	}
	dir := t.TempDir()
	fromRegistry := e.push("reg:1", image(1), "gzip")
	sources := []struct {
		input  string
		pushed testimage.Pushed
		name   string // what the store calls it; "" for none (by ID only)
	}{
		{"oci:" + filepath.Join(dir, "layout") + ":b", e.push("b:1", image(2), "gzip"), "localhost/b:latest"},
		{"oci-archive:" + filepath.Join(dir, "c.tar") + ":team/c:v2", e.push("c:1", image(3), "gzip"), "localhost/team/c:v2"},
		{"docker-archive:" + filepath.Join(dir, "d.tar") + ":quay.io/team/d:v3", e.push("d:1", image(4), "gzip"), "quay.io/team/d:v3"},
		{"dir:" + filepath.Join(dir, "e"), e.push("e:1", image(5), "gzip"), ""},
	}
	inputs := []string{fromRegistry.Ref, "docker://" + fromRegistry.Ref}
	for _, s := range sources {
		copyOut(t, s.pushed, s.input)
		inputs = append(inputs, s.input)
	}

	e.reg.ResetCounters()
	summary, r := e.summary(inputs...)
	if r.code != 0 {
		t.Fatalf("herd pull exited %d\n%s", r.code, r.stderr)
	}
	if len(summary.Images) != 1+len(sources) {
		t.Fatalf("%d images in the summary, want %d (the registry image by two inputs, and one per source)", len(summary.Images), 1+len(sources))
	}
	if got := summary.Images[0].Inputs; !slices.Equal(got, inputs[:2]) {
		t.Errorf("the registry image and its docker:// reference were not pulled as one: inputs %q", got)
	}
	e.verifyImage(fromRegistry)
	for i, s := range sources {
		got := summary.Images[i+1]
		if got.Error != "" {
			t.Errorf("%s: %s", s.input, got.Error)
			continue
		}
		if s.name == "" {
			if len(got.Names) != 0 {
				t.Errorf("%s: named %q in the store; podman gives a dir: image no name", s.input, got.Names)
			}
			s.pushed.Ref = got.ImageID // verified by ID
			e.verifyImage(s.pushed)
			continue
		}
		if !slices.Contains(got.Names, s.name) {
			t.Errorf("%s: named %q in the store, want %s", s.input, got.Names, s.name)
		}
		s.pushed.Ref = s.name
		e.verifyImage(s.pushed)
	}

	// The layers the sources share with each other and with the registry
	// image are obtained once: the registry served nothing the local
	// sources had, and each compressed base blob was fetched by one image
	// at most. (A docker archive holds its layers uncompressed, under other
	// digests; the store still reuses them, by DiffID.)
	base := fromRegistry.Layers[0].Digest
	if n := e.reg.BlobGets(base); n > 1 {
		t.Errorf("the registry served the shared base blob %d times, want at most 1", n)
	}
	fetched := 0
	for _, img := range summary.Images {
		for _, l := range img.Layers {
			if l.Digest == base && (l.How == pull.Fetched || l.How == pull.Partial) {
				fetched++
			}
		}
	}
	if fetched != 1 {
		t.Errorf("the shared base blob %s was fetched by %d images, want 1\n%s", base, fetched, r.stderr)
	}

	// A transport reference that names nothing is a usage error.
	bad := "oci:" + dir + ":Not A Name"
	if r := e.herd(bad); r.code != 2 || !strings.Contains(r.stderr, bad) {
		t.Errorf("herd pull %s exited %d, want 2 with a usage error naming it\n%s", bad, r.code, r.stderr)
	}
}
