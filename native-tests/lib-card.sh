# A real source of token events: pcscd with vsmartcard's vpcd reader driver and our virtual
# OpenPGP card (native-tests/card/pgpcard.py), which the test inserts and removes by starting and
# stopping it. Everything runs in a mount and network namespace of the test's own, so the
# machine's pcscd, its socket (/run/pcscd/pcscd.comm, a fixed path) and TCP port 35963 are never
# touched: a tmpfs over /run, a private loopback.
# Source after lib.sh; call card_namespace "$@" first (it re-runs the script inside the
# namespaces). Everything started is stopped by lib.sh's EXIT trap.
# shellcheck shell=bash

OPENSC_MODULE=${OPENSC_MODULE:-/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so}
CARD_PYTHON=/usr/bin/python3
CARD_PIN=123456
# vpcd's readers: "Virtual PCD 00 00" takes a card on port 35963, "Virtual PCD 00 01" on 35964.
CARD_READER0_PORT=35963
CARD_READER1_PORT=35964
declare -A CARD_PID

# card_namespace "$@": re-executes the calling script in new mount and network namespaces (once).
card_namespace() {
  if [ -n "${P11PROXY_CARD_NAMESPACE:-}" ]; then
    ip link set lo up || fail "cannot bring up the namespace's loopback"
    mount -t tmpfs -o mode=0755 tmpfs /run || fail "cannot mount a private /run"
    mkdir -p /run/pcscd
    return 0
  fi
  [ "$(id -u)" -eq 0 ] || fail "the smart-card tests need root for their own mount and network namespace (unshare -mn)"
  unshare --mount --net --propagation private true 2>/dev/null \
    || fail "unshare --mount --net is not permitted here: $(unshare --mount --net true 2>&1)"
  P11PROXY_CARD_NAMESPACE=1 exec unshare --mount --net --propagation private bash "$0" "$@"
}

# card_fixture: a directory, an RSA key for the card (card-key.pem, card-pub.pem), an OpenSC
# configuration that probes only the openpgp driver (fast insertion), pcscd started and ready.
card_fixture() {
  FIXTURE_DIR=$(mktemp -d "${TMPDIR:-/tmp}/p11proxy-card.XXXXXX")
  openssl genrsa -out "$FIXTURE_DIR/card-key.pem" 2048 2>/dev/null || fail "openssl could not make the card's key"
  openssl pkey -in "$FIXTURE_DIR/card-key.pem" -pubout -out "$FIXTURE_DIR/card-pub.pem"
  printf 'app default {\n  card_drivers = openpgp;\n}\n' >"$FIXTURE_DIR/opensc.conf"
  export OPENSC_CONF=$FIXTURE_DIR/opensc.conf
  pcscd --foreground --debug >"$FIXTURE_DIR/pcscd.log" 2>&1 &
  FIXTURE_PIDS+=($!)
  local i
  for i in $(seq 1 100); do
    [ -S /run/pcscd/pcscd.comm ] && grep -q 'Virtual PCD 00 01' "$FIXTURE_DIR/pcscd.log" && return 0
    sleep 0.1
  done
  fail "pcscd did not start with vpcd's readers: $(tail -5 "$FIXTURE_DIR/pcscd.log")"
}

# card_events WORD: how many times pcscd has logged WORD ("Card inserted into", "Card Removed From").
card_events() { grep -c "$1" "$FIXTURE_DIR/pcscd.log" || true; }

# card_wait_event WORD BEFORE: waits (10 s at most) until pcscd has logged WORD more than BEFORE times.
card_wait_event() {
  local i
  for i in $(seq 1 100); do
    [ "$(card_events "$1")" -gt "$2" ] && return 0
    sleep 0.1
  done
  fail "pcscd did not log '$1' (card log: $(tail -3 "$FIXTURE_DIR"/card-*.log 2>/dev/null))"
}

# card_insert NAME PORT [SERIAL]: the card NAME (serial SERIAL, 4 bytes hex) into the reader on
# PORT; returns once pcscd has seen it.
card_insert() {
  local name=$1 port=$2 serial=${3:-0000A001} before
  before=$(card_events "Card inserted into")
  "$CARD_PYTHON" "$(dirname "${BASH_SOURCE[0]}")/card/pgpcard.py" --key "$FIXTURE_DIR/card-key.pem" --port "$port" \
    --serial "$serial" --pin "$CARD_PIN" --log "$FIXTURE_DIR/card-$name.log" &
  CARD_PID[$name]=$!
  FIXTURE_PIDS+=($!)
  card_wait_event "Card inserted into" "$before"
}

# card_remove NAME: the card leaves its reader; returns once pcscd has seen it.
card_remove() {
  local name=$1 before
  before=$(card_events "Card Removed From")
  kill "${CARD_PID[$name]}"
  wait "${CARD_PID[$name]}" 2>/dev/null || true
  card_wait_event "Card Removed From" "$before"
}

# card_start_broker [ARGS...]: our broker serving OpenSC (OPENSC_CONF reaches its workers through
# the environment); sets FIXTURE_ADDRESS.
card_start_broker() {
  local socket="$FIXTURE_DIR/broker.sock"
  rm -f "$socket"
  "${OUT:-out}/p11proxy-broker" serve --module "$OPENSC_MODULE" --socket "$socket" "$@" \
    >"$FIXTURE_DIR/broker.out" 2>>"$FIXTURE_DIR/broker.err" &
  CARD_BROKER_PID=$!
  FIXTURE_PIDS+=($!)
  fixture_wait_socket "$socket"
  FIXTURE_ADDRESS="unix:path=$socket"
}

# card_stop_broker: stops the broker card_start_broker started.
card_stop_broker() {
  kill "$CARD_BROKER_PID" 2>/dev/null || true
  wait "$CARD_BROKER_PID" 2>/dev/null || true
}

# cardhost_build: compiles native-tests/hosts/cardhost.c; isolation-lib.sh's client_start, ask,
# send and receive then drive it.
cardhost_build() {
  ISO_CLIENT=$FIXTURE_DIR/cardhost
  cc -O2 -Wall -o "$ISO_CLIENT" "$(dirname "${BASH_SOURCE[0]}")/hosts/cardhost.c" -I/usr/include/p11-kit-1 -ldl -lpthread \
    || fail "cannot build cardhost"
}

# row CLIENT LABEL COMMAND...: asks CLIENT and writes "LABEL | ANSWER" to its transcript.
row() {
  local name=$1 label=$2
  shift 2
  ask "$name" "$@"
  printf '%-48s | %s\n' "$label" "$REPLY" >>"$FIXTURE_DIR/$name.transcript"
}
