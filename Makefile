# Build tags live here and only here: openpgp instead of gpgme, and no btrfs
# headers. Every go command below uses them.
TAGS := containers_image_openpgp exclude_graphdriver_btrfs
GO   ?= go
GOFLAGS_TAGS := -tags '$(TAGS)'
# make build stamps the version (`herd version`, the User-Agent, the JSON
# summary) from git; a plain go build says "dev".
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
LDFLAGS := -X github.com/herd-project/herd/cmd.version=$(VERSION) -X github.com/herd-project/herd/cmd.commit=$(COMMIT)

.PHONY: all build test demo vet clean tags fuzz completions bench

all: build

# tags prints the build tags, for running go directly:
#   go test -tags "$(make -s tags)" ./...
tags:
	@echo $(TAGS)

build:
	$(GO) build $(GOFLAGS_TAGS) -ldflags '$(LDFLAGS)' -o bin/herd .

# demo: a local registry with sample images, pulled by herd into a temporary store; offline.
demo: build
	$(GO) run $(GOFLAGS_TAGS) ./tests/demo -herd bin/herd

# completions regenerates the shell completion scripts kept in completions/
# (cobra's, from `herd completion SHELL`); a test fails when they are stale.
completions:
	$(GO) run $(GOFLAGS_TAGS) . completion bash > completions/herd.bash
	$(GO) run $(GOFLAGS_TAGS) . completion zsh > completions/herd.zsh
	$(GO) run $(GOFLAGS_TAGS) . completion fish > completions/herd.fish
	$(GO) run $(GOFLAGS_TAGS) . completion powershell > completions/herd.ps1

# bench pulls generated image sets with herd, a plain copy.Image-per-image
# baseline and podman, side by side, and prints a table (README: "Benchmark");
# plots and raw runs go to bin/bench. Not part of make test (a -quick smoke
# run is). Takes about 50 minutes on 2 cores; BENCHFLAGS=-quick for a one-minute run, or
# e.g. BENCHFLAGS='-sets fleet -limits 100 -j 4'.
bench: build
	$(GO) build $(GOFLAGS_TAGS) -o bin/bench-plaincopy ./bench/cmd/plaincopy
	$(GO) build -o bin/bench-launcher ./bench/cmd/launcher
	$(GO) run $(GOFLAGS_TAGS) ./bench -herd bin/herd -plaincopy bin/bench-plaincopy -launcher bin/bench-launcher $(BENCHFLAGS)

vet:
	$(GO) vet $(GOFLAGS_TAGS) ./...

# test: vet, the whole suite (fuzz targets run their seed corpora), then a
# short fuzzing run of every target.
test:
	$(GO) vet $(GOFLAGS_TAGS) ./...
	$(GO) test $(GOFLAGS_TAGS) -count=1 -timeout 40m ./...
	$(MAKE) --no-print-directory fuzz

# fuzz runs each fuzz target (herd's parsing of what users type: --file
# lists, --platform, --pull-option, --creds, the retry flags) for FUZZTIME
# and generates new input; make test runs it briefly. The first run builds
# instrumented dependencies (about 3 minutes on 2 cores). FUZZTIME is a
# count of executions by default: a duration (e.g. 30s) works too, but on 2
# cores Go's fuzzer then sometimes fails at the deadline itself with
# "context deadline exceeded", with no failing input.
FUZZTIME ?= 20000x
fuzz:
	@set -e; for target in $$($(GO) test $(GOFLAGS_TAGS) -list '^Fuzz' ./cmd | grep '^Fuzz'); do \
		echo "== $$target ($(FUZZTIME))"; \
		$(GO) test $(GOFLAGS_TAGS) -run '^$$' -fuzz "^$$target$$" -fuzztime $(FUZZTIME) ./cmd; \
	done

clean:
	rm -rf bin
