#!/usr/bin/env bash
# `make demo`: the chat backend (examples/chat/) with wssbridge in front of it; `make
# demo-socketio`: the socket.io chat (examples/socketio/) instead.
#
# Usage: examples/demo.sh MAKE_PID LISTEN BACKEND RUNNING [chat|socketio]. Every process started here stops
# when make stops or is told to: a loop watches make's PID and RUNNING, the recipe's target
# file, which make deletes when it gets SIGINT, SIGTERM, SIGHUP or SIGQUIT (it forwards only
# SIGTERM to its children, and waits for them). Ctrl-C reaches them all anyway.
# If the chat backend cannot listen on BACKEND (port 3000 is often taken on a Node
# developer's machine), the demo stops with its message instead of fronting whatever holds
# the port.
set -u
make_pid=$1 listen=$2 backend=$3 running=${4:-} kind=${5:-chat}
dir=$(mktemp -d)
chat= bridge=
stop() {
  [ -n "${follower:-}" ] && kill "$follower" 2>/dev/null
  [ -n "$bridge" ] && kill "$bridge" 2>/dev/null
  [ -n "$chat" ] && kill "$chat" 2>/dev/null
  wait 2>/dev/null
  rm -rf "$dir"
  [ -n "$running" ] && rm -f "$running"
}
trap stop EXIT
trap 'exit 0' INT TERM HUP

case $kind in
  socketio) node examples/socketio/server.js "$backend" > "$dir/chat.out" & ;;
  *) target/release/chat "$backend" > "$dir/chat.out" & ;;
esac
chat=$!
for _ in $(seq 100); do
  grep -q "chat backend on" "$dir/chat.out" && break
  if ! kill -0 "$chat" 2>/dev/null; then
    wait "$chat"
    echo "demo: the chat backend did not start (above); nothing else was started" >&2
    chat=
    exit 1
  fi
  sleep 0.1
done

# wssbridge's own "listening" line says it is ready: a connect to the port could reach
# whatever else holds it. Its log goes on to the terminal as it comes.
target/release/wssbridge --listen "$listen" --cert certs/server.pem --key certs/server.key \
  --to "$backend" 2> "$dir/bridge.log" &
bridge=$!
port=${listen##*:}
tail -n +1 -f "$dir/bridge.log" >&2 &
follower=$!
ready=
for _ in $(seq 300); do
  grep -q "listening addr=" "$dir/bridge.log" && { ready=1; break; }
  kill -0 "$bridge" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$ready" ]; then
  sleep 0.2
  kill "$follower" 2>/dev/null
  echo "demo: wssbridge did not start listening on $listen (its message is above);" \
    "pick another address: make demo DEMO_LISTEN=127.0.0.1:8444" >&2
  exit 1
fi
echo
echo "  Open https://localhost:$port/ in two browser tabs."
echo "  Trust certs/ca.pem in the browser to avoid the warning, or accept it once."
echo "  Ctrl-C stops both."
echo
while kill -0 "$make_pid" 2>/dev/null && kill -0 "$bridge" 2>/dev/null && kill -0 "$chat" 2>/dev/null \
  && { [ -z "$running" ] || [ -e "$running" ]; }; do
  sleep 0.3
done
