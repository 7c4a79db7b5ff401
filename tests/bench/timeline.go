package main

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"image/color"
	"os"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// A timeline pictures one herd run from its JSON summary (herd pull
// --format json): a row per image, a lane per layer, and bars for what
// each layer was doing when. The bench draws one for a run of the real set;
// `bench -timeline FILE.json` draws any saved summary, e.g. of a slow run.

// timelineSummary is the part of herd's JSON summary (progress.Summary) a
// timeline needs. It is decoded here rather than imported, so that the
// bench reads a summary any herd wrote.
type timelineSummary struct {
	Images []struct {
		Inputs    []string        `json:"inputs"`
		Reference string          `json:"reference"`
		Layers    []timelineLayer `json:"layers"`
	} `json:"images"`
	Totals struct {
		WallSeconds float64 `json:"wallSeconds"`
	} `json:"totals"`
}

// timelineLayer holds a layer's times in seconds from the run's start; 0
// when it did not happen (the summary leaves those out).
type timelineLayer struct {
	Queued     float64 `json:"queued"`
	FetchStart float64 `json:"fetchStart"`
	FetchEnd   float64 `json:"fetchEnd"`
	WaitStart  float64 `json:"waitStart"`
	WaitEnd    float64 `json:"waitEnd"`
	Committed  float64 `json:"committed"`
}

// The kinds of bar, in legend order.
const (
	barQueued     = "queued (for a -j slot or a core)"
	barFetching   = "fetching"
	barWaiting    = "waiting for another image's fetch"
	barCommitting = "committing"
)

var barColors = []struct {
	kind  string
	color color.RGBA
}{
	{barQueued, color.RGBA{R: 200, G: 200, B: 200, A: 255}},
	{barFetching, color.RGBA{R: 31, G: 119, B: 180, A: 255}},
	{barWaiting, color.RGBA{R: 255, G: 127, B: 14, A: 255}},
	{barCommitting, color.RGBA{R: 44, G: 160, B: 44, A: 255}},
}

// timelineBar is one bar: image and layer are indexes in the summary.
type timelineBar struct {
	image, layer int
	kind         string
	start, end   float64
}

// timelineBars computes the bars of a summary: queued from queued to the
// first of fetchStart and waitStart, or to committed for a layer found in
// the store (its lookup, too, waited for a -j slot), and again from
// waitEnd to a later fetchStart (a layer that waited for one with files in
// common, then for a slot or for herd's staging gate); fetching
// fetchStart→fetchEnd; waiting waitStart→waitEnd; committing from the later
// of fetchEnd and waitEnd to committed. A span that started and never
// ended (a failed or interrupted run) ends at the run's end.
func timelineBars(s timelineSummary) []timelineBar {
	var bars []timelineBar
	for i, img := range s.Images {
		for k, l := range img.Layers {
			add := func(kind string, start, end float64) {
				if start <= 0 {
					return
				}
				if end <= 0 {
					end = s.Totals.WallSeconds
				}
				if end >= start {
					bars = append(bars, timelineBar{image: i, layer: k, kind: kind, start: start, end: end})
				}
			}
			if first := cmp.Or(firstOf(l.FetchStart, l.WaitStart), l.Committed); first > 0 {
				add(barQueued, l.Queued, first)
			}
			add(barFetching, l.FetchStart, l.FetchEnd)
			add(barWaiting, l.WaitStart, l.WaitEnd)
			if l.WaitEnd > 0 && l.FetchStart > l.WaitEnd {
				add(barQueued, l.WaitEnd, l.FetchStart)
			}
			if got := max(l.FetchEnd, l.WaitEnd); got > 0 {
				add(barCommitting, got, l.Committed)
			}
		}
	}
	return bars
}

// firstOf is the earlier of two times, 0 standing for none.
func firstOf(a, b float64) float64 {
	if a <= 0 || (b > 0 && b < a) {
		return b
	}
	return a
}

// drawTimelineFile draws the summary in src as a PNG at dst.
func drawTimelineFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	var s timelineSummary
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("%s is not herd's JSON summary: %w", src, err)
	}
	if err := drawTimeline(s, dst); err != nil {
		return fmt.Errorf("%s: %w", src, err)
	}
	return nil
}

