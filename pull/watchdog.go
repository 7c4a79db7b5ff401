package pull

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	digest "github.com/opencontainers/go-digest"
	"go.podman.io/image/v5/types"

	"github.com/herd-project/herd/commit"
)

// DefaultStallTimeout is herd's default --stall-timeout: one minute without
// a single byte on a transfer that is under way. A live transfer, however
// slow, delivers bytes every fraction of a second, so a minute of nothing is
// a dead connection; and since a retry is cheap (committed layers are
// reused), abandoning it soon costs less than containerd's 5 minutes of
// waiting. It is also the coordinator's bound on waiting for another pull's
// blob while the whole run makes no progress, so herd has one notion of
// "stalled". (containers/image itself waits at most 60s on a 429's
// Retry-After; a registry asking for exactly that may see one retry more.)
const DefaultStallTimeout = commit.DefaultStallTimeout

// errStalled is what errors.Is finds in an attempt the watchdog abandoned.
var errStalled = errors.New("transfer stalled")

// stallError says which transfers of an image delivered nothing for how long.
type stallError struct {
	blobs   []digest.Digest // empty: stalled before its first blob transfer (manifest, config)
	timeout time.Duration
	what    string // what stalled, when not a blob transfer
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
	return fmt.Sprintf("blob %s: no data received for %s (--stall-timeout): transfer abandoned", strings.Join(names, ", "), e.timeout)
}

func (e *stallError) Is(target error) bool { return target == errStalled }

// watchdog ends one attempt of one image when it stops making progress, so
// that a connection that stays open but delivers nothing (a registry or
// proxy hanging mid-body) cannot hang herd: containers/image's HTTP client
// has no read timeout. The attempt's context is cancelled, which stops this
// image's copy.Image only, and the retry loop (retry.go) takes over.
//
// Progress is what containers/image's progress channel reports for this
// image. The watchdog is armed while the image transfers a blob, from the
// blob's "new" event (sent just before the request) to its "done", so an
// image that queues for a --jobs slot, waits for another pull's blob or
// commits a big layer is never taken for stalled; it is disarmed while the
// image waits for another pull (that wait has its own bound, see
// commit.Coordinator). Before the attempt's first event the image fetches
// its manifest and config, which report no progress at all, and may as well
// be queued for a slot; then it is armed only while the whole run makes no
// progress either.
type watchdog struct {
	timeout time.Duration
	run     *commit.Coordinator
	abandon context.CancelCauseFunc
	done    chan struct{}

	mu       sync.Mutex
	last     time.Time // start of the attempt, or its last event or end of a wait
	events   bool      // any progress event in this attempt
	inFlight map[digest.Digest]bool
	waits    int
}

// startWatchdog watches one attempt; abandon cancels it. Call stop when the
// attempt's copy.Image has returned.
func startWatchdog(timeout time.Duration, run *commit.Coordinator, abandon context.CancelCauseFunc) *watchdog {
	w := &watchdog{
		timeout: timeout, run: run, abandon: abandon, done: make(chan struct{}),
		last: time.Now(), inFlight: map[digest.Digest]bool{},
	}
	go w.loop()
	return w
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
	if w.waits > 0 || now.Sub(w.last) < w.timeout {
		return nil
	}
	switch {
	case len(w.inFlight) > 0:
		blobs := make([]digest.Digest, 0, len(w.inFlight))
		for b := range w.inFlight {
			blobs = append(blobs, b)
		}
		slices.Sort(blobs)
		return &stallError{blobs: blobs, timeout: w.timeout}
	case !w.events && w.run.SinceProgress() >= w.timeout:
		return &stallError{timeout: w.timeout}
	}
	return nil
}

// progress records one of the attempt's progress events.
func (w *watchdog) progress(pp types.ProgressProperties) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.last = time.Now()
	w.events = true
	switch pp.Event {
	case types.ProgressEventNewArtifact:
		w.inFlight[pp.Artifact.Digest] = true
	case types.ProgressEventDone, types.ProgressEventSkipped:
		delete(w.inFlight, pp.Artifact.Digest)
	}
}

// waiting records that the image starts (true) or ends (false) waiting for
// another pull's blob.
func (w *watchdog) waiting(start bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if start {
		w.waits++
		return
	}
	w.waits--
	w.last = time.Now()
}
