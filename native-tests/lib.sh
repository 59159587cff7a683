# Shared fixture for native tests and the demo: a throw-away SoftHSM token and brokers serving it.
# Source it; everything it starts is stopped and removed by the EXIT trap it installs
# (KEEP_FIXTURE=1 keeps the directory, with its logs, for a look after a failure).
# shellcheck shell=bash

SOFTHSM_MODULE=${SOFTHSM_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
P11KIT_CLIENT=${P11KIT_CLIENT:-/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so}
FIXTURE_PIDS=()
FIXTURE_DIR=""

fixture_cleanup() {
  local pid
  for pid in "${FIXTURE_PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${FIXTURE_PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  if [ -n "$FIXTURE_DIR" ] && [ -z "${KEEP_FIXTURE:-}" ]; then rm -rf "$FIXTURE_DIR"; fi
  return 0
}
trap fixture_cleanup EXIT

fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

# fixture_token NAME: a token labelled p11proxy-NAME holding an RSA-2048 key pair (id 01) and a
# self-signed certificate for it. Sets FIXTURE_DIR, FIXTURE_LABEL, FIXTURE_PIN, SOFTHSM2_CONF.
fixture_token() {
  FIXTURE_DIR=$(mktemp -d "${TMPDIR:-/tmp}/p11proxy-$1.XXXXXX")
  FIXTURE_LABEL="p11proxy-$1"
  FIXTURE_PIN=1234
  FIXTURE_SO_PIN=12345678
  mkdir -p "$FIXTURE_DIR/tokens"
  printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$FIXTURE_DIR/tokens" > "$FIXTURE_DIR/softhsm2.conf"
  export SOFTHSM2_CONF="$FIXTURE_DIR/softhsm2.conf"
  softhsm2-util --init-token --free --label "$FIXTURE_LABEL" --so-pin "$FIXTURE_SO_PIN" --pin "$FIXTURE_PIN" >/dev/null \
    || fail "softhsm2-util could not create a token"
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$FIXTURE_DIR/key.pem" -out "$FIXTURE_DIR/cert.pem" \
    -days 2 -subj "/CN=p11proxy demo key" 2>/dev/null || fail "openssl could not make a key and certificate"
  openssl pkey -in "$FIXTURE_DIR/key.pem" -pubout -out "$FIXTURE_DIR/pub.pem" 2>/dev/null
  openssl x509 -in "$FIXTURE_DIR/cert.pem" -outform DER -out "$FIXTURE_DIR/cert.der"
  softhsm2-util --import "$FIXTURE_DIR/key.pem" --token "$FIXTURE_LABEL" --label demo-key --id 01 --pin "$FIXTURE_PIN" >/dev/null \
    || fail "softhsm2-util could not import the key"
  pkcs11-tool --module "$SOFTHSM_MODULE" --login --pin "$FIXTURE_PIN" --write-object "$FIXTURE_DIR/cert.der" \
    --type cert --id 01 --label demo-cert >/dev/null 2>&1 || fail "pkcs11-tool could not store the certificate"
}

# Waits until a unix socket exists (a server is listening), at most 10 s.
fixture_wait_socket() {
  local i
  for i in $(seq 1 100); do
    [ -S "$1" ] && return 0
    sleep 0.1
  done
  fail "no socket appeared at $1"
}

# fixture_start_p11kit_server: p11-kit's own server for the token; sets FIXTURE_ADDRESS.
fixture_start_p11kit_server() {
  local socket="$FIXTURE_DIR/p11kit-server.sock"
  p11-kit server -f -n "$socket" --provider "$SOFTHSM_MODULE" "pkcs11:token=$FIXTURE_LABEL" \
    >"$FIXTURE_DIR/p11kit-server.out" 2>&1 &
  FIXTURE_PIDS+=($!)
  fixture_wait_socket "$socket"
  FIXTURE_ADDRESS="unix:path=$socket"
}

# fixture_start_broker [ARGS...]: our broker serving the token on a socket; sets FIXTURE_ADDRESS.
fixture_start_broker() {
  local socket="$FIXTURE_DIR/broker.sock"
  "${OUT:-out}/p11proxy-broker" serve --module "$SOFTHSM_MODULE" --socket "$socket" "$@" \
    >"$FIXTURE_DIR/broker.out" 2>"$FIXTURE_DIR/broker.err" &
  FIXTURE_PIDS+=($!)
  fixture_wait_socket "$socket"
  FIXTURE_ADDRESS="unix:path=$socket"
}
