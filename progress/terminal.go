package progress

import (
	"cmp"
	"fmt"
	"math"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
	"golang.org/x/term"

	"github.com/herd-project/herd/pull"
)

// refreshRate is how often the terminal is redrawn (mpb's own default).
const refreshRate = 150 * time.Millisecond

// Terminal draws a run on a terminal through one mpb container: a line per
// image in flight (name, layers obtained of total, bytes fetched, state, and
// a bar of the layer bytes obtained) above a total line. When an image
// finishes, its final line (done with its short ID, or failed with the whole
// reason) is printed above the bars, where it scrolls like a log line, and
// its bar goes away; so the live area holds only images in flight. It never
// grows taller than the terminal: images without a row are counted on the
// total line and get one as rows free up, those fetching first. Lines are
// cut to the terminal's width, names from the left (the tag is what tells
// images apart).
//
// Terminal is an io.Writer: give it to logrus while the run goes on, and log
// lines are printed above the bars instead of through them (mpb's own
// Progress.Write); before the first event and after Close they go straight
// to the terminal.
//
// mpb draws only when this display asks (manual refresh), from one
// goroutine that also does every mpb call, so Observe only records the
// event under a mutex and never waits on the terminal.
type Terminal struct {
	out   *os.File
	start time.Time

	mu        sync.Mutex
	images    []*imageView  // by pull.Event.Image
	container *mpb.Progress // holds every bar; made at the first event
	closed    bool

	// Owned by the drawing goroutine (and Close, once it has stopped).
	refresh   chan any
	rendering chan struct{} // mpb is drawing a frame
	quit      chan struct{}
	stopped   chan struct{}
	rows      map[int]*row // image index → its line in the live area
	reported  map[int]bool // final line queued
	pending   []string     // final lines to print at the next frame
	priority  int          // the newest row's: new rows go below the others
	total     *mpb.Bar
	totalText atomic.Pointer[string]
	samples   []sample
}

// row is an image's line in the live area: the text before the bar, set by
// update and read by mpb's goroutine as it draws, and the bar.
type row struct {
	bar  *mpb.Bar
	text atomic.Pointer[string]
}

// sample is the bytes fetched by a moment, for the rate on the total line.
type sample struct {
	at      time.Time
	fetched int64
}

// NewTerminal returns a Terminal drawing on out, which must be a terminal.
// Nothing is drawn until the first event: before it herd resolves short
// names, which may ask the user a question on the same terminal.
func NewTerminal(out *os.File) *Terminal {
	return &Terminal{
		out: out, start: time.Now(),
		refresh: make(chan any), rendering: make(chan struct{}, 1), quit: make(chan struct{}), stopped: make(chan struct{}),
		rows: map[int]*row{}, reported: map[int]bool{},
	}
}

func (t *Terminal) Observe(e pull.Event) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return
	}
	for len(t.images) <= e.Image {
		t.images = append(t.images, newImageView(len(t.images)))
	}
	t.images[e.Image].observe(e)
	if t.container == nil {
		t.container = mpb.New(mpb.WithOutput(t.out), mpb.WithManualRefresh(t.refresh))
		go t.loop()
	}
}

// Write prints b above the bars while they are drawn, else straight to
// the terminal.
func (t *Terminal) Write(b []byte) (int, error) {
	t.mu.Lock()
	container, closed := t.container, t.closed
	t.mu.Unlock()
	if container != nil && !closed {
		if n, err := container.Write(b); err == nil {
			return n, nil
		}
	}
	return t.out.Write(b)
}

// Close draws the final state: every image's final line, then the total
// line, which stays on the terminal.
func (t *Terminal) Close() {
	t.mu.Lock()
	container := t.container
	t.mu.Unlock()
	if container == nil {
		return // no event, nothing drawn
	}
	close(t.quit)
	<-t.stopped
	t.update(false) // drops the last bars
	t.render()
	t.update(true) // prints their lines; the total line completes
	t.render()
	t.mu.Lock()
	t.closed = true
	t.mu.Unlock()
	container.Wait()
}

