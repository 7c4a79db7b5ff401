package pull

import (
	"slices"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"
	"go.podman.io/image/v5/types"

	"github.com/herd-project/herd/commit"
)

// What happens to each layer of an image while its copy.Image runs, as
// containers/image's progress events and the coordinator's hooks tell it,
// and what the image's Result says of its layers at the end.

// mark records, at the time since the run started, the time of blob's
// layer (LayerTiming) that field picks, unless that time is set already.
// (A layer's "done" event and its commit come in either order: an upper
// layer's commit waits for the lower layers', a lower layer's commit
// precedes its event. The first of them ends the fetch.)
func (ip *imagePull) mark(blob digest.Digest, field func(t *LayerTiming) *time.Duration) {
	ip.markAt(blob, field, false)
}

// markAt is mark, or with overwrite the time replaces one set before (the
// end of the last of several waits for a blob).
func (ip *imagePull) markAt(blob digest.Digest, field func(t *LayerTiming) *time.Duration, overwrite bool) {
	ip.mu.Lock()
	defer ip.mu.Unlock()
	if _, isLayer := ip.layerIdx[blob]; !isLayer {
		return // the config
	}
	t := ip.timing[blob]
	if t == nil {
		t = &LayerTiming{}
		ip.timing[blob] = t
	}
	if at := field(t); *at == 0 || overwrite {
		*at = time.Since(ip.runStart)
	}
}

// waitStarted: the image waits for w.Owner's fetch of w.Blob (or of
// w.Similar). While it waits in a lookup it lends the run the slots it may
// hold (pull/slots.go, commit's invariant 4), and its watchdog judges
// nothing (containers/image holds the image's lock). A wait at the layer's
// commit holds up nothing else of the image, and the commit lends its own
// slot.
func (ip *imagePull) waitStarted(wd *watchdog, w commit.WaitEvent) {
	ip.mark(w.Blob, func(t *LayerTiming) *time.Duration { return &t.WaitStart })
	if !w.AtCommit {
		wd.waitStarted()
		ip.mu.Lock()
		if ip.waits++; ip.waits == 1 {
			ip.lent = ip.slots.lend(int64(len(ip.target.layers)))
		}
		ip.mu.Unlock()
	}
	ip.emit(Event{Kind: EventLayerWaiting, Blob: w.Blob, Owner: w.Owner, Similar: w.Similar})
}

// waitEnded: the wait for w.Blob ended; the last one in a lookup takes the
// slots back.
func (ip *imagePull) waitEnded(wd *watchdog, w commit.WaitEvent) {
	ip.markAt(w.Blob, func(t *LayerTiming) *time.Duration { return &t.WaitEnd }, true)
	if !w.AtCommit {
		wd.waitEnded()
	}
	ip.mu.Lock()
	if w.Similar == "" { // else the layer is still to be fetched
		ip.waitEnds[w.Blob] = w.End
	}
	if !w.AtCommit {
		if ip.waits--; ip.waits == 0 {
			ip.slots.reclaim(ip.lent)
			ip.lent = 0
		}
	}
	ip.mu.Unlock()
	if w.Similar != "" {
		logrus.Debugf("%s: waited %s before fetching %s for %s, a layer with files in common (pulled by %s): %s", ip.result.Name(), w.Waited.Round(time.Millisecond), w.Blob, w.Similar, w.Owner, w.End)
		return
	}
	logrus.Debugf("%s: waited %s for %s (pulled by %s): %s", ip.result.Name(), w.Waited.Round(time.Millisecond), w.Blob, w.Owner, w.End)
}

// committed: the image committed the layer made from blob.
func (ip *imagePull) committed(blob digest.Digest, partial bool) {
	ip.mark(blob, func(t *LayerTiming) *time.Duration { return &t.Committed })
	ip.mu.Lock()
	if partial {
		ip.partial[blob] = true
	}
	ip.mu.Unlock()
	ip.emit(Event{Kind: EventLayerCommitted, Blob: blob})
}

// onProgress turns containers/image's progress events into herd's, after
// the coordinator has seen them, and returns what the coordinator said.
func (ip *imagePull) onProgress(pp types.ProgressProperties) commit.Obtained {
	obtained := ip.image.Progress(pp)
	d := pp.Artifact.Digest
	_, isLayer := ip.layerIdx[d]
	switch pp.Event {
	case types.ProgressEventNewArtifact:
		if isLayer {
			ip.mark(d, func(t *LayerTiming) *time.Duration { return &t.FetchStart })
			ip.emit(Event{Kind: EventLayerStarted, Blob: d, Size: pp.Artifact.Size})
		}
	case types.ProgressEventRead:
		ip.mu.Lock()
		ip.fetched[d] += int64(pp.OffsetUpdate)
		ip.mu.Unlock()
		if isLayer {
			// The fetch ends with the last of these reports (containers/image
			// sends one per progressInterval while bytes come in): its "done"
			// may come much later, as the layer's commit waits for the lower
			// layers', and a wait of the image holds the image's lock.
			ip.markAt(d, func(t *LayerTiming) *time.Duration { return &t.FetchEnd }, true)
			ip.emit(Event{Kind: EventLayerRead, Blob: d, Bytes: int64(pp.OffsetUpdate), Size: pp.Artifact.Size})
		}
	case types.ProgressEventDone:
		ip.mu.Lock()
		ip.fetched[d] += int64(pp.OffsetUpdate)
		ip.done[d] = true
		n := ip.fetched[d]
		ip.mu.Unlock()
		ip.mark(d, func(t *LayerTiming) *time.Duration { return &t.FetchEnd })
		if isLayer {
			ip.emit(Event{Kind: EventLayerRead, Blob: d, Bytes: int64(pp.OffsetUpdate), Size: pp.Artifact.Size})
			ip.emit(Event{Kind: EventLayerDone, Blob: d, How: Fetched, Bytes: n, Size: pp.Artifact.Size})
		}
	case types.ProgressEventSkipped:
		if obtained == commit.NotEnded {
			return obtained // a layer herd fetches itself: its own events follow
		}
		how := Reused
		if obtained == commit.Waited {
			how = Waited
		}
		ip.mu.Lock()
		ip.skipped[d] = how
		ip.mu.Unlock()
		ip.mark(d, func(t *LayerTiming) *time.Duration { return &t.Committed })
		if isLayer {
			ip.emit(Event{Kind: EventLayerDone, Blob: d, How: how, Size: pp.Artifact.Size})
		}
	}
	return obtained
}

// finishLayers fills in how each layer was obtained once copy.Image returned.
func (ip *imagePull) finishLayers() {
	ip.mu.Lock()
	defer ip.mu.Unlock()
	var total int64
	for _, n := range ip.fetched {
		total += n
	}
	ip.result.BytesFetched = total
	for i := range ip.result.Layers {
		l := &ip.result.Layers[i]
		l.BytesFetched = ip.fetched[l.Digest]
		l.WaitEnded = ip.waitEnds[l.Digest]
		if t := ip.timing[l.Digest]; t != nil {
			l.Timing = *t
		}
		switch {
		case ip.partial[l.Digest]:
			l.How = Partial
		case ip.done[l.Digest]:
			l.How = Fetched
		default:
			l.How = ip.skipped[l.Digest] // "" if the pull failed before reaching it
		}
		if i > 0 && l.How != "" && slices.ContainsFunc(ip.result.Layers[:i], func(o Layer) bool { return o.Digest == l.Digest }) {
			l.How, l.BytesFetched, l.WaitEnded = Reused, 0, "" // listed again: it reused the first occurrence's blob
		}
	}
}
