#!/usr/bin/env bash
# The benchmark: p11proxy against p11-kit's RPC and against SoftHSM directly. Called by
# `./build.sh bench` after the build; expects out/p11proxy.so and out/p11proxy-broker.
#
#   A  SoftHSM direct                      (libsofthsm2.so in the host)
#   B  p11-kit-client.so + p11-kit server  (the reference RPC pair)
#   C  out/p11proxy.so   + p11-kit server
#   D  out/p11proxy.so   + out/p11proxy-broker serve
#   E  p11-kit-client.so + out/p11proxy-broker serve
# and, for the cold life cycle only, the spawned forms (a '|command' address: the server is started
# at C_Initialize and reaped at C_Finalize): Bs/Cs = '|p11-kit remote', Ds/Es = '|p11proxy-broker stdio'.
#
# Every measurement is a fresh bench/p11bench process. The configurations are interleaved
# (for each round, for each workload: A B C D E), so slow drifts of the machine hit all of them
# alike; the report gives medians over the rounds and the medians of per-round (paired) ratios.
# Then instruction counts (callgrind) and system call counts (strace -f -c) per C_GenerateRandom
# call, client side and server side, each by subtracting a short run from a long one.
#
# Knobs (environment): BENCH_ROUNDS (5), BENCH_SECONDS per measurement (1.2), BENCH_COLD_RUNS
# processes per cold measurement (5), BENCH_CLIENTS processes in the many-clients workloads (64),
# BENCH_PROFILE=0 to skip callgrind/strace, BENCH_RESULTS (bench/results/latest.md). Timings are never pass/fail: only a configuration that fails to run
# makes this script exit non-zero (after writing the report).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/out}
ROUNDS=${BENCH_ROUNDS:-5}
MEASURE_SECONDS=${BENCH_SECONDS:-1.2}
COLD_RUNS=${BENCH_COLD_RUNS:-5}
PROFILE=${BENCH_PROFILE:-1}
RESULTS=${BENCH_RESULTS:-$ROOT/bench/results/latest.md}
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3

say() { printf '==> %s\n' "$*" >&2; }

[ -x "$OUT/p11proxy.so" ] || { echo "bench: $OUT/p11proxy.so is missing: run ./build.sh first" >&2; exit 1; }
[ -x "$OUT/p11proxy-broker" ] || { echo "bench: $OUT/p11proxy-broker is missing: run ./build.sh first" >&2; exit 1; }

# shellcheck source=../native-tests/lib.sh
. native-tests/lib.sh

START_TIME=$(date +%s)
mkdir -p "$ROOT/.build/bench" "$(dirname "$RESULTS")"
HOST=$ROOT/.build/bench/p11bench
say "building the benchmark host"
cc -O2 -Wall -Wextra -o "$HOST" bench/p11bench.c -I/usr/include/p11-kit-1 -ldl -lpthread
FLOOR=$ROOT/.build/bench/pingpong
cc -O2 -Wall -Wextra -o "$FLOOR" bench/pingpong.c

say "creating the SoftHSM token (RSA-2048 key and certificate, EC P-256 key; PIN 1234)"
fixture_token bench
pkcs11-tool --module "$SOFTHSM_MODULE" --login --pin "$FIXTURE_PIN" --keypairgen --key-type EC:prime256v1 \
  --id 02 --label bench-ec >/dev/null 2>&1 || fail "pkcs11-tool could not make the EC key"
RAW=$FIXTURE_DIR/raw.txt
: > "$RAW"

say "starting p11-kit server and out/p11proxy-broker on the token"
fixture_start_p11kit_server
KIT_ADDRESS=$FIXTURE_ADDRESS
KIT_PID=${FIXTURE_PIDS[-1]}
fixture_start_broker --token "pkcs11:token=$FIXTURE_LABEL"
OUR_ADDRESS=$FIXTURE_ADDRESS
OUR_PID=${FIXTURE_PIDS[-1]}
KIT_SPAWN="|p11-kit remote $SOFTHSM_MODULE"
OUR_SPAWN="|$OUT/p11proxy-broker stdio --module $SOFTHSM_MODULE"

