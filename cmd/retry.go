package cmd

import (
	"time"

	"github.com/spf13/pflag"

	"github.com/herd-project/herd/pull"
)

// retryOptions are podman pull's --retry and --retry-delay (skopeo's retry
// flags are the model: the values go straight to containers/common's
// pkg/retry), and --stall-timeout, herd's bound on a transfer that delivers
// nothing. containers.conf's retry and retry_delay replace the defaults of
// the first two (containersconf.go).
type retryOptions struct {
	retries      uint
	delay        time.Duration
	stallTimeout time.Duration
}

func (o *retryOptions) flags(fs *pflag.FlagSet) {
	fs.UintVar(&o.retries, "retry", pull.DefaultRetries, "number of times to retry pulling an image after a transient failure (network error, HTTP 5xx or 429, stalled transfer); containers.conf's retry, if set, replaces the default")
	fs.DurationVar(&o.delay, "retry-delay", 0, "wait `DURATION` between retries (default: containers.conf's retry_delay, else exponential backoff from 1s)")
	fs.DurationVar(&o.stallTimeout, "stall-timeout", pull.DefaultStallTimeout, "abandon and retry an image's transfer when it receives less than 1 KiB in `DURATION`")
}

// apply validates the values and sets them in opts.
func (o *retryOptions) apply(opts *pull.Options) error {
	if o.delay < 0 {
		return usageErrorf("--retry-delay %s: must not be negative", o.delay)
	}
	if o.stallTimeout <= 0 {
		return usageErrorf("--stall-timeout %s: must be positive", o.stallTimeout)
	}
	opts.Retries = int(o.retries)
	opts.RetryDelay = o.delay
	opts.StallTimeout = o.stallTimeout
	return nil
}
