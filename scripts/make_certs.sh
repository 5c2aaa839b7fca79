#!/usr/bin/env bash
# Certificates for a gRPC federation (docs/distributed.md, "Across organisations"), with Debian's
# openssl: a CA, a server certificate for the host name or IP the clients dial, and one
# certificate per client whose common name is client-<N> (the identity the server lets act as
# client N; --roster maps other names). ECDSA P-256 keys, SHA-256 signatures.
#
#   bash scripts/make_certs.sh [--days D] DIR HOST CLIENTS
#     DIR/ca.pem ca.key                 the federation's CA (keep ca.key off the clients)
#     DIR/server.pem server.key         for HOST (an IP or a DNS name; localhost and 127.0.0.1 too)
#     DIR/client-<N>.pem client-<N>.key for N = 0 .. CLIENTS-1
# An existing CA in DIR is reused, so more clients can be added later with the same command.
set -euo pipefail

days=365
if [ "${1:-}" = "--days" ]; then
  days="$2"
  shift 2
fi
if [ $# -ne 3 ] || [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
dir="$1"
host="$2"
clients="$3"
case "$clients" in
  '' | *[!0-9]*)
    echo "make_certs.sh: CLIENTS must be a number, got '$clients'" >&2
    exit 2
    ;;
esac
command -v openssl >/dev/null || {
  echo "make_certs.sh: openssl not found (Debian: apt-get install openssl)" >&2
  exit 1
}
mkdir -p "$dir"
cd "$dir"
umask 077

key() { openssl ecparam -name prime256v1 -genkey -noout -out "$1" 2>/dev/null; }

if [ ! -f ca.pem ] || [ ! -f ca.key ]; then
  key ca.key
  openssl req -x509 -new -key ca.key -sha256 -days "$days" -subj "/CN=rolora federation CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out ca.pem
fi

# sign NAME CN EXTENSIONS: NAME.key and NAME.pem signed by the CA.
sign() {
  key "$1.key"
  openssl req -new -key "$1.key" -subj "/CN=$2" -out "$1.csr"
  printf '%s\n' "$3" >"$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -sha256 \
    -days "$days" -extfile "$1.ext" -out "$1.pem" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}

if [[ "$host" =~ ^[0-9.]+$ || "$host" == *:* ]]; then
  san="IP:$host,DNS:localhost,IP:127.0.0.1"
else
  san="DNS:$host,DNS:localhost,IP:127.0.0.1"
fi
sign server "$host" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=$san"
for ((n = 0; n < clients; n++)); do
  sign "client-$n" "client-$n" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"
done
chmod 644 ./*.pem
echo "make_certs.sh: $dir: ca.pem, server.pem/key for $host ($san), client-0 .. client-$((clients - 1))"
