package pull

import (
	"bytes"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/klauspost/compress/zstd"
	digest "github.com/opencontainers/go-digest"
)

// A TOC as zstd:chunked writes it: one zstd stream, in blocks, whose frame
// declares a window larger than the TOC when it is large.
func TestDecodeTOC(t *testing.T) {
	var toc struct {
		Entries []tocEntry `json:"entries"`
	}
	for i := range 20000 {
		toc.Entries = append(toc.Entries, tocEntry{Type: "reg", Size: 5000, Digest: digest.FromString(fmt.Sprint(i)), Offset: int64(i) * 4000, EndOffset: int64(i+1) * 4000})
	}
	raw, err := json.Marshal(toc)
	if err != nil {
		t.Fatal(err)
	}
	var compressed bytes.Buffer
	w, err := zstd.NewWriter(&compressed)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(raw); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	entries, err := decodeTOC(compressed.Bytes(), uint64(len(raw)))
	if err != nil {
		t.Fatalf("decoding a TOC of %d bytes (%d compressed): %v", len(raw), compressed.Len(), err)
	}
	if fmt.Sprint(entries) != fmt.Sprint(toc.Entries) {
		t.Errorf("decoded %d entries, not the %d encoded", len(entries), len(toc.Entries))
	}
	if _, err := decodeTOC(compressed.Bytes(), uint64(len(raw))-1); err == nil {
		t.Errorf("a TOC longer than the annotations say was decoded")
	}
}
