#!/usr/bin/env bash
# Issue 12, the rows about login and session state: what a second client B can do while client A
# works. Each scenario runs twice on the same SoftHSM token, against our broker (p11proxy.so, a
# worker process per client) and against p11-kit server (p11-kit-client.so, a process per
# connection), and every CK_RV must be the one p11-kit's process-per-connection model gives:
#   1  B never logs in: it finds no private key and cannot sign with A's
#   2  B's C_Login with a wrong PIN is CKR_PIN_INCORRECT although A is logged in
#   3  B's C_Logout does not log A out: A still signs (the signature verifies)
#   4  A is logged in as SO: B's C_InitPIN is CKR_USER_NOT_LOGGED_IN, and the PIN is unchanged
#   5  A's read-only session does not block B's SO login; A's SO login does not block B's
#      read-only session
#   6  after A (logged in) exits, B and a new client C still cannot use private keys
#   7  B can neither read, destroy nor use A's session objects by handle, nor list them
# A second uid admitted with --allow-uid (the system user nobody) gets the same: it finds no
# private key while root's client is logged in.
set -euo pipefail
OUT=${1:-out}
DIR=$(dirname "$0")
. "$DIR/lib.sh"
. "$DIR/isolation-lib.sh"
fixture_token isolation
iso_build
fixture_start_broker --allow-uid "$(id -u nobody)"
OURS=$FIXTURE_ADDRESS
fixture_start_p11kit_server
KIT=$FIXTURE_ADDRESS
printf 'signed by A\n' >"$FIXTURE_DIR/data"

