# snare — build, test and run. Most targets need root (BPF, XDP, netns); CI runs as root.
GO      ?= go
PREFIX  ?= /usr/local
BIN     := bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)

# Debian packages the build and the test suite use (the tests drive real tools).
DEB_PKGS := clang llvm libbpf-dev libc6-dev make git ca-certificates iproute2 iptables ipset \
	nftables ethtool iputils-ping nmap hping3 tcpdump wrk xdp-tools bpftool tzdata systemd
# A command each package provides, to tell whether it is installed.
DEB_CMDS := clang llc ip iptables ipset nft ethtool ping nmap hping3 tcpdump wrk xdp-filter bpftool systemd-analyze

.PHONY: all deps generate check-generate build test test-short fuzz run lint bench bench-quick demo clean

all: lint build

## generate: rebuild the bpf2go bindings from bpf/*.c (needs clang, llvm, libbpf-dev)
generate:
	$(GO) generate ./bpf

## check-generate: fail if the bpf2go output does not match a fresh build of bpf/*.c
check-generate:
	@before=$$(sha256sum bpf/snare_bpfel.go bpf/snare_bpfel.o); \
	$(GO) generate ./bpf && \
	after=$$(sha256sum bpf/snare_bpfel.go bpf/snare_bpfel.o); \
	if [ "$$before" != "$$after" ]; then echo "bpf2go output was stale: regenerated, commit it" >&2; exit 1; fi; \
	git diff --quiet HEAD -- bpf/snare_bpfel.go bpf/snare_bpfel.o || { echo "bpf2go output differs from the commit: commit it" >&2; exit 1; }

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

## fuzz: each fuzz target for FUZZTIME beyond its seeds (testdata/fuzz/, which every go test runs);
## one target at a time, since -fuzz takes one. Run it when a parser changes and add what it finds
## to the seeds; CI runs only the seeds (with make test), so that its verdict does not depend on luck.
FUZZTIME ?= 10s
FUZZ_TARGETS := ./control/input:FuzzParseTarget ./control/input:FuzzParseTTL \
	./control/blocklist:FuzzParseBlockList ./control:FuzzAPIRequest
fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do pkg=$${t%%:*}; name=$${t##*:}; \
		echo "fuzz $$name in $$pkg for $(FUZZTIME)"; \
		$(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) $$pkg; \
	done

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

## demo: a netns lab with a host, an attacker and a client; snared catches nmap (root, ~1 min)
demo:
	GO=$(GO) ./scripts/demo.sh

clean:
	rm -rf $(BIN)

print-deb-pkgs:
	@echo $(DEB_PKGS)

# ---- install, uninstall, deb (owned by ops; see docs/operations.md) ---------------------------
.PHONY: install uninstall deb

# make install: snared, snarectl, the systemd unit and (if absent) /etc/snare/snare.yaml.
# DESTDIR stages into another root (nothing on this host is started or stopped then).
SYSTEMD_UNIT_DIR ?= $(PREFIX)/lib/systemd/system
SYSCONFDIR       ?= /etc
MANDIR           ?= $(PREFIX)/share/man
# nfpm builds the Debian package; built from the Go module proxy (no downloaded binaries).
# v2.45.0: newer releases need modules outside the proxy (go.digitalxero.dev).
NFPM        ?= $(GO) run github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.45.0
DEB_ARCH    ?= $(shell $(GO) env GOARCH)
# Debian versions must start with a digit: 0.1.0~git<commit time>.<hash> sorts by commit time.
DEB_VERSION ?= 0.1.0~git$(shell git log -1 --format=%cd.%h --date=format:%Y%m%d%H%M%S 2>/dev/null || echo 0)
DEB_OUT     ?= $(BIN)
# fixed: packaging/nfpm.yaml names it
DEB_STAGE   := bin/deb-stage

install: build
	install -D -m 0755 $(BIN)/snared $(DESTDIR)$(PREFIX)/sbin/snared
	install -D -m 0755 $(BIN)/snarectl $(DESTDIR)$(PREFIX)/bin/snarectl
	install -d $(DESTDIR)$(SYSTEMD_UNIT_DIR)
	sed -e 's|/usr/sbin/snared|$(PREFIX)/sbin/snared|g' -e 's|/etc/snare/|$(SYSCONFDIR)/snare/|g' packaging/snared.service > $(DESTDIR)$(SYSTEMD_UNIT_DIR)/snared.service
	chmod 0644 $(DESTDIR)$(SYSTEMD_UNIT_DIR)/snared.service
	install -d $(DESTDIR)$(SYSCONFDIR)/snare/conf.d
	@if [ -e $(DESTDIR)$(SYSCONFDIR)/snare/snare.yaml ]; then \
		echo "keeping existing $(DESTDIR)$(SYSCONFDIR)/snare/snare.yaml (the shipped one is examples/snare.yaml)"; \
	else install -m 0644 examples/snare.yaml $(DESTDIR)$(SYSCONFDIR)/snare/snare.yaml; fi
	@for m in $(wildcard docs/man/*.[1-8]); do \
		s=$${m##*.}; install -D -m 0644 $$m $(DESTDIR)$(MANDIR)/man$$s/$${m##*/} || exit 1; done
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; \
		echo "installed; start with: systemctl enable --now snared"; fi

# make uninstall: stops snared, removes its enforcement from the kernel (snared uninstall), then
# the files install put in place. The config in /etc/snare and the store in /var/lib/snare stay.
uninstall:
	@if [ -z "$(DESTDIR)" ]; then \
		if [ -d /run/systemd/system ]; then systemctl disable --now snared.service 2>/dev/null || true; fi; \
		if [ -x $(PREFIX)/sbin/snared ]; then $(PREFIX)/sbin/snared uninstall || exit 1; fi; \
	fi
	rm -f $(DESTDIR)$(PREFIX)/sbin/snared $(DESTDIR)$(PREFIX)/bin/snarectl $(DESTDIR)$(SYSTEMD_UNIT_DIR)/snared.service
	rm -f $(addprefix $(DESTDIR)$(MANDIR)/man1/,$(notdir $(wildcard docs/man/*.1))) \
		$(addprefix $(DESTDIR)$(MANDIR)/man8/,$(notdir $(wildcard docs/man/*.8)))
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
	@echo "kept $(SYSCONFDIR)/snare and /var/lib/snare: delete them to forget the config and every block"

# make deb: bin/snare_<version>_<arch>.deb (static binaries, unit, example config as a conffile,
# man pages, shell completions, docs). DEB_OUT=dir puts it elsewhere.
deb: export CGO_ENABLED = 0
deb: build
	rm -rf $(DEB_STAGE)
	install -D -m 0755 $(BIN)/snared $(DEB_STAGE)/usr/sbin/snared
	install -D -m 0755 $(BIN)/snarectl $(DEB_STAGE)/usr/bin/snarectl
	install -d $(DEB_STAGE)/usr/share/doc/snare
	@for f in README.md docs/operations.md; do [ ! -f $$f ] || install -m 0644 $$f $(DEB_STAGE)/usr/share/doc/snare/ || exit 1; done
	@for m in $(wildcard docs/man/*.[1-8]); do \
		s=$${m##*.}; install -d $(DEB_STAGE)/usr/share/man/man$$s && gzip -9n < $$m > $(DEB_STAGE)/usr/share/man/man$$s/$${m##*/}.gz || exit 1; done
	@if $(BIN)/snarectl completion bash >/dev/null 2>&1; then \
		install -d $(DEB_STAGE)/usr/share/bash-completion/completions $(DEB_STAGE)/usr/share/zsh/vendor-completions \
			$(DEB_STAGE)/usr/share/fish/vendor_completions.d && \
		$(BIN)/snarectl completion bash > $(DEB_STAGE)/usr/share/bash-completion/completions/snarectl && \
		$(BIN)/snarectl completion zsh > $(DEB_STAGE)/usr/share/zsh/vendor-completions/_snarectl && \
		$(BIN)/snarectl completion fish > $(DEB_STAGE)/usr/share/fish/vendor_completions.d/snarectl.fish; \
	fi
	mkdir -p $(DEB_OUT)
	SNARE_VERSION=$(DEB_VERSION) SNARE_ARCH=$(DEB_ARCH) \
		$(NFPM) package --config packaging/nfpm.yaml --packager deb --target $(DEB_OUT)/snare_$(DEB_VERSION)_$(DEB_ARCH).deb
