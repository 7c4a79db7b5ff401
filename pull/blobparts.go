package pull

import (
	"context"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"sync"

	"github.com/sirupsen/logrus"
	"go.podman.io/image/v5/types"
	"go.podman.io/storage/pkg/chunked"
)

// Ranged reads of blobs, for herd's reads of TOCs (toc.go) and its own
// partial pulls (commit/partiallayer.go).

// blobParts serves pkg/chunked's ranged reads of one zstd:chunked blob
// (its ImageSourceSeekable) through the image's source, for herd's own
// partial pull of the layer (commit/partiallayer.go), and counts what the
// registry sends. pkg/chunked's first read asks for the TOC (and the
// tar-split after it): if herd read that TOC already to order the layers,
// it is served from that copy. Its later reads fetch a file the layer holds
// more than once only once (samefiles.go).
type blobParts struct {
	ctx     context.Context
	src     types.ImageSource
	blob    types.BlobInfo
	read    *readTOC        // the TOC herd read already, or nil; served once
	fetched func(bytes int) // what the registry sent

	// The files the blob holds twice, once known: from herd's copy of the
	// TOC, or from the TOC pkg/chunked's first read brought (tocRead).
	heldTwice []blobFile
	known     bool
	tocRead   *heldFile // nil before pkg/chunked's first read
}

func (p *blobParts) GetBlobAt(chunks []chunked.ImageSourceChunk) (chan io.ReadCloser, chan error, error) {
	plan := p.plan(chunks, p.filesHeldTwice())
	from, err := p.ask(plan.fetch)
	if _, refused := err.(chunked.ErrBadRequest); refused && plan.copies {
		// More ranges than the registry takes: ask for pkg/chunked's own,
		// which it makes fewer if they are refused too.
		plan = p.plan(chunks, nil)
		from, err = p.ask(plan.fetch)
	}
	if err != nil {
		return nil, nil, err
	}
	streams, errs := make(chan io.ReadCloser), make(chan error)
	go func() {
		defer close(streams)
		defer close(errs)
		// A stream for each range asked for, in order. They read the
		// registry's answer in turn; once every one is closed, what is left
		// of it is closed and its errors handed on. pkg/chunked takes a
		// closed error channel for an answer that ended short, so both stay
		// open until then.
		var open sync.WaitGroup
		for _, part := range plan.parts {
			open.Add(1)
			streams <- &partStream{pieces: part, at: part[0].offset, answer: from, fetched: p.fetched, done: sync.OnceFunc(open.Done)}
		}
		open.Wait()
		for _, err := range from.rest() {
			errs <- err
		}
	}()
	return streams, errs, nil
}

// plan plans pkg/chunked's read of chunks (planReads). Its first read asks
// for the TOC first: that is served from herd's copy if herd has one, or
// kept as it passes, for the files held twice.
func (p *blobParts) plan(chunks []chunked.ImageSourceChunk, heldTwice []blobFile) *readPlan {
	plan := planReads(chunks, heldTwice)
	if p.tocRead != nil || len(chunks) == 0 {
		return plan
	}
	offset, length, _, err := tocPosition(p.blob)
	if err != nil || chunks[0].Offset != offset || chunks[0].Length != length || len(plan.parts[0]) != 1 || plan.parts[0][0].copyOf != nil {
		return plan
	}
	p.tocRead = &heldFile{offset: offset, length: length}
	if read := p.read; read != nil && uint64(len(read.compressed)) == length {
		p.heldTwice, p.known = read.heldTwice, true
		plan.parts[0] = []piece{{offset: offset, length: length, copyOf: &heldFile{offset: offset, length: length, data: read.compressed, copies: 1}}}
		plan.fetch = plan.fetch[1:]
		// The registry sent these bytes once, before the pulls started: the
		// summary counts them here, with the layer.
		p.fetched(len(read.compressed))
	} else {
		plan.keep(p.tocRead)
	}
	p.read = nil
	return plan
}

