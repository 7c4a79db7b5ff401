package progress

import (
	"encoding/json"
	"io"
	"time"

	"github.com/herd-project/herd/pull"
)

// Summary is the machine-readable account of a run (herd pull --format json).
// Its fields are documented in README.md; keep the two in step.
type Summary struct {
	Images []ImageSummary `json:"images"`
	Totals Totals         `json:"totals"`
}

// ImageSummary is one image of the run.
type ImageSummary struct {
	Inputs          []string     `json:"inputs"`
	Reference       string       `json:"reference,omitempty"`
	Names           []string     `json:"names,omitempty"`
	Digest          string       `json:"digest,omitempty"`
	InstanceDigest  string       `json:"instanceDigest,omitempty"`
	Platform        string       `json:"platform,omitempty"`
	ImageID         string       `json:"imageID,omitempty"`
	Layers          []pull.Layer `json:"layers"`
	Fetched         int64        `json:"fetchedBytes"`
	Reused          int64        `json:"reusedBytes"`
	DurationSeconds float64      `json:"durationSeconds"`
	Error           string       `json:"error,omitempty"`
}

// Totals add up the run.
type Totals struct {
	Fetched     int64   `json:"fetchedBytes"`
	Reused      int64   `json:"reusedBytes"`
	WallSeconds float64 `json:"wallSeconds"`
	OK          int     `json:"ok"`
	Failed      int     `json:"failed"`
}

// NewSummary builds the summary of results that took wall time.
func NewSummary(results []*pull.Result, wall time.Duration) Summary {
	s := Summary{Images: []ImageSummary{}, Totals: Totals{WallSeconds: wall.Seconds()}}
	for _, r := range results {
		img := ImageSummary{
			Inputs: r.Inputs, Reference: r.Reference, Names: r.Names,
			Digest: r.Digest.String(), InstanceDigest: r.InstanceDigest.String(), Platform: r.Platform,
			ImageID: r.ImageID, Layers: r.Layers, Fetched: r.Fetched,
			DurationSeconds: r.Duration.Seconds(),
		}
		if img.Layers == nil {
			img.Layers = []pull.Layer{}
		}
		for _, l := range r.Layers {
			if l.How != "" && l.Size > l.Fetched {
				img.Reused += l.Size - l.Fetched
			}
		}
		if r.Err != nil {
			img.Error = r.Err.Error()
			s.Totals.Failed++
		} else {
			s.Totals.OK++
		}
		s.Totals.Fetched += img.Fetched
		s.Totals.Reused += img.Reused
		s.Images = append(s.Images, img)
	}
	return s
}

// WriteJSON writes s as one indented JSON document.
func (s Summary) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(s)
}
