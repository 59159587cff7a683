#!/usr/bin/env bash
# Chromium (driven by chromedriver) and Firefox ESR (driven over Marionette) under Xvfb do TLS
# client authentication with a token key, the PIN typed into the browser's own dialog with real
# key events (xdotool). Each browser starts once, with an NSS database holding two modules:
#   SoftHSM loaded directly (the reference), token p11proxy-direct, certificate issued by a second
#     CA: the site "direct" demands a certificate from that CA;
#   out/p11proxy.so, talking to a p11proxy-broker of its own that serves token p11proxy-browser
#     (rsa-key, certificate from the test CA): the site "p11proxy" demands that CA.
# Each site (nginx, ssl_verify_client on) shows the client certificate's subject; the browser must
# show the expected token certificate's subject on both pages, after a PIN dialog for each token.
# The broker's trace must show the login and the signature.
set -euo pipefail
OUT=${1:-out}
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/fixture-clients.sh"
. "$(dirname "$0")/fixture-browsers.sh"
MODULE=$(readlink -f "$OUT/p11proxy.so")
browsers_require

fixture_clients_token browser
d=$FIXTURE_DIR
BROKER_SOFTHSM_CONF=$SOFTHSM2_CONF
# One client certificate on the proxied token, so that each site matches exactly one certificate.
pkcs11-tool --module "$SOFTHSM_MODULE" --token-label "$FIXTURE_LABEL" --login --pin "$FIXTURE_PIN" \
  --delete-object --type cert --id 02 >/dev/null 2>&1 || fail "cannot remove the EC certificate from the token"

# The reference token, in a SoftHSM directory of its own, with a certificate from a second CA.
mkdir -p "$d/direct/tokens"
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$d/direct/tokens" > "$d/direct/softhsm2.conf"
DIRECT_SOFTHSM_CONF=$d/direct/softhsm2.conf
SOFTHSM2_CONF=$DIRECT_SOFTHSM_CONF softhsm2-util --init-token --free --label p11proxy-direct --so-pin "$FIXTURE_SO_PIN" \
  --pin "$FIXTURE_PIN" >/dev/null || fail "cannot create the direct token"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$d/direct/ca-key.pem" -out "$d/direct/ca.pem" \
  -days 2 -subj "/O=p11proxy tests/CN=p11proxy direct CA" -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null || fail "cannot make the second CA"
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$d/direct/key.pem" 2>/dev/null || fail "no direct key"
openssl req -new -key "$d/direct/key.pem" -subj "/O=p11proxy tests/CN=p11proxy direct client" -out "$d/direct/req.csr" 2>/dev/null
printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n' > "$d/direct/ext"
openssl x509 -req -in "$d/direct/req.csr" -CA "$d/direct/ca.pem" -CAkey "$d/direct/ca-key.pem" -CAcreateserial -days 2 \
  -sha256 -extfile "$d/direct/ext" -outform DER -out "$d/direct/cert.der" 2>/dev/null || fail "cannot issue the direct certificate"
SOFTHSM2_CONF=$DIRECT_SOFTHSM_CONF softhsm2-util --import "$d/direct/key.pem" --token p11proxy-direct --label direct-key \
  --id 01 --pin "$FIXTURE_PIN" >/dev/null || fail "cannot import the direct key"
SOFTHSM2_CONF=$DIRECT_SOFTHSM_CONF pkcs11-tool --module "$SOFTHSM_MODULE" --token-label p11proxy-direct --login \
  --pin "$FIXTURE_PIN" --write-object "$d/direct/cert.der" --type cert --id 01 --label direct-key >/dev/null 2>&1 \
  || fail "cannot store the direct certificate"
cat "$d/direct/ca.pem" "$d/ca.pem" > "$d/both-cas.pem"

browsers_tls_site direct "$d/direct/ca.pem"
browsers_tls_site p11proxy "$d/ca.pem"
browsers_start_sites
browsers_start_xvfb
echo "sites: direct $SITE_URL_direct, p11proxy $SITE_URL_p11proxy; X display $DISPLAY"

DIRECT_SUBJECT="CN=p11proxy direct client,O=p11proxy tests"
PROXY_SUBJECT="CN=p11proxy rsa client,O=p11proxy tests"

# browser NAME: one start of that browser against its own broker.
browser() {
  local name=$1 dir="$d/$1" nssdb socket broker_pid status=0
  mkdir -p "$dir"
  nssdb=$dir
  [ "$name" = chromium ] && nssdb=$dir/nssdb
  socket="$dir/broker.sock"
  SOFTHSM2_CONF=$BROKER_SOFTHSM_CONF "$OUT/p11proxy-broker" serve --module "$SOFTHSM_MODULE" --socket "$socket" --verbose \
    >"$dir/broker.out" 2>"$dir/broker.err" &
  broker_pid=$!
  FIXTURE_PIDS+=($broker_pid)
  fixture_wait_socket "$socket"
  SOFTHSM2_CONF=$DIRECT_SOFTHSM_CONF P11_KIT_SERVER_ADDRESS="unix:path=$socket" \
    browsers_nssdb "$nssdb" "SoftHSM direct" "$SOFTHSM_MODULE" p11proxy "$MODULE"
  echo "== $name (broker unix:path=$socket)"
  SOFTHSM2_CONF=$DIRECT_SOFTHSM_CONF P11_KIT_SERVER_ADDRESS="unix:path=$socket" browsers_drive "$name" "$dir" --pin "$FIXTURE_PIN" \
    --visit "$SITE_URL_direct" "p11proxy client auth: direct" "$DIRECT_SUBJECT" \
    --visit "$SITE_URL_p11proxy" "p11proxy client auth: p11proxy" "$PROXY_SUBJECT" || status=$?
  sed "s/^/$name: /" "$dir/drive.out"
  kill "$broker_pid" 2>/dev/null || true
  if [ $status -ne 0 ]; then
    grep -E 'error|warn' "$dir/broker.err" | tail -3 >&2 || true
    tail -3 "$d/sites/logs/error.log" >&2 || true
    fail "$name: the pages did not show the token certificates' subjects"
  fi
  grep -qF "$SITE_URL_direct: subject: $DIRECT_SUBJECT" "$dir/drive.out" || fail "$name: the direct page showed another subject"
  grep -qF "$SITE_URL_p11proxy: subject: $PROXY_SUBJECT" "$dir/drive.out" || fail "$name: the p11proxy page showed another subject"
  # One PIN dialog per token (a browser may ask for both when it first needs a certificate).
  [ "$(grep -c ': dialog: .*: PIN typed$' "$dir/drive.out")" -eq 2 ] || fail "$name: not one PIN dialog per token"
  grep -qE ': C_Login .*CKR_OK' "$dir/broker.err" || fail "$name: the broker logged no successful C_Login"
  grep -qE ': C_Sign(Final)? .*CKR_OK' "$dir/broker.err" || fail "$name: the broker made no signature"
  echo "$name: the broker logged $(grep -cE ': C_Login .*CKR_OK' "$dir/broker.err") C_Login and $(grep -cE ': C_Sign(Final)? .*CKR_OK' "$dir/broker.err") C_Sign -> CKR_OK"
}

browser chromium
browser firefox
echo "Chromium and Firefox ESR authenticate with token keys, PIN typed into their dialogs, directly and through p11proxy ($(fixture_elapsed) s)"
