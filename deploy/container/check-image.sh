#!/usr/bin/env bash
# `make image-check`: the image `make image` built, checked as far as this machine allows
# (podman here builds images but cannot start containers). Root, for podman's storage and
# chroot. Usage: deploy/container/check-image.sh IMAGE VERSION
# 1. Its config: user 65532:65532, the entrypoint, port 8443 exposed, the OCI labels.
# 2. Its size: under 20 MB; its contents: no shell.
# 3. Its files, as the image holds them (podman image mount), run in a chroot as uid 65532:
#    --version, --check, then real traffic: https through it to a backend named "localhost"
#    (glibc's resolver in the image reading the /etc/hosts a runtime mounts).
set -euo pipefail
image=$1 version=$2
tool=$(command -v podman || true)
[ -n "$tool" ] || { echo "image-check: podman not found (apt-get install podman)"; exit 1; }
fail() { echo "image-check: $*" >&2; exit 1; }

echo "== config"
field() { podman image inspect "$image" --format "$1"; }
[ "$(field '{{.Config.User}}')" = "65532:65532" ] || fail "user is $(field '{{.Config.User}}'), not 65532:65532"
[ "$(field '{{json .Config.Entrypoint}}')" = '["/usr/bin/wssbridge"]' ] || fail "entrypoint $(field '{{json .Config.Entrypoint}}')"
field '{{json .Config.ExposedPorts}}' | grep -q '"8443/tcp"' || fail "8443/tcp not exposed"
label() { field "{{index .Config.Labels \"org.opencontainers.image.$1\"}}"; }
[ "$(label version)" = "$version" ] || fail "label version is '$(label version)', not $version"
[ "$(label licenses)" = "MIT OR Apache-2.0" ] || fail "label licenses is '$(label licenses)'"
[ "$(label title)" = "wssbridge" ] || fail "label title is '$(label title)'"
for name in source revision; do
  field '{{json .Config.Labels}}' | grep -q "\"org.opencontainers.image.$name\"" || fail "no $name label"
done

echo "== size and contents"
size=$(field '{{.Size}}')
echo "image: $size bytes"
[ "$size" -lt 20000000 ] || fail "$size bytes: over 20 MB"
work=$(mktemp -d)
backend=
cleanup() {
  [ -n "${bridge:-}" ] && kill "$bridge" 2>/dev/null
  [ -n "$backend" ] && kill "$backend" 2>/dev/null
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
mounted=$(podman image mount "$image")
cp -a "$mounted/." "$work/root"
podman image unmount "$image" >/dev/null
for shell in bin/sh bin/bash usr/bin/sh; do
  [ ! -e "$work/root/$shell" ] || fail "the image holds /$shell"
done
[ -x "$work/root/usr/bin/wssbridge" ] || fail "no /usr/bin/wssbridge"

echo "== run as uid 65532 in the image's files"
run() { chroot --userspec=65532:65532 "$work/root" /usr/bin/wssbridge "$@"; }
run --version | grep -q "wssbridge $version" || fail "--version: $(run --version 2>&1)"
# What a runtime mounts: /etc/hosts, and a certificate (a Secret in Kubernetes).
cp /etc/hosts "$work/root/etc/hosts"
mkdir -p "$work/root/etc/wssbridge/tls"
"$(dirname "$0")/../../certs/gen.sh" "$work/certs" localhost >/dev/null
cp "$work/certs/server.pem" "$work/certs/server.key" "$work/root/etc/wssbridge/tls/"
chown -R 65532:65532 "$work/root/etc/wssbridge"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
back=$(free_port) front=$(free_port)
args=(--listen "127.0.0.1:$front" --cert /etc/wssbridge/tls/server.pem --key /etc/wssbridge/tls/server.key
  --to "localhost:$back")
run --check "${args[@]}" >/dev/null || fail "--check refused: $(run --check "${args[@]}" 2>&1)"
mkdir -p "$work/site" && echo "from the backend" > "$work/site/index.html"
python3 -m http.server "$back" --bind 127.0.0.1 --directory "$work/site" >/dev/null 2>&1 &
backend=$!
# Started directly (not through run, a function: its subshell's PID is not wssbridge's).
chroot --userspec=65532:65532 "$work/root" /usr/bin/wssbridge "${args[@]}" >/dev/null 2> "$work/bridge.log" &
bridge=$!
for _ in $(seq 100); do grep -q "listening addr=" "$work/bridge.log" && break; sleep 0.1; done
grep -q "listening addr=" "$work/bridge.log" || { cat "$work/bridge.log"; fail "it did not listen"; }
for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$back") 2>/dev/null && break; sleep 0.1; done
body=$(curl -sS --max-time 10 --cacert "$work/certs/ca.pem" --resolve "localhost:$front:127.0.0.1" \
  "https://localhost:$front/") || { cat "$work/bridge.log"; fail "no answer over https"; }
[ "$body" = "from the backend" ] || fail "answered '$body'"
echo "image-check: ok ($image, $size bytes)"
