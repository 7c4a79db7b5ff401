// Package pull is herd's engine: it resolves what the user asked for,
// drops duplicates, and pulls every distinct image with its own copy.Image,
// all under one shared blob-copy semaphore and one commit.Coordinator, into
// one containers/storage store.
package pull

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/distribution/reference"
	digest "github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"
	"go.podman.io/image/v5/copy"
	"go.podman.io/image/v5/pkg/blobinfocache"
	"go.podman.io/image/v5/signature"
	istorage "go.podman.io/image/v5/storage"
	"go.podman.io/image/v5/types"
	"go.podman.io/storage"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sync/semaphore"

	"github.com/herd-project/herd/commit"
)

// DefaultJobs is containers/image's own default for parallel layer copies.
const DefaultJobs = 6

// progressInterval is how often containers/image reports a transfer's bytes.
const progressInterval = 20 * time.Millisecond

// Options configure one run.
type Options struct {
	Store storage.Store
	// System is used for the registry side and the store side alike: auth,
	// TLS, registries.conf, platform choice, temporary files, blob-info cache.
	System *types.SystemContext
	Policy *signature.Policy
	// Jobs is the number of blob copies in flight across all images.
	Jobs int
	// StallTimeout is how long herd tolerates no progress: an image whose
	// transfer receives no byte for that long is abandoned and retried (see
	// watchdog.go). DefaultStallTimeout if zero.
	StallTimeout time.Duration
	// Retries is how many more times an image is pulled after a transient
	// failure (0: never); RetryDelay the wait before each retry (0:
	// exponential backoff from 1s, as podman). See retry.go.
	Retries    int
	RetryDelay time.Duration
	Observe    Observer
	// FailFast cancels the remaining images after the first failure.
	FailFast bool
	// Interactive says that the caller's standard input and output are a
	// terminal, where containers/image may ask which registry an ambiguous
	// short name means. (It asks on the process's own standard input and
	// output, and only when they are a terminal: it takes no other.)
	Interactive bool
	// NoBlobLocks leaves out the blob locks beside the store, through which
	// herd processes pulling into one store share their fetches.
	NoBlobLocks bool
	// PullPolicy says whether images the store has are pulled again
	// (policy.go); "" is PullAlways.
	PullPolicy PullPolicy
}

func (o *Options) setDefaults() {
	if o.Jobs < 1 {
		o.Jobs = DefaultJobs
	}
	if o.StallTimeout <= 0 {
		o.StallTimeout = DefaultStallTimeout
	}
	if o.Observe == nil {
		o.Observe = func(Event) {}
	}
}

// Run pulls every input and returns one Result per distinct image, in the
// order the inputs were given. It never stops early because one image
// failed (unless FailFast); failures are in the results. Inputs that cannot
// be resolved get a Result with only Inputs and Err set.
func Run(ctx context.Context, inputs []string, opts Options) []*Result {
	opts.setDefaults()
	runStart := time.Now() // layer timings count from here, resolving included
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	targets, results := resolveAll(ctx, dedupStrings(inputs), opts)
	for i, r := range results {
		kind := EventResolved
		if r.Failed() {
			kind = EventImageDone // it ends here: nothing to pull
		}
		opts.Observe(Event{Kind: kind, Image: i, Result: r, Time: time.Now()})
	}

	// The blob-info cache every copy.Image of the run opens (the same
	// BlobInfoCacheDir): it knows a blob's DiffID as soon as a pull fetched it.
	diffIDs, _ := blobinfocache.DefaultCache(opts.System).(commit.DiffIDs) // nil if a future cache lacks TOC lookups
	// Other herd processes on the store share their fetches through locks
	// under its run root; without them this run coordinates only its own.
	var locks *commit.BlobLocks
	if !opts.NoBlobLocks {
		var err error
		if locks, err = commit.OpenBlobLocks(filepath.Join(opts.Store.RunRoot(), "herd-blob-locks")); err != nil {
			logrus.Warnf("%v: not coordinating fetches with other herd processes on this store", err)
		}
	}
	coord := commit.NewCoordinator(planOf(targets, results), diffIDs, locks)
	defer coord.Close()
	runProgress := newRunClock()
	// The slot reserve covers every image waiting at once (one slot per
	// layer), twice, so that slots still being reclaimed after a wait never
	// leave a later wait without its loan.
	var reserve int64
	for _, t := range targets {
		if t != nil && t.local == nil {
			reserve += 2 * int64(len(t.layers))
		}
	}
	slots := newSlots(ctx, opts.Jobs, reserve)
	var wg sync.WaitGroup
	for _, i := range startOrder(targets) {
		t := targets[i]
		wg.Add(1)
		go func() {
			defer wg.Done()
			run := &imagePull{index: i, target: t, result: results[i], opts: &opts, coord: coord, runProgress: runProgress, runStart: runStart, slots: slots, stopRun: cancel}
			if t.local != nil {
				run.keep(ctx)
			} else {
				run.pull(ctx)
			}
			if run.result.Err != nil && opts.FailFast {
				cancel(nil)
			}
			opts.Observe(Event{Kind: EventImageDone, Image: i, Result: run.result, Time: time.Now()})
		}()
	}
	wg.Wait()
	return results
}

