#!/usr/bin/env bash
# GnuTLS's p11tool through out/p11proxy.so (--provider): tokens, both certificates (exported and
# compared with the files), both private keys after login, and --test-sign with the RSA and the
# EC key; a wrong PIN is refused. Against our broker and against p11-kit's server.
set -euo pipefail
OUT=${1:-out}
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/fixture-clients.sh"
# p11-kit (which GnuTLS loads modules with) takes a relative path as relative to its own module
# directory: --provider needs an absolute path.
MODULE=$(readlink -f "$OUT/p11proxy.so")

exercise() {
  local name=$1 out tool=(timeout 60 p11tool --provider "$MODULE")
  echo "== $name: $P11_KIT_SERVER_ADDRESS"
  out=$("${tool[@]}" --list-tokens 2>&1) || fail "$name: --list-tokens failed: $out"
  grep -q "Label: $FIXTURE_LABEL\$" <<<"$out" || fail "$name: --list-tokens does not show $FIXTURE_LABEL: $out"
  echo "$name: --list-tokens shows $(grep -c 'Label:' <<<"$out") token(s), $FIXTURE_LABEL among them"

  out=$("${tool[@]}" --list-all-certs "$TOKEN_URI" 2>&1) || fail "$name: --list-all-certs failed: $out"
  local kind
  for kind in rsa ec; do
    grep -q "object=$kind-key;type=cert" <<<"$out" || fail "$name: --list-all-certs does not list $kind-key: $out"
    "${tool[@]}" --export "$TOKEN_URI;object=$kind-key;type=cert" >"$FIXTURE_DIR/$kind-exported.pem" 2>/dev/null \
      || fail "$name: --export of the $kind certificate failed"
    cmp -s <(openssl x509 -in "$FIXTURE_DIR/$kind-exported.pem" -outform DER) "$FIXTURE_DIR/$kind.der" \
      || fail "$name: the exported $kind certificate differs from the one written to the token"
  done
  echo "$name: --list-all-certs lists rsa-key and ec-key; --export gives back both certificates byte for byte"

  out=$(GNUTLS_PIN=$FIXTURE_PIN "${tool[@]}" --list-all-privkeys --login "$TOKEN_URI" 2>&1) \
    || fail "$name: --list-all-privkeys --login failed: $out"
  grep -q "object=rsa-key;type=private" <<<"$out" || fail "$name: RSA private key not listed: $out"
  grep -q "object=ec-key;type=private" <<<"$out" || fail "$name: EC private key not listed: $out"
  grep -q "Private key (RSA-2048)" <<<"$out" || fail "$name: the RSA key is not shown as RSA-2048: $out"
  grep -q "Private key (EC/ECDSA-SECP256R1)" <<<"$out" || fail "$name: the EC key is not shown as P-256: $out"
  echo "$name: --list-all-privkeys --login lists the RSA-2048 and the P-256 private key"

  for kind in rsa ec; do
    out=$(GNUTLS_PIN=$FIXTURE_PIN "${tool[@]}" --test-sign --login "$TOKEN_URI;object=$kind-key" 2>&1) \
      || fail "$name: --test-sign with $kind-key failed: $out"
    grep -q "Verifying against public key in the token... ok" <<<"$out" || fail "$name: --test-sign $kind-key: $out"
    echo "$name: --test-sign $kind-key: $(grep -o 'Signing using [^.]*' <<<"$out") ok, verified against the token's public key"
  done
}

fixture_clients_token p11tool
fixture_clients_brokers

export P11_KIT_SERVER_ADDRESS=$BROKER_ADDRESS
exercise broker
# RSA-PSS (CKM_RSA_PKCS_PSS with its parameters) goes through our broker.
out=$(GNUTLS_PIN=$FIXTURE_PIN timeout 60 p11tool --provider "$MODULE" --test-sign --login --sign-params RSA-PSS \
  "$TOKEN_URI;object=rsa-key" 2>&1) || fail "broker: --test-sign --sign-params RSA-PSS failed: $out"
grep -q "Verifying against public key in the token... ok" <<<"$out" || fail "broker: RSA-PSS test-sign: $out"
echo "broker: --test-sign --sign-params RSA-PSS ok"
# A wrong PIN must be refused by the token, not accepted by the proxy.
if GNUTLS_PIN=0000 timeout 60 p11tool --provider "$MODULE" --test-sign --login "$TOKEN_URI;object=rsa-key" >"$FIXTURE_DIR/wrong" 2>&1; then
  fail "broker: --test-sign succeeded with a wrong PIN"
fi
grep -q "Wrong PIN" "$FIXTURE_DIR/wrong" || fail "broker: a wrong PIN failed, but not as a wrong PIN: $(cat "$FIXTURE_DIR/wrong")"
echo "broker: a wrong PIN is refused by the token (p11tool: Wrong PIN has been provided)"

export P11_KIT_SERVER_ADDRESS=$P11KIT_ADDRESS
exercise p11kit-server
if GNUTLS_PIN=$FIXTURE_PIN timeout 60 p11tool --provider "$MODULE" --test-sign --login --sign-params RSA-PSS \
  "$TOKEN_URI;object=rsa-key" >"$FIXTURE_DIR/pss" 2>&1; then
  echo "p11kit-server: --test-sign --sign-params RSA-PSS ok"
else
  echo "p11kit-server: RSA-PSS test-sign failed: $(tail -1 "$FIXTURE_DIR/pss") (not counted: a p11-kit 0.24 protocol limit)"
fi
echo "p11tool ok against both brokers ($(fixture_elapsed) s)"
