#!/usr/bin/env bash
# GnuTLS clients that find the token through p11-kit's registration, never naming a module:
# `wget --private-key pkcs11:... --certificate pkcs11:...` and `gnutls-cli --x509keyfile pkcs11:...
# --x509certfile pkcs11:...` authenticate to `openssl s_server -www -Verify 1` with the token's RSA
# and EC keys and certificates; the page s_server sends back must name the token's client
# certificate. Two runs:
#   direct  p11proxy is not registered; Debian's registration of SoftHSM serves the token
#   broker  p11proxy registered (./build.sh install and /etc/pkcs11/modules/p11proxy.module), our
#           broker serving the token, SoftHSM's own registration pointed at an empty directory
# System-wide files: run under flock /tmp/p11proxy-test.lock (./build.sh test does).
set -euo pipefail
OUT=${1:-out}
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/fixture-clients.sh"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
INSTALLED_MODULE=/usr/lib/x86_64-linux-gnu/pkcs11/p11proxy.so
REGISTRATION=/etc/pkcs11/modules/p11proxy.module
command -v wget >/dev/null || fail "no wget (package wget; ./build.sh installs it)"
command -v gnutls-cli >/dev/null || fail "no gnutls-cli (package gnutls-bin)"
wget --version | grep -q '+ssl/gnutls' || fail "this wget is not built with GnuTLS: it cannot take pkcs11: URIs"
[ "$(id -u)" -eq 0 ] || fail "needs root: it installs the module and registers it in /etc/pkcs11/modules"
[ ! -e "$REGISTRATION" ] && [ ! -e /usr/share/p11-kit/modules/p11proxy.module ] \
  || fail "p11proxy is registered with p11-kit already; the direct run needs it absent (./build.sh uninstall)"

fixture_clients_token wget
fixture_clients_brokers
d=$FIXTURE_DIR
unset OPENSSL_CONF

fixture_clients_s_server_www

# page_names NAME CLIENT KIND FILE: s_server's page in FILE shows the token's KIND client certificate.
page_names() {
  grep -q "Subject: O=p11proxy tests, CN=p11proxy $3 client" "$4" \
    || fail "$1: $2 with $3-key: s_server's page shows no client certificate of the token: $(grep -iA2 'client certificate' "$4" | head -3)"
}

exercise() {
  local name=$1 kind page debug=""
  echo "== $name"
  # Through p11proxy, its trace must show the signature going to the broker.
  [ "$name" = broker ] && debug=1
  for kind in rsa ec; do
    page="$d/wget-$name-$kind.html"
    P11PROXY_DEBUG=$debug timeout 60 wget -q -O "$page" --ca-certificate="$d/ca.pem" \
      --private-key="pkcs11:token=$FIXTURE_LABEL;object=$kind-key;type=private;pin-value=$FIXTURE_PIN" \
      --certificate="pkcs11:token=$FIXTURE_LABEL;object=$kind-key;type=cert" \
      "https://127.0.0.1:$WWW_PORT/" 2>"$d/wget.err" || fail "$name: wget with $kind-key failed: $(tail -5 "$d/wget.err")"
    page_names "$name" wget "$kind" "$page"
    [ -z "$debug" ] || grep -qE '^p11proxy: C_Sign(Final)? -> CKR_OK' "$d/wget.err" || fail "$name: wget's signature did not go through p11proxy.so"
    echo "$name: wget --private-key/--certificate pkcs11:...object=$kind-key: s_server's page shows" \
      "'CN=p11proxy $kind client' ($(grep -m1 -o 'Protocol *: *TLSv1\.[23]' "$page" | tr -s ' '))"

    page="$d/gnutls-cli-$name-$kind.txt"
    printf 'GET / HTTP/1.0\r\n\r\n' | GNUTLS_PIN=$FIXTURE_PIN P11PROXY_DEBUG=$debug timeout 60 gnutls-cli --x509cafile "$d/ca.pem" \
      --x509keyfile "pkcs11:token=$FIXTURE_LABEL;object=$kind-key;type=private" \
      --x509certfile "pkcs11:token=$FIXTURE_LABEL;object=$kind-key;type=cert" \
      -p "$WWW_PORT" 127.0.0.1 >"$page" 2>"$d/gnutls-cli.err" \
      || fail "$name: gnutls-cli with $kind-key failed: $(tail -5 "$d/gnutls-cli.err"; tail -5 "$page")"
    grep -q '^- Status: The certificate is trusted\.' "$page" || fail "$name: gnutls-cli did not verify the server: $(grep Status "$page")"
    page_names "$name" gnutls-cli "$kind" "$page"
    [ -z "$debug" ] || grep -qE '^p11proxy: C_Sign(Final)? -> CKR_OK' "$d/gnutls-cli.err" || fail "$name: gnutls-cli's signature did not go through p11proxy.so"
    echo "$name: gnutls-cli --x509keyfile/--x509certfile pkcs11:...object=$kind-key: server trusted, s_server's page" \
      "shows 'CN=p11proxy $kind client' $(grep -m1 -oE '^- Description: \([^)]*\)' "$page" | sed 's/- Description: //')"
  done
}

# direct: Debian's softhsm2.module with the test token directory.
exercise direct

# broker: p11proxy registered, SoftHSM's registration sees no token.
fixture_install
[ -d /etc/pkcs11 ] || fixture_on_exit "rmdir /etc/pkcs11"
[ -d /etc/pkcs11/modules ] || fixture_on_exit "rmdir /etc/pkcs11/modules"
fixture_on_exit "rm -f '$REGISTRATION'"
install -D -m 0644 "$ROOT/module-config/p11proxy.module" "$REGISTRATION"
mkdir "$d/no-tokens"
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$d/no-tokens" > "$d/no-tokens.conf"
export SOFTHSM2_CONF="$d/no-tokens.conf" P11_KIT_SERVER_ADDRESS=$BROKER_ADDRESS
out=$(timeout 60 p11tool --list-tokens 2>&1) || fail "p11tool --list-tokens failed: $out"
block=$(awk -v RS= "/Label: $FIXTURE_LABEL\\n/" <<<"$out")
grep -q "Module: $INSTALLED_MODULE" <<<"$block" || fail "broker: the token is not seen through $INSTALLED_MODULE: $out"
echo "broker: p11tool --list-tokens shows $FIXTURE_LABEL only through $INSTALLED_MODULE"
exercise broker
echo "wget and gnutls-cli ok with the token through p11-kit, directly and through p11proxy ($(fixture_elapsed) s)"
