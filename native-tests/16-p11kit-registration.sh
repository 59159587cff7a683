#!/usr/bin/env bash
# p11proxy registered with p11-kit (module-config/p11proxy.module in /etc/pkcs11/modules/, module
# installed by ./build.sh install): programs that never name our module find the token through
# it. p11-kit list-modules shows it under p11proxy; pkcs11-tool on p11-kit-proxy.so lists it and
# signs with it; GnuTLS's p11tool lists it (no --provider); curl with no OpenSSL configuration
# (libp11's engine then loads p11-kit-proxy.so) authenticates to s_server -www with the key named
# only by its URI. SoftHSM's own registration is pointed at an empty token directory meanwhile,
# so the token is reachable only through p11proxy. Against our broker and against p11-kit's server.
set -euo pipefail
OUT=${1:-out}
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/fixture-clients.sh"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
P11KIT_PROXY=/usr/lib/x86_64-linux-gnu/p11-kit-proxy.so
INSTALLED_MODULE=/usr/lib/x86_64-linux-gnu/pkcs11/p11proxy.so
REGISTRATION=/etc/pkcs11/modules/p11proxy.module
[ -f "$P11KIT_PROXY" ] || fail "no $P11KIT_PROXY (package p11-kit-modules)"
[ "$(id -u)" -eq 0 ] || fail "needs root: it installs the module and registers it in /etc/pkcs11/modules"
grep -qx "module: $INSTALLED_MODULE" "$ROOT/module-config/p11proxy.module" \
  || fail "module-config/p11proxy.module does not name $INSTALLED_MODULE"

fixture_clients_token p11kit
fixture_clients_brokers
d=$FIXTURE_DIR
fixture_install

# Register (keeping whatever an administrator had there).
[ -d /etc/pkcs11 ] || fixture_on_exit "rmdir /etc/pkcs11"
[ -d /etc/pkcs11/modules ] || fixture_on_exit "rmdir /etc/pkcs11/modules"
if [ -e "$REGISTRATION" ]; then
  backup=$(mktemp /etc/p11proxy.module.XXXXXX)
  cp -p "$REGISTRATION" "$backup"
  fixture_on_exit "mv '$backup' '$REGISTRATION'"
  echo "note: $REGISTRATION existed; it is restored at the end"
else
  fixture_on_exit "rm -f '$REGISTRATION'"
fi
install -D -m 0644 "$ROOT/module-config/p11proxy.module" "$REGISTRATION"

# The clients load SoftHSM too (Debian registers it): give them an empty token directory, so
# that the test token is found only through p11proxy -> broker.
mkdir "$d/no-tokens"
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$d/no-tokens" > "$d/no-tokens.conf"
export SOFTHSM2_CONF="$d/no-tokens.conf"
unset OPENSSL_CONF

fixture_clients_s_server_www

exercise() {
  local name=$1 out block
  echo "== $name: $P11_KIT_SERVER_ADDRESS"
  out=$(timeout 60 p11-kit list-modules 2>&1) || fail "$name: p11-kit list-modules failed: $out"
  block=$(awk '/^[^ ]/ { on = ($1 == "p11proxy:") } on' <<<"$out")
  grep -qx "p11proxy: $INSTALLED_MODULE" <<<"$block" || fail "$name: p11-kit list-modules does not show p11proxy: $out"
  grep -qx "    token: $FIXTURE_LABEL" <<<"$block" || fail "$name: p11-kit list-modules shows p11proxy without the token: $block"
  if awk '/^[^ ]/ { on = ($1 != "p11proxy:") } on' <<<"$out" | grep -qx "    token: $FIXTURE_LABEL"; then
    fail "$name: the token is listed under another module too (is SoftHSM serving it directly?)"
  fi
  echo "$name: p11-kit list-modules: 'p11proxy: $INSTALLED_MODULE' with token $FIXTURE_LABEL (under no other module)"

  out=$(timeout 60 pkcs11-tool --module "$P11KIT_PROXY" -L 2>&1) || fail "$name: pkcs11-tool on p11-kit-proxy.so failed: $out"
  grep -q "token label *: $FIXTURE_LABEL\$" <<<"$out" || fail "$name: pkcs11-tool on p11-kit-proxy.so does not list the token: $out"
  printf 'signed through p11-kit-proxy' > "$d/data"
  timeout 60 pkcs11-tool --module "$P11KIT_PROXY" --token-label "$FIXTURE_LABEL" --login --pin "$FIXTURE_PIN" \
    --sign -m SHA256-RSA-PKCS --id 01 -i "$d/data" -o "$d/sig" >/dev/null 2>&1 || fail "$name: signing through p11-kit-proxy.so failed"
  openssl dgst -sha256 -verify "$d/rsa-pub.pem" -signature "$d/sig" "$d/data" >/dev/null \
    || fail "$name: the signature made through p11-kit-proxy.so does not verify"
  echo "$name: pkcs11-tool --module p11-kit-proxy.so -L lists $FIXTURE_LABEL; its RSA signature verifies with openssl"

  out=$(timeout 60 p11tool --list-tokens 2>&1) || fail "$name: p11tool --list-tokens failed: $out"
  block=$(awk -v RS= "/Label: $FIXTURE_LABEL\\n/" <<<"$out")
  [ -n "$block" ] || fail "$name: p11tool --list-tokens does not list $FIXTURE_LABEL: $out"
  grep -q "Module: $INSTALLED_MODULE" <<<"$block" || fail "$name: p11tool shows the token from another module: $block"
  echo "$name: p11tool --list-tokens (no --provider) lists $FIXTURE_LABEL from module $INSTALLED_MODULE"

  local page="$d/curl-$name.html"
  P11PROXY_DEBUG=1 timeout 60 curl -sS --engine pkcs11 --key-type ENG --key "$RSA_URI;pin-value=$FIXTURE_PIN" \
    --cert "$d/rsa.pem" --cacert "$d/ca.pem" "https://127.0.0.1:$WWW_PORT/" >"$page" 2>"$d/curl.err" \
    || fail "$name: curl with the key by URI failed: $(grep -v '^p11proxy:' "$d/curl.err" | tail -5)"
  grep -q "Subject: O=p11proxy tests, CN=p11proxy rsa client" "$page" || fail "$name: s_server did not get the token's client certificate"
  grep -qE '^p11proxy: C_Sign(Final)? -> CKR_OK' "$d/curl.err" || fail "$name: curl's signature did not go through p11proxy.so"
  echo "$name: curl --engine pkcs11 --key '$RSA_URI;pin-value=...' (no OpenSSL config, no module named):" \
    "s_server saw 'CN=p11proxy rsa client'; p11proxy.so traced $(grep -cE '^p11proxy: C_Sign(Final)? -> CKR_OK' "$d/curl.err") C_Sign"
}

export P11_KIT_SERVER_ADDRESS=$BROKER_ADDRESS
exercise broker
export P11_KIT_SERVER_ADDRESS=$P11KIT_ADDRESS
exercise p11kit-server
echo "p11-kit registration ok against both brokers ($(fixture_elapsed) s)"
