#!/usr/bin/env bash
# Issue 12, limits and the listener's life: our broker against p11-kit server where it applies.
#  11  1,100 idle connections under a 1024 open-file limit (prlimit, soft and hard): the listener
#      logs the limit and keeps serving: a real client signs meanwhile, the broker never exits
#  12  connections that never send the version handshake: ours closes them after
#      --handshake-timeout-ms (5 s by default) with a log line; p11-kit server keeps them
#   -  the soft open-file limit is raised to the hard one at start
#   -  --max-clients 2: a third client is refused with a log line, served again once one leaves
#   -  one spare worker is kept started; --spare-workers 0 keeps none and still serves
#   -  a spare initialises the module when its client arrives: a token created after the spare
#      started is listed, as when the client loads SoftHSM itself; --initialize-ahead initialises
#      spares before, and the next client sees the tokens of that moment
#   -  SIGTERM: workers end, the socket is removed, exit status 0; SIGKILL of the listener: every
#      worker dies with it (parent-death signal) and clients get errors, not a hang
set -euo pipefail
OUT=${1:-out}
DIR=$(dirname "$0")
. "$DIR/lib.sh"
. "$DIR/isolation-lib.sh"
fixture_token limits
iso_build
IDLE=$DIR/hosts/idleconnections.py
PY=/usr/bin/python3
printf 'signed while flooded' >"$FIXTURE_DIR/data"

# start KIND SOCKET [ARGS...]: our broker or p11-kit server on SOCKET under `prlimit --nofile`
# from $NOFILE (unset: no change); sets SERVER.
start() {
  local kind=$1 socket=$2
  shift 2
  local limit=()
  [ -n "${NOFILE:-}" ] && limit=(prlimit "--nofile=$NOFILE" --)
  if [ "$kind" = ours ]; then
    "${limit[@]}" "$OUT/p11proxy-broker" serve --module "$SOFTHSM_MODULE" --socket "$socket" "$@" \
      >"$socket.out" 2>"$socket.err" &
  else
    "${limit[@]}" p11-kit server -f -n "$socket" --provider "$SOFTHSM_MODULE" "pkcs11:token=$FIXTURE_LABEL" \
      >"$socket.out" 2>"$socket.err" &
  fi
  SERVER=$!
  FIXTURE_PIDS+=($SERVER)
  fixture_wait_socket "$socket"
}
# signs MODULE SOCKET: a whole client process signs through the server (and the signature verifies).
signs() {
  rm -f "$FIXTURE_DIR/sig"
  P11_KIT_SERVER_ADDRESS="unix:path=$2" timeout 120 pkcs11-tool --module "$1" --login --pin "$FIXTURE_PIN" \
    --sign -m SHA256-RSA-PKCS --id 01 -i "$FIXTURE_DIR/data" -o "$FIXTURE_DIR/sig" >/dev/null 2>"$FIXTURE_DIR/sign.err" \
    || { cat "$FIXTURE_DIR/sign.err" >&2; return 1; }
  openssl dgst -sha256 -verify "$FIXTURE_DIR/pub.pem" -signature "$FIXTURE_DIR/sig" "$FIXTURE_DIR/data" >/dev/null
}
# idle_open SOCKET COUNT / idle_count / idle_quit: the idle connections, through FIFOs.
idle_open() {
  rm -f "$FIXTURE_DIR/idle.in" "$FIXTURE_DIR/idle.out"
  mkfifo "$FIXTURE_DIR/idle.in" "$FIXTURE_DIR/idle.out"
  "$PY" "$IDLE" "$1" "$2" <"$FIXTURE_DIR/idle.in" >"$FIXTURE_DIR/idle.out" &
  IDLE_PID=$!
  FIXTURE_PIDS+=($IDLE_PID)
  exec {IDLE_IN}>"$FIXTURE_DIR/idle.in" {IDLE_OUT}<"$FIXTURE_DIR/idle.out"
  read -t 120 -r line <&$IDLE_OUT || fail "the idle connections were not opened"
  [ "$line" = "opened $2" ] || fail "idle connections: $line"
}
idle_count() {
  echo count >&$IDLE_IN
  read -t 60 -r IDLE_STATE <&$IDLE_OUT || fail "no count from the idle connections"
}
idle_quit() {
  echo quit >&$IDLE_IN
  wait $IDLE_PID 2>/dev/null || true
  exec {IDLE_IN}>&- {IDLE_OUT}<&-
}

