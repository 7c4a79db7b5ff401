package main

import (
	"bytes"
	"context"
	"encoding/json"
	"image/png"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"go.podman.io/storage/pkg/reexec"

	"github.com/herd-project/herd/cmd"
	"github.com/herd-project/herd/tests/bench/launcher"
	"github.com/herd-project/herd/tests/bench/plaincopy"
)

// asEnv makes the test binary act as herd, the baseline or the launcher, so
// the smoke test runs every contender as a process of its own without
// building binaries.
const asEnv = "HERD_BENCH_TEST_AS"

func TestMain(m *testing.M) {
	// containers/storage re-executes the binary to apply layers.
	if reexec.Init() {
		return
	}
	switch os.Getenv(asEnv) {
	case "herd":
		os.Exit(cmd.Execute(os.Args[1:], cmd.IO{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr}))
	case "plaincopy":
		os.Exit(plaincopy.Main(os.Args[1:], os.Stdout, os.Stderr))
	case "launcher":
		os.Exit(launcher.Main(os.Stdin, os.Stdout))
	}
	os.Exit(m.Run())
}

// TestBenchQuick runs the benchmark in -quick mode (tiny images, every set
// in gzip and zstd:chunked, unthrottled, -j 4, one run) and checks that the
// table has a row per set, compression and contender with sane figures, and
// that the plots and raw results are written. It keeps `make bench` from
// rotting; it measures nothing.
func TestBenchQuick(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	var log bytes.Buffer
	cfg, err := parseFlags([]string{"-quick", "-cache", t.TempDir(), "-out", out, "-work", t.TempDir()}, &log)
	if err != nil {
		t.Fatal(err)
	}
	cfg.herd = program{path: self, env: []string{asEnv + "=herd"}}
	cfg.plaincopy = program{path: self, env: []string{asEnv + "=plaincopy"}}
	cfg.launcher = program{path: self, env: []string{asEnv + "=launcher"}}
	var stdout bytes.Buffer
	if err := run(context.Background(), cfg, &stdout); err != nil {
		t.Fatalf("bench -quick: %v\n%s", err, log.String())
	}
	table := stdout.String()
	t.Logf("bench -quick:\n%s", table)

	contenders := []string{"herd", "herd-preseeded", "herd-2proc", "herd-2proc-nolocks", "plaincopy", "plaincopy-seq"}
	if cfg.podman != "" {
		contenders = append(contenders, "podman-one-call", "podman-per-image")
	} else {
		if inCI := os.Getenv("CI") == "true"; inCI {
			t.Errorf("CI must run the podman rows: %s", cfg.podmanNote)
		}
		if !strings.Contains(table, cfg.podmanNote) {
			t.Errorf("the table does not say why podman rows are missing (%q)", cfg.podmanNote)
		}
		t.Logf("no podman rows: %s", cfg.podmanNote)
	}

	rows := parseTable(t, table)
	for _, set := range []string{"fleet", "same", "similar"} {
		for _, comp := range []string{"gzip", "zstd:chunked"} {
			for _, c := range contenders {
				key := set + " " + comp + " unthrottled " + c
				r, ok := rows[key]
				if !ok {
					t.Errorf("no row %q in the table", key)
					continue
				}
				checkRow(t, key, r, set, comp, c)
				delete(rows, key)
			}
		}
	}
	for key := range rows {
		t.Errorf("unexpected row %q", key)
	}
	if strings.Contains(table, "Failures:") {
		t.Errorf("some runs failed")
	}

	for _, set := range []string{"fleet", "same", "similar"} {
		f, err := os.Open(filepath.Join(out, "bench-"+set+".png"))
		if err != nil {
			t.Error(err)
			continue
		}
		img, err := png.Decode(f)
		f.Close()
		if err != nil {
			t.Errorf("plot of %s: %v", set, err)
		} else if b := img.Bounds(); b.Dx() < 200 || b.Dy() < 200 {
			t.Errorf("plot of %s is only %dx%d", set, b.Dx(), b.Dy())
		}
	}
	// herd's first fleet run in each compression, drawn from its JSON
	// summary (in a full run: the real set's).
	for _, name := range []string{"timeline-fleet-gzip", "timeline-fleet-zstd-chunked"} {
		checkPNG(t, filepath.Join(out, name+".png"))
		if !strings.Contains(table, name+".png pictures herd's first run of fleet") {
			t.Errorf("the report does not mention %s.png", name)
		}
	}
	var raw savedResults
	if b, err := os.ReadFile(filepath.Join(out, "results.json")); err != nil {
		t.Error(err)
	} else if err := json.Unmarshal(b, &raw); err != nil {
		t.Errorf("results.json: %v", err)
	} else if want := 3 * 2 * len(contenders); len(raw.Rows) != want {
		t.Errorf("results.json has %d rows, want %d", len(raw.Rows), want)
	}

	// -from prints the same report again from results.json.
	again, err := parseFlags([]string{"-from", filepath.Join(out, "results.json"), "-out", t.TempDir()}, &log)
	if err != nil {
		t.Fatal(err)
	}
	var stdout2 bytes.Buffer
	if err := run(context.Background(), again, &stdout2); err != nil {
		t.Fatalf("bench -from: %v", err)
	}
	if stdout2.String() != table {
		t.Errorf("bench -from results.json printed a different report:\n%s", stdout2.String())
	}
}

