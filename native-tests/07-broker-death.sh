#!/usr/bin/env bash
# The broker is SIGKILLed while 4 host threads sign: every thread gets an error within a second,
# nothing hangs or crashes, and once a broker is back the module reconnects by itself.
set -euo pipefail
OUT=${1:-out}
. "$(dirname "$0")/lib.sh"
fixture_token death
cc -O2 -Wall -o "$FIXTURE_DIR/deathhost" "$(dirname "$0")/hosts/deathhost.c" -I/usr/include/p11-kit-1 -ldl -lpthread \
  || fail "cannot build the host"
fixture_start_broker
broker_pid=${FIXTURE_PIDS[-1]}
export P11_KIT_SERVER_ADDRESS=$FIXTURE_ADDRESS
report=$FIXTURE_DIR/host.out
timeout 60 "$FIXTURE_DIR/deathhost" "$OUT/p11proxy.so" "$FIXTURE_PIN" 4 >"$report" 2>"$FIXTURE_DIR/host.err" &
host=$!
wait_for() { for _ in $(seq 1 200); do grep -q "$1" "$report" && return 0; sleep 0.05; done; fail "host never reported '$1'"; }
wait_for ready
sleep 1
killed_at=$(date +%s.%N)
kill -9 "$broker_pid"
wait_for "threads got an error"
rm -f "$FIXTURE_DIR/broker.sock"
fixture_start_broker
status=0
wait "$host" || status=$?
cat "$report"
[ $status -eq 0 ] || { cat "$FIXTURE_DIR/host.err" >&2; fail "host failed with status $status"; }
last_error=$(sed -n 's/.*, at \([0-9.]*\)$/\1/p' "$report")
[ -n "$last_error" ] || fail "the host did not report when the last error came"
after=$(awk -v k="$killed_at" -v l="$last_error" 'BEGIN { printf "%.1f", (l - k) * 1000 }')
echo "every signing thread had its error ${after} ms after the SIGKILL"
# A hang detector, not a timing goal: a blocked thread would wait for the 300 s call timeout.
awk -v a="$after" 'BEGIN { exit !(a < 5000) }' || fail "a thread got its error only ${after} ms after the broker died"
