#!/bin/sh
# Demo certificates for the Envoy examples (EC P-256, valid 10 years), written to ./certs/:
#   ca.crt/ca.key            the mesh CA (trust domain cluster.local)
#   httpbin.crt/.key         sidecar server cert: URI spiffe://cluster.local/ns/demo/sa/httpbin,
#                            DNS localhost, IP 127.0.0.1
#   sleep.crt/.key           client: URI spiffe://cluster.local/ns/demo/sa/sleep   (allowed)
#   intruder.crt/.key        client: URI spiffe://cluster.local/ns/other/sa/intruder (denied)
#   gateway.crt/.key         gateway server cert: DNS localhost, IP 127.0.0.1
# Run it from this directory: `sh make-certs.sh`. DEMO ONLY: the CA key sits next to the certs.
set -eu
cd "$(dirname "$0")"
mkdir -p certs
cd certs

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
  -keyout ca.key -out ca.crt -subj "/O=cluster.local/CN=meshauthz-demo-ca" \
  -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null

# leaf NAME SUBJECT_ALT_NAMES
leaf() {
  cat > "$1.ext" <<EXT
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=$2
EXT
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$1.key" \
    -out "$1.csr" -subj "/O=cluster.local/CN=$1" 2>/dev/null
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
    -out "$1.crt" -extfile "$1.ext" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}

leaf httpbin "URI:spiffe://cluster.local/ns/demo/sa/httpbin,DNS:localhost,IP:127.0.0.1"
leaf sleep "URI:spiffe://cluster.local/ns/demo/sa/sleep"
leaf intruder "URI:spiffe://cluster.local/ns/other/sa/intruder"
leaf gateway "DNS:localhost,IP:127.0.0.1"
rm -f ca.srl
echo "certificates written to $(pwd)"
