package cmd

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.podman.io/common/pkg/completion"
	"go.podman.io/image/v5/signature"
	"go.podman.io/image/v5/types"
	"go.podman.io/storage/pkg/unshare"
	"golang.org/x/term"

	"github.com/herd-project/herd/progress"
	"github.com/herd-project/herd/pull"
)

type pullOptions struct {
	storage  storageOptions
	registry registryOptions
	platform platformOptions
	jobs     int
	files    []string
	quiet    bool
	format   string
	policy   string
	failFast bool
	dryRun   bool
	retry    retryOptions
}

func (o *pullOptions) flags(c *cobra.Command) {
	fs := c.Flags()
	fs.SortFlags = false
	fs.IntVarP(&o.jobs, "jobs", "j", pull.DefaultJobs, "number of blobs copied at once, across all images; containers.conf's image_parallel_copies, if set, replaces the default")
	fs.StringArrayVar(&o.files, "file", nil, "read image references from `PATH`, one per line, # starts a comment; - is standard input (repeatable)")
	fs.BoolVarP(&o.quiet, "quiet", "q", false, "print only the pulled image IDs, one per line")
	fs.StringVar(&o.format, "format", "text", "what to print on standard output at the end: `text` (image IDs) or json (a summary of the run, see README)")
	fs.BoolVar(&o.failFast, "fail-fast", false, "stop all pulls after the first image fails")
	fs.StringVar(&o.policy, "policy", string(pull.PullAlways), "`POLICY` says which images to pull, as podman's --policy: always (every image), missing (only images not in the store), newer (also those whose digest in the registry differs from the store's; if the registry cannot be read, the store's is kept), never (none: an image not in the store fails)")
	fs.BoolVar(&o.dryRun, "dry-run", false, "read the manifests only and print, per image and in total, the bytes shared with other images, already in the store, and to fetch (--format json for JSON); pull nothing")
	o.storage.flags(fs)
	o.registry.flags(fs)
	o.platform.flags(fs)
	o.retry.flags(fs)
}

func newPullCommand(stdio IO) *cobra.Command {
	o := &pullOptions{}
	c := &cobra.Command{
		Use:   "pull [flags] IMAGE...",
		Short: "Pull images into containers/storage, in parallel",
		Long: `Pull every IMAGE (and every reference listed in --file) into containers/storage
in one process. All images share one pool of --jobs blob copies; a blob that
several images need is fetched once. Short names are resolved through
registries.conf as podman resolves them. As with podman pull, an IMAGE may
also name its source through a transport: docker://REFERENCE,
oci:DIR[:NAME], oci-archive:FILE[:NAME], docker-archive:FILE[:NAME:TAG] or
dir:DIR. Each image's ID is printed on standard
output; progress and errors go to standard error.

Exit status: 0 if every image was pulled, 1 if any failed (all are still
attempted unless --fail-fast), 2 for usage errors, 125 when herd could not
start (configuration, storage, policy), 130 or 143 when interrupted.

containers.conf's [engine] table, read as podman reads it (CONTAINERS_CONF,
CONTAINERS_CONF_OVERRIDE), sets the defaults of --jobs
(image_parallel_copies), --retry (retry) and --retry-delay (retry_delay), and
where big temporary files go (image_copy_tmp_dir; $TMPDIR wins over it).`,
		Example: `  herd pull docker.io/library/alpine:3.20 quay.io/fedora/fedora:40
  herd pull oci-archive:app.tar docker-archive:base.tar
  herd pull -j 8 --file images.txt
  kubectl get pods -A -o jsonpath='{..image}' | tr ' ' '\n' | herd pull --file -`,
		RunE: func(c *cobra.Command, args []string) error {
			return o.run(c, args, stdio)
		},
		// Image references are not files; there is no registry to ask offline.
		ValidArgsFunction: cobra.NoFileCompletions,
	}
	o.flags(c)
	_ = c.RegisterFlagCompletionFunc("format", cobra.FixedCompletions(
		[]string{"text", "json"}, cobra.ShellCompDirectiveNoFileComp))
	_ = c.RegisterFlagCompletionFunc("policy", cobra.FixedCompletions(
		[]string{"always", "missing", "newer", "never"}, cobra.ShellCompDirectiveNoFileComp))
	_ = c.RegisterFlagCompletionFunc("storage-driver", cobra.FixedCompletions(
		[]string{"overlay", "vfs", "zfs"}, cobra.ShellCompDirectiveNoFileComp))
	// The platforms podman completes, from the same list.
	_ = c.RegisterFlagCompletionFunc("platform", completion.AutocompletePlatform)
	_ = c.RegisterFlagCompletionFunc("os", completion.AutocompleteOS)
	_ = c.RegisterFlagCompletionFunc("arch", completion.AutocompleteArch)
	// podman completes no variant; these are the ones containers/image
	// matches in a manifest list (ARM's).
	_ = c.RegisterFlagCompletionFunc("variant", cobra.FixedCompletions(
		[]string{"v5", "v6", "v7", "v8"}, cobra.ShellCompDirectiveNoFileComp))
	return c
}

