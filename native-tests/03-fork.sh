#!/usr/bin/env bash
# A host that forks while its threads are inside the module: children re-initialise and sign,
# the parent keeps working (p11proxy.so -> p11proxy-broker -> SoftHSM).
set -euo pipefail
OUT=${1:-out}
. "$(dirname "$0")/lib.sh"
fixture_token fork
fixture_start_broker
export P11_KIT_SERVER_ADDRESS=$FIXTURE_ADDRESS
cc -O2 -Wall -o "$FIXTURE_DIR/forkhost" "$(dirname "$0")/hosts/forkhost.c" -I/usr/include/p11-kit-1 -ldl -lpthread \
  || fail "cannot build the fork host"
timeout 120 "$FIXTURE_DIR/forkhost" "$OUT/p11proxy.so" "$FIXTURE_PIN" 40 4 || fail "fork host failed"
timeout 60 pkcs11-tool --module "$OUT/p11proxy.so" --test-fork >/dev/null 2>&1 || fail "pkcs11-tool --test-fork failed"
echo "fork handling ok"