// resolveAll resolves inputs in parallel (bounded by Jobs) and merges the
// ones that name the same manifest into the first of them. It returns, in
// input order, one result per distinct image or failed input, and beside
// each the target to pull (nil for a failed input).
func resolveAll(ctx context.Context, inputs []string, opts Options) ([]*target, []*Result) {
	resolved := make([]*target, len(inputs))
	errs := make([]error, len(inputs))
	attempts := make([]int, len(inputs))
	var g errgroup.Group
	g.SetLimit(opts.Jobs)
	for i, in := range inputs {
		g.Go(func() error {
			resolved[i], attempts[i], errs[i] = resolveInput(ctx, opts, in)
			return nil
		})
	}
	_ = g.Wait()

	var targets []*target
	var results []*Result
	byDigest := map[string]*target{}
	for i, t := range resolved {
		if errs[i] != nil {
			targets = append(targets, nil)
			results = append(results, &Result{Inputs: []string{inputs[i]}, Attempts: attempts[i], Err: errs[i]})
			continue
		}
		key := t.digest.String()
		if t.local != nil {
			// Kept, not pulled: merged only with inputs that found the same
			// stored image, never with a pull that would name it.
			key = "stored " + t.local.ID
		}
		if first := byDigest[key]; first != nil {
			t.source.close() // pulled through first's
			first.inputs = append(first.inputs, t.inputs...)
			if t.named != nil && t.reference() != first.reference() {
				first.aliases = append(first.aliases, t.named)
			}
			first.aliases = append(first.aliases, t.aliases...)
			continue
		}
		byDigest[key] = t
		targets = append(targets, t)
		results = append(results, &Result{
			Inputs: t.inputs, Reference: t.reference(), Digest: t.digest,
			InstanceDigest: t.instance, Platform: t.platform, Layers: layersOf(t.layers),
		})
	}
	// Merged inputs were appended to the target after its result was made.
	for i, t := range targets {
		if t != nil {
			results[i].Inputs = t.inputs
		}
	}
	return targets, results
}

// startOrder is the order in which the images' copies start: the most bytes
// of their own first (layers no other image of the run needs), the input
// order among equals; images that did not resolve are left out. Every
// image's layers queue for the shared --jobs slots in layer order, and the
// slots are handed out first come, first served, so the images started
// first get the link first: an image whose large layer of its own starts
// last would be the run's tail, one layer fetched and applied on one core
// while the rest are done. Shared layers gain nothing from going first or
// last: one image fetches them, the others wait and lend their slots.
func startOrder(targets []*target) []int {
	needs := needsOf(targets)
	own := make([]int64, len(targets))
	var order []int
	for i, t := range targets {
		if t == nil {
			continue
		}
		order = append(order, i)
		counted := map[digest.Digest]bool{}
		for _, l := range t.layers {
			if needs[l.Digest] == 1 && !counted[l.Digest] {
				counted[l.Digest] = true
				own[i] += l.Size
			}
		}
	}
	slices.SortStableFunc(order, func(a, b int) int { return cmp.Compare(own[b], own[a]) })
	return order
}

