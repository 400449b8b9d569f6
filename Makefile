# wssbridge — the two commands a new machine needs are `make demo` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
DEMO_LISTEN ?= 127.0.0.1:8443
DEMO_BACKEND ?= 127.0.0.1:3000

E2E_CERTS := target/e2e-certs

FUZZ_SECONDS ?= 60
FUZZ_TARGETS := head route exchange proxy frames chunked hello
# What cargo-fuzz passes for libFuzzer, without needing a nightly toolchain.
FUZZ_RUSTFLAGS := --cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
  -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
  -Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks

TLS_AUDIT_PORT ?= 9443

BENCH_ARGS ?=

.PHONY: all build release test unit e2e e2e-setup fleet-test lint check certs demo demo-socketio demo-check FORCE fuzz tls-audit bench bench-quick bench-scale soak micro dist deb deb-check install image image-check clean

all: build

build:
	$(CARGO) build

## One release build for everything a user runs: `make demo`, `demo-socketio`, `install`
## and `deb` all use it (the binary, the demo's chat backend and the man-page writer, built
## together so that no dependency is compiled twice for different feature sets).
RELEASE_BUILD = $(CARGO) build --release --workspace --bins
release:
	$(RELEASE_BUILD)

## The whole test suite: Rust tests (unit, integration on real sockets, the real binary),
## then the end-to-end suite (socket.io clients and Chromium).
test: unit e2e demo-check
	@tests/leftovers.sh

## cargo-nextest runs each test in its own process; plain cargo test when it is missing. The
## suite runs twice: the second time every server (in-process or the binary) runs per core.
## What the last run's tests made under target/tmp (PKIs, peers, copies of the binary) goes
## first, so it does not grow run after run.
unit:
	@rm -rf target/tmp
	@# tests/firstfive.rs runs the demo's chat backend, a package of its own: test builds
	@# build only the binaries of the package under test.
	$(CARGO) build --quiet -p wssbridge-chat
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
	  $(CARGO) nextest run --workspace --no-fail-fast && \
	  WSSBRIDGE_RUNTIME=per-core $(CARGO) nextest run --workspace --no-fail-fast; \
	else \
	  $(CARGO) test --workspace --lib --bins --tests --no-fail-fast && \
	  WSSBRIDGE_RUNTIME=per-core $(CARGO) test --workspace --lib --bins --tests --no-fail-fast; \
	fi

## socket.io v4/v2 clients and headless Chromium through the real binary (tests/e2e/).
## Needs node and chromium (.ci/run installs them: apt-get install -y chromium).
E2E_RUN = cd tests/e2e && WSSBRIDGE_BIN=$(CURDIR)/target/debug/wssbridge \
  E2E_CERTS=$(CURDIR)/$(E2E_CERTS) node --test --test-concurrency=1 --test-timeout=180000
e2e: e2e-setup
	$(E2E_RUN)

e2e-setup:
	$(CARGO) build --quiet --bin wssbridge
	certs/gen.sh $(E2E_CERTS) >/dev/null
	cd tests/e2e && npm ci --no-audit --no-fund --loglevel=error

## A fleet (issue #23, docs/scale-out.md): HAProxy (mode tcp, PROXY v2, /readyz checks, from
## deploy/haproxy/haproxy.cfg) in front of 3 wssbridge over 3 socket.io processes; a rolling
## restart and a binary upgrade of each instance under 50 chatting clients. About 45 s; part
## of `make e2e` too. Needs haproxy.
fleet-test: e2e-setup
	@command -v haproxy >/dev/null || { echo "fleet-test: haproxy not found (apt-get install haproxy)"; exit 1; }
	$(E2E_RUN) fleet.test.js

## Coverage-guided fuzzing of the head parser, route matcher, framing tracker, PROXY header
## parser and the WebSocket frame-length reader:
## FUZZ_SECONDS per target (default 60). Seeds in fuzz/corpus, findings in fuzz/artifacts.
# An explicit --target keeps the flags off build scripts, which are not linked with libFuzzer.
FUZZ_TRIPLE = $(shell rustc -vV | sed -n 's/^host: //p')
fuzz:
	cd fuzz && RUSTFLAGS="$(FUZZ_RUSTFLAGS)" $(CARGO) build --release --bins --target $(FUZZ_TRIPLE)
	@set -o pipefail; for t in $(FUZZ_TARGETS); do \
	  mkdir -p fuzz/work/$$t fuzz/artifacts/$$t; \
	  echo "== fuzzing $$t for $(FUZZ_SECONDS)s"; \
	  fuzz/target/$(FUZZ_TRIPLE)/release/$$t -max_total_time=$(FUZZ_SECONDS) -max_len=4096 \
	    -artifact_prefix=fuzz/artifacts/$$t/ fuzz/work/$$t fuzz/corpus/$$t 2>&1 | tail -3 || exit 1; \
	done