// filesHeldTwice returns the files the blob holds twice, once herd knows
// them: from its copy of the TOC, or from the TOC pkg/chunked's first read
// brought, checked against the TOC digest of the layer's annotations.
// Without them, each copy is fetched.
func (p *blobParts) filesHeldTwice() []blobFile {
	if p.known || p.tocRead == nil || !p.tocRead.complete() {
		return p.heldTwice
	}
	p.known = true // whatever comes of it
	data := p.tocRead.data
	p.tocRead.data = nil
	if want := tocDigest(p.blob); want == "" || want.Algorithm().FromBytes(data) != want {
		return nil
	}
	_, _, uncompressed, _ := tocPosition(p.blob)
	entries, err := decodeTOC(data, uncompressed)
	if err != nil {
		logrus.Debugf("blob %s: not looking for files it holds twice: %v", p.blob.Digest, err)
		return nil
	}
	p.heldTwice = filesHeldTwice(entries)
	return p.heldTwice
}

// ask asks the registry for fetch (getBlobAt).
func (p *blobParts) ask(fetch []chunked.ImageSourceChunk) (*answer, error) {
	if len(fetch) == 0 {
		return &answer{}, nil
	}
	streams, errs, err := getBlobAt(p.ctx, p.src, p.blob, fetch)
	if err != nil {
		return nil, err
	}
	return &answer{streams: streams, errs: errs}, nil
}

// answer is the registry's answer to a ranged read (getBlobAt): a stream
// for each range, in order, each read and closed before the next comes, and
// errors beside them.
type answer struct {
	mu      sync.Mutex
	streams chan io.ReadCloser
	errs    chan error
	err     error // the first
}

// next waits for the answer's next stream. An error, or an answer that
// ends before it, ends the read.
func (a *answer) next() (io.ReadCloser, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for a.streams != nil {
		select {
		case r, ok := <-a.streams:
			if ok {
				return r, nil
			}
			a.streams = nil
		case err, ok := <-a.errs:
			if !ok {
				a.errs = nil
			} else if a.err == nil {
				a.err = err
			}
		}
	}
	if a.err == nil {
		a.err = errors.New("the registry's answer ended before every range asked for")
	}
	return nil, a.err
}

// rest closes the streams of the answer no one read, and returns the
// errors that came with them.
func (a *answer) rest() []error {
	a.mu.Lock()
	defer a.mu.Unlock()
	var errs []error
	for a.streams != nil || a.errs != nil {
		select {
		case r, ok := <-a.streams:
			if !ok {
				a.streams = nil
				continue
			}
			r.Close()
		case err, ok := <-a.errs:
			if !ok {
				a.errs = nil
				continue
			}
			errs = append(errs, err)
		}
	}
	return errs
}

// partStream serves one range pkg/chunked asked for, piece by piece: a
// fetched piece from the registry's next stream, which it counts, keeping
// the held files that pass; a copy from the file held.
type partStream struct {
	pieces  []piece
	at      uint64 // in the blob: the next byte of pieces[0]
	cur     io.ReadCloser
	answer  *answer
	fetched func(bytes int)
	done    func()
}

func (s *partStream) Read(b []byte) (int, error) {
	for len(s.pieces) > 0 {
		pc := &s.pieces[0]
		end := pc.offset + pc.length
		if s.at == end {
			if s.cur != nil {
				s.cur.Close() // the answer's next stream comes only then
				s.cur = nil
			}
			if s.pieces = s.pieces[1:]; len(s.pieces) > 0 {
				s.at = s.pieces[0].offset
			}
			continue
		}
		b = b[:min(uint64(len(b)), end-s.at)]
		if h := pc.copyOf; h != nil {
			if !h.complete() {
				return 0, fmt.Errorf("the first copy of the %d bytes at offset %d of the blob, which herd holds for their copies, was not read whole", h.length, h.offset)
			}
			n := copy(b, h.data[s.at-pc.offset:])
			if s.at += uint64(n); s.at == end {
				if h.copies--; h.copies == 0 {
					h.data = nil
				}
			}
			return n, nil
		}
		if s.cur == nil {
			r, err := s.answer.next()
			if err != nil {
				return 0, err
			}
			s.cur = r
		}
		n, err := s.cur.Read(b)
		for _, h := range pc.hold {
			h.keep(s.at, b[:n])
		}
		s.at += uint64(n)
		if n > 0 {
			s.fetched(n)
		}
		if err == io.EOF {
			if s.at < end {
				return n, io.ErrUnexpectedEOF
			}
			err = nil
		}
		return n, err
	}
	return 0, io.EOF
}