config_module() {
  case $1 in
    A) echo "$SOFTHSM_MODULE" ;;
    B|E|Bs|Es) echo "$P11KIT_CLIENT" ;;
    C|D|Cs|Ds) echo "$OUT/p11proxy.so" ;;
  esac
}
config_address() {
  case $1 in
    A) echo "" ;;
    B|C) echo "$KIT_ADDRESS" ;;
    D|E) echo "$OUR_ADDRESS" ;;
    Bs|Cs) echo "$KIT_SPAWN" ;;
    Ds|Es) echo "$OUR_SPAWN" ;;
  esac
}

# The server process of a socket configuration, whose CPU time is counted around each measurement.
config_server_pid() {
  case $1 in
    B|C) echo "$KIT_PID" ;;
    D|E) echo "$OUR_PID" ;;
  esac
}
CLOCK_TICKS=$(getconf CLK_TCK)
# cpu_ticks PID: CPU time of PID, its threads and the children it has reaped (p11-kit server
# forks a p11-kit-remote per connection), in clock ticks.
cpu_ticks() { awk '{print $14 + $15 + $16 + $17}' "/proc/$1/stat"; }

FAILURES=0
# run_host CONFIG ROUND HOST-ARGS...: one host process; its RESULT lines go to the raw file, with
# the server's CPU time for the whole connection (server_cpu_us) when the server is a socket server.
run_host() {
  local config=$1 round=$2 module address status server_pid server_before="" server_cpu="" i
  shift 2
  module=$(config_module "$config")
  address=$(config_address "$config")
  server_pid=$(config_server_pid "$config")
  [ -n "$server_pid" ] && server_before=$(cpu_ticks "$server_pid")
  set +e
  if [ -z "$address" ]; then
    env -u P11_KIT_SERVER_ADDRESS timeout 300 "$HOST" --label "$config" --token "$FIXTURE_LABEL" "$@" "$module" \
      >"$FIXTURE_DIR/run.out" 2>"$FIXTURE_DIR/run.err"
  else
    P11_KIT_SERVER_ADDRESS=$address timeout 300 "$HOST" --label "$config" --token "$FIXTURE_LABEL" "$@" "$module" \
      >"$FIXTURE_DIR/run.out" 2>"$FIXTURE_DIR/run.err"
  fi
  status=$?
  set -e
  if [ -n "$server_before" ]; then
    # The process that served the connection (p11-kit server's per-connection child, our broker's
    # worker) counts once it is reaped, just after the host left; our broker keeps a spare worker.
    local idle_children=0
    case $config in D|E) idle_children=1 ;; esac
    for i in $(seq 1 300); do [ "$(pgrep -cP "$server_pid" || true)" -le $idle_children ] && break; sleep 0.01; done
    server_cpu="server_cpu_us=$(( ($(cpu_ticks "$server_pid") - server_before) * 1000000 / CLOCK_TICKS )) "
  fi
  if [ $status -eq 0 ] && grep -q '^RESULT ' "$FIXTURE_DIR/run.out"; then
    sed -n "s/^RESULT /RESULT round=$round $server_cpu/p" "$FIXTURE_DIR/run.out" >>"$RAW"
  else
    FAILURES=$((FAILURES + 1))
    printf 'FAIL round=%s config=%s status=%s args=%s reason=%s\n' "$round" "$config" "$status" "$(echo "$@" | tr ' ' '_')" \
      "$( (grep -h '^ERROR\|p11bench:' "$FIXTURE_DIR/run.out" "$FIXTURE_DIR/run.err" || true) | head -2 | tr ' \n' '_ ')" >>"$RAW"
    say "FAILED: config $config, p11bench $* (exit $status)"
    tail -5 "$FIXTURE_DIR/run.err" >&2 || true
  fi
}

