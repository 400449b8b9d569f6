#!/bin/sh
# Flame graphs of wssbridge under one of make bench's loads (issue #25 §3): the proxy alone is
# sampled (perf record -p), with DWARF call graphs, while loadgen drives it.
#
#   bench/profile.sh handshake docs/flamegraphs/handshake.svg   # new ECDSA connections, 8 workers
#   bench/profile.sh messages  docs/flamegraphs/messages.svg    # 256-byte echo, 4 tunnels
#   bench/profile.sh chat      docs/flamegraphs/chat.svg        # 100-byte fan-out, 64 tunnels
#
# Needs perf (Debian: linux-perf) and inferno (cargo install inferno). WSSBRIDGE names the
# binary to profile; build it with symbols and line tables so frames have names:
#   CARGO_TARGET_DIR=/tmp/prof-target CARGO_PROFILE_RELEASE_DEBUG=1 cargo build --release
set -eu
job=${1:?handshake, messages or chat}
out=${2:?output .svg}
root=$(cd "$(dirname "$0")/.." && pwd)
release=$root/target/release
bin=${WSSBRIDGE:-$release/wssbridge}
seconds=${SECONDS_SAMPLED:-8}
work=$(mktemp -d)
trap 'kill $proxy $backend 2>/dev/null || true; rm -rf "$work"' EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$work/k.pem" \
    -out "$work/c.pem" -days 30 -subj /CN=localhost -addext subjectAltName=DNS:localhost 2>/dev/null
"$release/examples/benchd" 127.0.0.1:0 > "$work/backend" &
backend=$!
port=
while [ -z "$port" ]; do sleep 0.1; port=$(sed -n 's/.*://p' "$work/backend"); done
listen=127.0.0.1:$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$bin" --listen "$listen" --cert "$work/c.pem" --key "$work/k.pem" --to "127.0.0.1:$port" -q &
proxy=$!
sleep 0.5

case $job in
    handshake) load="rate --conns 8" ;;
    messages) load="throughput --conns 4 --size 256" ;;
    chat) load="chat --conns 64" ;;
    *) echo "unknown job $job" >&2; exit 2 ;;
esac
# The load runs a second longer on each side than the sampling, so only steady state is seen.
# shellcheck disable=SC2086
"$release/examples/loadgen" $load "$listen" --seconds $((seconds + 2)) > "$work/load.json" &
gen=$!
sleep 1
perf record -q -F 999 --call-graph dwarf,16384 -p "$proxy" -o "$work/perf.data" -- sleep "$seconds" 2>/dev/null
wait $gen
perf script -i "$work/perf.data" 2>/dev/null | inferno-collapse-perf > "$work/folded"
inferno-flamegraph --minwidth 0.2 --title "wssbridge: $job ($load), $(date -u +%F)" < "$work/folded" > "$out"
[ -z "${FOLDED:-}" ] || cp "$work/folded" "$FOLDED"
cat "$work/load.json"
