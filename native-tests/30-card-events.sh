#!/usr/bin/env bash
# Issue 16: a real source of token events. pcscd, vsmartcard's vpcd reader driver and our virtual
# OpenPGP card (lib-card.sh), in a mount and network namespace of the test's own.
#   1  OpenSC loaded directly (pkcs11-tool -L -O) sees the card in "Virtual PCD 00 00", signs
#      with its key (the signature verifies with openssl), and sees the reader empty once it left
set -euo pipefail
OUT=${1:-out}
DIR=$(dirname "$0")
. "$DIR/lib.sh"
. "$DIR/lib-card.sh"
card_namespace "$@"
card_fixture
printf 'signed on the card\n' >"$FIXTURE_DIR/data"

# 1
card_insert one "$CARD_READER0_PORT"
pkcs11-tool --module "$OPENSC_MODULE" -L >"$FIXTURE_DIR/list" 2>&1 || fail "pkcs11-tool -L: $(cat "$FIXTURE_DIR/list")"
grep -q 'token label *: OpenPGP card (User PIN (sig))' "$FIXTURE_DIR/list" || fail "no OpenPGP card token: $(cat "$FIXTURE_DIR/list")"
grep -q 'serial num *: ffff0000a001' "$FIXTURE_DIR/list" || fail "not the card's serial: $(cat "$FIXTURE_DIR/list")"
pkcs11-tool --module "$OPENSC_MODULE" -O --slot 1 >"$FIXTURE_DIR/objects" 2>&1 || fail "pkcs11-tool -O: $(cat "$FIXTURE_DIR/objects")"
grep -q 'Public Key Object; RSA 2048 bits' "$FIXTURE_DIR/objects" || fail "no public key listed: $(cat "$FIXTURE_DIR/objects")"
pkcs11-tool --module "$OPENSC_MODULE" --slot 1 --login --pin "$CARD_PIN" --sign -m SHA256-RSA-PKCS \
  -i "$FIXTURE_DIR/data" -o "$FIXTURE_DIR/direct.sig" >/dev/null 2>&1 || fail "pkcs11-tool could not sign with the card"
openssl dgst -sha256 -verify "$FIXTURE_DIR/card-pub.pem" -signature "$FIXTURE_DIR/direct.sig" "$FIXTURE_DIR/data" >/dev/null \
  || fail "the card's signature does not verify"
card_remove one
pkcs11-tool --module "$OPENSC_MODULE" -L >"$FIXTURE_DIR/list" 2>&1 || true
grep -q 'OpenPGP' "$FIXTURE_DIR/list" && fail "the card is still listed after it left: $(cat "$FIXTURE_DIR/list")"
grep -q 'Virtual PCD 00 00' "$FIXTURE_DIR/list" || fail "the reader is not listed: $(cat "$FIXTURE_DIR/list")"
echo "1 OpenSC directly: the virtual card is listed, signs (verified), and is gone once removed"
echo "PASS"