// The README's benchmark table stands between these lines.
const (
	readmeTableStart = "<!-- bench table: as bench prints it for tests/bench/testdata/readme-results.json (TestReadmeTable) -->\n"
	readmeTableEnd   = "<!-- end bench table -->\n"
)

// TestReadmeTable checks that README.md's benchmark table is, to the
// letter, the table bench prints for the run it shows, whose results.json
// is kept as testdata/readme-results.json: the table cannot be edited by
// hand nor miss a column the report has.
func TestReadmeTable(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(readme), readmeTableStart)
	inReadme, _, ok2 := strings.Cut(rest, readmeTableEnd)
	if !ok || !ok2 {
		t.Fatalf("README.md has no benchmark table between %q and %q", readmeTableStart, readmeTableEnd)
	}
	cfg, err := parseFlags([]string{"-from", filepath.Join("testdata", "readme-results.json")}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	res, err := loadResults(cfg.from, cfg)
	if err != nil {
		t.Fatal(err)
	}
	var want strings.Builder
	res.table(&want)
	if inReadme != want.String() {
		t.Errorf("README.md's benchmark table is not bench's for testdata/readme-results.json; between the markers it should read:\n%s", want.String())
	}
	parseTable(t, inReadme) // and every row has the report's columns
}

// tableRow holds one parsed row's figures.
type tableRow struct {
	jobs                                 string
	wall, vsHerd, bytes, cpu, cpuVs, rss float64
}

// parseTable reads the Markdown table's rows, keyed "set compression link contender".
func parseTable(t *testing.T, table string) map[string]tableRow {
	t.Helper()
	rows := map[string]tableRow{}
	for _, line := range strings.Split(table, "\n") {
		if !strings.HasPrefix(line, "| ") || strings.HasPrefix(line, "| set ") {
			continue
		}
		f := strings.Split(strings.Trim(line, "|"), "|")
		for i := range f {
			f[i] = strings.TrimSpace(f[i])
		}
		if len(f) != 11 {
			t.Errorf("table row with %d columns, want 11: %s", len(f), line)
			continue
		}
		num := func(s string) float64 {
			if s == "—" {
				return -1
			}
			// The median, without the marks the report may add: "*" (at the
			// RSS floor) or " (max …)" (the run that fetched most).
			s, _, _ = strings.Cut(strings.TrimSuffix(s, "*"), " (max ")
			v, err := strconv.ParseFloat(s, 64)
			if err != nil {
				t.Errorf("row %q: %q is not a number", line, s)
			}
			return v
		}
		rows[strings.Join(f[:4], " ")] = tableRow{jobs: f[4], wall: num(f[5]), vsHerd: num(f[6]), bytes: num(f[7]), cpu: num(f[8]), cpuVs: num(f[9]), rss: num(f[10])}
	}
	return rows
}

