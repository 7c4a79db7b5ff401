package pull

import (
	"context"
	"testing"
	"time"
)

// Invariant 4 of package commit, the engine's side: a waiting image lends
// its slots, so a copy that needs a slot gets one although every slot is
// held; and the lent slots return to the reserve once they are free again.
func TestSlotsLendAndReclaim(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := newSlots(ctx, 1, 4)
	if err := s.sem.Acquire(ctx, 1); err != nil { // the waiting image's layer holds the only slot
		t.Fatal(err)
	}
	blocked, bcancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer bcancel()
	if s.sem.Acquire(blocked, 1) == nil {
		t.Fatal("a second slot was free with --jobs 1")
	}
	if n := s.lend(2); n != 2 {
		t.Fatalf("lent %d slots, want 2", n)
	}
	if err := s.sem.Acquire(ctx, 1); err != nil { // the owner's next copy
		t.Fatal(err)
	}
	s.reclaim(2)
	s.sem.Release(1) // the owner's copy ends
	s.sem.Release(1) // the waiting layer's copy ends
	deadline := time.Now().Add(5 * time.Second)
	for {
		s.mu.Lock()
		r := s.reserve
		s.mu.Unlock()
		if r == 4 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("reserve %d after the copies ended, want 4 again", r)
		}
		time.Sleep(time.Millisecond)
	}
	if !s.sem.TryAcquire(1) || s.sem.TryAcquire(1) {
		t.Error("after the reclaim, the run does not have exactly --jobs (1) slots")
	}
	if n := newSlots(ctx, 1, 1).lend(3); n != 1 {
		t.Errorf("lent %d slots from a reserve of 1", n)
	}
}
