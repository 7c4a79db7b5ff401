package pull

import (
	"errors"
	"strings"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	"go.podman.io/image/v5/types"
)

func event(kind types.ProgressEvent, blob digest.Digest) types.ProgressProperties {
	return types.ProgressProperties{Event: kind, Artifact: types.BlobInfo{Digest: blob}}
}

// The arming rules, checked at chosen instants (check is what the ticker calls).
func TestWatchdogArming(t *testing.T) {
	const timeout = time.Minute
	blob := digest.FromString("layer")
	newDog := func() *watchdog {
		w := newWatchdog(timeout, newRunClock())
		w.events = true // past the attempt's first event unless a case says otherwise
		return w
	}
	later := func() time.Time { return time.Now().Add(timeout + time.Second) }

	w := newDog()
	w.progress(event(types.ProgressEventNewArtifact, blob))
	if err := w.check(time.Now()); err != nil {
		t.Errorf("a transfer that just started is reported stalled: %v", err)
	}
	err := w.check(later())
	if err == nil || !errors.Is(err, errStalled) || !strings.Contains(err.Error(), blob.String()) {
		t.Errorf("a transfer silent for longer than the timeout: got %v, want a stall naming %s", err, blob)
	}

	w = newDog()
	w.progress(event(types.ProgressEventNewArtifact, blob))
	w.progress(event(types.ProgressEventDone, blob))
	if err := w.check(later()); err != nil {
		t.Errorf("an image with no transfer under way (queued, or committing) is reported stalled: %v", err)
	}

	w = newDog()
	w.progress(event(types.ProgressEventNewArtifact, blob))
	w.waitStarted()
	if err := w.check(later()); err != nil {
		t.Errorf("an image waiting for another pull's blob is reported stalled: %v", err)
	}
	w.waitEnded()
	if err := w.check(time.Now()); err != nil {
		t.Errorf("the timeout did not restart when the wait ended: %v", err)
	}

	// A transfer whose commit started is over: applying a big layer on a
	// slow disk is not a stall, however long it takes.
	w = newDog()
	w.progress(event(types.ProgressEventNewArtifact, blob))
	w.committing(blob)
	if err := w.check(later()); err != nil {
		t.Errorf("a transfer whose layer is being committed is reported stalled: %v", err)
	}

	// Each transfer is timed on its own: a live one does not hide a dead one.
	w = newDog()
	dead := digest.FromString("dead")
	w.progress(event(types.ProgressEventNewArtifact, dead))
	w.inFlight[dead].since = time.Now().Add(-timeout - time.Second)
	w.progress(event(types.ProgressEventNewArtifact, blob))
	err = w.check(time.Now())
	if err == nil || !strings.Contains(err.Error(), dead.String()) || strings.Contains(err.Error(), blob.String()) {
		t.Errorf("one silent transfer beside a live one: got %v, want a stall naming only %s", err, dead)
	}

	// Before the first event: armed only while the whole run is idle.
	w = newDog()
	w.events = false
	if err := w.check(later()); err != nil {
		t.Errorf("an image without events while the run progresses (queued for a slot) is reported stalled: %v", err)
	}
	w.timeout = 10 * time.Millisecond
	w.start = time.Now().Add(-time.Second)
	time.Sleep(20 * time.Millisecond) // the run has not progressed since newRunClock
	if err := w.check(time.Now()); err == nil || !errors.Is(err, errStalled) {
		t.Errorf("an image without events in an idle run: got %v, want a stall", err)
	}
}

// A stalled watchdog cancels its attempt with the stall as the cause.
func TestWatchdogAbandons(t *testing.T) {
	var got error
	fired := make(chan struct{})
	w := startWatchdog(20*time.Millisecond, newRunClock(), func(err error) { got = err; close(fired) })
	defer w.stop()
	w.progress(event(types.ProgressEventNewArtifact, digest.FromString("x")))
	select {
	case <-fired:
	case <-time.After(10 * time.Second):
		t.Fatal("the watchdog never fired on a silent transfer")
	}
	if !errors.Is(got, errStalled) {
		t.Errorf("cancel cause %v, want a stall", got)
	}
}

// A transfer must receive MinProgress per timeout: a trickle is a stall.
func TestWatchdogMinimumRate(t *testing.T) {
	const timeout = time.Minute
	blob := digest.FromString("layer")
	read := func(offset uint64) types.ProgressProperties {
		pp := event(types.ProgressEventRead, blob)
		pp.Offset = offset
		return pp
	}
	w := newWatchdog(timeout, newRunClock())
	w.progress(event(types.ProgressEventNewArtifact, blob))
	started := w.inFlight[blob].since
	w.progress(read(MinProgress - 1))
	if w.inFlight[blob].since != started {
		t.Error("less than MinProgress restarted the transfer's window")
	}
	err := w.check(started.Add(timeout))
	if err == nil || !errors.Is(err, errStalled) || !strings.Contains(err.Error(), "only 1023 bytes received") {
		t.Errorf("1023 bytes in a whole timeout: got %v, want a stall saying how little arrived", err)
	}
	w.progress(read(MinProgress + 5))
	if err := w.check(time.Now()); err != nil {
		t.Errorf("a transfer that just received MinProgress more is reported stalled: %v", err)
	}
	if got := w.inFlight[blob].base; got != MinProgress+5 {
		t.Errorf("the new window starts at offset %d, want %d", got, MinProgress+5)
	}
}

// A transfer past its declared size abandons the attempt at that event.
func TestWatchdogOversize(t *testing.T) {
	var got error
	w := newWatchdog(time.Minute, newRunClock())
	w.abandon = func(err error) { got = err }
	blob := digest.FromString("layer")
	pp := event(types.ProgressEventRead, blob)
	pp.Artifact.Size, pp.Offset = 100, 100
	w.progress(pp)
	if got != nil {
		t.Fatalf("a transfer at exactly its declared size was abandoned: %v", got)
	}
	pp.Offset = 101
	w.progress(pp)
	var over *oversizeError
	if !errors.As(got, &over) || over.declared != 100 || over.received != 101 || !strings.Contains(got.Error(), blob.String()) {
		t.Errorf("101 bytes of a 100-byte blob: abandoned with %v, want an oversize error naming %s, 100 and 101", got, blob)
	}
	if retryable(got) {
		t.Error("an oversized blob is retried")
	}
}
