#!/usr/bin/env bash
# `make demo-check` (part of `make test`): `make demo` as a new user runs it.
# 1. It starts and prints its URL; `kill` on make's PID stops every demo process: nothing
#    listens on the demo's ports afterwards.
# 2. With the backend's port already taken, it stops with the chat's message and starts no
#    wssbridge (so it never fronts whatever holds the port).
set -euo pipefail
cd "$(dirname "$0")/.."

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
log=$(mktemp)
cleanup() { rm -f "$log"; [ -n "${holder:-}" ] && kill "$holder" 2>/dev/null; true; }
trap cleanup EXIT

front=$(free_port) back=$(free_port)
make --no-print-directory demo DEMO_LISTEN=127.0.0.1:$front DEMO_BACKEND=127.0.0.1:$back >"$log" 2>&1 &
mk=$!
for _ in $(seq 1200); do  # the first build may take minutes
  grep -q "Open https://localhost:$front/" "$log" && break
  kill -0 $mk 2>/dev/null || { cat "$log"; echo "demo-check: make demo exited early"; exit 1; }
  sleep 0.5
done
grep -q "Open https://localhost:$front/" "$log" || { cat "$log"; echo "demo-check: no URL"; exit 1; }
listening "$front" && listening "$back" || { echo "demo-check: the demo is not listening"; exit 1; }
kill "$mk"
for _ in $(seq 40); do
  listening "$front" || listening "$back" || break
  sleep 0.25
done
if listening "$front" || listening "$back"; then
  echo "demo-check: still listening after make was killed"; exit 1
fi
echo "demo-check: make demo stops with make"

# The backend's port taken by someone else.
python3 -c 'import socket,time,sys; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(); time.sleep(120)' "$back" &
holder=$!
for _ in $(seq 40); do listening "$back" && break; sleep 0.1; done
if make --no-print-directory demo DEMO_LISTEN=127.0.0.1:$front DEMO_BACKEND=127.0.0.1:$back >"$log" 2>&1; then
  cat "$log"; echo "demo-check: make demo succeeded with its backend port taken"; exit 1
fi
grep -q "cannot listen on 127.0.0.1:$back" "$log" || { cat "$log"; echo "demo-check: no message"; exit 1; }
if listening "$front"; then echo "demo-check: wssbridge started anyway"; exit 1; fi
echo "demo-check: a taken backend port stops the demo with the chat's message"
