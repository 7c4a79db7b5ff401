package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// rowKey identifies one row of the table: a contender on a set, in a
// compression, behind a bandwidth limit.
type rowKey struct {
	set, compression string
	limit            int64
	contender        contender
}

type results struct {
	cfg    *config
	cells  map[rowKey][]measurement
	unique map[string]int64 // setKey → unique layer bytes
	images map[string]int   // setKey → references pulled
	// timelines are the names (without .json or .png) of the herd summaries
	// kept for timeline pictures; timelineDir holds their .json files.
	timelines   []string
	timelineDir string
}

// isTimelineKey reports whether k is a row whose first herd run is kept and
// drawn: the real set (the fleet in a -quick run, so that the smoke run
// draws one too), unthrottled, at the -j podman is compared with, in each
// compression (a partial pull's time goes elsewhere than a whole layer's).
func (res *results) isTimelineKey(k rowKey) bool {
	set := "real"
	if res.cfg.quick {
		set = "fleet"
	}
	return k.set == set && k.limit == 0 && k.contender == contender{name: "herd", jobs: res.cfg.refJobs}
}

// timelineName is the file name (without .json or .png) of k's timeline.
func timelineName(k rowKey) string {
	return "timeline-" + k.set + "-" + strings.ReplaceAll(k.compression, ":", "-")
}

// row is the medians of one rowKey's runs.
type row struct {
	key                rowKey
	wall, cpu          time.Duration
	served, rss        int64
	bytesRatio         float64 // served / unique layer bytes
	maxBytesRatio      float64 // the same, in the run that fetched most
	minBytesRatio      float64 // and in the run that fetched least
	failed             string  // the first failure, if any run failed
	rssAtFloor         bool    // some run's peak RSS was at the launcher's floor
	ok                 int     // successful runs
	timeVsHerd, cpuVsH float64 // NaN for herd rows or when herd has no figure
}

func (res *results) row(k rowKey) (row, bool) {
	ms, ok := res.cells[k]
	if !ok {
		return row{}, false
	}
	r := row{key: k, timeVsHerd: math.NaN(), cpuVsH: math.NaN()}
	var walls, cpus, served, rss []float64
	for _, m := range ms {
		if m.Err != "" {
			if r.failed == "" {
				r.failed = m.Err
			}
			continue
		}
		r.ok++
		walls = append(walls, float64(m.Wall))
		cpus = append(cpus, float64(m.CPU))
		served = append(served, float64(m.Served))
		rss = append(rss, float64(m.RSS))
		r.rssAtFloor = r.rssAtFloor || m.AtFloor
	}
	if r.ok == 0 {
		return r, true
	}
	r.wall, r.cpu = time.Duration(median(walls)), time.Duration(median(cpus))
	r.served, r.rss = int64(median(served)), int64(median(rss))
	if u := res.unique[setKey(k.set, k.compression)]; u > 0 {
		r.bytesRatio = float64(r.served) / float64(u)
		r.maxBytesRatio = slices.Max(served) / float64(u)
		r.minBytesRatio = slices.Min(served) / float64(u)
	}
	if k.contender.name != "herd" {
		hk := k
		hk.contender = contender{name: "herd", jobs: k.contender.jobs}
		if k.contender.jobs == 0 {
			hk.contender.jobs = res.cfg.refJobs
		}
		if h, ok := res.row(hk); ok && h.ok > 0 {
			r.timeVsHerd = float64(r.wall) / float64(h.wall)
			r.cpuVsH = float64(r.cpu) / float64(h.cpu)
		}
	}
	return r, true
}

func median(v []float64) float64 {
	slices.Sort(v)
	n := len(v)
	if n%2 == 1 {
		return v[n/2]
	}
	return (v[n/2-1] + v[n/2]) / 2
}

// rows returns every row in table order: by set, compression, then link in
// plan order.
func (res *results) rows() []row {
	var out []row
	for _, set := range res.cfg.sets {
		for _, comp := range res.cfg.compressions {
			for _, sc := range res.cfg.plan {
				if sc.set != set || !sc.pulls(comp) {
					continue
				}
				for _, c := range res.cfg.contenderList(sc) {
					if r, ok := res.row(rowKey{set, comp, sc.limit, c}); ok {
						out = append(out, r)
					}
				}
			}
		}
	}
	return out
}