func (s *partStream) Close() error {
	if s.cur != nil {
		s.cur.Close()
		s.cur = nil
	}
	s.pieces = nil
	s.done()
	return nil
}

// getBlobAt reads chunks of blob through src's GetBlobAt, the ranged read
// containers/image's registry source offers for partial pulls, with
// pkg/chunked's ImageSourceSeekable contract: one stream per chunk, in
// order, errors beside them, both channels closed at the end. Its argument
// type lives in containers/image's internal/private package, which herd
// cannot import, so the method is found and called by reflection; sources
// without it fail. A request the registry refuses (no ranges) comes back
// as pkg/chunked's ErrBadRequest, as containers/image's own adapter turns
// it, so that pkg/chunked falls back.
func getBlobAt(ctx context.Context, src types.ImageSource, blob types.BlobInfo, chunks []chunked.ImageSourceChunk) (chan io.ReadCloser, chan error, error) {
	m := reflect.ValueOf(src).MethodByName("GetBlobAt")
	if !m.IsValid() {
		return nil, nil, errors.New("the image source cannot read part of a blob")
	}
	mt := m.Type()
	if mt.NumIn() != 3 || mt.NumOut() != 3 || mt.In(2).Kind() != reflect.Slice || mt.In(2).Elem().Kind() != reflect.Struct ||
		mt.Out(0) != reflect.TypeFor[chan io.ReadCloser]() || mt.Out(1) != reflect.TypeFor[chan error]() {
		return nil, nil, fmt.Errorf("the image source's GetBlobAt is %s, not what herd knows", mt)
	}
	args := reflect.MakeSlice(mt.In(2), len(chunks), len(chunks))
	for i, c := range chunks {
		offset, length := args.Index(i).FieldByName("Offset"), args.Index(i).FieldByName("Length")
		if offset.Kind() != reflect.Uint64 || length.Kind() != reflect.Uint64 {
			return nil, nil, fmt.Errorf("the image source's GetBlobAt takes %s, not what herd knows", mt.In(2))
		}
		offset.SetUint(c.Offset)
		length.SetUint(c.Length)
	}
	out := m.Call([]reflect.Value{reflect.ValueOf(ctx), reflect.ValueOf(blob), args})
	if err, _ := out[2].Interface().(error); err != nil {
		if t := reflect.TypeOf(err); t.Name() == "BadPartialRequestError" && strings.HasSuffix(t.PkgPath(), "/internal/private") {
			return nil, nil, chunked.ErrBadRequest{}
		}
		return nil, nil, err
	}
	return out[0].Interface().(chan io.ReadCloser), out[1].Interface().(chan error), nil
}

// getBlobRange reads length bytes at offset in blob through src (getBlobAt).
func getBlobRange(ctx context.Context, src types.ImageSource, blob types.BlobInfo, offset, length uint64) ([]byte, error) {
	streams, errs, err := getBlobAt(ctx, src, blob, []chunked.ImageSourceChunk{{Offset: offset, Length: length}})
	if err != nil {
		return nil, err
	}
	from := &answer{streams: streams, errs: errs}
	r, err := from.next()
	var data []byte
	if err == nil {
		data, err = io.ReadAll(io.LimitReader(r, int64(length)+1))
		r.Close()
		if err == nil && uint64(len(data)) != length {
			err = fmt.Errorf("got %d bytes, want %d", len(data), length)
		}
	}
	// An error may come after the stream too.
	if rest := from.rest(); err == nil && len(rest) > 0 {
		err = rest[0]
	}
	return data, err
}
