# snare — build, test and run. Most targets need root (BPF, XDP, netns); CI runs as root.
GO      ?= go
PREFIX  ?= /usr/local
BIN     := bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)

# Debian packages the build and the test suite use (the tests drive real tools).
DEB_PKGS := clang llvm libbpf-dev libc6-dev make git ca-certificates iproute2 iptables ipset \
	nftables ethtool iputils-ping nmap hping3 tcpdump wrk xdp-tools bpftool
# A command each package provides, to tell whether it is installed.
DEB_CMDS := clang llc ip iptables ipset nft ethtool ping nmap hping3 tcpdump wrk xdp-filter bpftool

.PHONY: all deps generate check-generate build test test-short run lint bench bench-quick clean

all: lint build

## generate: rebuild the bpf2go bindings from bpf/*.c (needs clang, llvm, libbpf-dev)
generate:
	$(GO) generate ./bpf

## check-generate: fail if the committed bpf2go output differs from a fresh build
check-generate: generate
	@git diff --exit-code -- bpf/ || { echo "bpf2go output is stale: run 'make generate' and commit" >&2; exit 1; }

## build: snared and snarectl into ./bin
build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/snared ./cmd/snared
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/snarectl ./cmd/snarectl

## deps: install the Debian packages above if any of their commands is missing (root)
deps:
	@missing=; for c in $(DEB_CMDS); do command -v $$c >/dev/null 2>&1 || missing="$$missing $$c"; done; \
	test -f /usr/include/bpf/bpf_helpers.h || missing="$$missing libbpf-dev"; \
	if [ -n "$$missing" ]; then \
		echo "missing:$$missing; installing $(DEB_PKGS)"; \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(DEB_PKGS); \
	fi

## test: the whole suite (as root: real BPF, XDP on veth in network namespaces, nmap, ipset)
test: deps
	$(GO) test -count=1 -p 1 -timeout 30m ./...

## test-short: unprivileged unit tests only
test-short:
	$(GO) test -short ./...

## run: build and run snared in the foreground with the embedded defaults
run: build
	./$(BIN)/snared

## lint: gofmt and go vet
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:" >&2; echo "$$out" >&2; exit 1; fi
	$(GO) vet ./...

## bench: the full benchmark (root, < 10 min); results in bench/results/
bench:
	$(GO) run ./bench/cmd/snarebench

## bench-quick: a short benchmark for development (root, < 2 min)
bench-quick:
	$(GO) run ./bench/cmd/snarebench --quick

clean:
	rm -rf $(BIN)

print-deb-pkgs:
	@echo $(DEB_PKGS)
