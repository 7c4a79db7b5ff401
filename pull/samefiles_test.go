package pull

import (
	"fmt"
	"testing"

	"go.podman.io/storage/pkg/chunked"
)

func TestFilesHeldTwice(t *testing.T) {
	const k = 1 << 10
	entries := []tocEntry{
		{Type: "dir"},
		{Type: "reg", Size: 100 * k, Digest: "sha256:aa", Offset: 10 * k, EndOffset: 30 * k, ChunkDigest: "sha256:c1"},
		{Type: "chunk", Offset: 20 * k, ChunkDigest: "sha256:c2"},
		{Type: "symlink"},
		{Type: "chunk", Offset: 25 * k, ChunkDigest: "sha256:c9"}, // not after a file: ignored
		{Type: "reg", Size: 100 * k, Digest: "sha256:aa", Offset: 40 * k, EndOffset: 60 * k, ChunkDigest: "sha256:c1"},
		{Type: "chunk", Offset: 50 * k, ChunkDigest: "sha256:c2"},
		{Type: "reg", Size: 100 * k, Digest: "sha256:aa", Offset: 60 * k, EndOffset: 80 * k, ChunkDigest: "sha256:c1"},
		{Type: "chunk", Offset: 71 * k, ChunkDigest: "sha256:c2"}, // the same chunks, placed otherwise
		{Type: "reg", Size: 9 * k, Digest: "sha256:bb", Offset: 80 * k, EndOffset: 83 * k, ChunkDigest: "sha256:bb"},
		{Type: "reg", Size: 9 * k, Digest: "sha256:bb", Offset: 83 * k, EndOffset: 86 * k, ChunkDigest: "sha256:bb"}, // too small to be worth it
		{Type: "reg", Size: 0, Digest: "sha256:e3", Offset: 0, EndOffset: 0},
	}
	got := fmt.Sprint(filesHeldTwice(entries))
	want := fmt.Sprint([]blobFile{
		{10 * k, 20 * k, "sha256:aa 20480 sha256:c1 10240 sha256:c2"},
		{40 * k, 20 * k, "sha256:aa 20480 sha256:c1 10240 sha256:c2"},
	})
	if got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}

	overlapping := append(entries[:6:6], tocEntry{Type: "reg", Size: 1, Digest: "sha256:dd", Offset: 59 * k, EndOffset: 61 * k})
	if files := filesHeldTwice(overlapping); files != nil {
		t.Errorf("overlapping frames: got %+v, want nothing", files)
	}
}

// describe describes a plan as text: the ranges fetched, and each asked-for
// range's pieces (f: fetched, c: copied, with what they hold).
func describe(plan *readPlan) string {
	s := fmt.Sprint("fetch", plan.fetch)
	for i, part := range plan.parts {
		s += fmt.Sprintf(" | %d:", i)
		for _, pc := range part {
			if pc.copyOf != nil {
				s += fmt.Sprintf(" c%d+%d<%d", pc.offset, pc.length, pc.copyOf.offset)
				continue
			}
			s += fmt.Sprintf(" f%d+%d", pc.offset, pc.length)
			for _, h := range pc.hold {
				s += fmt.Sprintf(" h%d", h.offset)
			}
		}
	}
	return s
}

func TestPlanReads(t *testing.T) {
	const k = 1 << 10
	file := func(offset, length uint64, same string) blobFile { return blobFile{offset * k, length * k, same} }
	files := []blobFile{
		file(0, 8, "a"),
		file(8, 8, "a"),
		file(16, 8, "b"),
		file(30, 8, "a"),
		file(50, 8, "b"),
		file(60, 8, "c"), // only once in what is asked for
		file(70, 8, "c"),
	}
	chunk := func(offset, length uint64) chunked.ImageSourceChunk {
		return chunked.ImageSourceChunk{Offset: offset * k, Length: length * k}
	}
	for _, tc := range []struct {
		name   string
		chunks []chunked.ImageSourceChunk
		files  []blobFile
		want   string
	}{{
		name:   "one range",
		chunks: []chunked.ImageSourceChunk{chunk(0, 60)},
		files:  files,
		want:   "fetch[{0 8192} {16384 14336} {38912 12288} {59392 2048}] | 0: f0+8192 h0 c8192+8192<0 f16384+14336 h16384 c30720+8192<0 f38912+12288 c51200+8192<16384 f59392+2048",
	}, {
		name:   "copies in later ranges; a file across two ranges is not copied",
		chunks: []chunked.ImageSourceChunk{chunk(0, 8), chunk(16, 8), chunk(30, 10), chunk(50, 8), chunk(60, 14), chunk(74, 4)},
		files:  files,
		want:   "fetch[{0 8192} {16384 8192} {38912 2048} {61440 14336} {75776 4096}] | 0: f0+8192 h0 | 1: f16384+8192 h16384 | 2: c30720+8192<0 f38912+2048 | 3: c51200+8192<16384 | 4: f61440+14336 | 5: f75776+4096",
	}, {
		name:   "ranges out of order",
		chunks: []chunked.ImageSourceChunk{chunk(30, 8), chunk(0, 8)},
		files:  files,
		want:   "fetch[{30720 8192} {0 8192}] | 0: f30720+8192 | 1: f0+8192",
	}, {
		name:   "no files known",
		chunks: []chunked.ImageSourceChunk{chunk(0, 60)},
		want:   "fetch[{0 61440}] | 0: f0+61440",
	}, {
		name:   "first copies beyond what herd holds",
		chunks: []chunked.ImageSourceChunk{chunk(0, 1<<20)},
		files:  []blobFile{file(0, 20<<10, "big"), file(20<<10, 20<<10, "big"), file(40<<10, 8, "a"), file(40<<10+8, 8, "a")},
		want:   "fetch[{0 41951232} {41959424 1031782400}] | 0: f0+41951232 h41943040 c41951232+8192<41943040 f41959424+1031782400",
	}} {
		t.Run(tc.name, func(t *testing.T) {
			if got := describe(planReads(tc.chunks, tc.files)); got != tc.want {
				t.Errorf("got  %s\nwant %s", got, tc.want)
			}
		})
	}
}
