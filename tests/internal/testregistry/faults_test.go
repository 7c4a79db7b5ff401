package testregistry

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
)

// fetch GETs a blob with a fresh connection and returns the status, the
// body bytes that arrived and the error that ended the body, if any.
func fetch(t *testing.T, ctx context.Context, url string, header map[string]string) (int, http.Header, []byte, error) {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	for k, v := range header {
		req.Header.Set(k, v)
	}
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, body, err
}

func TestFaultKinds(t *testing.T) {
	r := StartT(t, Options{})
	data := randomBytes(256 << 10)
	d := putBlob(t, r, "lib/faulty", data)
	url := r.URL + "/v2/lib/faulty/blobs/" + d.String()

	for _, kind := range []Fault{Fault503, Fault429, FaultReset, FaultTruncate} {
		t.Run(string(kind), func(t *testing.T) {
			f := &Faults{Seed: 1, Rates: map[Fault]float64{kind: 1}}
			r.InjectFaults(f)
			defer r.InjectFaults(nil)
			r.ResetCounters()
			status, h, body, err := fetch(t, context.Background(), url, nil)
			switch kind {
			case Fault503:
				if status != http.StatusServiceUnavailable {
					t.Fatalf("status %d, want 503", status)
				}
			case Fault429:
				if status != http.StatusTooManyRequests || h.Get("Retry-After") != "1" || !strings.Contains(string(body), "TOOMANYREQUESTS") {
					t.Fatalf("status %d, Retry-After %q, body %q; want 429, 1, TOOMANYREQUESTS", status, h.Get("Retry-After"), body)
				}
			case FaultReset, FaultTruncate:
				if status != http.StatusOK {
					t.Fatalf("status %d, want 200 before the cut", status)
				}
				// A reset discards what the client had not read yet, so it may
				// get less than was sent.
				if len(body) > len(data)/2 || kind == FaultTruncate && len(body) != len(data)/2 || !bytes.Equal(body, data[:len(body)]) {
					t.Errorf("got %d bytes before the cut, want the first %d", len(body), len(data)/2)
				}
				want := io.ErrUnexpectedEOF
				if kind == FaultReset {
					if !errors.Is(err, syscall.ECONNRESET) {
						t.Errorf("body ended with %v, want a connection reset", err)
					}
				} else if !errors.Is(err, want) {
					t.Errorf("body ended with %v, want %v", err, want)
				}
				// The registry takes back what it counted for the cut write
				// only after the connection is gone: let it settle.
				deadline := time.Now().Add(5 * time.Second)
				for r.BlobBytes(d) != int64(len(data)/2) && time.Now().Before(deadline) {
					time.Sleep(5 * time.Millisecond)
				}
				if got := r.BlobBytes(d); got != int64(len(data)/2) {
					t.Errorf("registry counted %d bytes served, want the %d sent before the cut", got, len(data)/2)
				}
			}
			if got := f.Count(kind); got != 1 {
				t.Errorf("%d %s faults recorded, want 1", got, kind)
			}
			// Bounded: the second GET of the blob goes through.
			status, _, body, err = fetch(t, context.Background(), url, nil)
			if err != nil || status != http.StatusOK || !bytes.Equal(body, data) {
				t.Errorf("second GET: status %d, %d bytes, %v; want the whole blob", status, len(body), err)
			}
		})
	}
}

