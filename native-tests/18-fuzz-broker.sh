#!/usr/bin/env bash
# p11proxy-broker under a seeded mutation fuzzer (tests/fuzz): golden p11-kit requests, a synthetic
# request for every call in protocol versions 0-2 and hostile specials, mutated and sent on 3
# connections at once (each reconnecting when the broker closes it). The broker may answer or
# close a connection but must never die, must keep answering a separate witness connection, and
# must log no internal error; its listener and every worker that served a fuzzing connection must
# stay under 64 MiB peak RSS (the listener logs each worker's peak when it ends), and no worker may
# end by a signal or with a failure status.
# Each connection the broker closes costs a fresh worker process for the reconnection (module
# loaded and initialised, as p11-kit server forks and execs one per connection): 3 spare workers
# keep up with the 3 connections, and the default run is 8,000 inputs (about 5,000 workers)
# rather than the 20,000 a single shared process could take in the same time.
# FUZZ_SEED / FUZZ_INPUTS / FUZZ_CONNECTIONS / FUZZ_MAX_RSS_MIB override the short default run.
set -euo pipefail
OUT=${1:-out}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$(dirname "$0")/lib.sh"
SEED=${FUZZ_SEED:-18}
INPUTS=${FUZZ_INPUTS:-8000}
CONNECTIONS=${FUZZ_CONNECTIONS:-3}
ARTIFACTS=${FUZZ_ARTIFACTS:-${TMPDIR:-/tmp}/p11proxy-fuzz-artifacts}

command -v dotnet >/dev/null || fail "the .NET SDK is needed to build tests/fuzz"
dotnet build "$ROOT/tests/fuzz/BrokerFuzz.csproj" -c Release --artifacts-path "$ARTIFACTS" --nologo -v:q >"${TMPDIR:-/tmp}/p11proxy-fuzz-build.log" 2>&1 \
  || { tail -30 "${TMPDIR:-/tmp}/p11proxy-fuzz-build.log" >&2; fail "the fuzzer did not build"; }
FUZZ=$ARTIFACTS/bin/BrokerFuzz/release/BrokerFuzz.dll
[ -f "$FUZZ" ] || fail "no fuzzer at $FUZZ"

fixture_token fuzz
fixture_start_broker --spare-workers 3
broker_pid=${FIXTURE_PIDS[-1]}
socket=${FIXTURE_ADDRESS#unix:path=}

set +e
timeout 240 dotnet "$FUZZ" "$socket" --seed "$SEED" --inputs "$INPUTS" --connections "$CONNECTIONS" \
  --pid "$broker_pid" --pin "$FIXTURE_PIN" --max-rss-mib "${FUZZ_MAX_RSS_MIB:-64}" --timeout-ms 1000 --broker-log "$FIXTURE_DIR/broker.err" \
  | tee "$FIXTURE_DIR/fuzz.out"
status=${PIPESTATUS[0]}
set -e

kill -0 "$broker_pid" 2>/dev/null || fail "the broker is no longer running"
# The fuzzing connections are closed: their workers end and are reported (the spares remain).
for _ in $(seq 1 100); do
  [ "$(pgrep -cP "$broker_pid" || true)" -le 3 ] && break
  sleep 0.1
done
sleep 0.5
workers=$(grep -c "left: worker pid [0-9]* exited" "$FIXTURE_DIR/broker.err" || true)
peak=$(grep -oE "peak RSS [0-9.]+ MiB" "$FIXTURE_DIR/broker.err" | awk '{ print $3 }' | sort -n | tail -1)
[ -n "$peak" ] || fail "no worker reported its peak RSS"
awk -v p="$peak" 'BEGIN { exit !(p < 64) }' || fail "a worker reached $peak MiB peak RSS (limit 64 MiB)"
if grep -nE "worker pid [0-9]+ .*(killed by signal|exited with status [1-9]|could not start)" "$FIXTURE_DIR/broker.err" >&2; then
  fail "a worker crashed or failed under the fuzzer (lines above)"
fi
echo "workers: $workers served fuzzing connections and ended normally, the largest peak RSS $peak MiB; listener VmHWM $(awk '/^VmHWM:/ { print $2 }' /proc/$broker_pid/status) KiB"
[ "$status" -eq 0 ] || fail "the fuzzer exited with $status (seed $SEED; replay one input with --replay INDEX)"
if grep -n "internal error" "$FIXTURE_DIR/broker.err" >&2; then
  fail "the broker logged internal errors (lines above)"
fi
echo "broker log: $(grep -c "refused a request" "$FIXTURE_DIR/broker.err" || true) refused requests," \
  "$(grep -c "malformed arguments" "$FIXTURE_DIR/broker.err" || true) malformed arguments," \
  "$(grep -c "refused a frame" "$FIXTURE_DIR/broker.err" || true) refused frames, no internal error"
echo "fuzz: $INPUTS inputs, seed $SEED, broker alive and answering"
