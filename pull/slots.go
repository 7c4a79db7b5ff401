package pull

import (
	"context"
	"sync"

	"golang.org/x/sync/semaphore"
)

// slots is the run's one blob-copy semaphore (copy.Options'
// ConcurrentBlobCopiesSemaphore, shared by every image), with a reserve that
// lets an image that waits for another pull's blob lend the run the slots
// it holds.
//
// Why: containers/image takes a slot for every layer of an image (in layer
// order) and for its config, and keeps it while the layer's goroutine runs.
// A waiting image holds a slot for the waiting layer, and its other layers
// hold slots while they block on the image's destination lock, which the
// wait holds. If waiting images held every slot, an owner that still needs
// one (for an upper layer, or for its config before its copy.Image can
// return and hand the blob over) would never get it: a deadlock with no
// clock to end it. So while an image waits, the slots its layers can hold
// (one per layer) are added to the run's capacity from the reserve, and
// taken back, in the background, as they free up after the wait. Copies
// that are not waiting therefore never number more than --jobs, except for
// the moments between a wait's end and the reclaim of the lent slots.
type slots struct {
	sem *semaphore.Weighted
	ctx context.Context // the run's: reclaims stop when it ends

	mu      sync.Mutex
	reserve int64 // slots herd holds, not lent
}

// newSlots makes a semaphore of jobs slots for copies plus reserve slots
// that herd holds for lending.
func newSlots(ctx context.Context, jobs int, reserve int64) *slots {
	s := &slots{sem: semaphore.NewWeighted(int64(jobs) + reserve), ctx: ctx, reserve: reserve}
	_ = s.sem.Acquire(context.Background(), reserve) // nobody else holds a slot yet: immediate
	return s
}

// lend releases up to n reserve slots to the run and says how many it lent.
func (s *slots) lend(n int64) int64 {
	s.mu.Lock()
	n = min(n, s.reserve)
	s.reserve -= n
	s.mu.Unlock()
	if n > 0 {
		s.sem.Release(n)
	}
	return n
}

// reclaim takes n lent slots back into the reserve, one at a time as they
// free up, without blocking the caller (a waiting image's wait has ended
// and its layers go on at once).
func (s *slots) reclaim(n int64) {
	if n <= 0 {
		return
	}
	go func() {
		for range n {
			if s.sem.Acquire(s.ctx, 1) != nil {
				return // the run is over
			}
			s.mu.Lock()
			s.reserve++
			s.mu.Unlock()
		}
	}()
}
