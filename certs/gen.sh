#!/usr/bin/env bash
# `make certs`: a development CA, an intermediate and a server certificate, with openssl alone
# (no build). Usage: certs/gen.sh [DIR] [NAME...] (default certs, and localhost 127.0.0.1 ::1).
# Writes DIR/ca.pem (trust it in a browser or client), DIR/server.pem (the server certificate,
# then the intermediate: for --cert) and DIR/server.key (PKCS#8, mode 0600: for --key). The two
# CA keys are thrown away, so the files can issue nothing else: to add a name, run it again.
set -euo pipefail
dir=${1:-certs}
shift || true
[ $# -gt 0 ] || set -- localhost 127.0.0.1 ::1
command -v openssl >/dev/null || { echo "certs/gen.sh: openssl not found (apt-get install openssl)" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

sans=
for name in "$@"; do
  if [[ $name =~ ^[0-9.]+$ || $name == *:* ]]; then kind=IP; else kind=DNS; fi
  sans+="${sans:+,}$kind:$name"
done

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
serial() { echo "0x$(openssl rand -hex 16)"; }

key "$work/root.key"
openssl req -x509 -new -key "$work/root.key" -subj "/CN=wssbridge development root CA" \
  -days 3650 -set_serial "$(serial)" -out "$work/root.pem" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -addext "subjectKeyIdentifier=hash"

# sign NAME CSR CA_PEM CA_KEY DAYS EXTENSIONS...: an openssl x509 -req with these extensions.
sign() {
  local out=$1 csr=$2 ca=$3 cakey=$4 days=$5
  shift 5
  printf '%s\n' "$@" "authorityKeyIdentifier=keyid" "subjectKeyIdentifier=hash" > "$work/ext"
  openssl x509 -req -in "$csr" -CA "$ca" -CAkey "$cakey" -set_serial "$(serial)" \
    -days "$days" -extfile "$work/ext" -out "$out" 2>/dev/null
}

key "$work/mid.key"
openssl req -new -key "$work/mid.key" -subj "/CN=wssbridge development intermediate CA" -out "$work/mid.csr"
sign "$work/mid.pem" "$work/mid.csr" "$work/root.pem" "$work/root.key" 3650 \
  "basicConstraints=critical,CA:TRUE,pathlen:0" "keyUsage=critical,keyCertSign,cRLSign"

key "$work/server.key"
openssl req -new -key "$work/server.key" -subj "/CN=wssbridge development server" -out "$work/server.csr"
# 397 days: the longest validity browsers accept for a server certificate.
sign "$work/server.pem" "$work/server.csr" "$work/mid.pem" "$work/mid.key" 397 \
  "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
  "extendedKeyUsage=serverAuth" "subjectAltName=$sans"

mkdir -p "$dir"
install -m 644 "$work/root.pem" "$dir/ca.pem"
cat "$work/server.pem" "$work/mid.pem" > "$work/chain.pem"
install -m 644 "$work/chain.pem" "$dir/server.pem"
install -m 600 "$work/server.key" "$dir/server.key"
echo "wrote $dir/ca.pem, $dir/server.pem and $dir/server.key for $*"
