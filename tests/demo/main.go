// Command demo shows herd's main job offline: it starts a local registry,
// pushes a few sample images that share base layers, runs the herd binary
// to pull them all into a temporary store, and prints what the registry
// served compared with what the images need. Run it with `make demo`.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/herd-project/herd/commit"
	"github.com/herd-project/herd/progress"
	"github.com/herd-project/herd/pull"
	"github.com/herd-project/herd/tests/internal/testimage"
	"github.com/herd-project/herd/tests/internal/testregistry"
)

func main() {
	herd := flag.String("herd", "bin/herd", "the herd binary to run")
	keep := flag.Bool("keep", false, "keep the temporary store and print where it is")
	flag.Parse()
	if err := run(*herd, *keep); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(herd string, keep bool) error {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "herd-demo-") // no ':' in the path: overlay needs that
	if err != nil {
		return err
	}
	if !keep {
		defer os.RemoveAll(dir)
	}

	reg, err := testregistry.Start(ctx, testregistry.Options{Quiet: true})
	if err != nil {
		return err
	}
	defer reg.Close()
	fmt.Printf("Local registry at %s; pushing sample images...\n", reg.Host)
	pushDir := filepath.Join(dir, "push")
	if err := os.MkdirAll(pushDir, 0o755); err != nil {
		return err
	}
	images, err := testimage.NewPusher(reg.Host, pushDir).PushDemoSet(ctx)
	if err != nil {
		return err
	}
	unique := testimage.UniqueLayerBytes(images...)

	args := []string{"pull", "-j", "4", "--format", "json",
		"--root", filepath.Join(dir, "storage"), "--runroot", filepath.Join(dir, "run"),
		"--signature-policy", writeFile(dir, "policy.json", `{"default":[{"type":"insecureAcceptAnything"}]}`),
		"--registries-conf", writeFile(dir, "registries.conf", ""),
		"--tls-verify=false"}
	if os.Geteuid() != 0 {
		args = append(args, "--storage-driver", "vfs") // overlay needs root or a user namespace set up for it
	}
	for _, p := range images {
		args = append(args, p.Ref)
	}
	for round, title := range []string{"First pull into an empty store", "Same pull again: everything is already there"} {
		reg.ResetCounters()
		fmt.Printf("\n== %s ==\n$ herd pull -j 4 %d images\n", title, len(images))
		start := time.Now()
		summary, err := runHerd(herd, args)
		if err != nil {
			return err
		}
		took := time.Since(start)
		printSummary(summary)
		fmt.Printf("herd took %.2f s%s\n", took.Seconds(), waitsAndRetries(summary))
		served := testimage.ServedLayerBytes(reg, images...)
		fmt.Printf("registry served %s of layer blobs; the images' unique layer bytes are %s (%.2fx)\n",
			mib(served), mib(unique), float64(served)/float64(unique))
		if round == 0 {
			fmt.Println("(podman or skopeo pulling these in parallel fetch each shared base blob once per image)")
		}
	}
	if keep {
		fmt.Printf("\nstore kept at %s/storage\n", dir)
	}
	return nil
}

func runHerd(herd string, args []string) (progress.Summary, error) {
	var stdout bytes.Buffer
	c := exec.Command(herd, args...)
	c.Stdout, c.Stderr = &stdout, os.Stderr
	err := c.Run()
	var s progress.Summary
	if jerr := json.Unmarshal(stdout.Bytes(), &s); jerr != nil {
		if err != nil {
			return s, fmt.Errorf("%s: %w", herd, err)
		}
		return s, fmt.Errorf("parsing herd's summary: %w", jerr)
	}
	if err != nil {
		return s, fmt.Errorf("%s: %w (%d images failed)", herd, err, s.Totals.Failed)
	}
	return s, nil
}

func printSummary(s progress.Summary) {
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "IMAGE\tID\tLAYERS (how)\tFETCHED")
	for _, img := range s.Images {
		hows := map[pull.How]int{}
		for _, l := range img.Layers {
			hows[l.How]++
		}
		var desc string
		for _, h := range []pull.How{pull.Fetched, pull.Partial, pull.Waited, pull.Reused} {
			if hows[h] > 0 {
				desc += fmt.Sprintf("%d %s ", hows[h], h)
			}
		}
		id := img.ImageID
		if len(id) > 12 {
			id = id[:12]
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", img.Inputs[0], id, desc, mib(img.Fetched))
	}
	w.Flush()
}

// waitsAndRetries says how the run's waits for other pulls' blobs ended and
// how many images needed more than one attempt, if any did.
func waitsAndRetries(s progress.Summary) string {
	ends := map[commit.WaitEnd]int{}
	retried := 0
	for _, img := range s.Images {
		for _, l := range img.Layers {
			if l.WaitEnded != "" {
				ends[l.WaitEnded]++
			}
		}
		if img.Attempts > 1 {
			retried++
		}
	}
	var out []string
	for _, end := range []commit.WaitEnd{commit.Committed, commit.InStore, commit.OwnerReused, commit.OwnerFailed, commit.Cancelled} {
		if ends[end] > 0 {
			out = append(out, fmt.Sprintf("%d %s", ends[end], end))
		}
	}
	desc := ""
	if len(out) > 0 {
		desc = "; waits for another pull's blob ended: " + strings.Join(out, ", ")
	}
	if retried > 0 {
		desc += fmt.Sprintf("; %d images retried", retried)
	}
	return desc
}

func writeFile(dir, name, content string) string {
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		panic(err)
	}
	return path
}

func mib(n int64) string { return fmt.Sprintf("%.2f MiB", float64(n)/(1<<20)) }
