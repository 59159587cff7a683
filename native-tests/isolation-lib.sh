# Clients for the isolation tests: several native-tests/hosts/isoclient processes at once, each
# driven one command at a time through a pair of FIFOs, so a test interleaves them exactly
# ("A logs in, then B tries to sign") and asserts each CK_RV. Source after lib.sh and
# fixture_token; everything started is stopped by lib.sh's EXIT trap.
# shellcheck shell=bash

declare -A CLIENT_IN CLIENT_OUT CLIENT_PID
ISO_CLIENT=""

# iso_build: compiles the client into the fixture directory.
iso_build() {
  ISO_CLIENT=$FIXTURE_DIR/isoclient
  cc -O2 -Wall -o "$ISO_CLIENT" "$(dirname "${BASH_SOURCE[0]}")/hosts/isoclient.c" -I/usr/include/p11-kit-1 -ldl \
    || fail "cannot build isoclient"
}

# client_start NAME MODULE ADDRESS [VAR=VALUE...]: starts client NAME on MODULE with
# P11_KIT_SERVER_ADDRESS=ADDRESS and waits until it has initialised the module.
client_start() {
  local name=$1 module=$2 address=$3 in out
  shift 3
  rm -f "$FIXTURE_DIR/$name.in" "$FIXTURE_DIR/$name.out"
  mkfifo "$FIXTURE_DIR/$name.in" "$FIXTURE_DIR/$name.out"
  env P11_KIT_SERVER_ADDRESS="$address" "$@" "$ISO_CLIENT" "$module" \
    <"$FIXTURE_DIR/$name.in" >"$FIXTURE_DIR/$name.out" 2>"$FIXTURE_DIR/$name.err" &
  CLIENT_PID[$name]=$!
  FIXTURE_PIDS+=($!)
  exec {in}>"$FIXTURE_DIR/$name.in"
  exec {out}<"$FIXTURE_DIR/$name.out"
  CLIENT_IN[$name]=$in
  CLIENT_OUT[$name]=$out
  read -t 60 -r REPLY <&"$out" || fail "client $name did not start: $(cat "$FIXTURE_DIR/$name.err")"
  [ "$REPLY" = "rv=0x0 ready" ] || fail "client $name: $REPLY $(cat "$FIXTURE_DIR/$name.err")"
}

# ask NAME COMMAND...: sends one command; REPLY holds the answer line, RV its CK_RV.
ask() {
  local name=$1
  shift
  echo "$*" >&"${CLIENT_IN[$name]}"
  read -t "${ASK_TIMEOUT:-60}" -r REPLY <&"${CLIENT_OUT[$name]}" \
    || fail "client $name gave no answer to '$*' (stderr: $(cat "$FIXTURE_DIR/$name.err"))"
  RV=$(sed -n 's/^rv=\(0x[0-9a-f]*\).*/\1/p' <<<"$REPLY")
}

# send NAME COMMAND... / receive NAME: a command whose answer is read later (C_WaitForSlotEvent).
send() {
  local name=$1
  shift
  echo "$*" >&"${CLIENT_IN[$name]}"
}
receive() {
  read -t "${ASK_TIMEOUT:-60}" -r REPLY <&"${CLIENT_OUT[$1]}" \
    || fail "client $1 gave no answer (stderr: $(cat "$FIXTURE_DIR/$1.err"))"
  RV=$(sed -n 's/^rv=\(0x[0-9a-f]*\).*/\1/p' <<<"$REPLY")
}

# field KEY: a KEY=VALUE field of the last answer.
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$REPLY"; }

# expect NAME EXPECTED-RV COMMAND...: asks, and fails unless the CK_RV is the expected one.
expect() {
  local name=$1 want=$2
  shift 2
  ask "$name" "$@"
  [ "$RV" = "$want" ] || fail "client $name: '$*' answered '$REPLY', expected rv=$want"
}

# client_quit NAME: the client exits without C_Finalize (as a process that is killed or forgets).
client_quit() {
  local name=$1
  echo quit >&"${CLIENT_IN[$name]}"
  wait "${CLIENT_PID[$name]}" 2>/dev/null || true
  local in=${CLIENT_IN[$name]} out=${CLIENT_OUT[$name]}
  exec {in}>&- {out}<&-
}

# CK_RV values the tests name.
CKR_OK=0x0
CKR_DEVICE_ERROR=0x30
CKR_DEVICE_REMOVED=0x32
CKR_KEY_HANDLE_INVALID=0x60
CKR_OBJECT_HANDLE_INVALID=0x82
CKR_PIN_INCORRECT=0xa0
CKR_SESSION_READ_ONLY_EXISTS=0xb7
CKR_SESSION_READ_WRITE_SO_EXISTS=0xb8
CKR_USER_NOT_LOGGED_IN=0x101
CKR_USER_ALREADY_LOGGED_IN=0x100
