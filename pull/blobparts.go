package pull

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"

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
// it is served from that copy.
type blobParts struct {
	ctx     context.Context
	src     types.ImageSource
	blob    types.BlobInfo
	toc     []byte          // read already, or nil; served once
	fetched func(bytes int) // what the registry sent
}

func (p *blobParts) GetBlobAt(chunks []chunked.ImageSourceChunk) (chan io.ReadCloser, chan error, error) {
	var first io.ReadCloser // the TOC, from herd's copy
	if toc := p.toc; toc != nil && len(chunks) > 0 {
		p.toc = nil
		if offset, length, _, err := tocPosition(p.blob); err == nil && chunks[0].Offset == offset && chunks[0].Length == length && uint64(len(toc)) == length {
			first, chunks = io.NopCloser(bytes.NewReader(toc)), chunks[1:]
		}
	}
	var fromStreams chan io.ReadCloser
	var fromErrs chan error
	if len(chunks) > 0 {
		var err error
		if fromStreams, fromErrs, err = getBlobAt(p.ctx, p.src, p.blob, chunks); err != nil {
			return nil, nil, err
		}
	}
	// One goroutine hands both on, in their order, and closes them once
	// every stream is handed over: pkg/chunked takes a closed error channel
	// for an answer that ended short.
	streams, errs := make(chan io.ReadCloser), make(chan error)
	go func() {
		defer close(streams)
		defer close(errs)
		if first != nil {
			// The registry sent these bytes once, before the pulls started:
			// the summary counts them here, with the layer.
			streams <- &countedStream{ReadCloser: first, fetched: p.fetched}
		}
		for fromStreams != nil || fromErrs != nil {
			select {
			case r, ok := <-fromStreams:
				if !ok {
					fromStreams = nil
					continue
				}
				streams <- &countedStream{ReadCloser: r, fetched: p.fetched}
			case err, ok := <-fromErrs:
				if !ok {
					fromErrs = nil
					continue
				}
				errs <- err
			}
		}
	}()
	return streams, errs, nil
}

// countedStream counts what a stream of the registry's answer delivers.
type countedStream struct {
	io.ReadCloser
	fetched func(bytes int)
}

func (s *countedStream) Read(p []byte) (int, error) {
	n, err := s.ReadCloser.Read(p)
	if n > 0 {
		s.fetched(n)
	}
	return n, err
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
	// Both channels are closed once the chunks are served; an error may come
	// before, between or after the streams, so read both until then.
	var data []byte
	var firstErr error
	for streams != nil || errs != nil {
		select {
		case r, ok := <-streams:
			if !ok {
				streams = nil
				continue
			}
			b, err := io.ReadAll(io.LimitReader(r, int64(length)+1))
			r.Close()
			if err == nil && uint64(len(b)) != length {
				err = fmt.Errorf("got %d bytes, want %d", len(b), length)
			}
			if firstErr == nil {
				data, firstErr = b, err
			}
		case err, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			if firstErr == nil {
				firstErr = err
			}
		}
	}
	if firstErr == nil && data == nil {
		firstErr = errors.New("no data")
	}
	return data, firstErr
}