# ---- 12: connections that never send the handshake ---------------------------------------------------
for kind in p11-kit ours; do
  socket=$FIXTURE_DIR/handshake-$kind.sock
  start $kind "$socket"
  idle_open "$socket" 20
  sleep 8
  idle_count
  if [ $kind = ours ]; then
    [ "$IDLE_STATE" = "open 0 closed 20" ] || fail "ours: 8 s after connecting without a handshake: $IDLE_STATE"
    grep -q "closed the connection of uid 0 pid [0-9]*: no version handshake within 5000 ms" "$socket.err" \
      || fail "no log line for a connection closed without its handshake"
  fi
  echo "$kind row 12: 20 connections without a handshake, 8 s later: $IDLE_STATE"
  idle_quit
  kill "$SERVER"
  wait "$SERVER" 2>/dev/null || true
done

# ---- 11: 1,100 idle connections under a 1024 open-file limit ----------------------------------------
for kind in p11-kit ours; do
  socket=$FIXTURE_DIR/flood-$kind.sock
  NOFILE=1024 start $kind "$socket"
  idle_open "$socket" 1100
  signs "$OUT/p11proxy.so" "$socket" || fail "$kind: a client could not sign beside 1,100 idle connections"
  kill -0 "$SERVER" 2>/dev/null || fail "$kind: the server exited under 1,100 idle connections"
  idle_count
  echo "$kind row 11: 1,100 idle connections, limit 1024: a client signed meanwhile; the server runs; connections: $IDLE_STATE"
  if [ $kind = ours ]; then
    grep -qE "open-file limit \(1024\) is reached|cannot accept a connection: Too many open files" "$socket.err" \
      || fail "ours: no log line about the open-file limit"
    echo "ours: $(grep -cE "open-file limit|Too many open files|no version handshake" "$socket.err") log lines about the limit and closed connections, e.g.:"
    grep -E "open-file limit|Too many open files" "$socket.err" | head -2 | sed 's/^/  /'
    # Every idle connection is closed in the end (without handshake, or to make room).
    for i in $(seq 1 60); do
      idle_count
      [ "$IDLE_STATE" = "open 0 closed 1100" ] && break
      sleep 0.5
    done
    [ "$IDLE_STATE" = "open 0 closed 1100" ] || fail "ours: idle connections still open: $IDLE_STATE"
    signs "$OUT/p11proxy.so" "$socket" || fail "ours: a client could not sign after the flood"
    echo "ours: all 1,100 closed within $((i / 2)) s more; a client signs again"
  fi
  idle_quit
  kill "$SERVER"
  wait "$SERVER" 2>/dev/null || true
done

# ---- the soft open-file limit --------------------------------------------------------------------------
socket=$FIXTURE_DIR/nofile.sock
NOFILE=1024:4096 start ours "$socket"
grep -q "open-file limit 4096 (raised from 1024)" "$socket.err" || fail "the soft open-file limit was not raised: $(cat "$socket.err")"
[ "$(awk '/^Max open files/ { print $4 }' /proc/$SERVER/limits)" = 4096 ] || fail "the listener's soft limit is not 4096"
echo "soft open-file limit 1024 raised to the hard 4096 at start"
kill "$SERVER"; wait "$SERVER" 2>/dev/null || true

# ---- --max-clients, spare workers ---------------------------------------------------------------------
socket=$FIXTURE_DIR/max.sock
start ours "$socket" --max-clients 2
address="unix:path=$socket"
sleep 0.5
[ "$(pgrep -cP "$SERVER")" = 1 ] || fail "not exactly one spare worker before any client: $(pgrep -cP "$SERVER")"
client_start one "$OUT/p11proxy.so" "$address"
client_start two "$OUT/p11proxy.so" "$address"
if P11_KIT_SERVER_ADDRESS=$address "$ISO_CLIENT" "$OUT/p11proxy.so" </dev/null >"$FIXTURE_DIR/third.out" 2>&1; then
  fail "a third client was served with --max-clients 2"
fi
grep -q "refused a connection from uid 0 pid [0-9]*: 2 clients are connected, the most --max-clients allows" "$socket.err" \
  || fail "no log line for the refused third client"
client_quit one
sleep 0.5
client_start three "$OUT/p11proxy.so" "$address"
expect three $CKR_OK open rw
client_quit two
client_quit three
echo "--max-clients 2: the third client refused and logged ($(grep -o 'C_Initialize.*' "$FIXTURE_DIR/third.out" | head -1)); served once one left"
kill "$SERVER"; wait "$SERVER" 2>/dev/null || true

