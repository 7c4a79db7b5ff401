# Build tags live here and only here: openpgp instead of gpgme, and no btrfs
# headers. Every go command below uses them.
TAGS := containers_image_openpgp exclude_graphdriver_btrfs
GO   ?= go
GOFLAGS_TAGS := -tags '$(TAGS)'

.PHONY: all build test demo vet clean tags

all: build

# tags prints the build tags, for running go directly:
#   go test -tags "$(make -s tags)" ./...
tags:
	@echo $(TAGS)

build:
	$(GO) build $(GOFLAGS_TAGS) -o bin/herd .

# demo: a local registry with sample images, pulled by herd into a temporary store; offline.
demo: build
	$(GO) run $(GOFLAGS_TAGS) ./tests/demo -herd bin/herd

vet:
	$(GO) vet $(GOFLAGS_TAGS) ./...

test:
	$(GO) vet $(GOFLAGS_TAGS) ./...
	$(GO) test $(GOFLAGS_TAGS) -count=1 -timeout 40m ./...

clean:
	rm -rf bin
