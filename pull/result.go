package pull

import (
	"time"

	digest "github.com/opencontainers/go-digest"
)

// How a layer was obtained.
const (
	Fetched = "fetched" // the whole blob came from the registry
	Partial = "partial" // zstd:chunked: only the chunks the store lacked came from the registry
	Reused  = "reused"  // the store already had it when this image asked
	Waited  = "waited"  // another pull of this run was fetching it; this image waited and reused it
)

// Layer is what happened to one layer of one image.
type Layer struct {
	Digest  digest.Digest `json:"digest"`
	Size    int64         `json:"size"`
	How     string        `json:"how,omitempty"`
	Fetched int64         `json:"fetched"` // bytes read from the registry for this blob by this image
	// WaitEnded says how this image's last wait for another pull's fetch of
	// the blob ended (commit.WaitEnd), "" if it did not wait for it.
	WaitEnded string `json:"waitEnded,omitempty"`
}

// Result is the outcome of one image of the run.
type Result struct {
	// Inputs are the references the user gave that resolved to this image;
	// more than one when several tags name the same manifest.
	Inputs []string `json:"inputs"`
	// Reference is the fully qualified reference that was pulled.
	Reference string `json:"reference,omitempty"`
	// Names are every fully qualified name the image got in the store.
	Names []string `json:"names,omitempty"`
	// Digest is the digest of the manifest the reference names (a list or an image);
	// InstanceDigest the per-platform manifest pulled from it, and Platform its platform.
	Digest         digest.Digest `json:"digest,omitempty"`
	InstanceDigest digest.Digest `json:"instanceDigest,omitempty"`
	Platform       string        `json:"platform,omitempty"`
	ImageID        string        `json:"imageID,omitempty"`
	Layers         []Layer       `json:"layers,omitempty"`
	// Fetched counts every blob byte read from the registry for this image,
	// the config included.
	Fetched  int64         `json:"fetched"`
	Duration time.Duration `json:"duration"`
	// Attempts is how many times the image's copy was started: 1, plus one
	// per retry after a transient failure; for an input that failed while
	// its manifest was read, how many times that was tried.
	Attempts int   `json:"attempts"`
	Err      error `json:"-"`
}

// Failed reports whether the image was not pulled.
func (r *Result) Failed() bool { return r.Err != nil }

// Name is how messages name the image: what the user typed.
func (r *Result) Name() string {
	if len(r.Inputs) > 0 {
		return r.Inputs[0]
	}
	return r.Reference
}
