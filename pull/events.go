package pull

import (
	"time"

	digest "github.com/opencontainers/go-digest"
)

// EventKind says what an Event reports.
type EventKind int

const (
	// EventResolved: the image's reference and manifest are known; Result
	// holds Reference, Digest, InstanceDigest, Platform and Layers (sizes only).
	EventResolved EventKind = iota
	// EventLayerStarted: the image started fetching Blob (Size bytes).
	EventLayerStarted
	// EventLayerRead: Bytes more bytes of Blob were read from the registry.
	EventLayerRead
	// EventLayerWaiting: the image waits for another pull (Owner) that is
	// fetching Blob, or, if Similar is set, that is fetching Similar, a
	// zstd:chunked layer with files in common with Blob: Blob is fetched
	// after it, and only the files that the store does not have then.
	EventLayerWaiting
	// EventLayerDone: Blob is obtained; How says how and Bytes how many bytes were read for it.
	EventLayerDone
	// EventLayerCommitted: the layer made from Blob is in the store.
	EventLayerCommitted
	// EventImageDone: the image is finished, pulled or failed; Result is final.
	EventImageDone
	// EventRetrying: the image's last attempt failed with Err, a transient
	// error (network, HTTP 5xx or 429, a stalled transfer), and it is pulled
	// again from the start after a delay; layers it committed are reused.
	// Blobs it was fetching may be reported again from zero.
	EventRetrying
)

// Event is one thing that happened to one image of a run. Events for one
// image arrive in order; events of different images interleave.
type Event struct {
	Kind    EventKind
	Image   int     // index of the image in the run, stable for the run
	Result  *Result // EventResolved and EventImageDone; read-only for the observer
	Blob    digest.Digest
	Size    int64
	Bytes   int64
	How     How
	Owner   string
	Similar digest.Digest // EventLayerWaiting
	Err     error         // EventRetrying: why the last attempt failed
	Time    time.Time
}

// Observer receives the events of a run. It is called from many goroutines
// and must not block for long: pulls wait while it runs.
type Observer func(Event)