// report prints the Markdown report to w and writes it, the raw runs and the
// plots to cfg.out.
func (res *results) report(w io.Writer) error {
	var b strings.Builder
	res.markdown(&b)
	if _, err := io.WriteString(w, b.String()); err != nil {
		return err
	}
	if err := os.MkdirAll(res.cfg.out, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(res.cfg.out, "results.md"), []byte(b.String()), 0o644); err != nil {
		return err
	}
	j, err := json.MarshalIndent(res.save(), "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(res.cfg.out, "results.json"), j, 0o644); err != nil {
		return err
	}
	for _, set := range res.cfg.sets {
		path := filepath.Join(res.cfg.out, "bench-"+set+".png")
		if err := res.plot(set, path); err != nil {
			return fmt.Errorf("plotting %s: %w", set, err)
		}
		res.cfg.logf("wrote %s", path)
	}
	for _, name := range res.timelines {
		src, dst := filepath.Join(res.timelineDir, name+".json"), filepath.Join(res.cfg.out, name+".json")
		if src != dst {
			b, err := os.ReadFile(src)
			if err != nil {
				return fmt.Errorf("the timeline's summary: %w", err)
			}
			if err := os.WriteFile(dst, b, 0o644); err != nil {
				return err
			}
		}
		path := filepath.Join(res.cfg.out, name+".png")
		if err := drawTimelineFile(dst, path); err != nil {
			return fmt.Errorf("drawing the timeline: %w", err)
		}
		res.cfg.logf("wrote %s", path)
	}
	return nil
}

func (res *results) markdown(b *strings.Builder) {
	cfg := res.cfg
	fmt.Fprintf(b, "herd benchmark: %d run(s) per row, medians; %d CPUs, %s/%s, %s storage driver; %s.\n\n",
		cfg.runs, runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, cfg.driver, map[bool]string{true: "quick (tiny images)", false: "full-size images"}[cfg.quick])
	fmt.Fprintf(b, "Plan (set, link, -j), each in %s:\n\n```\n%s```\n\n", strings.Join(cfg.compressions, " and "), describePlan(cfg.plan))
	for _, set := range cfg.sets {
		for _, comp := range cfg.compressions {
			fmt.Fprintf(b, "- %s, %s: %d references, unique layer bytes %.1f MiB\n", set, comp, res.images[setKey(set, comp)], float64(res.unique[setKey(set, comp)])/mib)
		}
	}
	if cfg.podmanNote != "" {
		fmt.Fprintf(b, "- %s\n", cfg.podmanNote)
	}
	b.WriteString("\n")
	res.table(b)
	fmt.Fprintf(b, "\nwall ×herd and CPU ×herd divide by herd's figure at the same -j (podman rows: at -j %d). "+
		"served / unique is the layer blob bytes the registry sent over the layer bytes the set's images have (each distinct blob once); "+
		"(max …) is the run that fetched most, when it is over 1%% above the median. "+
		"CPU s is user+system time of the contender's processes and their reaped children. "+
		"podman runs with containers/image's default of 6 blob copies per image and no limit across images; "+
		"podman-per-image's peak RSS is the sum of its processes' peaks. "+
		"A peak RSS cannot be read below %.0f MiB (the launcher's own, which Linux gives every program it starts as its initial peak); "+
		"* marks a figure where some process was at that floor.\n", cfg.refJobs, float64(res.floor())/mib)
	for _, name := range res.timelines {
		for k := range res.cells {
			if res.isTimelineKey(k) && timelineName(k) == name {
				fmt.Fprintf(b, "\n%s.png pictures herd's first run of %s %s %s -j %d from its JSON summary (%s.json): "+
					"a row per image, a lane per layer, bars for queued (for a -j slot or a core), fetching, waiting for another image's fetch and committing.\n",
					name, k.set, k.compression, limitName(k.limit), k.contender.jobs, name)
			}
		}
	}
	if failed := res.failures(); failed != "" {
		b.WriteString("\nFailures:\n" + failed)
	}
	if t := res.targets(); t != "" {
		b.WriteString("\nTargets:\n" + t)
	}
	if g := res.growth(); g != "" {
		b.WriteString("\nWith the number of images (herd, 100 MiB/s, -j 4; fleet, fleet16, fleet64):\n" + g)
	}
}

// growth says how herd's wall time and peak RSS grow from the fleet to
// fleet16 and fleet64, which have the same shape, 8, 16 and 64 images.
func (res *results) growth() string {
	var b strings.Builder
	for _, comp := range res.cfg.compressions {
		var parts []string
		for _, set := range []string{"fleet", "fleet16", "fleet64"} {
			r, ok := res.row(rowKey{set, comp, 100 * mib, contender{"herd", 4}})
			if !ok || r.ok == 0 {
				continue
			}
			n := res.images[setKey(set, comp)]
			parts = append(parts, fmt.Sprintf("%d images %.2f s (%.3f s per image), %.0f MiB peak RSS",
				n, r.wall.Seconds(), r.wall.Seconds()/float64(n), float64(r.rss)/mib))
		}
		if len(parts) > 1 {
			fmt.Fprintf(&b, "- %s: %s\n", comp, strings.Join(parts, "; "))
		}
	}
	return b.String()
}