## testssl.sh (Debian package testssl.sh) against a local instance; the report is kept in
## target/tls-audit.txt and fails the target on any finding rated HIGH or CRITICAL.
tls-audit: certs
	@command -v testssl >/dev/null || { echo "tls-audit: testssl not found (apt-get install testssl.sh)"; exit 1; }
	$(CARGO) build --quiet --bin wssbridge
	@set -o pipefail; \
	  target/debug/wssbridge -q --listen 127.0.0.1:$(TLS_AUDIT_PORT) --cert certs/server.pem \
	  --key certs/server.key --to 127.0.0.1:9 & pid=$$!; trap 'kill $$pid 2>/dev/null' EXIT; \
	  for i in $$(seq 50); do \
	    (exec 3<>/dev/tcp/127.0.0.1/$(TLS_AUDIT_PORT)) 2>/dev/null && break; \
	    kill -0 $$pid 2>/dev/null || { echo "tls-audit: wssbridge did not start"; exit 1; }; \
	    sleep 0.2; \
	  done; \
	  (exec 3<>/dev/tcp/127.0.0.1/$(TLS_AUDIT_PORT)) 2>/dev/null || { echo "tls-audit: nothing listens on $(TLS_AUDIT_PORT)"; exit 1; }; \
	  testssl --quiet --color 0 --warnings off --sneaky --ip 127.0.0.1 --protocols --std \
	    --server-defaults --vulnerable --severity LOW localhost:$(TLS_AUDIT_PORT) \
	    | tee target/tls-audit.txt; \
	  grep -q 'TLS 1.3' target/tls-audit.txt || { echo "tls-audit: no protocol report: did testssl reach the server?"; exit 1; }; \
	  ! grep -E '(HIGH|CRITICAL)' target/tls-audit.txt

## wssbridge beside nginx (as is and with 16 KiB proxy buffers) and HAProxy: 3 rounds of
## short runs taking turns between them, in release; results in bench/results/<stamp>/ (CSV,
## Markdown, PNG). Installs nginx, haproxy and matplotlib when missing. About 15 minutes;
## `make bench-quick` about 1.
bench:
	@command -v nginx >/dev/null && command -v haproxy >/dev/null && command -v wrk >/dev/null || \
	  (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx-light haproxy wrk)
	@-service nginx stop >/dev/null 2>&1; service haproxy stop >/dev/null 2>&1
	@python3 -c 'import matplotlib' 2>/dev/null || python3 -m pip install -q matplotlib
	$(CARGO) build --release --bin wssbridge --example loadgen --example benchd
	python3 bench/run.py $(BENCH_ARGS)

bench-quick:
	$(MAKE) bench BENCH_ARGS=--quick

## How many idle WebSockets one VM holds (issue #25, docs/performance.md): one process at
## 1,000-9,900 tunnels beside HAProxy, then 100,000 through 11 processes sharing one port
## (--reuse-port). About 10 minutes, not in CI. Results in bench/results/scale-<stamp>/.
SCALE_ARGS ?=
bench-scale:
	@command -v haproxy >/dev/null || \
	  (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q haproxy)
	@-service haproxy stop >/dev/null 2>&1
	$(CARGO) build --release --bin wssbridge --example loadgen --example benchd
	python3 bench/scale.py $(SCALE_ARGS)

## Endurance, not in CI (about 15 minutes, root for the vanishing-client part): 9,000 idle
## WebSockets under 200 new connections/s for SOAK_SECONDS (600), a low RLIMIT_NOFILE, a
## spike of 9,900 tunnels whose memory must go back to the system, a client whose link goes
## down. Results in bench/results/soak-<stamp>/.
SOAK_ARGS ?=
soak:
	$(CARGO) build --release --bin wssbridge --example loadgen --example benchd
	python3 bench/soak.py $(SOAK_ARGS)

## Criterion micro-benchmarks: head parsing, route matching, chunked framing.
micro:
	$(CARGO) bench --bench parse

## Formatting, clippy, and one cryptography library in the shipped binary: aws-lc-rs (ring
## must not be compiled into it; rcgen's default features once were).
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	@if $(CARGO) tree -p wssbridge -e normal,build -i ring 2>/dev/null | grep -q ring; then \
	  $(CARGO) tree -p wssbridge -e normal,build -i ring; \
	  echo "lint: ring is compiled into wssbridge beside aws-lc-rs"; exit 1; fi

check: lint test

## A development CA and a certificate in certs/ (see certs/README.md) for CERT_NAMES: add
## a machine's name to open the demo from elsewhere (rm certs/server.pem first to redo it).
CERT_NAMES ?= localhost 127.0.0.1 ::1
certs: certs/server.pem