socket=$FIXTURE_DIR/nospare.sock
start ours "$socket" --spare-workers 0
sleep 0.5
[ "$(pgrep -cP "$SERVER" || true)" = 0 ] || fail "--spare-workers 0 keeps a worker"
signs "$OUT/p11proxy.so" "$socket" || fail "--spare-workers 0: no signature"
echo "--spare-workers 0: no idle worker, a client still signs"
kill "$SERVER"; wait "$SERVER" 2>/dev/null || true

# ---- the listener's end ----------------------------------------------------------------------------------
socket=$FIXTURE_DIR/end.sock
start ours "$socket"
client_start held "$OUT/p11proxy.so" "unix:path=$socket"
expect held $CKR_OK open rw
workers=$(pgrep -P "$SERVER" | tr '\n' ' ')
kill -TERM "$SERVER"
status=0
wait "$SERVER" || status=$?
[ $status = 0 ] || fail "the broker exited with status $status after SIGTERM"
[ ! -e "$socket" ] || fail "the socket is still there after SIGTERM"
for pid in $workers; do [ ! -e "/proc/$pid" ] || fail "worker $pid outlived the listener's SIGTERM"; done
ask held count private
[ "$RV" = $CKR_DEVICE_ERROR ] || fail "after SIGTERM the client got '$REPLY'"
client_quit held
echo "SIGTERM: exit status 0, socket removed, workers $workers gone, the client's next call failed (rv=$RV)"

start ours "$socket"
client_start held "$OUT/p11proxy.so" "unix:path=$socket"
expect held $CKR_OK open rw
workers=$(pgrep -P "$SERVER" | tr '\n' ' ')
[ "$(wc -w <<<"$workers")" = 2 ] || fail "expected a serving and a spare worker, found: $workers"
kill -KILL "$SERVER"
wait "$SERVER" 2>/dev/null || true
# running: PID exists and is not a zombie waiting for init to reap it
running() { [ -e "/proc/$1/stat" ] && [ "$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null)" != Z ]; }
for i in $(seq 1 50); do
  alive=0
  for pid in $workers; do running "$pid" && alive=1; done
  [ $alive = 0 ] && break
  sleep 0.1
done
[ $alive = 0 ] || fail "workers $workers outlived the listener's SIGKILL"
ask held count private
[ "$RV" = $CKR_DEVICE_ERROR ] || fail "after SIGKILL of the listener the client got '$REPLY'"
client_quit held
echo "SIGKILL of the listener: workers $workers died with it within $((i * 100)) ms; the client's next call failed (rv=$RV)"

# ---- when the module is initialised (last: it adds tokens to the fixture's token directory) -----------
# labels KEY SOCKET: the token labels a client lists through the broker on SOCKET.
labels() { P11_KIT_SERVER_ADDRESS="unix:path=$1" pkcs11-tool --module "$OUT/p11proxy.so" -L 2>/dev/null | sed -n 's/^ *token label *: *//p' | sort | tr '\n' ' '; }
socket=$FIXTURE_DIR/arrival.sock
start ours "$socket"
sleep 1 # the spare has loaded the module
softhsm2-util --init-token --free --label p11proxy-late --so-pin "$FIXTURE_SO_PIN" --pin "$FIXTURE_PIN" >/dev/null
direct=$(pkcs11-tool --module "$SOFTHSM_MODULE" -L 2>/dev/null | sed -n 's/^ *token label *: *//p' | sort | tr '\n' ' ')
seen=$(labels "$socket")
[ "$seen" = "$direct" ] || fail "through the broker: '$seen'; SoftHSM loaded directly: '$direct'"
kill "$SERVER"; wait "$SERVER" 2>/dev/null || true
echo "a token created after the spare started: listed through the broker as directly ($seen)"

socket=$FIXTURE_DIR/ahead.sock
start ours "$socket" --initialize-ahead
grep -q "1 spare worker (module initialised ahead)" "$socket.err" || fail "--initialize-ahead not reported at start"
sleep 1
softhsm2-util --init-token --free --label p11proxy-later --so-pin "$FIXTURE_SO_PIN" --pin "$FIXTURE_PIN" >/dev/null
first=$(labels "$socket")
sleep 1 # the next spare starts after this client's arrival, with the new token there
second=$(labels "$socket")
[[ "$first" != *p11proxy-later* ]] || fail "--initialize-ahead: the spare initialised before p11proxy-later existed lists it: $first"
[[ "$second" == *p11proxy-later* ]] || fail "--initialize-ahead: the next spare does not list p11proxy-later: $second"
kill "$SERVER"; wait "$SERVER" 2>/dev/null || true
echo "--initialize-ahead: the first client saw the tokens of when its spare started ($first), the next one the new token too"
echo PASS
