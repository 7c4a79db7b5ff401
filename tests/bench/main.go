// Command bench measures herd against what users would otherwise run, side
// by side in one run, on the same images, through the same local registry:
// the plain copy.Image-per-image baseline (bench/cmd/plaincopy) at the same
// -j, and Debian's podman (one `podman pull` with every image, and one
// podman process per image in parallel) when it is installed. Each
// contender is a separate process on a fresh store, so its CPU time and peak
// RSS are its own. It prints a Markdown table of medians and writes it,
// the raw runs and one PNG plot per image set to -out.
//
// Run it with `make bench`; see README.md ("Benchmark") and -help.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"go.podman.io/storage/pkg/reexec"

	"github.com/herd-project/herd/cmd"
	"github.com/herd-project/herd/tests/internal/testimage"
	"github.com/herd-project/herd/tests/internal/testregistry"
	"github.com/herd-project/herd/tests/internal/teststore"
)

func main() {
	// The bench opens stores to check them; containers/storage may re-execute it.
	if reexec.Init() {
		return
	}
	cfg, err := parseFlags(os.Args[1:], os.Stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	if err := run(context.Background(), cfg, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// config is everything a benchmark run needs.
type config struct {
	plan         []scenario
	sets         []string // the plan's sets, in table order
	compressions []string
	refJobs      int // the -j podman rows are compared with
	runs         int
	contenders   map[string]bool // herd, plaincopy, podman
	quick        bool
	scale        scale

	herd, plaincopy program
	// herdBefore is another herd binary (a build of an earlier commit),
	// pulled as contender herd-before beside herd, for before/after figures
	// measured in one run.
	herdBefore program
	launcher   program // starts contenders and reads their rusage (package bench/launcher)
	podman     string  // "" when not run; podmanNote says why
	podmanNote string

	cacheDir, out string
	from          string // a results.json to print instead of running
	timeline      string // a herd JSON summary to draw instead of running
	work          string // per-benchmark scratch: stores, policy, confs
	scratchFS     bool   // put work on a filesystem of its own (scratchfs.go)
	unmount       func() // unmounts that filesystem; nil if none
	driver        string
	policy        string
	storageConf   string
	logf          func(string, ...any)
}

func parseFlags(args []string, stderr io.Writer) (*config, error) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	sets := fs.String("sets", strings.Join(generatedSets, ","), "image sets to pull: fleet, fleet16, fleet64, same, similar, real (Debian packages; built once, as root, from the Debian mirror: see README)")
	comps := fs.String("compression", "gzip,zstd:chunked", "layer compressions to test: gzip, zstd, zstd:chunked")
	jobs := fs.String("j", "2,4,8", "comma-separated -j values for herd and the plain copy.Image baseline")
	refJobs := fs.Int("ref-j", 4, "the -j of herd that podman's rows are compared with")
	limits := fs.String("limits", "0,100,20", "comma-separated bandwidth limits in MiB/s, shared by all connections; 0 is unthrottled")
	runs := fs.Int("runs", 3, "runs per contender and setting; the table shows medians")
	contenders := fs.String("contenders", "herd,herd-preseeded,herd-2proc,herd-2proc-nolocks,plaincopy,plaincopy-seq,podman", "which contenders to run: herd, herd-before (-herd-before's binary), herd-preseeded (herd into a store that already has two of the set's images in another compression), herd-2proc (two herd processes pulling the set into one store at once), herd-2proc-nolocks (the same without the blob locks that let them share fetches), plaincopy, plaincopy-seq (the same program pulling one image after another), podman; the standard plan runs some of them per set")
	quick := fs.Bool("quick", false, "tiny images and a small matrix (one -j, one run, unthrottled): a smoke run in about a minute")
	herd := fs.String("herd", "bin/herd", "the herd binary")
	herdBefore := fs.String("herd-before", "", "another herd binary, e.g. a build of an earlier commit (make bench-before), pulled beside herd as contender herd-before")
	plaincopy := fs.String("plaincopy", "bin/bench-plaincopy", "the baseline program (built from ./bench/cmd/plaincopy)")
	launch := fs.String("launcher", "bin/bench-launcher", "the program that starts contenders and reads their rusage (built from ./bench/cmd/launcher)")
	podman := fs.String("podman", "podman", "the podman binary; empty to skip podman")
	cacheDir := fs.String("cache", defaultCacheDir(), "where generated image sets are kept between runs")
	out := fs.String("out", "bin/bench", "directory for results.md, results.json and the plots")
	from := fs.String("from", "", "print the report of a previous run's results.json (and write its plots to -out) instead of running")
	work := fs.String("work", "", "directory for the stores being pulled into (default $TMPDIR or /var/tmp); needs space for a few stores")
	scratch := fs.Bool("scratch-fs", os.Geteuid() == 0, "pull into stores on a fresh journaled ext4 the benchmark makes and loop-mounts under -work (needs root; see scratchfs.go); -quick never does")
	timeline := fs.String("timeline", "", "draw the timeline of a saved `herd pull --format json` summary (FILE.json) as FILE.png in -out, and exit")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: bench [flags]\n\nPulls image sets with herd and its peers on fresh stores and prints a table of medians.\n\n"+
			"Without -sets, -j or -limits it runs the standard plan (each in every -compression unless it says otherwise, with those of its contenders -contenders names):\n%s\n"+
			"Given any of them, it runs every combination of -sets, -j and -limits (the defaults below for those not given).\n\n", describePlan(standardPlan))
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	if *quick && !given["runs"] {
		*runs = 1
	}

	cfg := &config{quick: *quick, refJobs: *refJobs, runs: *runs, cacheDir: *cacheDir, out: *out, work: *work, scratchFS: *scratch && !*quick,
		herd: program{path: *herd}, herdBefore: program{path: *herdBefore}, plaincopy: program{path: *plaincopy}, launcher: program{path: *launch}, podman: *podman,
		contenders: map[string]bool{}, scale: fullScale, logf: func(f string, a ...any) { fmt.Fprintf(stderr, f+"\n", a...) }}
	if *quick {
		cfg.scale = quickScale
	}
	switch {
	case given["sets"] || given["j"] || given["limits"]:
		plan, err := crossPlan(*sets, *jobs, *limits)
		if err != nil {
			return nil, err
		}
		cfg.plan = plan
	case *quick:
		cfg.plan = quickPlan
	default:
		cfg.plan = standardPlan
	}
	for _, sc := range cfg.plan {
		if !slices.Contains(cfg.sets, sc.set) {
			cfg.sets = append(cfg.sets, sc.set)
		}
	}
	cfg.compressions = splitList(*comps)
	for _, c := range cfg.compressions {
		if c != "gzip" && c != "zstd" && c != "zstd:chunked" {
			return nil, fmt.Errorf("-compression %q: want gzip, zstd or zstd:chunked", c)
		}
	}
	for _, c := range splitList(*contenders) {
		if !slices.Contains(herdContenders, c) && !slices.Contains(plainContenders, c) && c != "podman" {
			return nil, fmt.Errorf("-contenders %q: want %s, %s or podman", c, strings.Join(herdContenders, ", "), strings.Join(plainContenders, ", "))
		}
		cfg.contenders[c] = true
	}
	cfg.from, cfg.timeline = *from, *timeline
	if cfg.runs < 1 || len(cfg.plan) == 0 || len(cfg.compressions) == 0 {
		return nil, errors.New("need at least one run, set, compression, -j and limit")
	}
	return cfg, nil
}

// scenario is one image set behind one link, pulled at some -j values.
type scenario struct {
	set   string
	limit int64 // bytes per second across all connections; 0 = unthrottled
	jobs  []int
	// compression, when set, is the only one of -compression pulled;
	// contenders, when set, the only ones of -contenders run (podman for
	// both podman rows).
	compression string
	contenders  []string
}

// standardPlan is what `make bench` runs: every target of the project at
// least once. It took 74 minutes on 2 cores when last run in full (README,
// "Benchmark"; with fewer contenders than now): plaincopy and podman fetch
// and decompress up to 3-10x the set's bytes, and every row is 3 runs. The
// -j sweep (the plot) is on the fleet; the slow 20 MiB/s link, the 16-image
// fleet (herd's peak RSS target), the 64-image fleet (herd alone: how its
// time and memory grow with the number of images), the one-image-many-tags
// and the similar-images cases run at -j 4. The real set's rows are issue
// 11's: herd against copy.Image one image after another (plaincopy-seq)
// and side by side (plaincopy), near the link's and the CPU's limits.
var standardPlan = []scenario{
	{set: "fleet", limit: 0, jobs: []int{2, 4, 8}, contenders: generatedContenders},
	{set: "fleet", limit: 100 * mib, jobs: []int{2, 4, 8}, contenders: generatedContenders},
	{set: "fleet", limit: 20 * mib, jobs: []int{4}, contenders: generatedContenders},
	{set: "fleet16", limit: 100 * mib, jobs: []int{4}, contenders: generatedContenders},
	{set: "fleet64", limit: 100 * mib, jobs: []int{4}, contenders: []string{"herd", "herd-before"}},
	{set: "same", limit: 100 * mib, jobs: []int{4}, contenders: generatedContenders},
	{set: "similar", limit: 100 * mib, jobs: []int{4}, contenders: generatedContenders},
	{set: "real", limit: 0, jobs: []int{4}, contenders: realContenders},
	{set: "real", limit: 20 * mib, jobs: []int{4}, compression: "gzip", contenders: realContenders},
}

// The standard plan's contenders per set (herd-before runs only when
// -contenders names it).
var (
	generatedContenders = []string{"herd", "herd-before", "herd-preseeded", "herd-2proc", "herd-2proc-nolocks", "plaincopy", "podman"}
	realContenders      = []string{"herd", "herd-before", "plaincopy", "plaincopy-seq", "podman"}
)

// quickPlan is -quick's (tiny images): every set, unthrottled, -j 4.
var quickPlan = []scenario{
	{set: "fleet", jobs: []int{4}},
	{set: "same", jobs: []int{4}},
	{set: "similar", jobs: []int{4}},
}

func describePlan(plan []scenario) string {
	var b strings.Builder
	for _, sc := range plan {
		line := fmt.Sprintf("  %-8s %-12s -j %-6s", sc.set, limitName(sc.limit), strings.Trim(strings.Join(strings.Fields(fmt.Sprint(sc.jobs)), ","), "[]"))
		if sc.compression != "" {
			line += " " + sc.compression + " only"
		}
		if sc.contenders != nil {
			line += " (" + strings.Join(sc.contenders, ",") + ")"
		}
		b.WriteString(strings.TrimRight(line, " ") + "\n")
	}
	return b.String()
}

// pulls reports whether sc pulls its set in comp.
func (sc scenario) pulls(comp string) bool { return sc.compression == "" || sc.compression == comp }

// crossPlan is every combination of the listed sets, -j values and limits.
func crossPlan(sets, jobs, limits string) ([]scenario, error) {
	var js []int
	for _, j := range splitList(jobs) {
		n, err := strconv.Atoi(j)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("-j %q: want positive integers", j)
		}
		js = append(js, n)
	}
	var ls []int64
	for _, l := range splitList(limits) {
		n, err := strconv.ParseFloat(l, 64)
		if err != nil || n < 0 {
			return nil, fmt.Errorf("-limits %q: want MiB/s, 0 for unthrottled", l)
		}
		ls = append(ls, int64(n*mib))
	}
	var plan []scenario
	for _, s := range splitList(sets) {
		if !slices.Contains(setNames, s) {
			return nil, fmt.Errorf("-sets: unknown image set %q (want one of %v)", s, setNames)
		}
		for _, l := range ls {
			plan = append(plan, scenario{set: s, limit: l, jobs: js})
		}
	}
	if len(js) == 0 || len(ls) == 0 {
		return nil, errors.New("need at least one -j and one limit")
	}
	return plan, nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func defaultCacheDir() string {
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "herd-bench")
	}
	return filepath.Join(os.TempDir(), "herd-bench-cache")
}

