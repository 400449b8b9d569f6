#!/usr/bin/env bash
# Stages what the container image holds into DIR/rootfs beside a copy of the Containerfile:
# the binary (stripped), the dynamic loader and the libraries `ldd` names (glibc's own DNS
# resolver is in libc.so.6 since 2.34, so backends named by DNS resolve), the CA roots
# instant-acme trusts (/etc/ssl/certs/ca-certificates.crt), /etc/passwd and /etc/group for
# uid 65532 ("nonroot", as distroless names it) and an nsswitch.conf for hosts.
# Usage: deploy/container/rootfs.sh BINARY DIR
set -euo pipefail
bin=$1 dir=$2
here=$(cd "$(dirname "$0")" && pwd)
root=$dir/rootfs
rm -rf "$root"
mkdir -p "$root/usr/bin" "$root/etc/ssl/certs"
install -m 755 "$bin" "$root/usr/bin/wssbridge"
strip "$root/usr/bin/wssbridge" 2>/dev/null || true
# ldd prints "name => /path (addr)" for libraries and "/path (addr)" for the loader.
for lib in $(ldd "$bin" | awk '$3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
[ -e /etc/ssl/certs/ca-certificates.crt ] ||
  { echo "rootfs.sh: /etc/ssl/certs/ca-certificates.crt missing (apt-get install ca-certificates)" >&2; exit 1; }
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > "$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' > "$root/etc/group"
printf 'hosts: files dns\n' > "$root/etc/nsswitch.conf"
cp "$here/Containerfile" "$dir/Containerfile"