# scenario KIND MODULE ADDRESS: rows 1-7 with clients named KIND-A, KIND-B, ...
scenario() {
  local kind=$1 module=$2 address=$3 handle key
  local A=$kind-A B=$kind-B C=$kind-C D=$kind-D
  client_start "$A" "$module" "$address"
  client_start "$B" "$module" "$address"

  # 1
  expect "$A" $CKR_OK open rw
  expect "$A" $CKR_OK login user "$FIXTURE_PIN"
  expect "$A" $CKR_OK count private
  [ "$(field count)" = 1 ] || fail "$kind: A, logged in, finds $(field count) private keys, not 1"
  expect "$B" $CKR_OK open rw
  expect "$B" $CKR_OK count private
  [ "$(field count)" = 0 ] || fail "$kind row 1: B, never logged in, finds $(field count) private keys"
  expect "$B" $CKR_OK sign "by-B"
  [ "$(field nokey)" = 1 ] || fail "$kind row 1: B signed with A's key: $REPLY"
  echo "$kind row 1: B (no login) finds 0 private keys, cannot sign"

  # 2
  expect "$B" $CKR_PIN_INCORRECT login user 9999
  expect "$B" $CKR_OK sign "by-B"
  [ "$(field nokey)" = 1 ] || fail "$kind row 2: B signed after a wrong PIN: $REPLY"
  echo "$kind row 2: B's wrong PIN: CKR_PIN_INCORRECT, still no key"

  # 3
  expect "$B" $CKR_OK logout   # SoftHSM answers CKR_OK to a C_Logout without a login, loaded directly too
  expect "$A" $CKR_OK sign "signed-by-A" "$FIXTURE_DIR/sig-$kind"
  printf 'signed-by-A' >"$FIXTURE_DIR/data-$kind"
  openssl dgst -sha256 -verify "$FIXTURE_DIR/pub.pem" -signature "$FIXTURE_DIR/sig-$kind" "$FIXTURE_DIR/data-$kind" >/dev/null \
    || fail "$kind row 3: A's signature after B's C_Logout does not verify"
  echo "$kind row 3: after B's C_Logout, A still signs (verified)"

  # 4
  expect "$A" $CKR_OK logout
  expect "$A" $CKR_OK login so "$FIXTURE_SO_PIN"
  expect "$B" $CKR_USER_NOT_LOGGED_IN initpin 5555
  client_start "$C" "$module" "$address"
  expect "$C" $CKR_OK open rw
  expect "$C" $CKR_PIN_INCORRECT login user 5555
  expect "$C" $CKR_OK login user "$FIXTURE_PIN"
  expect "$C" $CKR_OK logout
  expect "$A" $CKR_OK logout
  echo "$kind row 4: B's C_InitPIN while A is SO: CKR_USER_NOT_LOGGED_IN; B's PIN refused, the old PIN still works"

  # 5
  expect "$A" $CKR_OK open ro
  expect "$B" $CKR_OK open rw
  expect "$B" $CKR_OK login so "$FIXTURE_SO_PIN"
  expect "$B" $CKR_OK logout
  expect "$A" $CKR_OK close
  expect "$A" $CKR_OK open rw
  expect "$A" $CKR_OK login so "$FIXTURE_SO_PIN"
  expect "$B" $CKR_OK open ro
  expect "$A" $CKR_OK logout
  echo "$kind row 5: B's SO login beside A's read-only session and B's read-only session beside A's SO login: CKR_OK"

  # 6
  expect "$A" $CKR_OK login user "$FIXTURE_PIN"
  expect "$A" $CKR_OK count private
  [ "$(field count)" = 1 ] || fail "$kind row 6: A finds $(field count) private keys"
  client_quit "$A"
  sleep 0.5
  expect "$B" $CKR_OK count private
  [ "$(field count)" = 0 ] || fail "$kind row 6: after A left, B finds $(field count) private keys"
  client_start "$D" "$module" "$address"
  expect "$D" $CKR_OK open rw
  expect "$D" $CKR_OK sign "by-D"
  [ "$(field nokey)" = 1 ] || fail "$kind row 6: a new client signs after A left: $REPLY"
  echo "$kind row 6: after A (logged in) left, B and a new client find no private key"

  # 7
  client_start "$A" "$module" "$address"
  expect "$A" $CKR_OK open rw
  expect "$A" $CKR_OK create-data label-of-A secret-of-A
  handle=$(field handle)
  expect "$A" $CKR_OK genkey
  key=$(field handle)
  expect "$B" $CKR_OBJECT_HANDLE_INVALID read "$handle"
  expect "$B" $CKR_OBJECT_HANDLE_INVALID destroy "$handle"
  expect "$B" $CKR_OBJECT_HANDLE_INVALID hmac "$key"   # SoftHSM's answer to an unknown key, loaded directly too
  expect "$B" $CKR_OK count data
  [ "$(field count)" = 0 ] || fail "$kind row 7: B lists $(field count) data objects"
  expect "$A" $CKR_OK read "$handle"
  [ "$(field value)" = secret-of-A ] || fail "$kind row 7: A's object now reads '$REPLY'"
  expect "$A" $CKR_OK hmac "$key"
  echo "$kind row 7: A's session object $handle and key $key: B's read/destroy/HMAC CKR_OBJECT_HANDLE_INVALID, list 0; A's intact"

  for client in "$A" "$B" "$C" "$D"; do client_quit "$client"; done
}

scenario p11-kit "$P11KIT_CLIENT" "$KIT"
scenario ours "$OUT/p11proxy.so" "$OURS"

# A second uid admitted by --allow-uid: its own module instance too.
nobody=$(id -u nobody)
chmod 0711 "$FIXTURE_DIR"
client_start root "$OUT/p11proxy.so" "$OURS"
expect root $CKR_OK open rw
expect root $CKR_OK login user "$FIXTURE_PIN"
set +e
reply=$(printf 'open rw\ncount private\nsign by-nobody\n' | setpriv --reuid="$nobody" --regid="$(id -g nobody)" --clear-groups \
  env P11_KIT_SERVER_ADDRESS="$OURS" "$ISO_CLIENT" "$OUT/p11proxy.so" 2>&1)
set -e
chmod 0700 "$FIXTURE_DIR"
[ "$(sed -n 3p <<<"$reply")" = "rv=0x0 count=0" ] || fail "uid $nobody beside a logged-in client: $reply"
[[ "$(sed -n 4p <<<"$reply")" == *nokey=1* ]] || fail "uid $nobody signed: $reply"
client_quit root
grep -q "uid $nobody" "$FIXTURE_DIR/broker.err" || fail "no log line for uid $nobody's connection"
echo "uid $nobody (--allow-uid) beside root's logged-in client: 0 private keys, cannot sign"
echo PASS
