#!/usr/bin/env bash
# Installs the package make deb built, checks what it installed, and removes it: the binary
# runs, the man page renders, the units verify, the unit's identity (a dynamic user in group
# ssl-cert) can read certificates kept as docs/operations.md says, and dpkg -r leaves nothing.
# Run as root on a Debian machine (CI does: make deb-check).
set -euo pipefail
cd "$(dirname "$0")/.."

deb=$(ls -t target/debian/wssbridge_*.deb | head -1)
echo "== installing $deb"
if ! dpkg -i "$deb"; then
  apt-get install -f -y -q
fi
trap 'dpkg -r wssbridge >/dev/null 2>&1 || true' EXIT

/usr/bin/wssbridge --version
man -l /usr/share/man/man1/wssbridge.1.gz | grep -q -- '--keepalive-timeout' \
  || { echo "the man page does not render the flags"; exit 1; }
for f in /usr/share/bash-completion/completions/wssbridge \
         /usr/share/zsh/vendor-completions/_wssbridge \
         /usr/share/fish/vendor_completions.d/wssbridge.fish \
         /lib/systemd/system/wssbridge.service /lib/systemd/system/wssbridge.socket \
         /lib/systemd/system/wssbridge-http.socket /etc/default/wssbridge; do
  [ -s "$f" ] || { echo "missing: $f"; exit 1; }
done
grep -q -- '--listen' /usr/share/bash-completion/completions/wssbridge
# A Maintainer with an address (Debian policy 5.6.2: a name and an e-mail address).
dpkg-query -W -f='${Maintainer}\n' wssbridge | grep -Eq '^[^<]+ <[^@ ]+@[^> ]+>$' \
  || { echo "Maintainer lacks an address: $(dpkg-query -W -f='${Maintainer}' wssbridge)"; exit 1; }
# The docs the README links, and a copyright file that says who and under what licence.
for f in README.md operations.md security.md performance.md scale-out.md; do
  [ -s "/usr/share/doc/wssbridge/$f" ] || { echo "missing: /usr/share/doc/wssbridge/$f"; exit 1; }
done
grep -q '^Copyright: .*wssbridge' /usr/share/doc/wssbridge/copyright \
  && grep -q '^License: MIT OR Apache-2.0' /usr/share/doc/wssbridge/copyright \
  || { echo "the copyright file lacks its owners or licence"; cat /usr/share/doc/wssbridge/copyright; exit 1; }
# The shipped /etc/default/wssbridge is empty: the unit's start says where the flags go, and
# exit 2 ("cannot start") is not restarted every second.
grep -q '^RestartPreventExitStatus=2' /lib/systemd/system/wssbridge.service \
  || { echo "the unit restarts a start that cannot succeed"; exit 1; }
msg=$(env WSSBRIDGE_ARGS= WSSBRIDGE_FLAGS_FILE=/etc/wssbridge/flags /usr/bin/wssbridge 2>&1 || true)
echo "$msg" | grep -q 'in the flags file /etc/wssbridge/flags, or in WSSBRIDGE_ARGS in /etc/default/wssbridge' \
  || { echo "an unconfigured start does not say where the flags go: $msg"; exit 1; }

echo "== the flags file, and systemctl reload as the unit does it"
dpkg-query -W -f='${Conffiles}\n' wssbridge | grep -q '^ /etc/wssbridge/flags ' \
  || { echo "/etc/wssbridge/flags is not a conffile (an upgrade would overwrite it)"; exit 1; }
unit=/lib/systemd/system/wssbridge.service
grep -qx 'Environment=WSSBRIDGE_FLAGS_FILE=/etc/wssbridge/flags' "$unit" \
  || { echo "the unit does not read /etc/wssbridge/flags"; exit 1; }
# The unit's own ExecStart and ExecReload lines, run as systemd would (no systemd here):
# WSSBRIDGE_ARGS from /etc/default/wssbridge still adds to the flags file.
exec_start=$(sed -n 's/^ExecStart=//p' "$unit")
exec_reload=$(sed -n 's/^ExecReload=//p' "$unit")
[ "$exec_start" = '/usr/bin/wssbridge $WSSBRIDGE_ARGS' ] || { echo "ExecStart changed: $exec_start"; exit 1; }
work=$(mktemp -d)
cp /etc/wssbridge/flags "$work/flags.shipped"
certs/gen.sh "$work/pki" >/dev/null
python3 -m http.server 0 --bind 127.0.0.1 --directory "$work" >"$work/app.log" 2>&1 &
app=$!
for _ in $(seq 100); do grep -q 'Serving HTTP' "$work/app.log" && break; sleep 0.05; done
app_port=$(sed -n 's/.*port \([0-9]*\).*/\1/p' "$work/app.log" | head -1)
touch "$work/one" "$work/three"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >/etc/wssbridge/flags <<FLAGS
--listen 127.0.0.1:$port
--cert $work/pki/server.pem
--key $work/pki/server.key
--route /one=127.0.0.1:$app_port
FLAGS
WSSBRIDGE_FLAGS_FILE=/etc/wssbridge/flags WSSBRIDGE_ARGS="--route /two/=127.0.0.1:9" \
  bash -c "exec $exec_start" >"$work/wssbridge.log" 2>&1 &