certs/server.pem:
	certs/gen.sh certs $(CERT_NAMES)

## The chat demo behind wssbridge: open the printed URL in two tabs. Every demo process stops
## when make stops: Ctrl-C, or SIGINT, SIGTERM, SIGHUP or SIGQUIT to make's PID alone. (On
## those, make deletes the recipe's target file, target/demo.running, which the demo
## watches: make forwards only SIGTERM to its children, and waits for them on the others.
## A make started in the background by a script ignores SIGINT, as every such job does.)
demo: target/demo.running

target/demo.running: FORCE certs
	@echo "make demo: building wssbridge and the chat backend (the first build takes a few minutes)…"
	$(RELEASE_BUILD)
	@touch $@
	@examples/demo.sh $$PPID "$(DEMO_LISTEN)" "$(DEMO_BACKEND)" $@

## The seed's own case: a socket.io v4 chat (examples/socketio/: rooms, the page shows the
## transport) behind wssbridge; prints what `make demo` prints. Needs node and npm.
demo-socketio: target/demo-socketio.running

target/demo-socketio.running: FORCE certs
	@echo "make demo-socketio: building wssbridge, installing socket.io (the first build takes a few minutes)…"
	$(RELEASE_BUILD)
	cd examples/socketio && npm ci --no-audit --no-fund --loglevel=error
	@touch $@
	@examples/demo.sh $$PPID "$(DEMO_LISTEN)" "$(DEMO_BACKEND)" $@ socketio

FORCE:

## Checks that `make demo` starts, stops with make, and refuses a taken backend port.
demo-check:
	tests/demo.sh

## The man page and the bash, zsh and fish completions, generated from the flags.
DIST := target/dist
dist:
	$(RELEASE_BUILD)
	target/release/wssbridge-dist $(DIST)
	gzip -9nkf $(DIST)/wssbridge.1

## A Debian package in target/debian/ (cargo-deb, installed when missing): the release
## binary stripped, its man page and completions, the systemd units, /etc/default/wssbridge.
DEB_MAINTAINER ?=
deb: dist
	@$(CARGO) deb --version >/dev/null 2>&1 || $(CARGO) install --locked cargo-deb
	@command -v dpkg-shlibdeps >/dev/null || \
	  (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q dpkg-dev)
	$(CARGO) deb --no-build $(if $(DEB_MAINTAINER),--maintainer "$(DEB_MAINTAINER)")

## Installs the package made by `make deb`, checks it (binary, man page, completions, units,
## certificates readable as the unit would read them, make install) and removes it. Root.
deb-check: deb
	deploy/check-package.sh

## The binary, man page and completions under $(DESTDIR)$(PREFIX) (default /usr/local).
PREFIX ?= /usr/local
DESTDIR ?=
install: dist
	install -Dm755 target/release/wssbridge $(DESTDIR)$(PREFIX)/bin/wssbridge
	install -Dm644 $(DIST)/wssbridge.1 $(DESTDIR)$(PREFIX)/share/man/man1/wssbridge.1
	install -Dm644 $(DIST)/completions/wssbridge.bash \
	  $(DESTDIR)$(PREFIX)/share/bash-completion/completions/wssbridge
	install -Dm644 $(DIST)/completions/_wssbridge $(DESTDIR)$(PREFIX)/share/zsh/site-functions/_wssbridge
	install -Dm644 $(DIST)/completions/wssbridge.fish \
	  $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/wssbridge.fish

## The container image (deploy/container/Containerfile): FROM scratch, the release binary,
## its libraries and CA roots, user 65532, no shell; about 13 MB. Built with podman, buildah
## or docker, whichever is there. `make image-check` (root) checks its config and runs its
## files in a chroot: this machine's podman builds images but cannot start containers.
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
IMAGE ?= wssbridge:$(VERSION)
IMAGE_SOURCE ?= $(shell git remote get-url origin 2>/dev/null)
IMAGE_TOOL ?= $(firstword $(foreach t,podman buildah docker,$(shell command -v $(t) 2>/dev/null)))
image:
	@[ -n "$(IMAGE_TOOL)" ] || { echo "make image: no podman, buildah or docker (apt-get install podman)"; exit 1; }
	$(RELEASE_BUILD)
	deploy/container/rootfs.sh target/release/wssbridge target/image
	$(IMAGE_TOOL) $(if $(findstring buildah,$(IMAGE_TOOL)),bud,build) --build-arg VERSION=$(VERSION) \
	  --build-arg SOURCE="$(IMAGE_SOURCE)" --build-arg REVISION="$$(git rev-parse HEAD 2>/dev/null)" \
	  -t $(IMAGE) target/image

image-check: image
	deploy/container/check-image.sh $(IMAGE) $(VERSION)

clean:
	$(CARGO) clean
	rm -f certs/*.pem certs/*.key
