#!/usr/bin/env bash
# Instructions per C_GenerateRandom(32) round trip through out/p11proxy.so and out/p11proxy-broker
# (bench/run.sh's configuration D), measured exactly as run.sh's profile section does, without the
# timing rounds: callgrind on the host client (broker unprofiled), then callgrind on the broker
# (host unprofiled); each side is (total of a 2500-call run - total of a 500-call run) / 2000.
# Usage: bench/instructions.sh [OUT-DIR] [RUNS]   (default: out, 1 run). Prints one line per run:
#   client=N server=N total=N   (instructions per call)
# KEEP_PROFILE=DIR keeps the callgrind files of the last run there (for callgrind_annotate).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=$(cd "${1:-out}" && pwd)
RUNS=${2:-1}
SHORT=500
LONG=2500
WARMUP=200

# shellcheck source=../native-tests/lib.sh
. native-tests/lib.sh

mkdir -p "$ROOT/.build/bench"
HOST=$ROOT/.build/bench/p11bench
cc -O2 -Wall -Wextra -o "$HOST" bench/p11bench.c -I/usr/include/p11-kit-1 -ldl -lpthread
fixture_token instructions >/dev/null
# the host looks up the same keys as in bench/run.sh (an EC P-256 key beside the RSA one)
pkcs11-tool --module "$SOFTHSM_MODULE" --login --pin "$FIXTURE_PIN" --keypairgen --key-type EC:prime256v1 \
  --id 02 --label bench-ec >/dev/null 2>&1 || fail "pkcs11-tool could not make the EC key"

total() { # total instructions over the callgrind files given (one per process)
  local sum=0 value f
  for f in "$@"; do
    value=$(sed -n 's/^totals: *\([0-9]*\).*/\1/p' "$f" | head -1)
    [ -n "$value" ] || value=$(sed -n 's/^summary: *\([0-9]*\).*/\1/p' "$f" | head -1)
    sum=$((sum + ${value:-0}))
  done
  echo "$sum"
}

host() { # host OPS [WRAPPER...]
  local ops=$1
  shift
  "$@" "$HOST" --label D --token "$FIXTURE_LABEL" --ops "$ops" --warmup "$WARMUP" random32 "$OUT/p11proxy.so" \
    >"$FIXTURE_DIR/host.log" 2>&1 || { tail -5 "$FIXTURE_DIR/host.log" >&2; fail "the host run failed"; }
}

broker() { # broker SOCKET [WRAPPER...]: starts it, sets BROKER_PID
  local socket=$1
  shift
  rm -f "$socket"
  "$@" "$OUT/p11proxy-broker" serve --module "$SOFTHSM_MODULE" --socket "$socket" --token "pkcs11:token=$FIXTURE_LABEL" \
    >"$socket.out" 2>"$socket.err" &
  BROKER_PID=$!
  FIXTURE_PIDS+=("$BROKER_PID")
  local i
  for i in $(seq 1 600); do
    [ -S "$socket" ] && return 0
    sleep 0.1
  done
  fail "the broker did not come up"
}

DIFF=$((LONG - SHORT))
for run in $(seq 1 "$RUNS"); do
  P=$FIXTURE_DIR/run$run
  mkdir -p "$P"
  # client side: the host under callgrind, a plain broker
  broker "$FIXTURE_DIR/plain.sock"
  for n in $SHORT $LONG; do
    P11_KIT_SERVER_ADDRESS="unix:path=$FIXTURE_DIR/plain.sock" \
      host "$n" valgrind --tool=callgrind --dump-instr=yes "--callgrind-out-file=$P/client.$n.%p"
  done
  kill "$BROKER_PID"; wait "$BROKER_PID" 2>/dev/null || true
  # server side: a fresh broker under callgrind per run, a plain host
  for n in $SHORT $LONG; do
    broker "$FIXTURE_DIR/prof-$n.sock" valgrind --tool=callgrind --trace-children=yes --dump-instr=yes "--callgrind-out-file=$P/server.$n.%p"
    P11_KIT_SERVER_ADDRESS="unix:path=$FIXTURE_DIR/prof-$n.sock" host "$n"
    sleep 0.3
    kill "$BROKER_PID"; wait "$BROKER_PID" 2>/dev/null || true
  done
  client=$(( ($(total "$P"/client.$LONG.*) - $(total "$P"/client.$SHORT.*)) / DIFF ))
  server=$(( ($(total "$P"/server.$LONG.*) - $(total "$P"/server.$SHORT.*)) / DIFF ))
  echo "client=$client server=$server total=$((client + server))"
  if [ -n "${KEEP_PROFILE:-}" ]; then mkdir -p "$KEEP_PROFILE"; cp "$P"/* "$KEEP_PROFILE"/; fi
done
