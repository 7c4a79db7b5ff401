package testregistry

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	digest "github.com/opencontainers/go-digest"
)

// Fault is a kind of failure Faults injects into a blob GET.
type Fault string

const (
	// FaultReset sends the headers and half the body, then resets the
	// connection (TCP RST): the client reads ECONNRESET.
	FaultReset Fault = "reset"
	// Fault503 answers 503 Service Unavailable before any body.
	Fault503 Fault = "503"
	// Fault429 answers 429 Too Many Requests with a Retry-After header and
	// the registry's TOOMANYREQUESTS error body.
	Fault429 Fault = "429"
	// FaultTruncate sends the headers and half the body, then closes the
	// connection cleanly: the client reads fewer bytes than Content-Length.
	FaultTruncate Fault = "truncate"
	// FaultStall sends the headers and half the body, then sends nothing
	// until the client gives up (or Faults.StallMax passes), then closes.
	FaultStall Fault = "stall"
)

// Faults injects failures into a registry's blob GETs (install it with
// Registry.InjectFaults). Which request fails is decided by hashing Seed,
// the blob digest and the request's number among that blob's GETs, not by
// arrival order: the same seed fails the same requests however concurrent
// clients interleave. Injection is bounded: at most MaxPerBlob faults per
// blob, so a client that retries always gets through in the end.
//
// Set the fields before installing it; they must not change afterwards.
type Faults struct {
	Seed int64
	// Rates is the probability, per blob GET, of each fault. They add up to
	// at most 1.
	Rates map[Fault]float64
	// MaxPerBlob bounds the faults injected into the GETs of one blob
	// (rate-driven and Stall ones together); 0 means 1.
	MaxPerBlob int
	// Stall stalls the first GET of each of these blobs, whatever Rates say.
	Stall map[digest.Digest]bool
	// Corrupt flips one byte in the middle of these blobs in every response
	// that carries it (whole-blob and single-range responses), as a bad cache
	// or disk would: not bounded, and the headers are left as they were.
	Corrupt map[digest.Digest]bool
	// RetryAfter is Fault429's Retry-After, in whole seconds (0 means 1).
	RetryAfter int
	// StallMax bounds a stall, so that a client that never gives up does not
	// hang the test forever; 0 means 2 minutes.
	StallMax time.Duration

	mu         sync.Mutex
	gets       map[digest.Digest]int
	faulted    map[digest.Digest]int
	injections []Injection
}

// Injection is one fault that was injected.
type Injection struct {
	Blob  digest.Digest
	Fault Fault
	N     int // which GET of the blob (1 = the first)
	// ClientGaveUp is set for a stall that ended because the client closed
	// the request, not because StallMax passed.
	ClientGaveUp bool
	Stalled      time.Duration // how long a stall lasted
}

// InjectFaults installs f as the registry's blob hook (nil removes it).
func (r *Registry) InjectFaults(f *Faults) {
	if f == nil {
		r.SetBlobHook(nil)
		return
	}
	r.SetBlobHook(f.hook)
}

// Injections returns every fault injected so far, in order.
func (f *Faults) Injections() []Injection {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Injection(nil), f.injections...)
}

// Count returns how many faults of kind were injected.
func (f *Faults) Count(kind Fault) int {
	n := 0
	for _, in := range f.Injections() {
		if in.Fault == kind {
			n++
		}
	}
	return n
}

// decide returns the fault for this GET of d ("" for none) and its number.
func (f *Faults) decide(d digest.Digest) (Fault, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.gets == nil {
		f.gets, f.faulted = map[digest.Digest]int{}, map[digest.Digest]int{}
	}
	f.gets[d]++
	n := f.gets[d]
	limit := f.MaxPerBlob
	if limit <= 0 {
		limit = 1
	}
	if f.faulted[d] >= limit {
		return "", n
	}
	kind := f.pick(d, n)
	if f.Stall[d] && n == 1 {
		kind = FaultStall
	}
	if kind != "" {
		f.faulted[d]++
		f.injections = append(f.injections, Injection{Blob: d, Fault: kind, N: n})
	}
	return kind, n
}

// pick draws the fault for the n-th GET of d from Rates, deterministically.
func (f *Faults) pick(d digest.Digest, n int) Fault {
	h := fnv.New64a()
	var buf [16]byte
	binary.LittleEndian.PutUint64(buf[:8], uint64(f.Seed))
	binary.LittleEndian.PutUint64(buf[8:], uint64(n))
	h.Write(buf[:])
	h.Write([]byte(d))
	x := float64(h.Sum64()>>11) / (1 << 53) // uniform in [0, 1)
	// A fixed order, so that the same seed gives the same faults.
	for _, kind := range []Fault{FaultReset, Fault503, Fault429, FaultTruncate, FaultStall} {
		if x < f.Rates[kind] {
			return kind
		}
		x -= f.Rates[kind]
	}
	return ""
}