func drawTimeline(s timelineSummary, path string) error {
	bars := timelineBars(s)
	if len(bars) == 0 {
		return errors.New("no layer timings to draw (a herd that writes none, or a run that pulled nothing)")
	}
	n := len(s.Images)
	p := plot.New()
	p.Title.Text = fmt.Sprintf("herd pull: %d images, %.2f s", n, s.Totals.WallSeconds)
	p.X.Label.Text = "seconds from the start of the run"
	p.X.Min, p.X.Max = 0, s.Totals.WallSeconds
	p.Y.Min, p.Y.Max = -0.5, float64(n)-0.5
	var ticks []plot.Tick
	for i, img := range s.Images {
		ticks = append(ticks, plot.Tick{Value: rowY(i, n), Label: imageLabel(img.Reference, img.Inputs)})
	}
	p.Y.Tick.Marker = plot.ConstantTicks(ticks)
	for _, bc := range barColors {
		r := rects{color: bc.color}
		for _, b := range bars {
			if b.kind != bc.kind {
				continue
			}
			// Each layer a lane of the image's row, the bottom layer lowest.
			lanes := float64(len(s.Images[b.image].Layers))
			h := 0.8 / lanes
			y0 := rowY(b.image, n) - 0.4 + float64(b.layer)*h
			r.boxes = append(r.boxes, [4]float64{b.start, y0 + 0.05*h, b.end, y0 + 0.95*h})
			p.X.Max = max(p.X.Max, b.end)
		}
		p.Add(r)
		p.Legend.Add(bc.kind, r)
	}
	grid := plotter.NewGrid()
	grid.Horizontal.Width = 0 // rows need no lines; seconds do
	p.Add(grid)
	p.Legend.Top = true
	p.Legend.Left = false
	p.Legend.TextStyle.Font.Size = vg.Points(9)
	p.Legend.Padding = vg.Points(2)
	p.Legend.ThumbnailWidth = vg.Points(18)
	// Room above the top row for the legend.
	p.Y.Max += 1.5

	img := vgimg.New(vg.Points(900), vg.Points(float64(140+36*n)))
	p.Draw(draw.New(img))
	return writePNG(img, path)
}

// rowY is the centre of image i's row: the first image at the top.
func rowY(i, n int) float64 { return float64(n - 1 - i) }

// imageLabel names an image by its reference without the registry host
// (the bench's registry port says nothing), else by what the user typed.
func imageLabel(ref string, inputs []string) string {
	if ref == "" && len(inputs) > 0 {
		ref = inputs[0]
	}
	if host, rest, ok := strings.Cut(ref, "/"); ok && strings.ContainsAny(host, ".:") {
		return rest
	}
	return ref
}

// rects is a plotter of filled boxes (x0, y0, x1, y1) of one colour; it is
// its own legend thumbnail.
type rects struct {
	boxes [][4]float64
	color color.Color
}

func (r rects) Plot(c draw.Canvas, p *plot.Plot) {
	trX, trY := p.Transforms(&c)
	for _, b := range r.boxes {
		x0, x1 := trX(b[0]), trX(b[2])
		if x1-x0 < vg.Points(0.5) {
			x1 = x0 + vg.Points(0.5) // a bar too short to see still shows
		}
		y0, y1 := trY(b[1]), trY(b[3])
		c.FillPolygon(r.color, c.ClipPolygonXY([]vg.Point{{X: x0, Y: y0}, {X: x1, Y: y0}, {X: x1, Y: y1}, {X: x0, Y: y1}}))
	}
}

func (r rects) Thumbnail(c *draw.Canvas) {
	pts := []vg.Point{{X: c.Min.X, Y: c.Min.Y}, {X: c.Max.X, Y: c.Min.Y}, {X: c.Max.X, Y: c.Max.Y}, {X: c.Min.X, Y: c.Max.Y}}
	c.FillPolygon(r.color, c.ClipPolygonY(pts))
}
