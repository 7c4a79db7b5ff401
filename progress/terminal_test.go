package progress

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/herd-project/herd/pull"
)

// Rows go to images under way before queued ones, and among equals to those
// that have one already, in the images' order; finished images get none and
// are not counted as hidden.
func TestPickRows(t *testing.T) {
	shots := []snapshot{
		{index: 0, finished: true},
		{index: 1},                // queued, has a row
		{index: 2, started: true}, // under way, no row yet
		{index: 3, started: true}, // under way, has a row
		{index: 4},                // queued, no row
		{index: 5, started: true}, // under way, no row yet
	}
	hasRow := func(image int) bool { return image == 1 || image == 3 }
	for _, tc := range []struct {
		budget int
		shown  []int
		hidden int
	}{
		{budget: 10, shown: []int{3, 2, 5, 1, 4}},
		{budget: 3, shown: []int{3, 2, 5}, hidden: 2},
		{budget: 1, shown: []int{3}, hidden: 4},
		{budget: 0, hidden: 5},
	} {
		shown, hidden := pickRows(shots, tc.budget, hasRow)
		var got []int
		for _, s := range shown {
			got = append(got, s.index)
		}
		if !slices.Equal(got, tc.shown) || hidden != tc.hidden {
			t.Errorf("budget %d: rows for %v, %d hidden; want %v, %d", tc.budget, got, hidden, tc.shown, tc.hidden)
		}
	}
}

// The total line counts finished images as ok or failed and everyone's
// bytes; on a narrow terminal it gives up the reused bytes and the rate
// before the elapsed time.
func TestTotalLine(t *testing.T) {
	shots := []snapshot{
		{index: 0, finished: true, result: &pull.Result{BytesFetched: 3000, Layers: []pull.Layer{{Size: 500, How: pull.Reused}}}},
		{index: 1, finished: true, failed: true, result: &pull.Result{BytesFetched: 100, Err: errors.New("boom")}},
		{index: 2, fetched: 20, reused: 7},
	}
	term := &Terminal{start: time.Now()}
	head := "total: 1/3 done, 1 failed, 2 more · " + size(3120) + " fetched"
	if line := term.totalLine(shots, 2, 200, false); !strings.HasPrefix(line, head+" at ") || !strings.Contains(line, " · "+size(507)+" reused · ") {
		t.Errorf("wide: %q, want it to start %q and count %s reused", line, head, size(507))
	}
	if line := term.totalLine(shots, 2, len(head)+10, true); !strings.HasPrefix(line, head+" · ") {
		t.Errorf("narrow: %q, want it to start %q and the elapsed time next", line, head)
	}
}
