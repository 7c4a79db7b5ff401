package pull

import (
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/herd-project/herd/commit"
)

// How says how a layer was obtained; its values are the words the JSON
// summary and the plain display use.
type How string

const (
	Fetched How = "fetched" // the whole blob came from the registry
	Partial How = "partial" // zstd:chunked: only the chunks the store lacked came from the registry
	Reused  How = "reused"  // the store already had it when this image asked
	Waited  How = "waited"  // another pull of this run was fetching it; this image waited and reused it
)

// Layer is what happened to one layer of one image.
type Layer struct {
	Digest digest.Digest
	Size   int64
	How    How // "" if the pull failed before the layer was obtained
	// BytesFetched is what this image read from the registry for the blob.
	BytesFetched int64
	// WaitEnded says how this image's last wait for another pull's fetch of
	// the blob ended, "" if it did not wait for it.
	WaitEnded commit.WaitEnd
	// Timing says when things happened to the layer, in the attempt that
	// obtained it.
	Timing LayerTiming
}

// LayerTiming is when things happened to one layer, each as the time since
// the run started; zero for what did not happen. A layer waits for a --jobs
// slot from Queued (its image's attempt started) to FetchStart;
// containers/image fetches it until FetchEnd (its last report of bytes
// read, within progressInterval of its last byte, or its commit's start),
// or the image waits for another pull's fetch of it from WaitStart to
// WaitEnd; Committed is when the layer was in the store for the image
// (committed, or found there).
type LayerTiming struct {
	Queued, FetchStart, FetchEnd, WaitStart, WaitEnd, Committed time.Duration
}

// Result is the outcome of one image of the run.
type Result struct {
	// Inputs are the references the user gave that resolved to this image;
	// more than one when several tags name the same manifest.
	Inputs []string
	// Reference is the fully qualified reference that was pulled.
	Reference string
	// Names are every fully qualified name the image got in the store.
	Names []string
	// Digest is the digest of the manifest the reference names (a list or an image);
	// InstanceDigest the per-platform manifest pulled from it, and Platform its platform.
	Digest         digest.Digest
	InstanceDigest digest.Digest
	Platform       string
	ImageID        string
	Layers         []Layer
	// BytesFetched counts every blob byte read from the registry for this
	// image, the config included.
	BytesFetched int64
	Duration     time.Duration
	// Attempts is how many times the image's copy was started: 1, plus one
	// per retry after a transient failure; for an input that failed while
	// its manifest was read, how many times that was tried.
	Attempts int
	// Present says the image was not pulled: the pull policy (--policy
	// missing or never, or newer when the registry had nothing newer) kept
	// the image the store had. Its layers are all Reused, and Attempts is 0.
	Present bool
	Err     error
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