// prepare checks the programs, picks the storage driver and writes the
// policy and storage.conf every contender shares.
func (cfg *config) prepare() error {
	programs := []*program{&cfg.herd, &cfg.plaincopy, &cfg.launcher}
	if cfg.contenders["herd-before"] {
		if cfg.herdBefore.path == "" {
			return errors.New("contender herd-before needs -herd-before")
		}
		programs = append(programs, &cfg.herdBefore)
	}
	for _, p := range programs {
		abs, err := exec.LookPath(p.path)
		if err != nil {
			return fmt.Errorf("%s: %w (run `make bench`, which builds it)", p.path, err)
		}
		if p.path, err = filepath.Abs(abs); err != nil {
			return err
		}
	}
	if !cfg.contenders["herd"] {
		return errors.New("-contenders must include herd: every ratio is to herd")
	}
	if cfg.contenders["podman"] {
		switch p, err := exec.LookPath(cfg.podman); {
		case cfg.podman == "":
			cfg.podmanNote = "podman rows skipped: -podman is empty"
		case err != nil:
			cfg.podman, cfg.podmanNote = "", fmt.Sprintf("podman rows skipped: podman is not installed (%v); `apt-get install -y podman` to include them", err)
		case os.Geteuid() != 0:
			cfg.podman, cfg.podmanNote = "", "podman rows skipped: the benchmark runs podman on a store of its own, which needs root"
		default:
			cfg.podman = p
		}
	} else {
		cfg.podman, cfg.podmanNote = "", "podman rows skipped: not in -contenders"
	}

	if cfg.work == "" {
		cfg.work = cmd.TempDir() // where herd stages blobs: a disk, not a tmpfs /tmp
	}
	// No ':' in store paths: overlay's mount options use it as a separator.
	dir, err := os.MkdirTemp(cfg.work, "herd-bench-")
	if err != nil {
		return err
	}
	if strings.Contains(dir, ":") {
		return fmt.Errorf("-work %s: store paths must not contain ':' (overlay cannot mount them)", dir)
	}
	if cfg.scratchFS {
		if dir, cfg.unmount, err = mountScratchFS(dir); err != nil {
			return err
		}
		cfg.logf("stores on a fresh ext4 at %s", dir)
	}
	cfg.work = dir
	cfg.driver = "overlay"
	if err := teststore.CheckOverlay(dir); err != nil {
		cfg.driver = "vfs" // much slower: the table says which
		cfg.logf("using the vfs driver: overlay is unavailable here: %v", err)
	}
	cfg.policy = filepath.Join(dir, "policy.json")
	if err := os.WriteFile(cfg.policy, []byte(`{"default":[{"type":"insecureAcceptAnything"}]}`), 0o644); err != nil {
		return err
	}
	cfg.storageConf = filepath.Join(dir, "storage.conf")
	// Partial pulls on for everyone, as herd's default; each contender gets
	// its own --root/--runroot per run.
	conf := fmt.Sprintf("[storage]\ndriver = %q\ngraphroot = %q\nrunroot = %q\n\n[storage.options]\npull_options = {enable_partial_images = \"true\"}\n",
		cfg.driver, filepath.Join(dir, "default-root"), filepath.Join(dir, "default-run"))
	return os.WriteFile(cfg.storageConf, []byte(conf), 0o644)
}

