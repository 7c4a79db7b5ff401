package main

import (
	"bytes"
	"context"
	"encoding/json"
	"image/png"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// A hand-made summary of three images sharing a base layer: app1 fetched
// the base and its own layer, app2 waited for app1's base fetch (its own
// layer queued for a -j slot first), app3 started once the base was in the
// store and reused it; app4's own layer waited for a layer with files in
// common, then queued, then was fetched; as `herd pull --format json`
// writes it, with the times that did not happen left out.
const timelineJSON = `{"herdVersion": "test", "images": [
 {"inputs": ["127.0.0.1:5000/real/gzip/app1:latest"], "reference": "127.0.0.1:5000/real/gzip/app1:latest", "layers": [
   {"digest": "sha256:aa", "size": 10, "how": "fetched", "fetchedBytes": 10, "queued": 0.01, "fetchStart": 0.02, "fetchEnd": 1.5, "committed": 2.25},
   {"digest": "sha256:bb", "size": 5, "how": "fetched", "fetchedBytes": 5, "queued": 0.01, "fetchStart": 0.03, "fetchEnd": 0.9, "committed": 2.5}]},
 {"inputs": ["127.0.0.1:5000/real/gzip/app2:latest"], "reference": "127.0.0.1:5000/real/gzip/app2:latest", "layers": [
   {"digest": "sha256:aa", "size": 10, "how": "waited", "fetchedBytes": 0, "waitEnded": "committed", "queued": 0.01, "waitStart": 0.05, "waitEnd": 2.25, "committed": 2.3},
   {"digest": "sha256:cc", "size": 7, "how": "fetched", "fetchedBytes": 7, "queued": 0.01, "fetchStart": 1.0, "fetchEnd": 2.0, "committed": 2.75}]},
 {"inputs": ["127.0.0.1:5000/real/gzip/app3:latest"], "reference": "127.0.0.1:5000/real/gzip/app3:latest", "layers": [
   {"digest": "sha256:aa", "size": 10, "how": "reused", "fetchedBytes": 0, "queued": 0.01, "committed": 2.4}]},
 {"inputs": ["127.0.0.1:5000/real/gzip/app4:latest"], "reference": "127.0.0.1:5000/real/gzip/app4:latest", "layers": [
   {"digest": "sha256:dd", "size": 8, "how": "partial", "fetchedBytes": 3, "queued": 0.01, "waitStart": 0.05, "waitEnd": 1.0, "fetchStart": 1.5, "fetchEnd": 2.0, "committed": 2.6}]}],
 "totals": {"fetchedBytes": 22, "reusedBytes": 20, "wallSeconds": 2.8, "ok": 3, "failed": 0}}`

func TestTimeline(t *testing.T) {
	var s timelineSummary
	if err := json.Unmarshal([]byte(timelineJSON), &s); err != nil {
		t.Fatal(err)
	}
	got := timelineBars(s)
	want := []timelineBar{
		{0, 0, barQueued, 0.01, 0.02}, {0, 0, barFetching, 0.02, 1.5}, {0, 0, barCommitting, 1.5, 2.25},
		{0, 1, barQueued, 0.01, 0.03}, {0, 1, barFetching, 0.03, 0.9}, {0, 1, barCommitting, 0.9, 2.5},
		{1, 0, barQueued, 0.01, 0.05}, {1, 0, barWaiting, 0.05, 2.25}, {1, 0, barCommitting, 2.25, 2.3},
		{1, 1, barQueued, 0.01, 1.0}, {1, 1, barFetching, 1.0, 2.0}, {1, 1, barCommitting, 2.0, 2.75},
		{2, 0, barQueued, 0.01, 2.4},
		{3, 0, barQueued, 0.01, 0.05}, {3, 0, barFetching, 1.5, 2.0}, {3, 0, barWaiting, 0.05, 1.0}, {3, 0, barQueued, 1.0, 1.5}, {3, 0, barCommitting, 2.0, 2.6},
	}
	if !slices.Equal(got, want) {
		t.Errorf("bars:\n got %v\nwant %v", got, want)
	}
	if l := imageLabel(s.Images[0].Reference, nil); l != "real/gzip/app1:latest" {
		t.Errorf("label %q, want the reference without the registry", l)
	}

	// bench -timeline FILE.json draws FILE.png in -out and exits.
	src, out := filepath.Join(t.TempDir(), "slow-run.json"), t.TempDir()
	if err := os.WriteFile(src, []byte(timelineJSON), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := parseFlags([]string{"-timeline", src, "-out", out}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	var stdout bytes.Buffer
	if err := run(context.Background(), cfg, &stdout); err != nil {
		t.Fatal(err)
	}
	checkPNG(t, filepath.Join(out, "slow-run.png"))

	// A summary without timings (an older herd) is an error, not a blank picture.
	if err := drawTimeline(timelineSummary{Images: s.Images[:0]}, filepath.Join(out, "empty.png")); err == nil {
		t.Error("drawing a summary without timings: no error")
	}
}

// checkPNG checks that path is a PNG of some size.
func checkPNG(t *testing.T, path string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if b := img.Bounds(); b.Dx() < 200 || b.Dy() < 100 {
		t.Errorf("%s is only %dx%d", path, b.Dx(), b.Dy())
	}
}
