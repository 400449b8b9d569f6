# wssbridge — the two commands a new machine needs are `make demo` and `make test`.
CARGO ?= cargo
DEMO_LISTEN ?= 127.0.0.1:8443
DEMO_BACKEND ?= 127.0.0.1:3000

E2E_CERTS := target/e2e-certs

.PHONY: all build release test unit e2e lint check certs demo clean

all: build

build:
	$(CARGO) build

release:
	$(CARGO) build --release

## The whole test suite: Rust tests (unit, integration on real sockets, the real binary),
## then the end-to-end suite (socket.io clients and Chromium).
test: unit e2e

## cargo-nextest runs each test in its own process; plain cargo test when it is missing.
unit:
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
	  $(CARGO) nextest run --no-fail-fast; \
	else \
	  $(CARGO) test --lib --bins --tests --no-fail-fast; \
	fi

## socket.io v4/v2 clients and headless Chromium through the real binary (tests/e2e/).
## Needs node and chromium (.ci/run installs them: apt-get install -y chromium).
e2e:
	$(CARGO) build --quiet --bin wssbridge --example gencerts
	target/debug/examples/gencerts $(E2E_CERTS) >/dev/null
	cd tests/e2e && npm ci --no-audit --no-fund --loglevel=error
	cd tests/e2e && WSSBRIDGE_BIN=$(CURDIR)/target/debug/wssbridge E2E_CERTS=$(CURDIR)/$(E2E_CERTS) \
	  node --test --test-concurrency=1 --test-timeout=180000

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

check: lint test

## A development CA and a localhost certificate in certs/ (see certs/README.md).
certs: certs/server.pem

certs/server.pem:
	$(CARGO) run --quiet --example gencerts -- certs

## The chat demo behind wssbridge: open the printed URL in two tabs.
demo: certs
	$(CARGO) build --quiet --bin wssbridge --example chat
	@echo
	@echo "  Open https://localhost:$(lastword $(subst :, ,$(DEMO_LISTEN)))/ in two browser tabs."
	@echo "  Trust certs/ca.pem in the browser to avoid the warning, or accept it once."
	@echo "  Ctrl-C stops both."
	@echo
	@target/debug/examples/chat $(DEMO_BACKEND) & chat=$$!; \
	  trap 'kill $$chat 2>/dev/null' EXIT INT TERM; \
	  target/debug/wssbridge --listen $(DEMO_LISTEN) --cert certs/server.pem --key certs/server.key \
	    --to $(DEMO_BACKEND)

clean:
	$(CARGO) clean
	rm -f certs/*.pem certs/*.key