// run builds or reuses the image sets, runs the whole matrix and reports.
func run(ctx context.Context, cfg *config, stdout io.Writer) error {
	if cfg.timeline != "" {
		path := filepath.Join(cfg.out, strings.TrimSuffix(filepath.Base(cfg.timeline), ".json")+".png")
		if err := os.MkdirAll(cfg.out, 0o755); err != nil {
			return err
		}
		if err := drawTimelineFile(cfg.timeline, path); err != nil {
			return err
		}
		fmt.Fprintln(stdout, path)
		return nil
	}
	if cfg.from != "" {
		res, err := loadResults(cfg.from, cfg)
		if err != nil {
			return err
		}
		return res.report(stdout)
	}
	if err := cfg.prepare(); err != nil {
		return err
	}
	defer os.RemoveAll(cfg.work)
	if cfg.unmount != nil {
		defer cfg.unmount()
	}
	if cfg.podmanNote != "" {
		cfg.logf("%s", cfg.podmanNote)
	}
	name := "full"
	if cfg.quick {
		name = "quick"
	}
	cache, err := openCache(cfg.cacheDir, cfg.scale, name)
	if err != nil {
		return err
	}
	if err := cache.ensure(ctx, cfg.sets, cfg.compressions, cfg.logf); err != nil {
		return fmt.Errorf("building the image sets: %w", err)
	}

	res := &results{cfg: cfg, cells: map[rowKey][]measurement{}, unique: map[string]int64{}, images: map[string]int{}}
	if err := os.MkdirAll(cfg.out, 0o755); err != nil { // the timeline's summary is written there during the run
		return err
	}
	for _, set := range cfg.sets {
		for _, comp := range cfg.compressions {
			images := cache.sets[setKey(set, comp)]
			res.images[setKey(set, comp)] = len(images)
			res.unique[setKey(set, comp)] = testimage.UniqueLayerBytes(images...)
		}
	}
	// One registry per link setting, all serving the cache's directory.
	var limits []int64
	for _, sc := range cfg.plan {
		if !slices.Contains(limits, sc.limit) {
			limits = append(limits, sc.limit)
		}
	}
	for _, limit := range limits {
		reg, err := testregistry.Start(ctx, testregistry.Options{RootDirectory: cache.registryDir(), BandwidthLimit: limit, Quiet: true})
		if err != nil {
			return err
		}
		r, err := newRunner(cfg, reg)
		if err != nil {
			reg.Close()
			return err
		}
		for _, sc := range cfg.plan {
			if sc.limit != limit {
				continue
			}
			for _, comp := range cfg.compressions {
				if !sc.pulls(comp) {
					continue
				}
				images := cache.sets[setKey(sc.set, comp)]
				contenders := cfg.contenderList(sc)
				for i := range cfg.runs {
					// Contenders take turns within each run, starting one
					// further along each time, so load from outside the
					// benchmark falls on all of them alike.
					for k := range contenders {
						c := contenders[(k+i)%len(contenders)]
						var seed []testimage.Pushed
						if c.name == "herd-preseeded" {
							seed = preseed(cache, sc.set, comp)
						}
						key := rowKey{set: sc.set, compression: comp, limit: limit, contender: c}
						summary := ""
						if i == 0 && res.isTimelineKey(key) {
							summary = filepath.Join(cfg.out, timelineName(key)+".json")
						}
						m := r.measure(ctx, c, images, seed, summary)
						if summary != "" && m.Err == "" {
							res.timelines, res.timelineDir = append(res.timelines, timelineName(key)), cfg.out
						}
						res.cells[key] = append(res.cells[key], m)
						cfg.logf("%-8s %-12s %-11s %-22s run %d/%d: %s", sc.set, comp, limitName(limit), c, i+1, cfg.runs, m)
					}
				}
			}
		}
		reg.Close()
	}
	return res.report(stdout)
}

