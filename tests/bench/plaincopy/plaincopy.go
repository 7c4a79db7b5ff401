// Package plaincopy is the benchmark's baseline: what a user writes today to
// pull many images at once without herd. One copy.Image per image, all in
// parallel, sharing one semaphore of blob copies, into one store; no other
// coordination. With -sequential it pulls one image after another instead
// (a loop of copy.Image, as a script of skopeo copy or podman pull runs):
// no overlap, so each image reuses the layers the ones before it committed. It is a separate program (bench/cmd/plaincopy) so the
// benchmark can measure its CPU time and peak RSS like herd's.
//
// To be an honest baseline it opens the store with herd's own store options
// (cmd.StoreOptions: storage.conf, then --root/--runroot/--storage-driver,
// partial pulls on unless storage.conf turns them off), stages blobs in
// herd's temporary directory (cmd.TempDir) and keeps the blob-info cache
// beside the store, as herd does.
package plaincopy

import (
	"context"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"sync"

	"go.podman.io/image/v5/copy"
	"go.podman.io/image/v5/docker"
	"go.podman.io/image/v5/signature"
	istorage "go.podman.io/image/v5/storage"
	"go.podman.io/image/v5/types"
	"go.podman.io/storage"
	"golang.org/x/sync/semaphore"

	"github.com/herd-project/herd/cmd"
)

// Main runs the baseline with command-line args and returns the exit code:
//
//	plaincopy -root DIR -runroot DIR -storage-driver overlay -policy FILE -j 4 [-sequential] [-tls-verify=false] IMAGE...
func Main(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("plaincopy", flag.ContinueOnError)
	fs.SetOutput(stderr)
	root := fs.String("root", "", "store root")
	runroot := fs.String("runroot", "", "store run root")
	driver := fs.String("storage-driver", "", "storage driver")
	policyPath := fs.String("policy", "", "signature policy file")
	jobs := fs.Int("j", 6, "blob copies at once, across all images")
	sequential := fs.Bool("sequential", false, "pull one image after another, each with up to -j blob copies")
	tlsVerify := fs.Bool("tls-verify", true, "require HTTPS and verify certificates")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *root == "" || *runroot == "" || *policyPath == "" || fs.NArg() == 0 || *jobs < 1 {
		fmt.Fprintln(stderr, "plaincopy: need -root, -runroot, -policy, -j >= 1 and at least one image")
		return 2
	}
	if err := run(context.Background(), *root, *runroot, *driver, *policyPath, *jobs, *sequential, *tlsVerify, fs.Args(), stdout); err != nil {
		fmt.Fprintln(stderr, "plaincopy:", err)
		return 1
	}
	return 0
}

func run(ctx context.Context, root, runroot, driver, policyPath string, jobs int, sequential, tlsVerify bool, images []string, stdout io.Writer) error {
	storeFlags := []string{"--root", root, "--runroot", runroot}
	if driver != "" { // no -storage-driver: storage.conf's (herd's --storage-driver "" would clear it)
		storeFlags = append(storeFlags, "--storage-driver", driver)
	}
	opts, err := cmd.StoreOptions(storeFlags...)
	if err != nil {
		return err
	}
	store, err := storage.GetStore(opts)
	if err != nil {
		return fmt.Errorf("opening the store at %s: %w", root, err)
	}
	defer func() { _, _ = store.Shutdown(false) }()

	policy, err := signature.NewPolicyFromFile(policyPath)
	if err != nil {
		return fmt.Errorf("reading %s: %w", policyPath, err)
	}
	sys := &types.SystemContext{
		DockerInsecureSkipTLSVerify: types.NewOptionalBool(!tlsVerify),
		BlobInfoCacheDir:            filepath.Join(filepath.Dir(filepath.Clean(root)), "cache"),
		BigFilesTemporaryDir:        cmd.TempDir(),
	}

	sem := semaphore.NewWeighted(int64(jobs))
	errs := make([]error, len(images))
	var wg sync.WaitGroup
	for i, name := range images {
		if sequential {
			errs[i] = pullOne(ctx, store, sys, policy, sem, name)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = pullOne(ctx, store, sys, policy, sem, name)
		}()
	}
	wg.Wait()
	var failed int
	for i, err := range errs {
		if err != nil {
			failed++
			fmt.Fprintf(stdout, "pulling %s: %v\n", images[i], err)
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d images failed", failed, len(images))
	}
	return nil
}

func pullOne(ctx context.Context, store storage.Store, sys *types.SystemContext, policy *signature.Policy, sem *semaphore.Weighted, name string) error {
	src, err := docker.ParseReference("//" + name)
	if err != nil {
		return err
	}
	dest, err := istorage.Transport.ParseStoreReference(store, name)
	if err != nil {
		return err
	}
	pc, err := signature.NewPolicyContext(policy) // not safe for concurrent use: one per image
	if err != nil {
		return err
	}
	defer func() { _ = pc.Destroy() }()
	_, err = copy.Image(ctx, pc, dest, src, &copy.Options{
		SourceCtx:                     sys,
		DestinationCtx:                sys,
		ConcurrentBlobCopiesSemaphore: sem,
	})
	return err
}
