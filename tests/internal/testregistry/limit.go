package testregistry

import (
	"context"
	"sync"
	"time"
)

// limiter is a token bucket with no burst, shared by all connections: each
// caller reserves the next n/rate seconds of the link in FIFO order and waits
// until that slot ends, so total throughput never exceeds rate.
type limiter struct {
	mu   sync.Mutex
	rate float64 // bytes per second
	next time.Time
}

func newLimiter(bytesPerSecond int64) *limiter {
	return &limiter{rate: float64(bytesPerSecond)}
}

// wait blocks until n bytes may be sent, or ctx is done.
func (l *limiter) wait(ctx context.Context, n int) error {
	l.mu.Lock()
	now := time.Now()
	if l.next.Before(now) {
		l.next = now
	}
	l.next = l.next.Add(time.Duration(float64(n) / l.rate * float64(time.Second)))
	until := l.next
	l.mu.Unlock()

	t := time.NewTimer(time.Until(until))
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}
