package pull

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	digest "github.com/opencontainers/go-digest"
	"go.podman.io/image/v5/types"
)

// DefaultStallTimeout is herd's default --stall-timeout: one minute in which
// a transfer under way receives less than MinProgress. A live transfer,
// however slow, delivers kilobytes every fraction of a second, so a minute
// of (next to) nothing is a dead or hostile connection; and since a retry is
// cheap (committed layers are reused), abandoning it soon costs less than
// containerd's 5 minutes of waiting. A pull waiting for another pull's blob
// has no clock of its own: the owner's transfer is bounded by this, and
// when the owner's attempt ends the wait ends (commit.Coordinator).
// (containers/image itself waits at most 60s on a 429's Retry-After; a
// registry asking for exactly that may see one retry more.)
const DefaultStallTimeout = 60 * time.Second

// MinProgress is what a transfer must receive within each --stall-timeout:
// a registry that trickles a byte a second is as stuck as a silent one, but
// would never trip a timer that any byte resets.
const MinProgress = 1 << 10

// errStalled is what errors.Is finds in an attempt the watchdog abandoned.
var errStalled = errors.New("transfer stalled")

// stallError says which transfers of an image delivered (next to) nothing
// for how long.
type stallError struct {
	blobs    []digest.Digest // empty: stalled before its first blob transfer (manifest, config)
	received uint64          // bytes the first of blobs received in its last window: below MinProgress
	timeout  time.Duration
	what     string // what stalled, when not a blob transfer
}

func (e *stallError) Error() string {
	if e.what != "" {
		return fmt.Sprintf("%s: no answer for %s (--stall-timeout): abandoned", e.what, e.timeout)
	}
	if len(e.blobs) == 0 {
		return fmt.Sprintf("no progress for %s (--stall-timeout) before any layer transfer started: attempt abandoned", e.timeout)
	}
	names := make([]string, len(e.blobs))
	for i, b := range e.blobs {
		names[i] = b.String()
	}
	if e.received > 0 {
		return fmt.Sprintf("blob %s: only %d bytes received in %s (less than %d per --stall-timeout): transfer abandoned", strings.Join(names, ", "), e.received, e.timeout, MinProgress)
	}
	return fmt.Sprintf("blob %s: no data received for %s (--stall-timeout): transfer abandoned", strings.Join(names, ", "), e.timeout)
}

func (e *stallError) Is(target error) bool { return target == errStalled }

// oversizeError is a blob of which the registry sent more than the manifest
// declares. Its digest can then never match, and a hostile or broken
// registry could go on forever (filling herd's temporary directory), so the
// transfer is cut as soon as it is seen, and not retried.
type oversizeError struct {
	blob               digest.Digest
	declared, received int64
}

func (e *oversizeError) Error() string {
	return fmt.Sprintf("blob %s: the registry sent more than the %d bytes the manifest declares (%d received): transfer abandoned", e.blob, e.declared, e.received)
}

// runClock is when any image of the run last reported progress (any
// containers/image progress event). An image that has not reported anything
// yet (it reads its manifest and config, or queues for a --jobs slot) is
// judged against it.
type runClock struct{ last atomic.Int64 }

func newRunClock() *runClock {
	c := &runClock{}
	c.tick()
	return c
}

func (c *runClock) tick() { c.last.Store(time.Now().UnixNano()) }

func (c *runClock) since() time.Duration { return time.Since(time.Unix(0, c.last.Load())) }

// watchdog ends one attempt of one image when one of its transfers stops
// making progress, so that a connection that stays open but delivers nothing
// or a trickle (a registry or proxy hanging mid-body) cannot hang herd:
// containers/image's HTTP client has no read timeout. It also ends the
// attempt at once when a transfer runs past the size the manifest declares
// for its blob (containers/image reads a blob to its end before it compares
// sizes). The attempt's context is cancelled, which stops this image's
// copy.Image only, and the retry loop (retry.go) takes over.
//
// Each transfer is timed on its own, from its "new" event (sent just before
// the request) and then from each "read" event that brings its total
// MinProgress or more past where its current window started, until its
// commit starts (commit.Hooks.CommitStarted) or containers/image reports it
// done or skipped. So a transfer that received every byte is never taken for
// stalled while its layer is applied, however long that takes, and a live
// transfer does not hide a dead one beside it. An image that queues for a
// --jobs slot has no transfer under way and is not judged. While the image
// waits for another pull's blob nothing of it is judged: containers/image
// holds the image's lock during the wait, so its other transfers cannot
// finish either; they are timed afresh when the wait ends. Before the
// attempt's first event the image reads its manifest and config, which
// report no progress at all, and may as well be queued for a slot; then it
// is judged only while the whole run makes no progress either.
type watchdog struct {
	timeout time.Duration
	// runProgress is when any image of the run last made progress: an
	// attempt without events of its own is judged against it.
	runProgress *runClock
	abandon     context.CancelCauseFunc
	done        chan struct{}
	start       time.Time

	mu       sync.Mutex
	events   bool                        // any progress event in this attempt
	inFlight map[digest.Digest]*transfer // transfers under way
	waits    int
}