func (o *pullOptions) run(c *cobra.Command, args []string, stdio IO) error {
	// Usage is checked before anything else, the user-namespace re-exec
	// included, so that a rootless user's mistake gets the usage error alone.
	if err := o.checkUsage(args); err != nil {
		return o.startFailed(err, stdio)
	}
	// A rootless user's store lives in a user namespace, as with podman.
	// This re-executes herd with the same arguments and standard input and
	// exits with its status, so it must come before anything reads stdin
	// (--file -) or has effects.
	unshare.MaybeReexecUsingUserNamespace(false)
	images, err := o.images(args, stdio.Stdin)
	if err != nil {
		return o.startFailed(err, stdio)
	}
	opts, cleanup, err := o.start(c)
	if err != nil {
		return o.startFailed(err, stdio)
	}
	defer cleanup()

	opts.Interactive = promptable(stdio)
	if o.dryRun {
		return o.preview(c, images, opts, stdio)
	}
	display := o.display(stdio)
	start := time.Now()
	opts.Observe = display.Observe
	results := pull.Run(c.Context(), images, opts)
	display.Close()
	logrus.SetOutput(stdio.Stderr) // no bars to print above any more

	failed := 0
	for _, r := range results {
		if r.Failed() {
			failed++
			if o.quiet {
				fmt.Fprintf(stdio.Stderr, "Error: %s\n", progress.OneLine(r.Err))
			}
		}
	}
	switch o.format {
	case "text":
		printIDs(stdio.Stdout, images, results)
	case "json":
		s := progress.NewSummary(results, time.Since(start))
		s.HerdVersion = version
		if err := s.WriteJSON(stdio.Stdout); err != nil {
			return err
		}
	}
	if failed > 0 {
		return failedError{failed}
	}
	return nil
}

// checkUsage finds the mistakes in how herd pull was called that need
// nothing read or opened: flag values, and the references given as
// arguments (those from --file are checked once read).
func (o *pullOptions) checkUsage(args []string) error {
	if o.jobs < 1 {
		return usageErrorf("--jobs must be at least 1")
	}
	if o.format != "text" && o.format != "json" {
		return usageErrorf("--format %q: want text or json", o.format)
	}
	if _, err := pull.ParsePullPolicy(o.policy); err != nil {
		return usageErrorf("--policy: %v", err)
	}
	if len(args) == 0 && len(o.files) == 0 {
		return usageErrorf("no images to pull: give at least one IMAGE or --file")
	}
	for i, a := range args {
		if strings.TrimSpace(a) == "" {
			// Most likely an unset shell variable: say so rather than try to pull "".
			return usageErrorf("argument %d is an empty image reference", i+1)
		}
		if err := checkReference(a); err != nil {
			return err
		}
	}
	return nil
}

// checkReference reports a reference that can name no image, as a usage
// error: a short name or a full one, with a tag, a digest or both, or a
// reference through one of the transports herd pulls from (pull.Transports).
func checkReference(ref string) error {
	if err := pull.CheckReference(ref); err != nil {
		return usageErrorf("%q is not an image reference: %v", ref, err)
	}
	return nil
}

// start reads the configuration (registries, platform, retries, policy)
// and opens the store: what herd needs before it can pull anything. The
// returned cleanup shuts the store down and removes the run's temporary
// directory.
func (o *pullOptions) start(c *cobra.Command) (pull.Options, func(), error) {
	// containers.conf gives the flags not given their values (containersconf.go).
	engine, err := o.containersConf(c.Flags())
	if err != nil {
		return pull.Options{}, nil, err
	}
	// HERD_BLOB_LOCKS=off leaves other herd processes out of the run's
	// coordination: for the benchmark's two-process rows without them.
	opts := pull.Options{Jobs: o.jobs, FailFast: o.failFast, NoBlobLocks: os.Getenv("HERD_BLOB_LOCKS") == "off"}
	opts.PullPolicy, _ = pull.ParsePullPolicy(o.policy) // checkUsage refused a bad one
	if err := o.retry.apply(&opts); err != nil {
		return opts, nil, err
	}
	sys := &types.SystemContext{DockerRegistryUserAgent: "herd/" + version}
	if err := o.registry.systemContext(c.Flags(), sys); err != nil {
		return opts, nil, err
	}
	if err := o.platform.systemContext(sys); err != nil {
		return opts, nil, err
	}
	// As podman: a missing or unreadable policy is an error, never an implicit accept.
	policy, err := signature.DefaultPolicy(sys)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return opts, nil, fmt.Errorf("no signature policy: %w; herd never pulls without one: install /etc/containers/policy.json (containers-common) or give --signature-policy", err)
		}
		return opts, nil, fmt.Errorf("reading the signature policy: %w", err)
	}
	store, err := o.storage.open(c.Flags())
	if err != nil {
		return opts, nil, err
	}
	shutdown := func() {
		sweepProbeDirs(store.GraphRoot(), true) // see open
		if _, err := store.Shutdown(false); err != nil {
			logrus.Warnf("shutting down the store: %v", err)
		}
	}
	sys.BlobInfoCacheDir = blobInfoCacheDir(store.GraphRoot())
	// Big temporary files go to one directory per run that herd removes
	// itself, so that a failed or interrupted run leaves nothing in /var/tmp;
	// a killed run's directory is removed by the next run (tmpdir.go).
	tmp, removeTmp, err := runTempDir(engine.tempBase(store.GraphRoot()))
	if err != nil {
		shutdown()
		return opts, nil, err
	}
	sys.BigFilesTemporaryDir = tmp
	opts.Store, opts.System, opts.Policy = store, sys, policy
	return opts, func() { removeTmp(); shutdown() }, nil
}

