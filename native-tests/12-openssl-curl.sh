#!/usr/bin/env bash
# TLS client authentication with the token's keys through OpenSSL's pkcs11 engine
# (libengine-pkcs11-openssl, MODULE_PATH = out/p11proxy.so): openssl s_client against
# openssl s_server -Verify 1 (TLS 1.3 with RSA-PSS and ECDSA, TLS 1.2 with PKCS#1 v1.5), and curl
# against s_server -www, whose page must show the token's client certificate. Against our broker
# and against p11-kit's server.
set -euo pipefail
OUT=${1:-out}
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/fixture-clients.sh"
MODULE=$(readlink -f "$OUT/p11proxy.so")
ENGINE=/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so
[ -f "$ENGINE" ] || fail "no OpenSSL pkcs11 engine at $ENGINE (package libengine-pkcs11-openssl; ./build.sh installs it)"

fixture_clients_token openssl
fixture_clients_brokers
d=$FIXTURE_DIR
fixture_clients_engine_conf "$d/openssl.cnf" "$MODULE" 0
# s_server ends when its stdin ends: give it a pipe nobody writes to.
mkfifo "$d/server-stdin"
exec 7<>"$d/server-stdin"

# s_client_check NAME KIND [s_client options...]: one handshake with the token's KIND key; s_server
# (one connection) must report the client certificate and receive a line over the connection.
s_client_check() {
  local name=$1 kind=$2 port pid log="$d/s_server-$1-$2.log" msg="hello-from-$1-$2-key" status=0
  shift 2
  port=$(fixture_free_port)
  timeout 60 openssl s_server -accept "127.0.0.1:$port" -naccept 1 -cert "$d/server.pem" -key "$d/server-key.pem" \
    -Verify 1 -CAfile "$d/ca.pem" <&7 >"$log" 2>&1 &
  pid=$!
  FIXTURE_PIDS+=($pid)
  fixture_wait_port "$port" "$pid" s_server
  { printf '%s\n' "$msg"; fixture_wait_file "$log" "^$msg\$" 30 || true; } |
    OPENSSL_CONF="$d/openssl.cnf" timeout 60 openssl s_client -connect "127.0.0.1:$port" -engine pkcs11 -keyform engine \
      -key "pkcs11:object=$kind-key;type=private" -cert "$d/$kind.pem" -CAfile "$d/ca.pem" -verify_return_error "$@" \
      >"$d/s_client.log" 2>&1 || status=$?
  wait "$pid" || true
  [ $status -eq 0 ] || fail "$name: s_client with $kind-key $* failed ($status): $(grep -i error "$d/s_client.log" | head -3); s_server: $(tail -3 "$log")"
  grep -q "Verify return code: 0 (ok)" "$d/s_client.log" || fail "$name: s_client did not verify the server"
  grep -q "^Client certificate" "$log" || fail "$name: s_server got no client certificate: $(tail -5 "$log")"
  grep -q "^subject=O = p11proxy tests, CN = p11proxy $kind client" "$log" || fail "$name: s_server got another client certificate: $(grep subject= "$log")"
  grep -qx "$msg" "$log" || fail "$name: s_server did not receive the data sent after the handshake"
  echo "$name: s_client $kind-key ${*:-(defaults)}: $(grep -m1 -o 'TLSv1\.[23]' "$d/s_client.log"), s_server reports client certificate" \
    "'CN = p11proxy $kind client', $(grep -m1 'Peer signature type' "$log" | sed 's/Peer signature type: /signature /')"
}

# curl_check NAME KIND: curl with the token's KIND key against s_server -www on WWW_PORT; the page
# s_server sends back describes the client certificate it got.
curl_check() {
  local name=$1 kind=$2 page="$d/curl-$1-$2.html"
  OPENSSL_CONF="$d/openssl.cnf" timeout 60 curl -sS --engine pkcs11 --key-type ENG --key "pkcs11:object=$kind-key;type=private" \
    --cert "$d/$kind.pem" --cacert "$d/ca.pem" "https://127.0.0.1:$WWW_PORT/" >"$page" 2>"$d/curl.err" \
    || fail "$name: curl with $kind-key failed: $(cat "$d/curl.err")"
  grep -q "^Client certificate" "$page" || fail "$name: s_server's page shows no client certificate: $(grep -i 'client cert' "$page")"
  grep -q "Subject: O=p11proxy tests, CN=p11proxy $kind client" "$page" || fail "$name: the page shows another client certificate"
  echo "$name: curl --engine pkcs11 --key-type ENG $kind-key: $(grep -m1 -o 'Protocol *: *TLSv1\.[23]' "$page" | tr -s ' '), s_server's page shows 'CN=p11proxy $kind client'"
}

CURL_OK=""
if ! out=$(OPENSSL_CONF="$d/openssl.cnf" curl --engine list 2>&1); then
  echo "curl part skipped: 'curl --engine list' fails: $out"
elif ! grep -qx '  pkcs11' <<<"$out"; then
  echo "curl part skipped: this curl does not offer OpenSSL engines (--engine list: $(tr '\n' ' ' <<<"$out"))"
else
  CURL_OK=1
  fixture_clients_s_server_www
fi

for broker in broker p11kit-server; do
  if [ $broker = broker ]; then export P11_KIT_SERVER_ADDRESS=$BROKER_ADDRESS; else export P11_KIT_SERVER_ADDRESS=$P11KIT_ADDRESS; fi
  echo "== $broker: $P11_KIT_SERVER_ADDRESS"
  s_client_check $broker rsa
  s_client_check $broker ec
  s_client_check $broker rsa -tls1_2 -sigalgs RSA+SHA256
  if [ -n "$CURL_OK" ]; then
    curl_check $broker rsa
    curl_check $broker ec
  fi
done
echo "openssl s_client${CURL_OK:+ and curl} ok against both brokers ($(fixture_elapsed) s)"