// preseed picks what the herd-preseeded contender puts in the store before
// its timed pull of set in comp: two of the set's images (the first and the
// middle one) in another compression, so that the store holds some of the
// layers the pull needs under other blob digests, as after an earlier pull
// of the same images as zstd, a podman load or a local build (issue 10).
func preseed(cache *imageCache, set, comp string) []testimage.Pushed {
	other := "zstd:chunked"
	if comp != "gzip" {
		other = "gzip"
	}
	images := cache.sets[setKey(set, other)]
	if len(images) == 0 {
		return nil
	}
	return []testimage.Pushed{images[0], images[len(images)/2]}
}

// herdContenders are the contenders that run herd, in table order;
// plainContenders those that run the plain copy.Image program.
var (
	herdContenders  = []string{"herd", "herd-before", "herd-preseeded", "herd-2proc", "herd-2proc-nolocks"}
	plainContenders = []string{"plaincopy", "plaincopy-seq"}
)

// contenderList is every contender configuration of one scenario, in table
// order: those both -contenders and the scenario name.
func (cfg *config) contenderList(sc scenario) []contender {
	runs := func(name string) bool { return sc.contenders == nil || slices.Contains(sc.contenders, name) }
	var cs []contender
	for _, name := range append(slices.Clone(herdContenders), plainContenders...) {
		if cfg.contenders[name] && runs(name) {
			for _, j := range sc.jobs {
				cs = append(cs, contender{name: name, jobs: j})
			}
		}
	}
	if cfg.podman != "" && runs("podman") {
		cs = append(cs, contender{name: "podman-one-call"}, contender{name: "podman-per-image"})
	}
	return cs
}

func limitName(limit int64) string {
	if limit == 0 {
		return "unthrottled"
	}
	return fmt.Sprintf("%g MiB/s", float64(limit)/mib)
}

func (m measurement) String() string {
	s := fmt.Sprintf("%.2fs, %.1f MiB served, %.2f CPU s, %.0f MiB peak RSS", m.Wall.Seconds(), float64(m.Served)/mib, m.CPU.Seconds(), float64(m.RSS)/mib)
	if m.Err != "" {
		s += ", FAILED: " + m.Err
	}
	return s
}