// tableHeader heads the table: its column names and alignment.
const tableHeader = "| set | compression | link | contender | -j | wall s | wall ×herd | served / unique | CPU s | CPU ×herd | peak RSS MiB |\n" +
	"|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|\n"

// table writes the Markdown table of medians, a row per rowKey in table
// order: the part of the report README.md shows verbatim (TestReadmeTable).
func (res *results) table(b *strings.Builder) {
	b.WriteString(tableHeader)
	for _, r := range res.rows() {
		k := r.key
		j := fmt.Sprint(k.contender.jobs)
		if k.contender.jobs == 0 {
			j = "6/image"
		}
		if r.ok == 0 {
			fmt.Fprintf(b, "| %s | %s | %s | %s | %s | failed: %s | | | | | |\n", k.set, k.compression, limitName(k.limit), k.contender.name, j, strings.ReplaceAll(r.failed, "|", "/"))
			continue
		}
		wall := fmt.Sprintf("%.2f", r.wall.Seconds())
		if r.failed != "" {
			wall += fmt.Sprintf(" (%d of %d runs failed)", len(res.cells[k])-r.ok, len(res.cells[k]))
		}
		bytes := fmt.Sprintf("%.3f", r.bytesRatio)
		if r.maxBytesRatio > r.bytesRatio*1.01 {
			bytes += fmt.Sprintf(" (max %.3f)", r.maxBytesRatio)
		}
		rss := fmt.Sprintf("%.0f", float64(r.rss)/mib)
		if r.rssAtFloor {
			rss += "*"
		}
		fmt.Fprintf(b, "| %s | %s | %s | %s | %s | %s | %s | %s | %.2f | %s | %s |\n",
			k.set, k.compression, limitName(k.limit), k.contender.name, j, wall, ratio(r.timeVsHerd),
			bytes, r.cpu.Seconds(), ratio(r.cpuVsH), rss)
	}
}

// floor is the highest RSS floor of any run.
func (res *results) floor() int64 {
	var f int64
	for _, ms := range res.cells {
		for _, m := range ms {
			f = max(f, m.Floor)
		}
	}
	return f
}

func ratio(f float64) string {
	if math.IsNaN(f) {
		return "—"
	}
	return fmt.Sprintf("%.2f", f)
}

func (res *results) failures() string {
	var b strings.Builder
	for _, r := range res.rows() {
		for i, m := range res.cells[r.key] {
			if m.Err != "" {
				fmt.Fprintf(&b, "- %s %s %s %s run %d: %s\n", r.key.set, r.key.compression, limitName(r.key.limit), r.key.contender, i+1, m.Err)
			}
		}
	}
	return b.String()
}

