#!/usr/bin/env bash
# pkcs11-tool lists the same slots and token through out/p11proxy.so as through p11-kit's own
# client, both talking to the real p11-kit server.
set -euo pipefail
OUT=${1:-out}
. "$(dirname "$0")/lib.sh"
fixture_token list
fixture_start_p11kit_server
export P11_KIT_SERVER_ADDRESS=$FIXTURE_ADDRESS
ours=$(pkcs11-tool --module "$OUT/p11proxy.so" --list-slots) || fail "pkcs11-tool -L through p11proxy.so failed"
theirs=$(pkcs11-tool --module "$P11KIT_CLIENT" --list-slots) || fail "pkcs11-tool -L through p11-kit-client.so failed"
echo "$ours"
grep -q "token label *: $FIXTURE_LABEL" <<<"$ours" || fail "the token is not listed through p11proxy.so"
diff <(echo "$theirs") <(echo "$ours") || fail "p11proxy.so and p11-kit-client.so list different slots"
info=$(pkcs11-tool --module "$OUT/p11proxy.so" --show-info) || fail "pkcs11-tool -I failed"
grep -q "p11proxy" <<<"$info" || fail "C_GetInfo does not name p11proxy: $info"
echo "listing matches p11-kit-client.so"