// transfer is the progress window of one transfer under way: it must
// receive MinProgress within the stall timeout from since.
type transfer struct {
	since  time.Time
	base   uint64 // offset at since
	offset uint64 // bytes received so far
}

func (t *transfer) restart(now time.Time) { t.since, t.base = now, t.offset }

// startWatchdog watches one attempt; abandon cancels it. Call stop when the
// attempt's copy.Image has returned.
func startWatchdog(timeout time.Duration, runProgress *runClock, abandon context.CancelCauseFunc) *watchdog {
	w := newWatchdog(timeout, runProgress)
	w.abandon = abandon
	go w.loop()
	return w
}

func newWatchdog(timeout time.Duration, runProgress *runClock) *watchdog {
	return &watchdog{timeout: timeout, runProgress: runProgress, done: make(chan struct{}), start: time.Now(), inFlight: map[digest.Digest]*transfer{}}
}

func (w *watchdog) stop() { close(w.done) }

func (w *watchdog) loop() {
	tick := time.NewTicker(min(max(w.timeout/4, 10*time.Millisecond), time.Second))
	defer tick.Stop()
	for {
		select {
		case <-w.done:
			return
		case now := <-tick.C:
			if err := w.check(now); err != nil {
				w.abandon(err)
				return
			}
		}
	}
}

// check returns the stall to abandon the attempt for, or nil.
func (w *watchdog) check(now time.Time) *stallError {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.waits > 0 {
		return nil
	}
	var stalled []digest.Digest
	for blob, t := range w.inFlight {
		if now.Sub(t.since) >= w.timeout {
			stalled = append(stalled, blob)
		}
	}
	if len(stalled) > 0 {
		slices.Sort(stalled)
		first := w.inFlight[stalled[0]]
		return &stallError{blobs: stalled, received: first.offset - first.base, timeout: w.timeout}
	}
	if !w.events && now.Sub(w.start) >= w.timeout && w.runProgress.since() >= w.timeout {
		return &stallError{timeout: w.timeout}
	}
	return nil
}

// progress records one of the attempt's progress events, which is also
// progress of the run. A transfer past
// its declared size abandons the attempt right here: containers/image sends
// the event before it hands the bytes read on, so what it writes past the
// declared size is at most what arrives in one progress interval.
func (w *watchdog) progress(pp types.ProgressProperties) {
	w.runProgress.tick()
	w.mu.Lock()
	defer w.mu.Unlock()
	w.events = true
	d := pp.Artifact.Digest
	if size := pp.Artifact.Size; size > 0 && pp.Offset > uint64(size) && w.abandon != nil {
		w.abandon(&oversizeError{blob: d, declared: size, received: int64(pp.Offset)})
	}
	switch pp.Event {
	case types.ProgressEventNewArtifact:
		w.inFlight[d] = &transfer{since: time.Now()}
	case types.ProgressEventRead:
		if t, ok := w.inFlight[d]; ok {
			t.offset = pp.Offset
			if t.offset-t.base >= MinProgress {
				t.restart(time.Now())
			}
		}
	case types.ProgressEventDone, types.ProgressEventSkipped:
		delete(w.inFlight, d)
	}
}

// committing records that the commit of blob started: its transfer is over.
func (w *watchdog) committing(blob digest.Digest) {
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.inFlight, blob)
}

// waitStarted records that the image waits for another pull's blob.
func (w *watchdog) waitStarted() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.waits++
}

// waitEnded records that a wait ended: the image's transfers are timed
// afresh from now.
func (w *watchdog) waitEnded() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.waits--
	now := time.Now()
	for _, t := range w.inFlight {
		t.restart(now)
	}
}