func TestFaultStallEndsWhenClientGivesUp(t *testing.T) {
	r := StartT(t, Options{})
	data := randomBytes(128 << 10)
	d := putBlob(t, r, "lib/stall", data)
	f := &Faults{Stall: map[digest.Digest]bool{d: true}, StallMax: time.Minute}
	r.InjectFaults(f)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, _, body, err := fetch(t, ctx, r.URL+"/v2/lib/stall/blobs/"+d.String(), nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("the stalled body ended with %v, want the client's deadline", err)
	}
	if len(body) != len(data)/2 {
		t.Errorf("got %d bytes before the stall, want %d", len(body), len(data)/2)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		in := f.Injections()
		if len(in) == 1 && in[0].ClientGaveUp {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the registry did not see the client give up: %+v", in)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestFaultCorruptFlipsOneByte(t *testing.T) {
	r := StartT(t, Options{})
	data := randomBytes(100 << 10)
	d := putBlob(t, r, "lib/corrupt", data)
	r.InjectFaults(&Faults{Corrupt: map[digest.Digest]bool{d: true}})
	url := r.URL + "/v2/lib/corrupt/blobs/" + d.String()
	for rep := 0; rep < 2; rep++ { // every response, not just the first
		status, _, body, err := fetch(t, context.Background(), url, nil)
		if err != nil || status != http.StatusOK || len(body) != len(data) {
			t.Fatalf("GET: status %d, %d bytes, %v", status, len(body), err)
		}
		if diff := differingBytes(body, data, 0); fmt.Sprint(diff) != fmt.Sprint([]int{len(data) / 2}) {
			t.Errorf("bytes differing at %v, want only %d", diff, len(data)/2)
		}
	}
	// A range over the middle carries the same bad byte; one elsewhere is clean.
	for _, rg := range [][2]int{{len(data)/2 - 10, len(data)/2 + 10}, {0, 99}} {
		status, _, body, err := fetch(t, context.Background(), url, map[string]string{"Range": fmt.Sprintf("bytes=%d-%d", rg[0], rg[1])})
		if err != nil || status != http.StatusPartialContent {
			t.Fatalf("range %v: status %d, %v", rg, status, err)
		}
		diff := differingBytes(body, data[rg[0]:rg[1]+1], rg[0])
		inside := rg[0] <= len(data)/2 && len(data)/2 <= rg[1]
		if inside && fmt.Sprint(diff) != fmt.Sprint([]int{len(data) / 2}) || !inside && len(diff) != 0 {
			t.Errorf("range %v: bytes differing at %v", rg, diff)
		}
	}
}

func differingBytes(got, want []byte, base int) []int {
	var at []int
	for i := range min(len(got), len(want)) {
		if got[i] != want[i] {
			at = append(at, base+i)
		}
	}
	return at
}

// The same seed fails the same GETs whatever the order of requests; the
// rates hold roughly; no blob gets more than MaxPerBlob faults.
func TestFaultsSeededAndBounded(t *testing.T) {
	rates := map[Fault]float64{FaultReset: 0.1, Fault503: 0.1, Fault429: 0.1, FaultTruncate: 0.1}
	var blobs []digest.Digest
	for i := range 500 {
		blobs = append(blobs, digest.FromString(fmt.Sprint(i)))
	}
	decisions := func(f *Faults, order []digest.Digest) map[string]Fault {
		out := map[string]Fault{}
		for round := 1; round <= 3; round++ {
			for _, d := range order {
				kind, n := f.decide(d)
				out[fmt.Sprint(d, n)] = kind
			}
		}
		return out
	}
	reversed := make([]digest.Digest, len(blobs))
	for i, d := range blobs {
		reversed[len(blobs)-1-i] = d
	}
	a := decisions(&Faults{Seed: 7, Rates: rates, MaxPerBlob: 2}, blobs)
	b := decisions(&Faults{Seed: 7, Rates: rates, MaxPerBlob: 2}, reversed)
	if fmt.Sprint(a) != fmt.Sprint(b) {
		t.Error("the same seed gave different faults when the requests came in another order")
	}
	c := decisions(&Faults{Seed: 8, Rates: rates, MaxPerBlob: 2}, blobs)
	if fmt.Sprint(a) == fmt.Sprint(c) {
		t.Error("two seeds gave the same faults")
	}

	f := &Faults{Seed: 7, Rates: rates, MaxPerBlob: 1}
	first := map[Fault]int{}
	for _, d := range blobs {
		kind, _ := f.decide(d)
		first[kind]++
	}
	for kind := range rates {
		// 10% of 500 first GETs: 50 expected; 25..80 is far outside chance.
		if first[kind] < 25 || first[kind] > 80 {
			t.Errorf("%s on %d of 500 first GETs, want about 50", kind, first[kind])
		}
	}
	for round := 0; round < 5; round++ {
		for _, d := range blobs {
			f.decide(d)
		}
	}
	per := map[digest.Digest]int{}
	for _, in := range f.Injections() {
		per[in.Blob]++
		if per[in.Blob] > 1 {
			t.Fatalf("blob %s faulted %d times, MaxPerBlob is 1", in.Blob, per[in.Blob])
		}
	}
}
