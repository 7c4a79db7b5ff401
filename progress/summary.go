package progress

import (
	"encoding/json"
	"io"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/herd-project/herd/commit"
	"github.com/herd-project/herd/pull"
)

// Summary is the machine-readable account of a run (herd pull --format
// json). Every field is documented in README.md ("The JSON summary"); keep
// the two in step. Byte counts are blob body bytes read from the registry,
// as the registry counts them; manifests are not counted.
type Summary struct {
	HerdVersion string         `json:"herdVersion"`
	Images      []ImageSummary `json:"images"`
	Totals      Totals         `json:"totals"`
	// Error is why herd could not pull anything at all (a usage error after
	// the flags were read, a configuration, storage or policy error).
	Error string `json:"error,omitempty"`
}

// ImageSummary is one image of the run: one distinct manifest, whichever
// and however many inputs named it.
type ImageSummary struct {
	Inputs         []string       `json:"inputs"`
	Reference      string         `json:"reference,omitempty"`
	Names          []string       `json:"names,omitempty"`
	Digest         string         `json:"digest,omitempty"`
	InstanceDigest string         `json:"instanceDigest,omitempty"`
	Platform       string         `json:"platform,omitempty"`
	ImageID        string         `json:"imageID,omitempty"`
	Layers         []LayerSummary `json:"layers"`
	Fetched        int64          `json:"fetchedBytes"`
	Reused         int64          `json:"reusedBytes"`
	Attempts       int            `json:"attempts"`
	// Present: not pulled, the store had it and --policy kept it.
	Present         bool    `json:"present,omitempty"`
	DurationSeconds float64 `json:"durationSeconds"`
	Error           string  `json:"error,omitempty"`
}

// LayerSummary is one layer of one image, bottom to top as in the manifest.
type LayerSummary struct {
	Digest digest.Digest `json:"digest"`
	Size   int64         `json:"size"`
	// How is pull.Fetched, Partial, Reused or Waited; empty (and left out of
	// the JSON) when the image failed before obtaining the layer.
	How     pull.How `json:"how,omitempty"`
	Fetched int64    `json:"fetchedBytes"`
	// WaitEnded says how the image's wait for another pull's fetch of the
	// blob ended (committed, reused, store, owner-failed, cancelled); left
	// out when it did not wait.
	WaitEnded commit.WaitEnd `json:"waitEnded,omitempty"`
	// When things happened to the layer, in seconds from the run's start,
	// each left out when it did not happen (pull.LayerTiming): queued for a
	// --jobs slot from queued to fetchStart, fetched until fetchEnd, or
	// waited for another pull's fetch from waitStart to waitEnd; in the
	// store at committed.
	Queued     float64 `json:"queued,omitempty"`
	FetchStart float64 `json:"fetchStart,omitempty"`
	FetchEnd   float64 `json:"fetchEnd,omitempty"`
	WaitStart  float64 `json:"waitStart,omitempty"`
	WaitEnd    float64 `json:"waitEnd,omitempty"`
	Committed  float64 `json:"committed,omitempty"`
}

// seconds is a layer time for the summary: to the millisecond, 0 for none.
func seconds(d time.Duration) float64 { return d.Round(time.Millisecond).Seconds() }

// Totals add up the run. The summary, Plain's last line and Terminal's
// total line all count finished images through add, so the three agree.
type Totals struct {
	Fetched     int64   `json:"fetchedBytes"`
	Reused      int64   `json:"reusedBytes"`
	WallSeconds float64 `json:"wallSeconds"`
	OK          int     `json:"ok"`
	Failed      int     `json:"failed"`
}

// add counts a finished image. A failed one counts its bytes too: they were
// fetched, or spared, all the same.
func (t *Totals) add(r *pull.Result) {
	t.Fetched += r.BytesFetched
	t.Reused += reusedBytes(r)
	if r.Failed() {
		t.Failed++
	} else {
		t.OK++
	}
}

// NewSummary builds the summary of results that took wall time.
func NewSummary(results []*pull.Result, wall time.Duration) Summary {
	s := Summary{Images: []ImageSummary{}, Totals: Totals{WallSeconds: wall.Seconds()}}
	for _, r := range results {
		img := ImageSummary{
			Inputs: r.Inputs, Reference: r.Reference, Names: r.Names,
			Digest: string(r.Digest), InstanceDigest: string(r.InstanceDigest), Platform: r.Platform,
			ImageID: r.ImageID, Layers: []LayerSummary{}, Fetched: r.BytesFetched, Reused: reusedBytes(r),
			Attempts: r.Attempts, Present: r.Present, DurationSeconds: r.Duration.Seconds(),
		}
		for _, l := range r.Layers {
			img.Layers = append(img.Layers, LayerSummary{
				Digest: l.Digest, Size: l.Size, How: l.How, Fetched: l.BytesFetched, WaitEnded: l.WaitEnded,
				Queued: seconds(l.Timing.Queued), FetchStart: seconds(l.Timing.FetchStart), FetchEnd: seconds(l.Timing.FetchEnd),
				WaitStart: seconds(l.Timing.WaitStart), WaitEnd: seconds(l.Timing.WaitEnd), Committed: seconds(l.Timing.Committed),
			})
		}
		if r.Failed() {
			img.Error = OneLine(r.Err) // as the displays print it
		}
		s.Totals.add(r)
		s.Images = append(s.Images, img)
	}
	return s
}

// reusedBytes is how many bytes of r's layers did not have to come from the
// registry: whole layers reused or waited for, and for a partial pull the
// part of the layer the store already had. Layers not obtained count nothing.
func reusedBytes(r *pull.Result) int64 {
	var n int64
	for _, l := range r.Layers {
		if l.How != "" && l.Size > l.BytesFetched {
			n += l.Size - l.BytesFetched
		}
	}
	return n
}

// WriteJSON writes s as one indented JSON document.
func (s Summary) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(s)
}
