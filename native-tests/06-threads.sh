#!/usr/bin/env bash
# 16 host threads (64 KiB stacks) calling through one p11proxy.so at once: every signature
# verifies, every lookup finds its object, no reply reaches the wrong thread. Against our broker
# and against p11-kit's server, and p11-kit's client against our broker.
set -euo pipefail
OUT=${1:-out}
. "$(dirname "$0")/lib.sh"
fixture_token threads
cc -O2 -Wall -o "$FIXTURE_DIR/threadhost" "$(dirname "$0")/hosts/threadhost.c" -I/usr/include/p11-kit-1 -ldl -lpthread \
  || fail "cannot build the thread host"
fixture_start_broker
P11_KIT_SERVER_ADDRESS=$FIXTURE_ADDRESS timeout 240 "$FIXTURE_DIR/threadhost" "$OUT/p11proxy.so" "$FIXTURE_PIN" 16 40 \
  || fail "16 threads through our broker failed"
# p11-kit's own client keeps several requests in flight too; our broker answers them as they
# finish, out of order, and the client must match each reply to its thread.
P11_KIT_SERVER_ADDRESS=$FIXTURE_ADDRESS timeout 240 "$FIXTURE_DIR/threadhost" "$P11KIT_CLIENT" "$FIXTURE_PIN" 16 20 \
  || fail "16 threads of p11-kit-client.so through our broker failed"
# Out-of-order replies shown, not assumed: random calls that start and finish while another
# thread's RSA signature is in flight on the same connection (overtake.c exits 3 if none did).
cc -O2 -Wall -o "$FIXTURE_DIR/overtake" "$(dirname "$0")/hosts/overtake.c" -I/usr/include/p11-kit-1 -ldl -lpthread \
  || fail "cannot build the overtaking host"
for client in "$OUT/p11proxy.so" "$P11KIT_CLIENT"; do
  P11_KIT_SERVER_ADDRESS=$FIXTURE_ADDRESS timeout 240 "$FIXTURE_DIR/overtake" "$client" "$FIXTURE_PIN" 40 \
    || fail "$(basename "$client") through our broker: replies did not overtake a signature, or a call failed"
done
fixture_start_p11kit_server
P11_KIT_SERVER_ADDRESS=$FIXTURE_ADDRESS timeout 240 "$FIXTURE_DIR/threadhost" "$OUT/p11proxy.so" "$FIXTURE_PIN" 16 20 \
  || fail "16 threads through p11-kit server failed"
echo "no crossed or lost replies"