func (t *Terminal) loop() {
	defer close(t.stopped)
	tick := time.NewTicker(refreshRate)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			t.update(false)
			t.render()
		case <-t.quit:
			return
		}
	}
}

// render has mpb draw a frame, and returns once it has begun: from then on
// mpb prints what is written to it (final lines, log lines) only after
// that frame, so a line queued after a bar was dropped never shows beside
// the bar's last frame.
func (t *Terminal) render() {
	select {
	case <-t.rendering: // stale
	default:
	}
	// mpb stops drawing for good on a terminal error: never hang herd on it.
	select {
	case t.refresh <- time.Now():
	case <-time.After(time.Second):
		return
	}
	select {
	case <-t.rendering:
	case <-time.After(time.Second):
	}
}

// screenSize is the terminal's, or 80x24 if it cannot be had.
func (t *Terminal) screenSize() (width, height int) {
	w, h, err := term.GetSize(int(t.out.Fd()))
	if err != nil || w <= 0 || h <= 0 {
		return 80, 24
	}
	return w, h
}

// update brings the bars in line with the images' state; the next render
// shows it. With final, every image is finished and the total line
// completes.
func (t *Terminal) update(final bool) {
	width, height := t.screenSize()
	shots := t.snapshots()
	cols := newColumns(width, shots)
	t.retireFinished(shots, cols, final)
	// Rows: at most what the terminal holds besides the total line and the
	// cursor's line; none once final.
	budget := max(1, height-2)
	if final {
		budget = 0
	}
	shown, hidden := pickRows(shots, budget, func(image int) bool { return t.rows[image] != nil })
	t.updateRows(shown, cols)
	t.updateTotal(shots, hidden, width, final)
}

// snapshots are the images as this frame shows them, taken under the lock
// so that Observe is held up only while they are copied.
func (t *Terminal) snapshots() []snapshot {
	t.mu.Lock()
	defer t.mu.Unlock()
	shots := make([]snapshot, len(t.images))
	for i, v := range t.images {
		shots[i] = v.snapshot()
	}
	return shots
}

// retireFinished drops the rows of images that finished since the last
// frame and prints their final lines above the bars, in the order they
// finished, one frame later: mpb draws a dropped bar once more, and the
// line must not show twice. With final there is no later frame, so they
// are printed now.
func (t *Terminal) retireFinished(shots []snapshot, cols columns, final bool) {
	t.printPending()
	var finished []snapshot
	for _, s := range shots {
		if s.finished && !t.reported[s.index] {
			finished = append(finished, s)
		}
	}
	slices.SortStableFunc(finished, func(a, b snapshot) int { return a.finishedAt.Compare(b.finishedAt) })
	for _, s := range finished {
		t.reported[s.index] = true
		t.pending = append(t.pending, cols.final(s))
		if r := t.rows[s.index]; r != nil {
			text := cols.live(s) // what its last frame shows
			r.text.Store(&text)
			r.bar.SetCurrent(s.obtainedBytes)
			r.bar.Abort(true)
			delete(t.rows, s.index)
		}
	}
	if final {
		t.printPending()
	}
}

// printPending prints the queued final lines above the bars.
func (t *Terminal) printPending() {
	for _, line := range t.pending {
		_, _ = t.container.Write([]byte(line + "\n"))
	}
	t.pending = t.pending[:0]
}

