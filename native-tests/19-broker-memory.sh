#!/usr/bin/env bash
# The broker's memory under large call outputs. Outputs of all clients together stay within
# --output-memory-mib (one output at most half of it, as it counts twice: the module's buffer and
# the reply); what does not fit gets CKR_DEVICE_MEMORY and a log line. Large outputs on several
# connections at once keep the broker's peak RSS under 64 MiB, and new connections doing the same
# again do not make it grow: the C heap it shares with the module returns what they used (see
# src/Broker/NativeHeap.cs; without that the same load took the broker to 77 MiB).
set -euo pipefail
OUT=${1:-out}
. "$(dirname "$0")/lib.sh"
fixture_token memory
probe=$FIXTURE_DIR/outputprobe
cc -O2 -Wall -o "$probe" "$(dirname "$0")/hosts/outputprobe.c" -I/usr/include/p11-kit-1 -ldl || fail "cannot build the probe"
module=$OUT/p11proxy.so
CKR_OK=0 CKR_DEVICE_MEMORY=31
mib=$((1 << 20))

# A 4 MiB budget: one output may be 2 MiB.
fixture_start_broker --output-memory-mib 4
export P11_KIT_SERVER_ADDRESS=$FIXTURE_ADDRESS
"$probe" random "$module" $((2 * mib)) $CKR_OK || fail "a 2 MiB random output within a 4 MiB budget was refused"
"$probe" random "$module" $((2 * mib + 1)) $CKR_DEVICE_MEMORY || fail "a random output over half the budget was not refused"
grep -q "C_GenerateRandom: refused a $((2 * mib + 1))-byte output" "$FIXTURE_DIR/broker.err" \
  || fail "no log line for the refused random output"
# One template naming a 1 MiB value twice fits; three times (3 MiB) does not, although each copy would.
"$probe" attribute "$module" $mib 2 $CKR_OK || fail "two copies of a 1 MiB value were not read back intact"
"$probe" attribute "$module" $mib 3 $CKR_DEVICE_MEMORY || fail "three copies of a 1 MiB value were not refused"
grep -q "C_GetAttributeValue: refused a $((3 * mib))-byte output" "$FIXTURE_DIR/broker.err" \
  || fail "no log line for the refused attribute values"
echo "--output-memory-mib 4: 2 MiB outputs served, larger ones and a 3 x 1 MiB template refused and logged"

# The default budget: outputs up to 4 MiB. Two bursts of four clients, each asking for the
# largest outputs down to 512 KiB at the same time: the broker's peak stays under 64 MiB, and the
# second burst (new connections) leaves it no larger than the first did.
kill "${FIXTURE_PIDS[-1]}"
wait "${FIXTURE_PIDS[-1]}" 2>/dev/null || true
fixture_start_broker
broker=${FIXTURE_PIDS[-1]}
status_kib() { awk -v field="$1:" '$1 == field { print $2 }' "/proc/$broker/status"; }
"$probe" random "$module" 32 $CKR_OK >/dev/null || fail "a small random output failed"
burst() {
  local pids=() client pid status=0
  for client in 1 2 3 4; do
    timeout 240 "$probe" churn "$module" 3 $((4 * mib)) >"$FIXTURE_DIR/churn-$1-$client.out" 2>&1 &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || status=1; done
  cat "$FIXTURE_DIR"/churn-"$1"-*.out
  [ $status -eq 0 ] || fail "burst $1: a client's large outputs failed (lines above)"
}
idle=$(status_kib VmRSS)
burst 1
first=$(status_kib VmRSS)
burst 2
second=$(status_kib VmRSS)
peak=$(status_kib VmHWM)
echo "broker RSS: ${idle} KiB idle, ${first} KiB after burst 1, ${second} KiB after burst 2, peak ${peak} KiB"
[ "$peak" -lt $((64 * 1024)) ] || fail "broker peak RSS ${peak} KiB is not under 64 MiB"
[ $((second - first)) -lt 8192 ] || fail "the broker grew by $(( (second - first) / 1024 )) MiB in the second burst"