func checkRow(t *testing.T, key string, r tableRow, set, comp, contender string) {
	t.Helper()
	if r.wall <= 0 || r.wall > 120 {
		t.Errorf("%s: wall time %.2fs", key, r.wall)
	}
	if r.cpu <= 0 {
		t.Errorf("%s: CPU time %.2fs", key, r.cpu)
	}
	if r.rss <= 0 || r.rss > 4096 {
		t.Errorf("%s: peak RSS %.0f MiB", key, r.rss)
	}
	// Partial pulls of similar zstd:chunked images fetch less than the blobs;
	// everything else fetches every distinct blob at least once.
	low := 0.999
	if set == "similar" && comp == "zstd:chunked" {
		low = 0.05
	}
	if r.bytes < low || r.bytes > 20 {
		t.Errorf("%s: served / unique %.3f, want %.3f..20", key, r.bytes, low)
	}
	switch contender {
	case "herd":
		if r.jobs != "4" || r.vsHerd != -1 {
			t.Errorf("%s: -j %s, ×herd %.2f; want -j 4 and no ratio", key, r.jobs, r.vsHerd)
		}
		// herd fetches each blob once (issue 3); only similar's partial pulls
		// may fetch less.
		if r.bytes > 1.01 {
			t.Errorf("%s: herd served %.3f× the unique layer bytes, want ≤ 1.01", key, r.bytes)
		}
	case "herd-2proc":
		// Two processes on one store share their fetches (issue 14).
		if r.bytes > 1.01 {
			t.Errorf("%s: two herds served %.3f× the unique layer bytes, want ≤ 1.01", key, r.bytes)
		}
		if r.vsHerd <= 0 {
			t.Errorf("%s: wall ×herd %.2f, want positive", key, r.vsHerd)
		}
	default:
		if r.vsHerd <= 0 || r.cpuVs <= 0 {
			t.Errorf("%s: ratios to herd %.2f (wall), %.2f (CPU), want positive", key, r.vsHerd, r.cpuVs)
		}
	}
}

func TestFlags(t *testing.T) {
	var stderr bytes.Buffer
	cfg, err := parseFlags(nil, &stderr)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.plan) != len(standardPlan) || cfg.runs != 3 {
		t.Errorf("no flags: plan of %d scenarios and %d runs, want the standard plan (%d) and 3", len(cfg.plan), cfg.runs, len(standardPlan))
	}
	// The standard plan's real rows: issue 11's contenders, gzip alone at 20 MiB/s.
	real := cfg.plan[len(cfg.plan)-1]
	var names []string
	for _, c := range cfg.contenderList(real) {
		names = append(names, c.String())
	}
	if want := []string{"herd -j 4", "plaincopy -j 4", "plaincopy-seq -j 4"}; real.set != "real" || real.pulls("zstd:chunked") ||
		len(names) != 5 || !slices.Equal(names[:3], want) {
		t.Errorf("standard plan's last scenario %+v runs %q, want the real set in gzip only, with %q and podman's", real, names, want)
	}
	cfg, err = parseFlags([]string{"-sets", "same,fleet", "-j", "1,3", "-limits", "0,50"}, &stderr)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.plan) != 4 || cfg.plan[0].set != "same" || cfg.plan[3].limit != 50*mib || len(cfg.plan[3].jobs) != 2 {
		t.Errorf("-sets same,fleet -j 1,3 -limits 0,50: plan %+v, want the 4 combinations", cfg.plan)
	}
	for _, bad := range [][]string{{"-sets", "nope"}, {"-j", "0"}, {"-limits", "-1"}, {"-compression", "lz4"}, {"-contenders", "docker"}, {"extra"}} {
		if _, err := parseFlags(bad, &stderr); err == nil {
			t.Errorf("%v: no error", bad)
		}
	}
}