// pickRows chooses which unfinished images get one of the budget's rows,
// and counts the others, which the total line shows as "N more". Images
// under way (fetching, waiting, committing) come first, then the queued ones
// that have not started; among equals, those that have a row keep it, so
// lines do not jump.
func pickRows(shots []snapshot, budget int, hasRow func(image int) bool) (shown []snapshot, hidden int) {
	rank := func(s snapshot) int {
		r := 0
		if !s.started {
			r += 2
		}
		if !hasRow(s.index) {
			r++
		}
		return r
	}
	var unfinished []snapshot
	for _, s := range shots {
		if !s.finished {
			unfinished = append(unfinished, s)
		}
	}
	slices.SortStableFunc(unfinished, func(a, b snapshot) int { return cmp.Compare(rank(a), rank(b)) })
	shown = unfinished[:min(len(unfinished), budget)]
	return shown, len(unfinished) - len(shown)
}

// updateRows gives each image shown a row, creating the ones it lacks below
// the others, and drops the rows of images no longer shown.
func (t *Terminal) updateRows(shown []snapshot, cols columns) {
	keep := map[int]bool{}
	for _, s := range shown {
		keep[s.index] = true
	}
	for i, r := range t.rows {
		if !keep[i] {
			r.bar.Abort(true)
			delete(t.rows, i)
		}
	}
	for _, s := range shown {
		r := t.rows[s.index]
		if r == nil {
			r = &row{}
			r.text.Store(new(string))
			t.priority++
			r.bar = t.container.New(0, mpb.BarStyle(),
				mpb.BarPriority(t.priority), mpb.BarWidth(max(1, cols.bar)),
				mpb.PrependDecorators(decor.Any(func(decor.Statistics) string { return *r.text.Load() })))
			t.rows[s.index] = r
		}
		text := cols.live(s)
		r.text.Store(&text)
		r.bar.SetTotal(max(1, s.layerBytes), false)
		r.bar.SetCurrent(s.obtainedBytes)
	}
}

// updateTotal sets the total line. Its bar, made at the first frame, stays
// below every row; its decorator is also how render learns that mpb has
// begun a frame.
func (t *Terminal) updateTotal(shots []snapshot, hidden, width int, final bool) {
	text := t.totalLine(shots, hidden, width, final)
	t.totalText.Store(&text)
	if t.total == nil {
		t.total = t.container.New(0, mpb.NopStyle(), mpb.BarPriority(math.MaxInt32), mpb.BarFillerTrim(),
			mpb.PrependDecorators(decor.Any(func(decor.Statistics) string {
				// mpb calls this while it renders a frame, which render waits for.
				select {
				case t.rendering <- struct{}{}:
				default:
				}
				return *t.totalText.Load()
			})))
	}
	if final {
		t.total.SetTotal(-1, true)
	}
}

// totalLine is the run so far: images done and failed, bytes fetched and the
// rate (over the last few seconds while running, over the run at the end),
// bytes reused, time elapsed.
func (t *Terminal) totalLine(shots []snapshot, hidden, width int, final bool) string {
	run := runSoFar(shots)
	fetched := run.Fetched
	now := time.Now()
	elapsed := now.Sub(t.start)
	t.samples = append(t.samples, sample{now, fetched})
	for len(t.samples) > 2 && now.Sub(t.samples[1].at) > 3*time.Second {
		t.samples = t.samples[1:]
	}
	rate := 0.0
	if first := t.samples[0]; final && elapsed > 0 {
		rate = float64(fetched) / elapsed.Seconds()
	} else if d := now.Sub(first.at); d > 0 {
		rate = float64(fetched-first.fetched) / d.Seconds()
	}
	parts := []string{fmt.Sprintf("total: %d/%d done", run.OK, len(shots))}
	if run.Failed > 0 {
		parts = append(parts, fmt.Sprintf("%d failed", run.Failed))
	}
	if hidden > 0 {
		parts = append(parts, fmt.Sprintf("%d more", hidden))
	}
	// On a narrow terminal the reused bytes go first, then the rate, so the
	// elapsed time stays in view.
	head, took := strings.Join(parts, ", "), elapsed.Round(100*time.Millisecond)
	for _, line := range []string{
		fmt.Sprintf("%s · %s fetched at %s/s · %s reused · %s", head, size(fetched), size(int64(rate)), size(run.Reused), took),
		fmt.Sprintf("%s · %s fetched at %s/s · %s", head, size(fetched), size(int64(rate)), took),
	} {
		if len([]rune(line)) < width {
			return line
		}
	}
	return fmt.Sprintf("%s · %s fetched · %s", head, size(fetched), took)
}

