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

.PHONY: all build test demo bench-before vet check-format check-tidy clean tags fuzz completions man install bench

all: build

# tags prints the build tags, for running go directly (in . or in tests/):
#   go test -tags "$(make -s tags)" ./...
tags:
	@echo $(TAGS)

build:
	$(GO) build $(GOFLAGS_TAGS) -ldflags '$(LDFLAGS)' -o bin/herd .

# demo: a local registry with sample images, pulled by herd into a temporary store; offline.
demo: build
	cd tests && $(GO) run $(GOFLAGS_TAGS) ./demo -herd $(CURDIR)/bin/herd

# completions regenerates the shell completion scripts kept in completions/
# (cobra's, from `herd completion SHELL`); a test fails when they are stale.
completions:
	$(GO) run $(GOFLAGS_TAGS) . completion bash > completions/herd.bash
	$(GO) run $(GOFLAGS_TAGS) . completion zsh > completions/herd.zsh
	$(GO) run $(GOFLAGS_TAGS) . completion fish > completions/herd.fish
	$(GO) run $(GOFLAGS_TAGS) . completion powershell > completions/herd.ps1

# man regenerates the man pages kept in man/ (one per command, from the
# cobra commands); a test fails when they are stale. The generator lives in
# tests/ so that the product's go.mod does not gain cobra/doc's markdown
# renderer.
man:
	rm -f man/*.1
	cd tests && $(GO) run $(GOFLAGS_TAGS) ./cmd/genman $(CURDIR)/man

# install puts herd, its completions and man pages under
# $(DESTDIR)$(PREFIX), where each shell and man look by default.
PREFIX  ?= /usr/local
DESTDIR ?=
install: build
	install -D -m 0755 bin/herd $(DESTDIR)$(PREFIX)/bin/herd
	install -D -m 0644 completions/herd.bash $(DESTDIR)$(PREFIX)/share/bash-completion/completions/herd
	install -D -m 0644 completions/herd.zsh $(DESTDIR)$(PREFIX)/share/zsh/site-functions/_herd
	install -D -m 0644 completions/herd.fish $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/herd.fish
	install -D -m 0644 -t $(DESTDIR)$(PREFIX)/share/man/man1 man/*.1

# bench pulls generated image sets with herd, a plain copy.Image-per-image
# baseline and podman, side by side, and prints a table (README: "Benchmark");
# plots and raw runs go to bin/bench. Not part of make test (a -quick smoke
# run is). The full run takes over an hour on 2 cores (README: Benchmark);
# BENCHFLAGS=-quick for a one-minute run, or e.g.
# BENCHFLAGS='-sets fleet -limits 100 -j 4'.
bench: build
	cd tests && $(GO) build $(GOFLAGS_TAGS) -o $(CURDIR)/bin/bench-plaincopy ./bench/cmd/plaincopy
	cd tests && $(GO) build -o $(CURDIR)/bin/bench-launcher ./bench/cmd/launcher
	cd tests && $(GO) run $(GOFLAGS_TAGS) ./bench -herd $(CURDIR)/bin/herd -plaincopy $(CURDIR)/bin/bench-plaincopy \
		-launcher $(CURDIR)/bin/bench-launcher -out $(CURDIR)/bin/bench \
		$(if $(wildcard bin/herd-before),-herd-before $(CURDIR)/bin/herd-before) $(BENCHFLAGS)

# Two modules: the product (this directory) and tests/ (end-to-end tests,
# the demo, the benchmark and their registry harness), so that the product's
# dependency graph has no registry server, plotting or terminal emulator.
MODULES := . tests

# bench-before builds bin/herd-before from REV (default: the commit before
# HEAD), for before/after figures measured side by side in one run:
#   make bench-before bench BENCHFLAGS='-contenders herd,herd-before -sets fleet -j 4 -limits 0'
REV ?= HEAD~1
bench-before:
	rm -rf bin/before-src && git worktree add --detach bin/before-src $(REV)
	cd bin/before-src && $(GO) build $(GOFLAGS_TAGS) -o $(CURDIR)/bin/herd-before .
	git worktree remove --force bin/before-src

vet: check-format check-tidy
	@set -e; for m in $(MODULES); do (cd $$m && $(GO) vet $(GOFLAGS_TAGS) ./...); done

# check-format fails on any file gofmt would change.
check-format:
	@unformatted=$$(gofmt -l $(MODULES)); if [ -n "$$unformatted" ]; then \
		echo "not gofmt-formatted (run gofmt -w):"; echo "$$unformatted"; exit 1; fi

# check-tidy fails when go mod tidy would change a go.mod or go.sum.
check-tidy:
	@set -e; for m in $(MODULES); do (cd $$m && $(GO) mod tidy -diff) || \
		{ echo "$$m: go.mod or go.sum is not tidy (run go mod tidy there)"; exit 1; }; done

# test: vet, the whole suite of both modules (fuzz targets run their seed
# corpora), then a short fuzzing run of every target.
test: vet
	@set -e; for m in $(MODULES); do (cd $$m && $(GO) test $(GOFLAGS_TAGS) -count=1 -timeout 40m ./...); done
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
