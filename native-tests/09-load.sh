#!/usr/bin/env bash
# Load: 4 client processes x 16 threads of mixed calls (sign+verify, find, get attribute,
# random) through one broker, twice. Zero errors, and the broker's memory stays flat: its RSS
# after the second round is within 8 MiB of the first (reported, not timed).
set -euo pipefail
OUT=${1:-out}
. "$(dirname "$0")/lib.sh"
fixture_token load
cc -O2 -Wall -o "$FIXTURE_DIR/threadhost" "$(dirname "$0")/hosts/threadhost.c" -I/usr/include/p11-kit-1 -ldl -lpthread \
  || fail "cannot build the thread host"
fixture_start_broker
broker=${FIXTURE_PIDS[-1]}
export P11_KIT_SERVER_ADDRESS=$FIXTURE_ADDRESS
# Each client has a SoftHSM instance of its own in its worker, as it would loaded directly, and
# SoftHSM's file store does not take processes logging in at the same moment: the hosts take turns
# for their set-up (hostsetup.h), then call concurrently.
export HOST_SETUP_LOCK=$FIXTURE_DIR/setup.lock
rss() { awk '/^VmRSS/ { print $2 }' "/proc/$broker/status"; }
round() {
  local pids=() i status=0
  for i in 1 2 3 4; do
    timeout 240 "$FIXTURE_DIR/threadhost" "$OUT/p11proxy.so" "$FIXTURE_PIN" 16 25 >"$FIXTURE_DIR/load-$1-$i.out" 2>&1 &
    pids+=($!)
  done
  for i in "${pids[@]}"; do wait "$i" || status=1; done
  [ $status -eq 0 ] || { cat "$FIXTURE_DIR"/load-"$1"-*.out >&2; fail "round $1 had errors"; }
  cat "$FIXTURE_DIR"/load-"$1"-*.out
}
before=$(rss)
round 1
first=$(rss)
round 2
second=$(rss)
echo "broker RSS: ${before} KiB idle, ${first} KiB after round 1, ${second} KiB after round 2"
[ $((second - first)) -lt 8192 ] || fail "broker memory grew by $(( (second - first) / 1024 )) MiB between identical rounds"