// startFailed reports an error that kept herd from pulling anything: with
// --format json as a summary of its own, so that a script reading standard
// output always gets one JSON document; the error also goes to standard
// error, with its exit status, as any other.
func (o *pullOptions) startFailed(err error, stdio IO) error {
	if o.format == "json" {
		s := progress.NewSummary(nil, 0)
		s.HerdVersion = version
		s.Error = err.Error()
		_ = s.WriteJSON(stdio.Stdout)
	}
	return err
}

// printIDs prints, as podman pull does, one image ID per input in input
// order (an image named by several inputs is printed for each); inputs that
// failed print nothing here (their errors go to standard error).
func printIDs(w io.Writer, inputs []string, results []*pull.Result) {
	ids := map[string]string{}
	for _, r := range results {
		if !r.Failed() {
			for _, in := range r.Inputs {
				ids[in] = r.ImageID
			}
		}
	}
	for _, in := range inputs {
		if id := ids[in]; id != "" {
			fmt.Fprintln(w, id)
		}
	}
}

// display picks how progress is shown on standard error: nothing with
// --quiet; bars when standard error is a terminal, with log lines printed
// above them; plain lines otherwise (CI, pipes, TERM=dumb).
func (o *pullOptions) display(stdio IO) progress.Display {
	if o.quiet {
		return progress.Discard{}
	}
	if f, ok := stdio.Stderr.(*os.File); ok && term.IsTerminal(int(f.Fd())) && os.Getenv("TERM") != "dumb" {
		if w, h, err := term.GetSize(int(f.Fd())); err == nil && w > 0 && h > 0 {
			t := progress.NewTerminal(f)
			logrus.SetOutput(t)
			return t
		}
	}
	return progress.NewPlain(stdio.Stderr)
}

// preview prints what a pull of images would fetch (--dry-run).
func (o *pullOptions) preview(c *cobra.Command, images []string, opts pull.Options, stdio IO) error {
	p := pull.Plan(c.Context(), images, opts)
	var err error
	if o.format == "json" {
		err = progress.WritePreviewJSON(stdio.Stdout, p)
	} else {
		err = progress.WritePreview(stdio.Stdout, p)
	}
	if err != nil {
		return err
	}
	for _, img := range p.Images {
		if img.Result.Failed() {
			fmt.Fprintf(stdio.Stderr, "Error: %s\n", progress.OneLine(img.Result.Err))
		}
	}
	if p.Totals.Failed > 0 {
		return failedError{p.Totals.Failed}
	}
	return nil
}

// promptable reports whether containers/image may ask on stdio which
// registry an ambiguous short name means: it asks on the process's own
// standard input and output when they are a terminal, so only when those are
// herd's.
func promptable(stdio IO) bool {
	in, ok1 := stdio.Stdin.(*os.File)
	out, ok2 := stdio.Stdout.(*os.File)
	return ok1 && ok2 && in.Fd() == os.Stdin.Fd() && out.Fd() == os.Stdout.Fd() &&
		term.IsTerminal(int(in.Fd())) && term.IsTerminal(int(out.Fd()))
}

// images gathers the references from the arguments and every --file.
func (o *pullOptions) images(args []string, stdin io.Reader) ([]string, error) {
	images := append([]string(nil), args...)
	for _, path := range o.files {
		var r io.Reader = stdin
		if path != "-" {
			f, err := os.Open(path)
			if err != nil {
				return nil, usageErrorf("--file: %v", err)
			}
			defer f.Close()
			r = f
		}
		list, err := parseImageList(r)
		if err != nil {
			return nil, usageErrorf("--file %s: %v", path, err)
		}
		for _, ref := range list {
			if err := checkReference(ref); err != nil {
				return nil, usageErrorf("--file %s: %v", path, err)
			}
		}
		images = append(images, list...)
	}
	if len(images) == 0 {
		return nil, usageErrorf("no images to pull: give at least one IMAGE or --file")
	}
	return images, nil
}

// parseImageList reads one image reference per line. Blank lines are
// skipped and # starts a comment; a line with more than one word is an error
// rather than a guess.
func parseImageList(r io.Reader) ([]string, error) {
	var images []string
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line, _, _ := strings.Cut(sc.Text(), "#")
		fields := strings.Fields(line)
		switch len(fields) {
		case 0:
		case 1:
			images = append(images, fields[0])
		default:
			return nil, fmt.Errorf("line %d: %q is more than one image reference", n, strings.TrimSpace(line))
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return images, nil
}

// PullFlags returns the flags of herd pull, for documentation tests.
func PullFlags() *pflag.FlagSet {
	return newPullCommand(IO{}).Flags()
}