// needsOf says how many of the targets need each layer blob, those the pull
// policy keeps included (commit.Plan.Needs).
func needsOf(targets []*target) map[digest.Digest]int {
	var all commit.Plan
	for _, t := range targets {
		if t != nil {
			all = append(all, commit.PlannedImage{Layers: planLayers(t)})
		}
	}
	return all.Needs()
}

// planOf is what the coordinator needs to know of the run before it starts:
// every image's layers, by the image's index in the run (an image that did
// not resolve has none).
func planOf(targets []*target, results []*Result) commit.Plan {
	plan := make(commit.Plan, len(targets))
	for i, t := range targets {
		plan[i].Name = results[i].Name()
		if t == nil || t.local != nil { // nothing to pull
			continue
		}
		plan[i].Layers = planLayers(t)
	}
	return plan
}

func planLayers(t *target) []commit.Layer {
	layers := make([]commit.Layer, len(t.layers))
	for i, l := range t.layers {
		layers[i] = commit.Layer{Blob: l.Digest, TOC: tocDigest(l)}
	}
	return layers
}

func dedupStrings(in []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, s := range in {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

func layersOf(blobs []types.BlobInfo) []Layer {
	layers := make([]Layer, len(blobs))
	for i, b := range blobs {
		layers[i] = Layer{Digest: b.Digest, Size: b.Size}
	}
	return layers
}

// imagePull is the state of one image's copy.Image.
type imagePull struct {
	index  int
	target *target
	result *Result
	opts   *Options
	coord  *commit.Coordinator
	slots  *slots
	// runProgress is when any image of the run last made progress (watchdog).
	runProgress *runClock
	runStart    time.Time // what layer timings are measured from
	// image is the current attempt's part in the coordination.
	image *commit.Image
	// stopRun cancels every image of the run, with the cause (failStore).
	stopRun context.CancelCauseFunc

	mu       sync.Mutex
	waits    int                     // this image's waits for other pulls' blobs under way
	lent     int64                   // slots lent to the run while it waits
	fetched  map[digest.Digest]int64 // bytes read per blob, config included
	done     map[digest.Digest]bool
	skipped  map[digest.Digest]How // Reused or Waited
	waitEnds map[digest.Digest]commit.WaitEnd
	partial  map[digest.Digest]bool
	layerIdx map[digest.Digest]int
	timing   map[digest.Digest]*LayerTiming
}

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

func (ip *imagePull) emit(e Event) {
	e.Image = ip.index
	e.Time = time.Now()
	ip.opts.Observe(e)
}

func (ip *imagePull) pull(ctx context.Context) {
	start := time.Now()
	defer func() { ip.result.Duration = time.Since(start) }()
	ip.fetched = map[digest.Digest]int64{}
	ip.done = map[digest.Digest]bool{}
	ip.skipped = map[digest.Digest]How{}
	ip.waitEnds = map[digest.Digest]commit.WaitEnd{}
	ip.partial = map[digest.Digest]bool{}
	ip.layerIdx = map[digest.Digest]int{}
	ip.timing = map[digest.Digest]*LayerTiming{}
	for i, l := range ip.target.layers {
		ip.layerIdx[l.Digest] = i
	}

	err := ip.copyWithRetries(ctx) // names the image in its error
	ip.target.source.close()
	ip.finishLayers()
	if err != nil && ctx.Err() != nil {
		// The run was stopped: say why rather than report whatever the
		// cancelled copy.Image happened to return.
		var fault *storeFault
		switch {
		case errors.As(context.Cause(ctx), &fault) && fault.image == ip.result.Name():
			err = fault
		case errors.As(context.Cause(ctx), &fault):
			err = fmt.Errorf("pulling %s: not completed: the run stopped when %w", ip.result.Name(), fault)
		default: // a signal, or --fail-fast
			err = fmt.Errorf("pulling %s: interrupted before it completed (%w)", ip.result.Name(), ctx.Err())
		}
	}
	if err != nil {
		ip.result.Err = err
		return
	}
	if err := ip.nameImage(); err != nil {
		ip.result.Err = fmt.Errorf("pulling %s: %w", ip.result.Name(), err)
		return
	}
	ip.checkPlatform(ctx)
}

// checkPlatform records the platform of the image pulled and warns, as
// podman does, when it is not the one asked for (--platform, --os, --arch,
// --variant, or the host's): a registry may serve a single-platform image
// for any platform, and containers/image only logs that at info level.
func (ip *imagePull) checkPlatform(ctx context.Context) {
	ref, err := istorage.Transport.NewStoreReference(ip.opts.Store, nil, ip.result.ImageID)
	if err != nil {
		return
	}
	img, err := ref.NewImage(ctx, ip.opts.System)
	if err != nil {
		return
	}
	defer img.Close()
	info, err := img.Inspect(ctx)
	if err != nil || info.Os == "" || info.Architecture == "" {
		return
	}
	got := strings.TrimSuffix(info.Os+"/"+info.Architecture+"/"+info.Variant, "/")
	ip.result.Platform = got
	wantOS, wantArch, wantVariant := runtime.GOOS, runtime.GOARCH, ""
	if sys := ip.opts.System; sys != nil {
		wantOS = cmp.Or(sys.OSChoice, wantOS)
		wantArch = cmp.Or(sys.ArchitectureChoice, wantArch)
		wantVariant = sys.VariantChoice
	}
	if info.Os != wantOS || info.Architecture != wantArch || (wantVariant != "" && info.Variant != wantVariant) {
		want := strings.TrimSuffix(wantOS+"/"+wantArch+"/"+wantVariant, "/")
		logrus.Warnf("%s: image platform (%s) does not match the expected platform (%s)", ip.result.Name(), got, want)
	}
}

// copy runs one attempt: one copy.Image of the image, watched by wd.
func (ip *imagePull) copy(ctx context.Context, wd *watchdog) error {
	ip.mu.Lock()
	for _, l := range ip.target.layers {
		if t := ip.timing[l.Digest]; t == nil || t.Committed == 0 {
			ip.timing[l.Digest] = &LayerTiming{Queued: time.Since(ip.runStart)} // this attempt's, afresh
		}
	}
	ip.mu.Unlock()
	image := ip.coord.Join(ctx, ip.index, commit.Hooks{
		WaitStarted: func(blob digest.Digest, owner string) { ip.waitStarted(wd, blob, owner) },
		WaitEnded:   func(w commit.WaitEvent) { ip.waitEnded(wd, w) },
		CommitStarted: func(blob digest.Digest) {
			wd.committing(blob)
			ip.mark(blob, func(t *LayerTiming) *time.Duration { return &t.FetchEnd })
		},
		Committed: ip.committed,
		CommitFailed: func(blob digest.Digest, err error) {
			if blob != "" {
				err = fmt.Errorf("committing the layer of blob %s: %w", blob, err)
			}
			ip.failStore(err)
		},
	})
	ip.image = image
	defer image.Done()

	dest, err := istorage.Transport.NewStoreReference(image.Store(ip.opts.Store), ip.target.named, ip.target.unnamedID())
	if err != nil {
		return err
	}
	policy, err := signature.NewPolicyContext(ip.opts.Policy) // not safe for concurrent use: one per image
	if err != nil {
		return err
	}
	defer func() { _ = policy.Destroy() }()

	sem := ip.slots.sem
	if image.OneLayerAtATime() { // a layer listed twice: see commit's invariant 7
		if err := sem.Acquire(ctx, 1); err != nil { // the image's one copy counts against --jobs
			return err
		}
		defer sem.Release(1)
		sem = semaphore.NewWeighted(1)
	}

	progress := make(chan types.ProgressProperties)
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		for pp := range progress {
			wd.progress(pp)
			ip.onProgress(pp)
		}
	}()
	_, err = copy.Image(ctx, policy, dest, ip.target.source, &copy.Options{
		SourceCtx:                     ip.opts.System,
		DestinationCtx:                ip.opts.System,
		ConcurrentBlobCopiesSemaphore: sem,
		Progress:                      progress,
		// containers/image sends "skipped" events only with an interval set;
		// the coordinator needs them to end flights (commit.Image.Progress).
		// The interval also bounds what a blob longer than declared writes before the
		// watchdog sees it: one interval's worth of bytes.
		ProgressInterval: progressInterval,
	})
	// containers/image never closes the channel and has stopped sending once
	// copy.Image returns.
	close(progress)
	<-drained
	ip.failStore(err) // a full temporary directory shows only here
	if err != nil && strings.Contains(err.Error(), "image configuration") && ip.target.config.Digest != "" {
		// containers/image's errors about reading or parsing the config
		// (one too big, one that is not JSON) do not say which blob it is.
		err = fmt.Errorf("config blob %s: %w", ip.target.config.Digest, err)
	}
	return err
}

// waitStarted: the image waits for owner's fetch of blob. While it waits it
// lends the run the slots it may hold (pull/slots.go, commit's invariant 4),
// and its watchdog judges nothing (containers/image holds the image's lock).
func (ip *imagePull) waitStarted(wd *watchdog, blob digest.Digest, owner string) {
	wd.waitStarted()
	ip.mark(blob, func(t *LayerTiming) *time.Duration { return &t.WaitStart })
	ip.mu.Lock()
	if ip.waits++; ip.waits == 1 {
		ip.lent = ip.slots.lend(int64(len(ip.target.layers)))
	}
	ip.mu.Unlock()
	ip.emit(Event{Kind: EventLayerWaiting, Blob: blob, Owner: owner})
}

// waitEnded: the wait for w.Blob ended; the last one takes the slots back.
func (ip *imagePull) waitEnded(wd *watchdog, w commit.WaitEvent) {
	wd.waitEnded()
	ip.markAt(w.Blob, func(t *LayerTiming) *time.Duration { return &t.WaitEnd }, true)
	ip.mu.Lock()
	ip.waitEnds[w.Blob] = w.End
	if ip.waits--; ip.waits == 0 {
		ip.slots.reclaim(ip.lent)
		ip.lent = 0
	}
	ip.mu.Unlock()
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
// the coordinator has seen them.
func (ip *imagePull) onProgress(pp types.ProgressProperties) {
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

// nameImage finds the pulled image in the store and gives it the names of
// every input that resolved to it, as podman would after pulling each of
// them.
func (ip *imagePull) nameImage() error {
	id := ip.target.unnamedID()
	if id == "" {
		id = ip.target.named.String()
	}
	img, err := ip.opts.Store.Image(id)
	if err != nil {
		return fmt.Errorf("finding the pulled image in the store: %w", err)
	}
	ip.result.ImageID = img.ID
	var extra []string
	for _, a := range ip.target.aliases {
		extra = append(extra, reference.TagNameOnly(a).String())
	}
	if len(extra) > 0 {
		if err := ip.opts.Store.AddNames(img.ID, extra); err != nil {
			return fmt.Errorf("naming image %s: %w", img.ID, err)
		}
	}
	if img, err = ip.opts.Store.Image(img.ID); err == nil {
		ip.result.Names = img.Names
	}
	if ip.target.candidate == nil {
		return nil
	}
	if err := ip.target.candidate.Record(); err != nil && !errors.Is(err, context.Canceled) {
		logrus.Warnf("%s: recording short-name alias: %v", ip.result.Name(), err)
	}
	return nil
}
