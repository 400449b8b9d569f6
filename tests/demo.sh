#!/usr/bin/env bash
# `make demo-check` (part of `make test`): `make demo` as a new user runs it.
# 1. It says something in its first second, starts and prints its URL; SIGINT, SIGTERM or
#    SIGHUP to make's PID alone stops every demo process and make: nothing listens on the
#    demo's ports afterwards.
# 2. With the backend's port already taken, it stops with the chat's message and starts no
#    wssbridge (so it never fronts whatever holds the port).
set -euo pipefail
cd "$(dirname "$0")/.."

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
log=$(mktemp)
# On any exit, a failed check included: the make under test stops, and with it (TERM, which
# make forwards) demo.sh, the chat and wssbridge.
cleanup() {
  rm -f "$log"
  [ -n "${holder:-}" ] && kill "$holder" 2>/dev/null
  if [ -n "${mk:-}" ] && kill -0 "$mk" 2>/dev/null; then
    kill -TERM "$mk" 2>/dev/null
    for _ in $(seq 40); do kill -0 "$mk" 2>/dev/null || break; sleep 0.25; done
  fi
  true
}
trap cleanup EXIT

# A job a script starts in the background ignores SIGINT (the shell's rule); a make started
# from a terminal does not. Start make as the terminal would, then signal its PID alone.
as_from_a_terminal() {
  exec python3 -c 'import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_DFL)
signal.signal(signal.SIGQUIT, signal.SIG_DFL)
os.execvp(sys.argv[1], sys.argv[1:])' "$@"
}
front=$(free_port) back=$(free_port)
for sig in INT TERM HUP; do
  as_from_a_terminal make --no-print-directory demo DEMO_LISTEN=127.0.0.1:$front \
    DEMO_BACKEND=127.0.0.1:$back >"$log" 2>&1 &
  mk=$!
  sleep 1
  [ -s "$log" ] || { echo "demo-check: nothing said in the first second"; exit 1; }
  for _ in $(seq 1200); do  # the first build may take minutes
    grep -q "Open https://localhost:$front/" "$log" && break
    kill -0 $mk 2>/dev/null || { cat "$log"; echo "demo-check: make demo exited early"; exit 1; }
    sleep 0.5
  done
  grep -q "Open https://localhost:$front/" "$log" || { cat "$log"; echo "demo-check: no URL"; exit 1; }
  listening "$front" && listening "$back" || { echo "demo-check: the demo is not listening"; exit 1; }
  kill -$sig "$mk"
  for _ in $(seq 40); do
    listening "$front" || listening "$back" || break
    sleep 0.25
  done
  if listening "$front" || listening "$back"; then
    echo "demo-check: still listening after SIG$sig to make's PID"; exit 1
  fi
  for _ in $(seq 40); do kill -0 "$mk" 2>/dev/null || break; sleep 0.25; done
  if kill -0 "$mk" 2>/dev/null; then echo "demo-check: make still running after SIG$sig"; exit 1; fi
  wait "$mk" 2>/dev/null || true
  echo "demo-check: make demo stops with SIG$sig to make's PID"
done

# The socket.io demo: the page through wssbridge, and two socket.io clients in one room
# (the e2e suite's socket.io-client, installed by make e2e) hear each other.
front=$(free_port) back=$(free_port)
as_from_a_terminal make --no-print-directory demo-socketio DEMO_LISTEN=127.0.0.1:$front \
  DEMO_BACKEND=127.0.0.1:$back >"$log" 2>&1 &
mk=$!
for _ in $(seq 1200); do
  grep -q "Open https://localhost:$front/" "$log" && break
  kill -0 $mk 2>/dev/null || { cat "$log"; echo "demo-check: make demo-socketio exited early"; exit 1; }
  sleep 0.5
done
grep -q "Open https://localhost:$front/" "$log" || { cat "$log"; echo "demo-check: no URL"; exit 1; }
curl -sk "https://localhost:$front/" | grep -q "socket.io chat behind wssbridge" \
  || { echo "demo-check: the socket.io page did not come through"; exit 1; }
NODE_PATH=tests/e2e/node_modules timeout 30 node -e '
const { io } = require("socket.io-client");
const url = process.argv[1];
const opts = { rejectUnauthorized: false, query: { room: "check" } };
const a = io(url, opts), b = io(url, opts);
b.on("chat", (m) => { if (m === "hello") { console.log("socket.io: delivered"); process.exit(0); } });
let n = 0;
const go = () => { if (++n === 2) setTimeout(() => a.emit("chat", "hello"), 200); };
a.on("connect", go); b.on("connect", go);
setTimeout(() => { console.error("socket.io: not delivered"); process.exit(1); }, 20000);
' "https://localhost:$front" || { cat "$log"; echo "demo-check: socket.io through the demo failed"; exit 1; }
kill -INT "$mk"
for _ in $(seq 40); do listening "$front" || listening "$back" || break; sleep 0.25; done
if listening "$front" || listening "$back"; then echo "demo-check: socket.io demo still up"; exit 1; fi
echo "demo-check: make demo-socketio serves socket.io through wssbridge and stops with make"

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
kill "$holder" 2>/dev/null; wait "$holder" 2>/dev/null || true; holder=

# The demo's own port taken by someone else: no URL (it would point at their server), a
# non-zero exit naming the port and DEMO_LISTEN, and nothing of the demo left running.
back=$(free_port)
python3 -c 'import socket,time,sys; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(); time.sleep(120)' "$front" &
holder=$!
for _ in $(seq 40); do listening "$front" && break; sleep 0.1; done
if make --no-print-directory demo DEMO_LISTEN=127.0.0.1:$front DEMO_BACKEND=127.0.0.1:$back >"$log" 2>&1; then
  cat "$log"; echo "demo-check: make demo succeeded with its port taken"; exit 1
fi
if grep -q "Open https://" "$log"; then cat "$log"; echo "demo-check: a URL was printed for someone else's port"; exit 1; fi
grep -q "127.0.0.1:$front" "$log" && grep -q "DEMO_LISTEN=" "$log" \
  || { cat "$log"; echo "demo-check: the message names neither the port nor DEMO_LISTEN"; exit 1; }
if listening "$back"; then echo "demo-check: the chat backend was left running"; exit 1; fi
echo "demo-check: a taken demo port stops the demo, naming it and DEMO_LISTEN"
