package pull

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"syscall"

	"github.com/docker/distribution/registry/api/errcode"
	"go.podman.io/common/pkg/retry"
	"go.podman.io/image/v5/docker"

	"github.com/herd-project/herd/commit"
)

// DefaultRetries is podman pull's default --retry.
const DefaultRetries = 3

// copyWithRetries pulls the image and, after a transient failure, pulls it
// again, at most opts.Retries more times. The loop is containers/common's
// pkg/retry, podman pull's own, so --retry and --retry-delay behave as
// podman's do (exponential backoff from 1s unless a delay is given, with
// jitter; each retry logged as a warning). Like podman, a retry is a whole
// new copy.Image: layers the failed attempt committed are found in the store
// and reused, and only blobs that were not committed are fetched again.
//
// The returned error names the image.
func (ip *imagePull) copyWithRetries(ctx context.Context) error {
	var last error
	return retry.IfNecessary(ctx, func() error {
		if ip.result.Attempts > 0 {
			ip.emit(Event{Kind: EventRetrying, Err: last})
		}
		ip.result.Attempts++
		if err := ip.attempt(ctx); err != nil {
			// Named here, so that pkg/retry's warning says which image it retries.
			last = fmt.Errorf("pulling %s: %w", ip.result.Name(), err)
			return last
		}
		return nil
	}, retryOptions(ctx, ip.opts))
}

// resolveWithRetries is resolve, retried as an image's copy is: reading
// a manifest meets the same transient failures as reading a blob. A
// manifest is small and reports no progress, so each attempt is simply
// bounded by the stall timeout, and one that runs out is retried. It
// returns how many attempts it made, and errors that name the input (so
// does pkg/retry's warning before each retry).
func resolveWithRetries(ctx context.Context, opts Options, input string) (*target, int, error) {
	var t *target
	attempts := 0
	err := retry.IfNecessary(ctx, func() error {
		attempts++
		stalled := &stallError{timeout: opts.StallTimeout, what: "reading the manifest of " + input}
		actx, cancel := context.WithTimeoutCause(ctx, opts.StallTimeout, stalled)
		defer cancel()
		var err error
		t, err = resolve(actx, opts.System, opts.Interactive, input)
		if err != nil && ctx.Err() == nil && context.Cause(actx) == stalled {
			err = stalled
		}
		if err != nil {
			return fmt.Errorf("pulling %s: %w", input, err)
		}
		return nil
	}, retryOptions(ctx, &opts))
	return t, attempts, err
}

// retryOptions configures pkg/retry for a run: --retry, --retry-delay, and
// herd's idea of transient (retryable); nothing is retried once ctx is done.
func retryOptions(ctx context.Context, opts *Options) *retry.Options {
	return &retry.Options{
		MaxRetry: opts.Retries,
		Delay:    opts.RetryDelay,
		IsErrorRetryable: func(err error) bool {
			return ctx.Err() == nil && retryable(err)
		},
	}
}

// attempt is one copy.Image of the image under its own watchdog, in its own
// context: a stalled transfer cancels this image's attempt only.
func (ip *imagePull) attempt(ctx context.Context) error {
	actx, abandon := context.WithCancelCause(ctx)
	defer abandon(nil)
	wd := startWatchdog(ip.opts.StallTimeout, ip.runProgress, abandon)
	defer wd.stop()
	err := ip.copy(actx, wd)
	if cause := context.Cause(actx); errors.Is(err, context.Canceled) && ctx.Err() == nil && cause != nil && cause != context.Canceled {
		// The watchdog abandoned the attempt (a stall, an oversized blob):
		// what copy.Image returns then is only "context canceled". Any other
		// error is the attempt's own (a blob's fetch failed before the
		// watchdog fired for it): that one is reported.
		return cause
	}
	return err
}

// retryable reports whether a failed attempt is worth another. Yes for what
// can go away by itself: network errors, server errors (5xx), rate limits
// (429), a body cut short, a stalled transfer, a layer another process
// removed from under the pull (the next attempt starts from the store as it
// is), a file of a layer being committed that another process's cleanup
// removed (commit.ErrFileVanished). No for what cannot: 4xx such as 404
// and 401, a digest mismatch, a bad layer, a blob longer than declared, a
// full disk, a cancelled run.
//
// containers/common's retry.IsErrorRetryable (podman's heuristic) decides
// the general case; herd adds what that heuristic does not cover and a pull
// of many images meets: a 500 or 501 (it retries only 502-504), a 429 that
// outlasted containers/image's own five tries (a plain error value there),
// a body cut short (io.ErrUnexpectedEOF, after containers/image's one
// reconnection), and herd's own stall; and it rules out registry error codes
// whose HTTP status is 4xx, which the heuristic would retry (BLOB_UNKNOWN).
func retryable(err error) bool {
	switch {
	case err == nil, storeFailure(err):
		return false
	case errors.Is(err, errStalled), errors.Is(err, commit.ErrLayerRemoved), errors.Is(err, commit.ErrFileVanished):
		return true
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return false
	case errors.Is(err, docker.ErrTooManyRequests), errors.Is(err, io.ErrUnexpectedEOF):
		return true
	}
	if e, ok := errors.AsType[docker.UnexpectedHTTPStatusError](err); ok {
		return e.StatusCode >= 500 || e.StatusCode == http.StatusTooManyRequests
	}
	if e, ok := errors.AsType[errcode.Error](err); ok {
		status := e.Code.Descriptor().HTTPStatusCode
		if status >= 400 && status < 500 {
			return status == http.StatusTooManyRequests
		}
	}
	return retry.IsErrorRetryable(err)
}

// storeFailure reports whether err is a failure of the local disk that no
// retry can fix and that every other image of the run would meet as well:
// no space left (in the store or the temporary directory), a quota
// exceeded, a read-only filesystem. The first such failure stops the run
// (imagePull.failStore), so that the images still going fail at once
// instead of fetching blobs they cannot write, and no waiting image takes
// over a blob whose owner could not write it.
//
// The text is matched too: containers/storage applies a layer in a
// re-executed child process, and an error from there is only a message.
func storeFailure(err error) bool {
	msg := err.Error()
	for _, errno := range []syscall.Errno{syscall.ENOSPC, syscall.EDQUOT, syscall.EROFS} {
		if errors.Is(err, errno) || strings.Contains(msg, errno.Error()) {
			return true
		}
	}
	return false
}

// storeFault is the failure that stopped the run: a storeFailure of one
// image.
type storeFault struct {
	image string
	err   error
}

func (f *storeFault) Error() string { return fmt.Sprintf("pulling %s: %v", f.image, f.err) }

func (f *storeFault) Unwrap() error { return f.err }

// failStore stops the run if err is a storeFailure of this image. Call it
// before the image's commit.Image is done, so that images waiting for its
// blobs see the run stopped rather than the blobs handed over to them.
func (ip *imagePull) failStore(err error) {
	if err != nil && storeFailure(err) {
		ip.stopRun(&storeFault{image: ip.result.Name(), err: err})
	}
}