# Many clients: CLIENTS processes of one thread each, set up one after the other and measured at
# once (aggregate ops/s, percentiles over all their calls), with the server's memory per idle
# client; p11-kit's pair (B) against ours (D): both servers run a process per client.
CLIENTS=${BENCH_CLIENTS:-64}
MANY_WORKLOADS=(random32 sign-ec)
MANY_CONFIGS=(B D)

# The workloads: "name threads" pairs, all run for MEASURE_SECONDS.
WORKLOADS=(
  "random32 1" "info 1" "getattr 1" "find 1"
  "sign-ec 1" "sign-ec 2"
  "sign-rsa 1" "sign-rsa 2" "sign-rsa 4" "sign-rsa 8"
  "digest-1m 1" "digest-1m 2"
  "mix 2"
)
CONFIGS=(A B C D E)
SPAWNED=(Bs Cs Ds Es)

say "timing: $ROUNDS rounds x ${#WORKLOADS[@]} workloads x ${#CONFIGS[@]} configurations, ${MEASURE_SECONDS}s each, plus cold starts"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
ROUND_LOADS=()
for round in $(seq 1 "$ROUNDS"); do
  round_start=$(date +%s)
  for entry in "${WORKLOADS[@]}"; do
    read -r workload threads <<<"$entry"
    for config in "${CONFIGS[@]}"; do
      run_host "$config" "$round" --threads "$threads" --seconds "$MEASURE_SECONDS" "$workload"
    done
  done
  for workload in "${MANY_WORKLOADS[@]}"; do
    for config in "${MANY_CONFIGS[@]}"; do
      run_host "$config" "$round" --clients "$CLIENTS" --server-pid "$(config_server_pid "$config")" \
        --seconds "$MEASURE_SECONDS" "$workload"
    done
  done
  for config in "${CONFIGS[@]}" "${SPAWNED[@]}"; do
    run_host "$config" "$round" --runs "$COLD_RUNS" cold-spawn
  done
  # The floor: plain unix-socket round trips between two C processes, in the same conditions.
  "$FLOOR" --label floor --seconds "$MEASURE_SECONDS" | sed -n "s/^RESULT /RESULT round=$round /p" >>"$RAW" \
    || say "the socket round-trip floor could not be measured"
  ROUND_LOADS+=("$(cut -d' ' -f1 /proc/loadavg)")
  say "round $round/$ROUNDS done in $(( $(date +%s) - round_start ))s (load average $(cut -d' ' -f1 /proc/loadavg))"
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# --- instructions and system calls per call ---------------------------------------------------
PROFILE_SHORT=500
PROFILE_LONG=2500
PROFILE_WARMUP=200

# start_server KIND SOCKET WRAPPER...: our broker or p11-kit server on SOCKET, run under WRAPPER;
# sets SERVER_PID (the wrapper's pid) and waits for the socket.
start_server() {
  local kind=$1 socket=$2 i
  shift 2
  if [ "$kind" = ours ]; then
    "$@" "$OUT/p11proxy-broker" serve --module "$SOFTHSM_MODULE" --socket "$socket" --token "pkcs11:token=$FIXTURE_LABEL" \
      >"$socket.out" 2>"$socket.err" &
  else
    "$@" p11-kit server -f -n "$socket" --provider "$SOFTHSM_MODULE" "pkcs11:token=$FIXTURE_LABEL" \
      >"$socket.out" 2>"$socket.err" &
  fi
  SERVER_PID=$!
  FIXTURE_PIDS+=("$SERVER_PID")
  for i in $(seq 1 600); do
    [ -S "$socket" ] && return 0
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  say "the $kind server under '$*' did not come up"; tail -5 "$socket.err" >&2
  return 1
}