main=$!
restore() { kill "$main" "$app" 2>/dev/null || true; cp "$work/flags.shipped" /etc/wssbridge/flags; rm -rf "$work"; }
trap 'restore; dpkg -r wssbridge >/dev/null 2>&1 || true' EXIT
get() { curl -s -o /dev/null -w '%{http_code}' --cacert "$work/pki/ca.pem" --resolve "localhost:$port:127.0.0.1" "https://localhost:$port$1"; }
for _ in $(seq 100); do grep -q listening "$work/wssbridge.log" && break; sleep 0.05; done
[ "$(get /one)" = 200 ] && [ "$(get /two/)" = 502 ] && [ "$(get /three)" = 404 ] \
  || { echo "the unit's flags did not start as written"; cat "$work/wssbridge.log"; exit 1; }
echo "--route /three=127.0.0.1:$app_port" >>/etc/wssbridge/flags
MAINPID=$main bash -c "$exec_reload"
for _ in $(seq 100); do grep -q 'configuration reloaded' "$work/wssbridge.log" && break; sleep 0.05; done
[ "$(get /three)" = 200 ] && [ "$(get /two/)" = 502 ] \
  || { echo "systemctl reload did not apply the flags file"; cat "$work/wssbridge.log"; exit 1; }
kill "$main"; wait "$main" || true
restore
trap 'dpkg -r wssbridge >/dev/null 2>&1 || true' EXIT

if command -v systemd-analyze >/dev/null; then
  echo "== systemd-analyze verify"
  out=$(systemd-analyze verify /lib/systemd/system/wssbridge.service \
        /lib/systemd/system/wssbridge.socket /lib/systemd/system/wssbridge-http.socket 2>&1 || true)
  echo "$out"
  if echo "$out" | grep -i 'wssbridge' | grep -vi 'Failed to connect\|bus\|/proc' | grep -qi 'warn\|error\|unknown\|invalid\|fail'; then
    echo "systemd-analyze has something to say about wssbridge's units"; exit 1
  fi
fi

echo "== certificates under a letsencrypt-style tree, readable by group ssl-cert only"
le=$(mktemp -d)
mkdir -p "$le/live/example" "$le/archive/example"
certs/gen.sh "$le/gen" >/dev/null
cp "$le/gen/server.pem" "$le/archive/example/fullchain1.pem"
cp "$le/gen/server.key" "$le/archive/example/privkey1.pem"
ln -s ../../archive/example/fullchain1.pem "$le/live/example/fullchain.pem"
ln -s ../../archive/example/privkey1.pem "$le/live/example/privkey.pem"
# What docs/operations.md tells a user to run (and certbot's deploy hook keeps).
chgrp -R ssl-cert "$le/live" "$le/archive"
chmod 0750 "$le/live" "$le/archive" "$le/live/example" "$le/archive/example"
chmod 0640 "$le/archive/example/privkey1.pem"
chmod 0711 "$le"
group=$(getent group ssl-cert | cut -d: -f3)
args=(--check --to 127.0.0.1:3000 --cert "$le/live/example/fullchain.pem" --key "$le/live/example/privkey.pem")
setpriv --reuid=65534 --regid=65534 --groups="$group" /usr/bin/wssbridge "${args[@]}" >/dev/null \
  || { echo "the unit's identity (group ssl-cert) cannot read the certificates"; exit 1; }
if setpriv --reuid=65534 --regid=65534 --clear-groups /usr/bin/wssbridge "${args[@]}" >/dev/null 2>&1; then
  echo "without group ssl-cert the key was readable: the check proves nothing"; exit 1
fi
rm -rf "$le"

echo "== make install DESTDIR"
dest=$(mktemp -d)
make --no-print-directory install DESTDIR="$dest" PREFIX=/usr/local >/dev/null
for f in bin/wssbridge share/man/man1/wssbridge.1 share/bash-completion/completions/wssbridge \
         share/zsh/site-functions/_wssbridge share/fish/vendor_completions.d/wssbridge.fish; do
  [ -s "$dest/usr/local/$f" ] || { echo "make install did not write $f"; exit 1; }
done
"$dest/usr/local/bin/wssbridge" --version >/dev/null
rm -rf "$dest"

echo "== removing"
trap - EXIT
dpkg -r wssbridge
for f in /usr/bin/wssbridge /lib/systemd/system/wssbridge.service /usr/share/man/man1/wssbridge.1.gz; do
  [ ! -e "$f" ] || { echo "left after dpkg -r: $f"; exit 1; }
done
echo "package: ok"
