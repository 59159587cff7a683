#!/usr/bin/env bash
# pkcs11-tool through out/p11proxy.so: listing, objects, key generation, signing (verified with
# openssl), random, hash, writing and deleting objects, and --test compared with SoftHSM loaded
# directly. Runs against our broker and against p11-kit's server (protocol version 0).
set -euo pipefail
OUT=${1:-out}
. "$(dirname "$0")/lib.sh"

exercise() {
  local name=$1 tool=(pkcs11-tool --module "$OUT/p11proxy.so")
  echo "== $name: $P11_KIT_SERVER_ADDRESS"
  "${tool[@]}" -L | grep -q "token label *: $FIXTURE_LABEL" || fail "$name: -L does not list the token"
  "${tool[@]}" -O --login --pin "$FIXTURE_PIN" | grep -q "label: *demo-cert" || fail "$name: -O does not list the certificate"
  printf 'data to sign' > "$FIXTURE_DIR/data"
  "${tool[@]}" --login --pin "$FIXTURE_PIN" --sign -m SHA256-RSA-PKCS --id 01 -i "$FIXTURE_DIR/data" -o "$FIXTURE_DIR/sig" 2>/dev/null
  openssl dgst -sha256 -verify "$FIXTURE_DIR/pub.pem" -signature "$FIXTURE_DIR/sig" "$FIXTURE_DIR/data" >/dev/null \
    || fail "$name: RSA signature does not verify"
  "${tool[@]}" --login --pin "$FIXTURE_PIN" --keypairgen --key-type EC:prime256v1 --id "e$2" --label "ec-$name" >/dev/null 2>&1 \
    || fail "$name: EC key pair generation failed"
  "${tool[@]}" --read-object --type pubkey --id "e$2" -o "$FIXTURE_DIR/ec.der" 2>/dev/null || fail "$name: cannot read the EC public key"
  openssl dgst -sha256 -binary "$FIXTURE_DIR/data" > "$FIXTURE_DIR/digest"
  "${tool[@]}" --login --pin "$FIXTURE_PIN" --sign -m ECDSA --id "e$2" --signature-format openssl \
    -i "$FIXTURE_DIR/digest" -o "$FIXTURE_DIR/ecsig" 2>/dev/null || fail "$name: ECDSA signing failed"
  openssl dgst -sha256 -verify <(openssl pkey -pubin -inform DER -in "$FIXTURE_DIR/ec.der") -signature "$FIXTURE_DIR/ecsig" \
    "$FIXTURE_DIR/data" >/dev/null || fail "$name: ECDSA signature does not verify"
  local random
  random=$("${tool[@]}" --generate-random 64 2>/dev/null | wc -c)
  [ "$random" -eq 64 ] || fail "$name: --generate-random 64 gave $random bytes"
  "${tool[@]}" --hash -m SHA256 -i "$FIXTURE_DIR/data" -o "$FIXTURE_DIR/hash" 2>/dev/null
  cmp -s "$FIXTURE_DIR/hash" "$FIXTURE_DIR/digest" || fail "$name: --hash differs from openssl's SHA-256"
  printf 'a data object' > "$FIXTURE_DIR/blob"
  "${tool[@]}" --login --pin "$FIXTURE_PIN" --write-object "$FIXTURE_DIR/blob" --type data --label "blob-$name" >/dev/null 2>&1 \
    || fail "$name: --write-object failed"
  "${tool[@]}" --login --pin "$FIXTURE_PIN" -O --type data | grep -q "blob-$name" || fail "$name: written object not listed"
  "${tool[@]}" --login --pin "$FIXTURE_PIN" --delete-object --type data --label "blob-$name" >/dev/null 2>&1 \
    || fail "$name: --delete-object failed"
  if "${tool[@]}" --login --pin "$FIXTURE_PIN" -O --type data | grep -q "blob-$name"; then fail "$name: deleted object still listed"; fi
  echo "$name: list, objects, RSA and ECDSA signatures, random, hash, write and delete ok"
}

fixture_token tool
timeout 120 pkcs11-tool --module "$SOFTHSM_MODULE" --login --pin "$FIXTURE_PIN" --test > "$FIXTURE_DIR/test-direct" 2>&1 || true

fixture_start_broker
export P11_KIT_SERVER_ADDRESS=$FIXTURE_ADDRESS
timeout 120 pkcs11-tool --module "$OUT/p11proxy.so" --login --pin "$FIXTURE_PIN" --test > "$FIXTURE_DIR/test-broker" 2>&1 || true
# Same output as SoftHSM loaded directly, apart from the first line (the slot id).
diff <(sed 1d "$FIXTURE_DIR/test-direct") <(sed 1d "$FIXTURE_DIR/test-broker") || fail "--test through the broker differs from SoftHSM direct"
echo "--test through our broker: identical to SoftHSM direct ($(wc -l < "$FIXTURE_DIR/test-direct") lines)"
exercise broker 1

fixture_start_p11kit_server
export P11_KIT_SERVER_ADDRESS=$FIXTURE_ADDRESS
exercise p11kit-server 2