# stop_server PID: SIGTERM to the server itself (not to strace, which then writes its summary).
stop_server() {
  local pid=$1 child
  child=$(pgrep -P "$pid" 2>/dev/null | head -1 || true)
  if [ -n "$child" ] && [ "$(basename "$(readlink /proc/"$pid"/exe 2>/dev/null)")" = strace ]; then
    kill "$child" 2>/dev/null || true
  else
    kill "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

callgrind_total() { # sum of the totals of callgrind files (one per process)
  local sum=0 value f
  for f in "$@"; do
    value=$(sed -n 's/^totals: *\([0-9]*\).*/\1/p' "$f" | head -1)
    [ -n "$value" ] || value=$(sed -n 's/^summary: *\([0-9]*\).*/\1/p' "$f" | head -1)
    sum=$((sum + ${value:-0}))
  done
  echo $sum
}

# client_profile TOOL CONFIG: the host (with CONFIG's module) under TOOL, short and long run.
client_profile() {
  local tool=$1 config=$2 n prefix module address ok=1
  module=$(config_module "$config")
  address=$(config_address "$config")
  for n in $PROFILE_SHORT $PROFILE_LONG; do
    prefix=$FIXTURE_DIR/prof.$tool.client.$config.$n
    rm -f "$prefix".*
    local wrapper=()
    if [ "$tool" = callgrind ]; then
      wrapper=(valgrind --tool=callgrind --trace-children=yes "--callgrind-out-file=$prefix.%p")
    else
      wrapper=(strace -f -c -o "$prefix.strace")
    fi
    local environment=(-u P11_KIT_SERVER_ADDRESS)
    [ -z "$address" ] || environment=("P11_KIT_SERVER_ADDRESS=$address")
    if ! env "${environment[@]}" timeout 300 "${wrapper[@]}" "$HOST" --label "$config" --token "$FIXTURE_LABEL" --ops "$n" --warmup "$PROFILE_WARMUP" \
        random32 "$module" >"$prefix.log" 2>&1; then
      ok=0; say "$tool client run failed for $config"; tail -5 "$prefix.log" >&2
    fi
  done
  [ $ok -eq 1 ] || { echo "PROFILE tool=$tool side=client config=$config failed=1" >>"$RAW"; FAILURES=$((FAILURES + 1)); return 0; }
  profile_record "$tool" client "$config" "$FIXTURE_DIR/prof.$tool.client.$config"
}

# server_profile TOOL CONFIG: a fresh server (p11-kit's for B/C, ours for D/E) under TOOL, serving
# one short and (restarted) one long client run.
server_profile() {
  local tool=$1 config=$2 n prefix module kind socket ok=1
  module=$(config_module "$config")
  case $config in B|C) kind=p11kit ;; *) kind=ours ;; esac
  for n in $PROFILE_SHORT $PROFILE_LONG; do
    prefix=$FIXTURE_DIR/prof.$tool.server.$config.$n
    socket=$FIXTURE_DIR/prof-$tool-$config-$n.sock
    rm -f "$prefix".*
    local wrapper=()
    if [ "$tool" = callgrind ]; then
      wrapper=(valgrind --tool=callgrind --trace-children=yes "--callgrind-out-file=$prefix.%p")
    else
      wrapper=(strace -f -c -o "$prefix.strace")
    fi
    start_server "$kind" "$socket" "${wrapper[@]}" || { ok=0; continue; }
    if ! P11_KIT_SERVER_ADDRESS="unix:path=$socket" timeout 300 "$HOST" --label "$config" --token "$FIXTURE_LABEL" \
        --ops "$n" --warmup "$PROFILE_WARMUP" random32 "$module" >"$prefix.log" 2>&1; then
      ok=0; say "$tool server run failed for $config"; tail -5 "$prefix.log" >&2
    fi
    sleep 0.3   # let the server side notice the disconnect (p11-kit's per-connection child exits)
    stop_server "$SERVER_PID"
  done
  [ $ok -eq 1 ] || { echo "PROFILE tool=$tool side=server config=$config failed=1" >>"$RAW"; FAILURES=$((FAILURES + 1)); return 0; }
  profile_record "$tool" server "$config" "$FIXTURE_DIR/prof.$tool.server.$config"
}