// runSoFar adds up the images of a frame: those finished by their results,
// as Plain and the summary count them, the others by what their events have
// said so far.
func runSoFar(shots []snapshot) Totals {
	var run Totals
	for _, s := range shots {
		if s.finished {
			run.add(s.result)
		} else {
			run.Fetched += s.fetched
			run.Reused += s.reused
		}
	}
	return run
}

// imageView is what the events of one image have said so far.
type imageView struct {
	index      int
	name       string
	layers     []pull.Layer
	sizes      map[string]int64  // layer size by digest
	listed     map[string]int    // how many times the manifest lists each blob
	reading    map[string]int64  // layers in flight: bytes read
	waiting    map[string]string // layers another pull fetches: its name
	obtained   map[string]int    // how many of a blob's occurrences are obtained, lowest first
	fetched    int64
	reused     int64
	retries    int // attempts that failed and were retried
	retrying   bool
	result     *pull.Result // set when finished
	finishedAt time.Time
}

func newImageView(index int) *imageView {
	v := &imageView{index: index}
	v.reset()
	return v
}

// reset forgets the layers' progress, for a new attempt.
func (v *imageView) reset() {
	v.reading, v.waiting, v.obtained = map[string]int64{}, map[string]string{}, map[string]int{}
}

func (v *imageView) observe(e pull.Event) {
	if e.Result != nil {
		v.name = e.Result.Name()
		v.layers = e.Result.Layers
		v.sizes, v.listed = map[string]int64{}, map[string]int{}
		for _, l := range v.layers {
			v.sizes[l.Digest.String()] = l.Size
			v.listed[l.Digest.String()]++
		}
	}
	blob := e.Blob.String()
	switch e.Kind {
	case pull.EventLayerStarted:
		v.retrying = false
		v.reading[blob] = 0
		delete(v.waiting, blob)
	case pull.EventLayerRead:
		v.retrying = false
		v.fetched += e.Bytes
		if v.obtained[blob] < v.listed[blob] {
			v.reading[blob] += e.Bytes
		}
	case pull.EventLayerWaiting:
		v.retrying = false
		v.waiting[blob] = e.Owner
	case pull.EventLayerDone:
		v.retrying = false
		delete(v.reading, blob)
		delete(v.waiting, blob)
		// A blob the manifest lists twice ends twice, once per occurrence.
		if v.obtained[blob] < v.listed[blob] {
			if e.How == pull.Reused || e.How == pull.Waited {
				v.reused += v.sizes[blob]
			}
			v.obtained[blob]++
		}
	case pull.EventRetrying:
		v.retries++
		v.retrying = true
		v.reset()
	case pull.EventImageDone:
		v.result = e.Result
		v.finishedAt = e.Time
		// The result counts what events do not: the config, and for a
		// partial pull the part of each layer that was reused.
		v.fetched, v.reused = e.Result.BytesFetched, reusedBytes(e.Result)
	}
}

// snapshot is an imageView as one frame shows it.
type snapshot struct {
	index                     int
	name, state               string
	owner                     string // waiting for: the image fetching the blob
	started                   bool   // a layer is under way or obtained in this attempt
	layersDone, layers        int
	fetched, reused           int64
	obtainedBytes, layerBytes int64 // of the layers, for the bar
	finished, failed          bool
	finishedAt                time.Time
	result                    *pull.Result
}

