package pull

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"go.podman.io/storage/pkg/chunked"
)

// The same file twice in one layer, fetched once.
//
// A layer often holds a file more than once: the same copyright text under
// several packages, a program installed at two paths. pkg/chunked looks
// for a file it is missing in the store's other layers, never in the layer
// it is pulling, so it asks the registry for every copy. herd's own partial
// pulls (blobParts) ask for each such file once and serve the other copies
// from the bytes the first one brought (readPlan). Copies have the same
// digest and the same chunks (zstd frames) at the same places in their
// span, which is what blobFile.same compares, so the first copy's frames
// decompress to what each copy's would; and pkg/chunked checks each file's
// digest as it writes it, whatever the bytes came from.

// minSameFileSize is the smallest copy herd serves from memory: a copy in
// the middle of a requested range splits it in two, one more part in the
// registry's answer with about a hundred bytes of part headers.
const minSameFileSize = 4 << 10

// maxHeldFiles bounds the bytes of first copies one partial pull holds until
// their copies are served.
const maxHeldFiles = 16 << 20

// blobFile is where a regular file's frames are in a zstd:chunked blob.
type blobFile struct {
	offset, length uint64
	// same is equal for copies of the same file: its digest, and the place
	// and digest of each of its chunks (each chunk is a zstd frame).
	same string
}

// filesHeldTwice lists by offset the regular files of a TOC's entries
// that the blob holds more than once, each copy minSameFileSize or more;
// or nothing, if the entries' frames overlap (a TOC herd does not
// understand).
func filesHeldTwice(entries []tocEntry) []blobFile {
	var files []blobFile
	var same strings.Builder
	inFile := false // the entry before was a file's, or one of its chunks
	endFile := func() {
		if inFile {
			files[len(files)-1].same = same.String()
		}
		inFile = false
	}
	for _, e := range entries {
		switch {
		case e.Type == "reg" && e.Size > 0 && e.Digest != "" && e.EndOffset > e.Offset && e.Offset >= 0:
			endFile()
			same.Reset()
			fmt.Fprintf(&same, "%s %d %s", e.Digest, e.EndOffset-e.Offset, e.ChunkDigest)
			files = append(files, blobFile{offset: uint64(e.Offset), length: uint64(e.EndOffset - e.Offset)})
			inFile = true
		case e.Type == "chunk" && inFile:
			fmt.Fprintf(&same, " %d %s", uint64(e.Offset)-files[len(files)-1].offset, e.ChunkDigest)
		default:
			endFile()
		}
	}
	endFile()
	slices.SortFunc(files, func(a, b blobFile) int { return cmp.Compare(a.offset, b.offset) })
	copies := map[string]int{}
	for i, f := range files {
		if i > 0 && f.offset < files[i-1].offset+files[i-1].length {
			return nil
		}
		copies[f.same]++
	}
	return slices.DeleteFunc(files, func(f blobFile) bool { return copies[f.same] < 2 || f.length < minSameFileSize })
}

// readPlan says how herd serves one ranged read of pkg/chunked's (the
// ranges it asked for, in order): from the ranges herd asks the registry
// for (fetch), read in order, and from files it holds.
type readPlan struct {
	fetch  []chunked.ImageSourceChunk
	parts  [][]piece // one for each range asked for, tiling it
	copies bool      // of files: fetch is not the ranges asked for
}

// piece is part of an asked-for range: the next range of the registry's
// answer, or a copy of a file herd holds.
type piece struct {
	offset, length uint64      // in the blob
	copyOf         *heldFile   // or nil: fetched
	hold           []*heldFile // fetched: files to keep as they pass
}

// heldFile keeps the bytes of a region of the blob (a file's first copy, a
// TOC) as they pass, for its copies to come.
type heldFile struct {
	offset, length uint64
	data           []byte
	copies         int // still to serve; the bytes are dropped after the last
}