// hook is the BlobHook. Refusals (503, 429) it writes itself. For body
// faults and corruption it lets the registry serve the blob, through a
// writer it slips under the registry's counting writer: the bytes that go
// out before a cut are counted as served, those after it are not.
func (f *Faults) hook(w http.ResponseWriter, req *http.Request, d digest.Digest) bool {
	kind, n := f.decide(d)
	switch kind {
	case Fault503:
		http.Error(w, "service unavailable (injected fault)", http.StatusServiceUnavailable)
		return true
	case Fault429:
		after := f.RetryAfter
		if after <= 0 {
			after = 1
		}
		w.Header().Set("Retry-After", strconv.Itoa(after))
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusTooManyRequests)
		fmt.Fprint(w, `{"errors":[{"code":"TOOMANYREQUESTS","message":"too many requests (injected fault)"}]}`)
		return true
	case "":
		if !f.Corrupt[d] {
			return false
		}
	}
	cw, ok := w.(*countingWriter)
	if !ok {
		panic("testregistry: blob hook called without the counting writer")
	}
	cut := &cutWriter{ResponseWriter: cw.ResponseWriter, corrupt: f.Corrupt[d]}
	if kind != "" {
		cut.act = func(conn net.Conn) { f.act(kind, d, n, conn) }
	}
	cw.ResponseWriter = cut
	return false
}

// act carries out a body fault on the hijacked connection.
func (f *Faults) act(kind Fault, d digest.Digest, n int, conn net.Conn) {
	switch kind {
	case FaultReset:
		if tcp, ok := conn.(*net.TCPConn); ok {
			_ = tcp.SetLinger(0) // Close sends RST
		}
	case FaultStall:
		start := time.Now()
		stallMax := f.StallMax
		if stallMax <= 0 {
			stallMax = 2 * time.Minute
		}
		gaveUp := waitClientGone(conn, stallMax)
		f.mu.Lock()
		for i := range f.injections {
			if in := &f.injections[i]; in.Blob == d && in.N == n {
				in.ClientGaveUp, in.Stalled = gaveUp, time.Since(start)
			}
		}
		f.mu.Unlock()
	}
	_ = conn.Close()
}

// waitClientGone blocks until the client closes conn (a read returns an
// error) or max passes, and reports whether the client went.
func waitClientGone(conn net.Conn, max time.Duration) bool {
	_ = conn.SetReadDeadline(time.Now().Add(max))
	buf := make([]byte, 1)
	for {
		if _, err := conn.Read(buf); err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				return false
			}
			return true
		}
	}
}

// cutWriter passes the response through until half the body (by its
// Content-Length) is written, then hijacks the connection and calls act.
type cutWriter struct {
	http.ResponseWriter
	act       func(net.Conn) // nil: no cut (corruption only)
	corrupt   bool
	status    int
	cut       int64 // body bytes to let through; -1 until the headers are known
	written   int64
	offset    int64 // offset in the blob of the first body byte (single-range responses)
	corruptAt int64 // offset in the blob of the byte to flip; -1 for none
	done      bool
}

func (w *cutWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
		w.cut, w.corruptAt = -1, -1
		if code == http.StatusOK || code == http.StatusPartialContent {
			if n, err := strconv.ParseInt(w.Header().Get("Content-Length"), 10, 64); err == nil {
				w.cut = n / 2
			}
			w.offset, w.corruptAt = bodyOffset(w.Header(), code)
		}
	}
	w.ResponseWriter.WriteHeader(code)
}

// bodyOffset returns where in the blob a response body starts, and the
// blob offset of the byte to corrupt (the middle of the blob), or -1s for
// responses whose layout it does not follow (multipart ranges).
func bodyOffset(h http.Header, code int) (int64, int64) {
	if code == http.StatusOK {
		n, err := strconv.ParseInt(h.Get("Content-Length"), 10, 64)
		if err != nil {
			return 0, -1
		}
		return 0, n / 2
	}
	var first, last, size int64
	if _, err := fmt.Sscanf(h.Get("Content-Range"), "bytes %d-%d/%d", &first, &last, &size); err != nil {
		return 0, -1
	}
	return first, size / 2
}

func (w *cutWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if w.done {
		return 0, http.ErrHijacked
	}
	if w.corrupt && w.corruptAt >= 0 {
		pos := w.corruptAt - (w.offset + w.written)
		if pos >= 0 && pos < int64(len(p)) {
			q := append([]byte(nil), p...)
			q[pos] ^= 0xff
			p = q
		}
	}
	if w.act == nil || w.cut < 0 || w.written+int64(len(p)) <= w.cut {
		n, err := w.ResponseWriter.Write(p)
		w.written += int64(n)
		return n, err
	}
	keep := w.cut - w.written
	n, err := w.ResponseWriter.Write(p[:keep])
	w.written += int64(n)
	if err != nil {
		return n, err
	}
	w.finish()
	return n, http.ErrHijacked
}

// finish flushes what was let through, takes the connection over and acts.
func (w *cutWriter) finish() {
	w.done = true
	rc := http.NewResponseController(w.ResponseWriter)
	_ = rc.Flush()
	conn, brw, err := rc.Hijack()
	if err != nil {
		return
	}
	if brw != nil && brw.Writer != nil {
		_ = brw.Writer.Flush()
	}
	w.act(conn)
}

// Flush passes through.
func (w *cutWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok && !w.done {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the registry's writer.
func (w *cutWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