// targets checks the figures the project promises (issues 3 and 7) against
// what this run measured, wherever it measured them.
func (res *results) targets() string {
	var b strings.Builder
	check := func(ok bool, format string, a ...any) {
		mark := "met"
		if !ok {
			mark = "NOT MET"
		}
		fmt.Fprintf(&b, "- [%s] %s\n", mark, fmt.Sprintf(format, a...))
	}
	rows := res.rows()
	for _, comp := range res.cfg.compressions {
		// Bytes: herd fetches each blob once, at every -j and link. (similar
		// is left out: partial pulls serve less than the blobs' sizes; real
		// has checks of its own, below.)
		worst, n := 0.0, 0
		var sets []string
		for _, r := range rows {
			k := r.key
			if k.compression != comp || k.contender.name != "herd" || r.ok == 0 || k.set == "similar" || k.set == "real" {
				continue
			}
			if !slices.Contains(sets, k.set) {
				sets = append(sets, k.set)
			}
			n++
			worst = max(worst, r.maxBytesRatio)
			if r.maxBytesRatio > 1.01 {
				mark := "NOT MET"
				if r.bytesRatio <= 1.01 {
					mark = "met by the median, NOT in every run"
				}
				fmt.Fprintf(&b, "- [%s] %s %s %s herd -j %d: served / unique %.3f (median), %.3f in its worst run (target ≤ 1.01)\n",
					mark, k.set, comp, limitName(k.limit), k.contender.jobs, r.bytesRatio, r.maxBytesRatio)
			}
		}
		if n > 0 && worst <= 1.01 {
			check(true, "%s: herd's served / unique at most %.3f in any run of %d rows (%s; every -j and link) (target ≤ 1.01)", comp, worst, n, strings.Join(sets, ", "))
		}
		for _, r := range rows {
			k := r.key
			if k.compression != comp || k.set != "fleet" || r.ok == 0 || math.IsNaN(r.timeVsHerd) {
				continue
			}
			herdOver := 1 / r.timeVsHerd
			switch {
			case k.limit == 100*mib && k.contender == contender{"plaincopy", res.cfg.refJobs}:
				check(herdOver <= 0.6, "fleet %s 100 MiB/s -j %d: herd's wall time is %.2f× plain copy.Image's (target ≤ 0.6)", comp, k.contender.jobs, herdOver)
			case k.limit == 100*mib && k.contender.name == "podman-per-image":
				check(herdOver <= 0.5, "fleet %s 100 MiB/s -j %d: herd's wall time is %.2f× parallel podman processes' (target ≤ 0.5)", comp, res.cfg.refJobs, herdOver)
			case k.limit == 0 && k.contender.name == "plaincopy":
				check(herdOver <= 1.05, "fleet %s unthrottled -j %d: herd's wall time is %.2f× plain copy.Image's (target ≤ 1.05)", comp, k.contender.jobs, herdOver)
			case k.contender.name == "herd-2proc":
				check(r.bytesRatio <= 1.01, "fleet %s %s -j %d: two herd processes on one store were served %.3f× the set's unique bytes (target ≤ 1.01)", comp, limitName(k.limit), k.contender.jobs, r.bytesRatio)
			case k.contender.name == "herd-preseeded":
				check(r.timeVsHerd <= 1.3, "fleet %s %s -j %d: herd into a pre-seeded store takes %.2f× its time into an empty one (target ≤ 1.3)", comp, limitName(k.limit), k.contender.jobs, r.timeVsHerd)
			}
		}
		var peak int64
		for _, r := range rows {
			if k := r.key; k.compression == comp && k.set == "fleet16" && k.contender.name == "herd" && r.ok > 0 {
				peak = max(peak, r.rss)
			}
		}
		if peak > 0 {
			check(peak <= 150*mib, "fleet16 (16 images) %s: herd's peak RSS is %.0f MiB (median; the highest over -j and links) (target ≤ 150 MiB)", comp, float64(peak)/mib)
		}
	}
	res.realTargets(check)
	return b.String()
}

// realTargets checks issue 11's figures, on the real set: how close herd
// comes to the physical limits, against copy.Image one image after another
// (plaincopy-seq, at the same -j), which is what one would otherwise run.
func (res *results) realTargets(check func(bool, string, ...any)) {
	for _, sc := range res.cfg.plan {
		if sc.set != "real" {
			continue
		}
		for _, comp := range res.cfg.compressions {
			if !sc.pulls(comp) {
				continue
			}
			for _, j := range sc.jobs {
				h, ok := res.row(rowKey{sc.set, comp, sc.limit, contender{"herd", j}})
				if !ok || h.ok == 0 {
					continue
				}
				seq, ok := res.row(rowKey{sc.set, comp, sc.limit, contender{"plaincopy-seq", j}})
				haveSeq := ok && seq.ok > 0
				where := fmt.Sprintf("real %s %s -j %d", comp, limitName(sc.limit), j)
				switch {
				case comp == "gzip" && sc.limit == 0 && haveSeq:
					check(h.wall.Seconds() <= 0.75*seq.wall.Seconds(), "%s: herd's wall time is %.2f× sequential copy.Image's (%.2f s vs %.2f s) (target ≤ 0.75)",
						where, h.wall.Seconds()/seq.wall.Seconds(), h.wall.Seconds(), seq.wall.Seconds())
					check(h.cpu <= seq.cpu, "%s: herd's CPU time is %.2f× sequential copy.Image's (%.2f s vs %.2f s) (target ≤ 1.0)",
						where, h.cpu.Seconds()/seq.cpu.Seconds(), h.cpu.Seconds(), seq.cpu.Seconds())
				case comp == "gzip" && sc.limit > 0:
					unique := res.unique[setKey(sc.set, comp)]
					floor := float64(unique) / float64(sc.limit)
					check(h.wall.Seconds() <= 1.15*floor, "%s: herd's wall time is %.2f× the unique blob bytes' time on the link (%.2f s vs %.1f MiB at %s = %.2f s) (target ≤ 1.15)",
						where, h.wall.Seconds()/floor, h.wall.Seconds(), float64(unique)/mib, limitName(sc.limit), floor)
				case comp == "zstd:chunked" && haveSeq:
					check(h.served <= seq.served, "%s: herd was served %.1f MiB, sequential copy.Image %.1f MiB (target: no more)",
						where, float64(h.served)/mib, float64(seq.served)/mib)
					check(h.wall.Seconds() <= 0.7*seq.wall.Seconds(), "%s: herd's wall time is %.2f× sequential copy.Image's (%.2f s vs %.2f s) (target ≤ 0.7)",
						where, h.wall.Seconds()/seq.wall.Seconds(), h.wall.Seconds(), seq.wall.Seconds())
				}
				if comp == "gzip" {
					// 1.00 to two decimals, in every run: each blob whole, once.
					check(h.maxBytesRatio < 1.005 && h.minBytesRatio >= 0.995, "%s: herd's served / unique is %.3f (median), %.3f to %.3f over its runs (target 1.00)",
						where, h.bytesRatio, h.minBytesRatio, h.maxBytesRatio)
				}
			}
		}
	}
}