// keep takes what of b, read at offset at of the blob, is the held region.
// Reads come in order; if one was missed the region stays incomplete and
// its copies fail.
func (h *heldFile) keep(at uint64, b []byte) {
	start, end := max(at, h.offset), min(at+uint64(len(b)), h.offset+h.length)
	if start >= end || start != h.offset+uint64(len(h.data)) {
		return
	}
	if h.data == nil {
		h.data = make([]byte, 0, h.length)
	}
	h.data = append(h.data, b[start-at:end-at]...)
}

func (h *heldFile) complete() bool { return uint64(len(h.data)) == h.length }

// planReads plans pkg/chunked's read of chunks: each of files (held twice)
// that lies whole in an asked-for range more than once is fetched once, its
// first time, and copied for the others. With no such file the plan asks
// the registry for chunks as they are.
func planReads(chunks []chunked.ImageSourceChunk, files []blobFile) *readPlan {
	copies, held := sameFiles(chunks, files)
	plan := &readPlan{parts: make([][]piece, len(chunks))}
	fetch := func(i int, from, to uint64) {
		plan.fetch = append(plan.fetch, chunked.ImageSourceChunk{Offset: from, Length: to - from})
		plan.parts[i] = append(plan.parts[i], piece{offset: from, length: to - from})
	}
	for i, c := range chunks {
		at, end := c.Offset, c.Offset+c.Length
		for _, cp := range copies[i] {
			if cp.offset > at {
				fetch(i, at, cp.offset)
			}
			plan.parts[i] = append(plan.parts[i], piece{offset: cp.offset, length: cp.length, copyOf: cp.held})
			plan.copies = true
			at = cp.offset + cp.length
		}
		if at < end || len(plan.parts[i]) == 0 {
			fetch(i, at, end)
		}
	}
	for _, h := range held {
		plan.keep(h)
	}
	return plan
}

// keep has the fetched piece that holds h's region keep its bytes, if one
// does.
func (plan *readPlan) keep(h *heldFile) {
	for _, part := range plan.parts {
		for i := range part {
			pc := &part[i]
			if pc.copyOf == nil && pc.offset <= h.offset && h.offset+h.length <= pc.offset+pc.length {
				pc.hold = append(pc.hold, h)
				return
			}
		}
	}
}

// copyOfFile is a copy of a held file in an asked-for range.
type copyOfFile struct {
	offset, length uint64
	held           *heldFile
}

// sameFiles finds, for each of chunks, the copies in it of files it or an
// earlier range holds too, by offset, and returns them with the first copy
// of each, which is held. pkg/chunked asks for ranges in the blob's order;
// if they are not, or overlap, nothing is copied.
func sameFiles(chunks []chunked.ImageSourceChunk, files []blobFile) (copies [][]*copyOfFile, firsts []*heldFile) {
	copies = make([][]*copyOfFile, len(chunks))
	for i := 1; i < len(chunks); i++ {
		if chunks[i].Offset < chunks[i-1].Offset+chunks[i-1].Length {
			return copies, nil
		}
	}
	type fileIn struct {
		file  blobFile
		chunk int
	}
	var inside []fileIn // files whole in an asked-for range, worth copying
	count := map[string]int{}
	f := 0
	for i, c := range chunks {
		end := c.Offset + c.Length
		for f < len(files) && files[f].offset < c.Offset {
			f++
		}
		for ; f < len(files) && files[f].offset < end; f++ {
			if file := files[f]; file.offset+file.length <= end {
				inside = append(inside, fileIn{file, i})
				count[file.same]++
			}
		}
	}
	held := map[string]*heldFile{}
	var heldBytes uint64
	for _, in := range inside {
		if count[in.file.same] < 2 {
			continue
		}
		h := held[in.file.same]
		if h == nil {
			if heldBytes+in.file.length > maxHeldFiles {
				count[in.file.same] = 0 // its copies are fetched
				continue
			}
			heldBytes += in.file.length
			h = &heldFile{offset: in.file.offset, length: in.file.length}
			held[in.file.same] = h
			firsts = append(firsts, h)
			continue
		}
		h.copies++
		copies[in.chunk] = append(copies[in.chunk], &copyOfFile{in.file.offset, in.file.length, h})
	}
	return copies, firsts
}
