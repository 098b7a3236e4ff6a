#!/bin/sh
# The development CA and server certificate, with openssl alone: what `mailroom certs`
# makes, for machines without a Rust toolchain (docker compose runs it as its one-off
# `certs` service). Writes DIR/ca.crt, ca.key, server.crt, server.key (keys mode 0600);
# a complete set is kept unless FORCE=1. The server certificate names localhost,
# 127.0.0.1, ::1, the compose services (mailroom-1, mailroom-2, nginx) and any names
# given after DIR. For development only: the CA's key is on disk next to it.
#
#   scripts/dev-certs.sh certs [extra-name ...]
set -eu

dir="${1:-certs}"
[ $# -gt 0 ] && shift
mkdir -p "$dir"
if [ -z "${FORCE:-}" ] && [ -s "$dir/ca.crt" ] && [ -s "$dir/ca.key" ] && [ -s "$dir/server.crt" ] && [ -s "$dir/server.key" ]; then
  echo "dev-certs: $dir holds a complete set; kept (FORCE=1 replaces it)"
  exit 0
fi
command -v openssl >/dev/null || { echo "dev-certs: openssl is needed" >&2; exit 1; }

names="DNS:localhost,IP:127.0.0.1,IP:::1,DNS:mailroom-1,DNS:mailroom-2,DNS:nginx"
for name in "$@"; do
  case "$name" in
    *[!0-9.]*) case "$name" in *:*) names="$names,IP:$name" ;; *) names="$names,DNS:$name" ;; esac ;;
    *) names="$names,IP:$name" ;;
  esac
done

umask 077
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
openssl ecparam -name prime256v1 -genkey -noout -out "$scratch/ca.key" 2>/dev/null
openssl req -x509 -new -key "$scratch/ca.key" -sha256 -days 825 -subj "/CN=mailroom development CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -out "$scratch/ca.crt"
openssl ecparam -name prime256v1 -genkey -noout -out "$scratch/server.key" 2>/dev/null
openssl req -new -key "$scratch/server.key" -subj "/CN=localhost" -out "$scratch/server.csr"
printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=%s\n' \
  "$names" >"$scratch/server.ext"
openssl x509 -req -in "$scratch/server.csr" -CA "$scratch/ca.crt" -CAkey "$scratch/ca.key" \
  -CAcreateserial -days 825 -sha256 -extfile "$scratch/server.ext" -out "$scratch/server.crt" 2>/dev/null
# PKCS#8, as `mailroom certs` writes keys.
for key in ca server; do
  openssl pkcs8 -topk8 -nocrypt -in "$scratch/$key.key" -out "$dir/$key.key"
done
cp "$scratch/ca.crt" "$scratch/server.crt" "$dir/"
chmod 644 "$dir/ca.crt" "$dir/server.crt"
chmod 600 "$dir/ca.key" "$dir/server.key"
echo "dev-certs: wrote $dir/ca.crt, ca.key, server.crt and server.key for $names"
