package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
)

// results.json holds every run and what is needed to print the report
// again (bench -from results.json), e.g. after changing the table or plots,
// without pulling anything.

type savedResults struct {
	Meta savedMeta  `json:"meta"`
	Rows []savedRow `json:"rows"`
}

type savedMeta struct {
	Plan         []savedScenario  `json:"plan"`
	Compressions []string         `json:"compressions"`
	Contenders   []string         `json:"contenders"`
	Runs         int              `json:"runs"`
	RefJobs      int              `json:"refJobs"`
	Driver       string           `json:"storageDriver"`
	Podman       bool             `json:"podman"`
	PodmanNote   string           `json:"podmanNote,omitempty"`
	Quick        bool             `json:"quick"`
	Unique       map[string]int64 `json:"uniqueLayerBytes"` // by "set/compression"
	Images       map[string]int   `json:"references"`       // by "set/compression"
	// Timelines name the herd JSON summaries kept beside results.json
	// (NAME.json), drawn as NAME.png. Timeline is the one name results.json
	// files written before there were several hold.
	Timelines []string `json:"timelines,omitempty"`
	Timeline  string   `json:"timeline,omitempty"`
}

type savedScenario struct {
	Set         string   `json:"set"`
	Limit       int64    `json:"limitBytesPerSecond"`
	Jobs        []int    `json:"jobs"`
	Compression string   `json:"compression,omitempty"`
	Contenders  []string `json:"contenders,omitempty"`
}

type savedRow struct {
	Set         string        `json:"set"`
	Compression string        `json:"compression"`
	Limit       int64         `json:"limitBytesPerSecond"`
	Contender   string        `json:"contender"`
	Jobs        int           `json:"jobs"` // 0 for podman
	Runs        []measurement `json:"runs"`
}

func (res *results) save() savedResults {
	cfg := res.cfg
	out := savedResults{Meta: savedMeta{Compressions: cfg.compressions, Runs: cfg.runs, RefJobs: cfg.refJobs,
		Driver: cfg.driver, Podman: cfg.podman != "", PodmanNote: cfg.podmanNote, Quick: cfg.quick,
		Unique: res.unique, Images: res.images, Timelines: res.timelines}}
	for _, sc := range cfg.plan {
		out.Meta.Plan = append(out.Meta.Plan, savedScenario{Set: sc.set, Limit: sc.limit, Jobs: sc.jobs, Compression: sc.compression, Contenders: sc.contenders})
	}
	for _, c := range append(append(slices.Clone(herdContenders), plainContenders...), "podman") {
		if cfg.contenders[c] {
			out.Meta.Contenders = append(out.Meta.Contenders, c)
		}
	}
	for _, r := range res.rows() {
		k := r.key
		out.Rows = append(out.Rows, savedRow{Set: k.set, Compression: k.compression, Limit: k.limit,
			Contender: k.contender.name, Jobs: k.contender.jobs, Runs: res.cells[k]})
	}
	return out
}

// loadResults reads a results.json into results printable with cfg's -out.
func loadResults(path string, cfg *config) (*results, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var saved savedResults
	if err := json.Unmarshal(b, &saved); err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	m := saved.Meta
	cfg.plan, cfg.sets, cfg.compressions = nil, nil, m.Compressions
	cfg.runs, cfg.refJobs, cfg.driver, cfg.podmanNote, cfg.quick = m.Runs, m.RefJobs, m.Driver, m.PodmanNote, m.Quick
	cfg.podman = ""
	if m.Podman {
		cfg.podman = "podman"
	}
	cfg.contenders = map[string]bool{}
	for _, c := range m.Contenders {
		cfg.contenders[c] = true
	}
	for _, sc := range m.Plan {
		cfg.plan = append(cfg.plan, scenario{set: sc.Set, limit: sc.Limit, jobs: sc.Jobs, compression: sc.Compression, contenders: sc.Contenders})
		if !slices.Contains(cfg.sets, sc.Set) {
			cfg.sets = append(cfg.sets, sc.Set)
		}
	}
	res := &results{cfg: cfg, cells: map[rowKey][]measurement{}, unique: m.Unique, images: m.Images,
		timelines: m.Timelines, timelineDir: filepath.Dir(path)}
	if m.Timeline != "" {
		res.timelines = append(res.timelines, m.Timeline)
	}
	for _, r := range saved.Rows {
		res.cells[rowKey{r.Set, r.Compression, r.Limit, contender{r.Contender, r.Jobs}}] = r.Runs
	}
	if len(cfg.plan) == 0 || len(res.cells) == 0 {
		return nil, fmt.Errorf("%s holds no results", path)
	}
	return res, nil
}
