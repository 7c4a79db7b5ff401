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
	cache := blobinfocache.DefaultCache(opts.System)
	diffIDs, _ := cache.(commit.DiffIDs) // nil if a future cache lacks TOC lookups
	// Other herd processes on the store share their fetches through locks
	// under its run root; without them this run coordinates only its own.
	var locks *commit.BlobLocks
	if !opts.NoBlobLocks {
		var err error
		if locks, err = commit.OpenBlobLocks(filepath.Join(opts.Store.RunRoot(), "herd-blob-locks")); err != nil {
			logrus.Warnf("%v: not coordinating fetches with other herd processes on this store", err)
		}
	}
	tocs := &readTOCs{}
	coord := commit.NewCoordinator(planOf(targets, results), layerFilesOf(ctx, targets, &opts, diffIDs, tocs), diffIDs, locks)
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
	if reserve > 0 { // some layer may be committed
		coord.ProbeDriver(opts.Store)
	}
	// The lead image starts first (commit/similar.go), the others once it
	// has decided the layers that theirs share files with.
	lead, leadReady := coord.Lead()
	leadEnded := make(chan struct{})
	var wg sync.WaitGroup
	for _, i := range startOrder(targets) {
		t := targets[i]
		wg.Add(1)
		go func() {
			defer wg.Done()
			run := &imagePull{index: i, target: t, result: results[i], opts: &opts, coord: coord, cache: cache, tocs: tocs, runProgress: runProgress, runStart: runStart, slots: slots, stopRun: cancel}
			if i == lead {
				defer close(leadEnded)
			} else if lead >= 0 {
				run.startAfter = func() {
					select {
					case <-leadReady:
					case <-leadEnded:
					case <-ctx.Done():
					}
				}
			}
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
	cache  types.BlobInfoCache // the run's, as copy.Image opens it
	tocs   *readTOCs           // read before the pulls started (toc.go)
	slots  *slots
	// runProgress is when any image of the run last made progress (watchdog).
	runProgress *runClock
	runStart    time.Time // what layer timings are measured from
	// image is the current attempt's part in the coordination.
	image *commit.Image
	// stopRun cancels every image of the run, with the cause (failStore).
	stopRun context.CancelCauseFunc
	// startAfter, if set, returns when the image's copy may start (the
	// lead image's, commit/similar.go); the image's time counts from before.
	startAfter func()

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

func (ip *imagePull) emit(e Event) {
	e.Image = ip.index
	e.Time = time.Now()
	ip.opts.Observe(e)
}

func (ip *imagePull) pull(ctx context.Context) {
	start := time.Now()
	defer func() { ip.result.Duration = time.Since(start) }()
	if ip.startAfter != nil {
		ip.startAfter()
	}
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
		WaitStarted: func(w commit.WaitEvent) { ip.waitStarted(wd, w) },
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
	image.FetchLayers(ip.layerFetches(ip.target.source.next(ctx, ip.opts.System), progress))
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		for pp := range progress {
			if ip.onProgress(pp) == commit.NotEnded && pp.Event == types.ProgressEventSkipped {
				continue // a layer herd fetches itself: its transfer stays timed
			}
			wd.progress(pp)
		}
	}()
	_, err = copy.Image(ctx, policy, dest, ip.target.source, &copy.Options{
		SourceCtx:                     ip.opts.System,
		DestinationCtx:                ip.opts.System,
		ConcurrentBlobCopiesSemaphore: sem,
		Progress:                      progress,
		// containers/image sends "skipped" events only with an interval set;
		// the coordinator needs them to end flights (commit.Image.Progress).
		// The interval also bounds what a blob longer than declared writes
		// before the watchdog sees it: one interval's worth of bytes.
		ProgressInterval: progressInterval,
	})
	// containers/image never closes the channel and has stopped sending once
	// copy.Image returns; herd's own fetches stop here.
	image.EndLayerFetches()
	if werr := image.LayerFetchError(); err != nil && werr != nil {
		err = werr // containers/image says only that it could not find the layer
	}
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
