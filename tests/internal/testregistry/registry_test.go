package testregistry

import (
	"bytes"
	"fmt"
	"io"
	"math/rand"
	"mime"
	"mime/multipart"
	"net/http"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
)

// putBlob uploads data to repo with the two-step (POST, PUT) monolithic
// upload of the distribution API.
func putBlob(t *testing.T, r *Registry, repo string, data []byte) digest.Digest {
	t.Helper()
	d, err := r.PutBlob(repo, data)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.New(rand.NewSource(int64(n))).Read(b)
	return b
}

func get(t *testing.T, method, url string, header map[string]string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

func TestBlobCounting(t *testing.T) {
	r := StartT(t, Options{})
	data := randomBytes(300 << 10)
	d := putBlob(t, r, "lib/counted", data)
	blobURL := r.URL + "/v2/lib/counted/blobs/" + d.String()

	resp, body := get(t, http.MethodHead, blobURL, nil)
	if resp.StatusCode != http.StatusOK || len(body) != 0 {
		t.Fatalf("HEAD: %s, %d body bytes", resp.Status, len(body))
	}
	if got := r.BlobBytes(d); got != 0 {
		t.Fatalf("HEAD counted %d bytes", got)
	}

	resp, body = get(t, http.MethodGet, blobURL, nil)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(body, data) {
		t.Fatalf("GET: %s, %d bytes", resp.Status, len(body))
	}
	if got := r.BlobBytes(d); got != int64(len(data)) {
		t.Fatalf("BlobBytes after GET = %d, want %d", got, len(data))
	}

	// Two ranges: a multipart/byteranges 206; count what went on the wire.
	r.ResetCounters()
	resp, body = get(t, http.MethodGet, blobURL, map[string]string{"Range": "bytes=0-99,200000-200999"})
	if resp.StatusCode != http.StatusPartialContent {
		t.Fatalf("2-range GET: %s", resp.Status)
	}
	mt, params, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/byteranges" {
		t.Fatalf("2-range GET content type %q (%v)", resp.Header.Get("Content-Type"), err)
	}
	mr := multipart.NewReader(bytes.NewReader(body), params["boundary"])
	var parts [][]byte
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(p)
		parts = append(parts, b)
	}
	if len(parts) != 2 || !bytes.Equal(parts[0], data[:100]) || !bytes.Equal(parts[1], data[200000:201000]) {
		t.Fatalf("2-range GET: got %d parts with wrong content", len(parts))
	}
	if got := r.BlobBytes(d); got != int64(len(body)) {
		t.Fatalf("BlobBytes after 2-range GET = %d, want %d (body length)", got, len(body))
	}
	if got := r.BlobGets(d); got != 1 {
		t.Fatalf("BlobGets = %d, want 1", got)
	}

	// Errors (unknown blob) are requests but not blob bytes.
	missing := digest.FromString("missing")
	resp, _ = get(t, http.MethodGet, r.URL+"/v2/lib/counted/blobs/"+missing.String(), nil)
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("GET missing blob: %s", resp.Status)
	}
	if r.BlobGets(missing) != 1 || r.BlobBytes(missing) != 0 {
		t.Fatalf("missing blob: %d gets, %d bytes; want 1, 0", r.BlobGets(missing), r.BlobBytes(missing))
	}
	if got, want := r.TotalBlobBytes(), int64(len(body)); got != want {
		t.Fatalf("TotalBlobBytes = %d, want %d", got, want)
	}
	if s := r.Served(); len(s) != 1 || s[d] != int64(len(body)) {
		t.Fatalf("Served() = %v", s)
	}
}

func TestBlobHook(t *testing.T) {
	r := StartT(t, Options{})
	data := randomBytes(50 << 10)
	d := putBlob(t, r, "hooked", data)
	blobURL := r.URL + "/v2/hooked/blobs/" + d.String()

	failures := 1
	r.SetBlobHook(func(w http.ResponseWriter, req *http.Request, got digest.Digest) bool {
		if got != d || failures == 0 {
			return false
		}
		failures--
		http.Error(w, "injected", http.StatusServiceUnavailable)
		return true
	})
	if resp, _ := get(t, http.MethodGet, blobURL, nil); resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("first GET: %s, want injected 503", resp.Status)
	}
	if resp, body := get(t, http.MethodGet, blobURL, nil); resp.StatusCode != http.StatusOK || !bytes.Equal(body, data) {
		t.Fatalf("second GET: %s", resp.Status)
	}
	if r.BlobGets(d) != 2 || r.BlobBytes(d) != int64(len(data)) {
		t.Fatalf("%d gets, %d bytes; want 2, %d", r.BlobGets(d), r.BlobBytes(d), len(data))
	}
	r.SetBlobHook(nil)
}

func TestBandwidthLimit(t *testing.T) {
	const size, limit = 2 << 20, 4 << 20
	r := StartT(t, Options{BandwidthLimit: limit})
	data := randomBytes(size)
	d := putBlob(t, r, "slow", data)

	// Two concurrent halves share the bucket: together they still need
	// size/limit seconds.
	start := time.Now()
	errs := make(chan error, 2)
	for _, rng := range []string{"bytes=0-1048575", "bytes=1048576-2097151"} {
		go func() {
			req, _ := http.NewRequest(http.MethodGet, r.URL+"/v2/slow/blobs/"+d.String(), nil)
			req.Header.Set("Range", rng)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				errs <- err
				return
			}
			defer resp.Body.Close()
			n, err := io.Copy(io.Discard, resp.Body)
			if err == nil && n != 1<<20 {
				err = fmt.Errorf("range %s: got %d bytes", rng, n)
			}
			errs <- err
		}()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	elapsed := time.Since(start)
	t.Logf("fetched %d bytes at %d B/s in %v", size, limit, elapsed)
	if elapsed < 400*time.Millisecond {
		t.Fatalf("fetch took %v, want >= ~%v", elapsed, time.Duration(float64(size)/limit*float64(time.Second)))
	}
	if r.TotalBlobBytes() != size {
		t.Fatalf("TotalBlobBytes = %d, want %d", r.TotalBlobBytes(), size)
	}
}
