# wssbridge — the two commands a new machine needs are `make demo` and `make test`.
CARGO ?= cargo
DEMO_LISTEN ?= 127.0.0.1:8443
DEMO_BACKEND ?= 127.0.0.1:3000

.PHONY: all build release test lint check certs demo clean

all: build

build:
	$(CARGO) build

release:
	$(CARGO) build --release

## The whole test suite: unit tests, integration tests on real sockets, the real binary.
## cargo-nextest runs each test in its own process; plain cargo test when it is missing.
test:
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
	  $(CARGO) nextest run --no-fail-fast; \
	else \
	  $(CARGO) test --lib --bins --tests --no-fail-fast; \
	fi

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