func (v *imageView) snapshot() snapshot {
	s := snapshot{index: v.index, name: v.name, layers: len(v.layers), fetched: v.fetched, reused: v.reused,
		result: v.result, finishedAt: v.finishedAt}
	seen := map[string]int{} // occurrences of each blob so far
	for _, l := range v.layers {
		d := l.Digest.String()
		s.layerBytes += l.Size
		seen[d]++
		switch {
		case seen[d] <= v.obtained[d]:
			s.layersDone++
			s.obtainedBytes += l.Size
		case seen[d] == v.obtained[d]+1: // the occurrence being read
			s.obtainedBytes += min(v.reading[d], l.Size)
		}
	}
	s.started = s.layersDone > 0 || len(v.reading) > 0 || len(v.waiting) > 0 || v.retrying
	switch r := v.result; {
	case r != nil && r.Failed():
		s.finished, s.failed, s.state = true, true, "failed"
	case r != nil:
		s.finished, s.state = true, "done "+shortID(r.ImageID)
	case v.retrying:
		s.state = fmt.Sprintf("retrying (attempt %d)", v.retries+1)
	case s.layers > 0 && s.layersDone == s.layers:
		s.state = "committing"
	case len(v.reading) > 0:
		s.state = "fetching"
	case len(v.waiting) > 0:
		blobs := make([]string, 0, len(v.waiting))
		for b := range v.waiting {
			blobs = append(blobs, b)
		}
		slices.Sort(blobs)
		s.state, s.owner = "waiting for ", v.waiting[blobs[0]]
	default:
		// Reading its manifest and config, or waiting for a --jobs slot.
		s.state = "queued"
	}
	return s
}

// columns lay out the image lines for one terminal width:
// NAME LAYERS BYTES STATE [BAR], the bar only on live lines. herd pads the
// columns itself rather than through mpb's decorator widths because the
// final lines, printed above the bars as text, must line up with them; mpb
// still draws the bar and cuts any line to the terminal's width.
type columns struct {
	name, layers, bytes, state, bar int
}

func newColumns(width int, shots []snapshot) columns {
	c := columns{layers: 3, bytes: 7, state: min(40, 22+max(0, width-80)/3)}
	longest := 4
	for _, s := range shots {
		c.layers = max(c.layers, len(fmt.Sprintf("%d/%d", s.layers, s.layers)))
		longest = max(longest, len([]rune(s.name)))
	}
	usable := width - 1 // never the last column: some terminals wrap there
	fixed := c.layers + 1 + c.bytes + 1 + c.state
	c.name = max(8, min(longest, usable-fixed-1-12)) // leave the bar 12 columns
	c.bar = usable - (c.name + 1 + fixed) - 2        // mpb puts a space either side of the bar
	return c
}

func (c columns) prefix(s snapshot, state string) string {
	return fmt.Sprintf("%-*s %*s %*s %s", c.name, cutLeft(s.name, c.name),
		c.layers, fmt.Sprintf("%d/%d", s.layersDone, s.layers), c.bytes, size(s.fetched), state)
}

// live is an image's line in the live area, before the bar.
func (c columns) live(s snapshot) string {
	state := cutRight(s.state, c.state)
	if s.owner != "" { // by its last path element: "waiting for web:v1.2"
		state += cutLeft(s.owner[strings.LastIndexByte(s.owner, '/')+1:], c.state-len([]rune(state)))
	}
	return c.prefix(s, fmt.Sprintf("%-*s", c.state, state))
}

// final is the line printed when an image finishes: for a failure the
// whole reason, however long, since a person has to act on it.
func (c columns) final(s snapshot) string {
	if s.failed {
		return c.prefix(s, "failed: "+OneLine(s.result.Err))
	}
	return c.prefix(s, fmt.Sprintf("%s in %s", s.state, s.result.Duration.Round(100*time.Millisecond)))
}

// cutLeft keeps the end of s, which tells image references apart.
func cutLeft(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return "…" + string(r[len(r)-n+1:])
}

func cutRight(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}
