package progress

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/herd-project/herd/pull"
)

// WritePreview prints p (herd pull --dry-run) as a table: one row per image,
// then the totals, where blobs several images share count once.
func WritePreview(w io.Writer, p pull.Preview) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "IMAGE\tLAYERS\tSIZE\tSHARED\tIN STORE\tTO FETCH\t")
	for _, img := range p.Images {
		r := img.Result
		if r.Failed() {
			fmt.Fprintf(tw, "%s\t-\t-\t-\t-\t-\t\n", r.Name())
			continue
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t\n", r.Reference, len(r.Layers), size(img.Bytes), size(img.Shared), size(img.InStore), size(img.ToFetch))
	}
	t := p.Totals
	fmt.Fprintf(tw, "total: %d images, %d distinct layers\t\t%s\t%s unique\t%s\t%s\t\n", t.Images-t.Failed, t.Layers, size(t.Bytes), size(t.Unique), size(t.InStore), size(t.ToFetch))
	return tw.Flush()
}

// PreviewSummary is the JSON form of a preview (herd pull --dry-run
// --format json). Byte counts are the compressed sizes the manifests
// declare; a zstd:chunked layer may be pulled partially, for less.
type PreviewSummary struct {
	Images []ImagePreviewSummary `json:"images"`
	Totals PreviewTotalsSummary  `json:"totals"`
}

// ImagePreviewSummary is one image of a preview.
type ImagePreviewSummary struct {
	Inputs         []string `json:"inputs"`
	Reference      string   `json:"reference,omitempty"`
	Digest         string   `json:"digest,omitempty"`
	InstanceDigest string   `json:"instanceDigest,omitempty"`
	Platform       string   `json:"platform,omitempty"`
	Layers         int      `json:"layers"`
	Bytes          int64    `json:"bytes"`        // layers and config
	SharedBytes    int64    `json:"sharedBytes"`  // of its layers, those another image of the list has too
	InStoreBytes   int64    `json:"inStoreBytes"` // of its layers, those the store has
	ToFetchBytes   int64    `json:"toFetchBytes"` // what a pull would fetch for it
	Error          string   `json:"error,omitempty"`
}

// PreviewTotalsSummary adds up a preview; blobs several images share count
// once in uniqueBytes, inStoreBytes and toFetchBytes.
type PreviewTotalsSummary struct {
	Images       int   `json:"images"`
	Failed       int   `json:"failed"`
	Layers       int   `json:"distinctLayers"`
	Bytes        int64 `json:"bytes"`
	UniqueBytes  int64 `json:"uniqueBytes"`
	InStoreBytes int64 `json:"inStoreBytes"`
	ToFetchBytes int64 `json:"toFetchBytes"`
}

// WritePreviewJSON writes p as one indented JSON document.
func WritePreviewJSON(w io.Writer, p pull.Preview) error {
	t := p.Totals
	s := PreviewSummary{Images: []ImagePreviewSummary{}, Totals: PreviewTotalsSummary{
		Images: t.Images, Failed: t.Failed, Layers: t.Layers, Bytes: t.Bytes,
		UniqueBytes: t.Unique, InStoreBytes: t.InStore, ToFetchBytes: t.ToFetch,
	}}
	for _, img := range p.Images {
		r := img.Result
		is := ImagePreviewSummary{
			Inputs: r.Inputs, Reference: r.Reference, Digest: string(r.Digest), InstanceDigest: string(r.InstanceDigest),
			Platform: r.Platform, Layers: len(r.Layers), Bytes: img.Bytes, SharedBytes: img.Shared,
			InStoreBytes: img.InStore, ToFetchBytes: img.ToFetch,
		}
		if r.Failed() {
			is.Error = OneLine(r.Err)
		}
		s.Images = append(s.Images, is)
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(s)
}