// plot draws one PNG for a set: a column per link setting; rows of wall
// time and served / unique bytes against -j, per compression. podman, which
// has no -j, is a flat line.
func (res *results) plot(set, path string) error {
	cfg := res.cfg
	var scenarios []scenario
	for _, sc := range cfg.plan {
		if sc.set == set {
			scenarios = append(scenarios, sc)
		}
	}
	var grid [][]*plot.Plot
	for _, comp := range cfg.compressions {
		for _, metric := range []string{"wall time (s)", "served / unique bytes"} {
			var line []*plot.Plot
			for _, sc := range scenarios {
				p := plot.New()
				p.Title.Text = fmt.Sprintf("%s %s, %s", set, comp, limitName(sc.limit))
				p.X.Label.Text = "-j"
				p.Y.Label.Text = metric
				p.Y.Min = 0
				p.X.Min, p.X.Max = 0, float64(slices.Max(sc.jobs))+1
				var ticks []plot.Tick
				for _, j := range sc.jobs {
					ticks = append(ticks, plot.Tick{Value: float64(j), Label: fmt.Sprint(j)})
				}
				p.X.Tick.Marker = plot.ConstantTicks(ticks)
				top := 0.0
				var series []any
				for _, name := range append(append(slices.Clone(herdContenders), plainContenders...), "podman-one-call", "podman-per-image") {
					var xys plotter.XYs
					for _, c := range cfg.contenderList(sc) {
						if c.name != name {
							continue
						}
						r, ok := res.row(rowKey{set, comp, sc.limit, c})
						if !ok || r.ok == 0 {
							continue
						}
						y := r.wall.Seconds()
						if metric != "wall time (s)" {
							y = r.bytesRatio
						}
						top = max(top, y)
						if c.jobs == 0 {
							xys = append(xys, plotter.XY{X: p.X.Min, Y: y}, plotter.XY{X: p.X.Max, Y: y})
						} else {
							xys = append(xys, plotter.XY{X: float64(c.jobs), Y: y})
						}
					}
					if len(xys) > 0 {
						series = append(series, name, xys)
					}
				}
				if err := plotutil.AddLinePoints(p, series...); err != nil {
					return err
				}
				// Room above the highest line for the legend (and a range
				// for a compression the scenario does not pull).
				p.Y.Max = max(top*1.45, 1)
				p.Legend.Top = true
				p.Legend.TextStyle.Font.Size = vg.Points(8)
				line = append(line, p)
			}
			grid = append(grid, line)
		}
	}
	rows, cols := len(grid), len(scenarios)
	img := vgimg.New(vg.Points(float64(300*cols)), vg.Points(float64(240*rows)))
	tiles := draw.Tiles{Rows: rows, Cols: cols, PadX: vg.Millimeter * 4, PadY: vg.Millimeter * 4,
		PadTop: vg.Millimeter * 2, PadBottom: vg.Millimeter * 2, PadLeft: vg.Millimeter * 2, PadRight: vg.Millimeter * 2}
	canvases := plot.Align(grid, tiles, draw.New(img))
	for i := range grid {
		for j := range grid[i] {
			grid[i][j].Draw(canvases[i][j])
		}
	}
	return writePNG(img, path)
}

// writePNG writes what was drawn on img to path.
func writePNG(img *vgimg.Canvas, path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