# profile_record TOOL SIDE CONFIG PREFIX: (long - short) / (ops difference) into the raw file.
profile_record() {
  local tool=$1 side=$2 config=$3 prefix=$4 short long
  if [ "$tool" = callgrind ]; then
    short=$(callgrind_total "$prefix.$PROFILE_SHORT".[0-9]*)
    long=$(callgrind_total "$prefix.$PROFILE_LONG".[0-9]*)
    echo "PROFILE tool=callgrind side=$side config=$config short=$short long=$long ops=$((PROFILE_LONG - PROFILE_SHORT))" >>"$RAW"
  else
    "$PY" bench/report.py strace-diff "$prefix.$PROFILE_SHORT.strace" "$prefix.$PROFILE_LONG.strace" \
      "$((PROFILE_LONG - PROFILE_SHORT))" "tool=strace side=$side config=$config" >>"$RAW"
  fi
}

if [ "$PROFILE" != 0 ]; then
  say "callgrind and strace: instructions and system calls per C_GenerateRandom (${PROFILE_LONG} - ${PROFILE_SHORT} calls)"
  for config in A B C D E; do
    client_profile callgrind "$config"
    client_profile strace "$config"
  done
  for config in B C D E; do
    server_profile callgrind "$config"
    server_profile strace "$config"
  done
fi

# --- report -------------------------------------------------------------------------------------
cp "$RAW" "${RESULTS%.md}.raw.txt"
ELAPSED=$(( $(date +%s) - START_TIME ))
{
  echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "nproc=$(nproc)"
  echo "cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
  echo "kernel=$(uname -srm)"
  echo "os=$(. /etc/os-release && echo "$PRETTY_NAME")"
  echo "p11kit=$(dpkg-query -W -f '${Version}' p11-kit 2>/dev/null || echo '?')"
  echo "softhsm=$(dpkg-query -W -f '${Version}' softhsm2 2>/dev/null || echo '?')"
  echo "commit=$(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- src 2>/dev/null || echo ' (src/ modified)')"
  echo "rounds=$ROUNDS"
  echo "seconds=$MEASURE_SECONDS"
  echo "cold_runs=$COLD_RUNS"
  echo "clients=$CLIENTS"
  echo "load_before=$LOAD_BEFORE"
  echo "load_after=$(cut -d' ' -f1-3 /proc/loadavg)"
  echo "load_after_timing=$LOAD_AFTER"
  echo "round_loads=${ROUND_LOADS[*]}"
  echo "elapsed=$ELAPSED"
  echo "profile_ops=$((PROFILE_LONG - PROFILE_SHORT))"
} >"$FIXTURE_DIR/meta.txt"
"$PY" bench/report.py report "$RAW" "$FIXTURE_DIR/meta.txt" >"$RESULTS"
# The paired ratios as a picture beside the report (README shows it).
meta() { sed -n "s/^$1=//p" "$FIXTURE_DIR/meta.txt"; }
"$PY" bench/report.py chart "$RAW" "${RESULTS%.md}.svg" \
  "$(meta date), commit $(meta commit), $(meta nproc) vCPUs, p11-kit $(meta p11kit), SoftHSM $(meta softhsm)"
cat "$RESULTS"
say "report written to ${RESULTS#"$ROOT"/} (raw lines: $(basename "${RESULTS%.md}.raw.txt"), chart: $(basename "${RESULTS%.md}.svg") beside it); ${ELAPSED}s"
if [ "$FAILURES" -ne 0 ]; then
  say "$FAILURES measurement(s) failed: see the FAIL lines in the report"
  exit 1
fi
