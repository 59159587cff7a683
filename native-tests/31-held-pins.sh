#!/usr/bin/env bash
# Issue 16, PINs held by the broker: a SoftHSM token whose PIN the broker takes from each source
# (a file, a systemd credential through $CREDENTIALS_DIRECTORY, an ask-pass program), clients that
# never hold the PIN, and the policy that says who may use it.
#   1  start-up refusals: a PIN file readable by others or owned by another user, a missing
#      credential, a policy line for a token no --pin holds: exit status 2 and what to do
#   2  file source, --protected-login for root: pkcs11-tool -L/-T shows the protected path ("PIN pad"),
#      `pkcs11-tool --login` without --pin signs through out/p11proxy.so (openssl verifies); C_Login
#      with a NULL PIN is CKR_OK, a PIN the client sends is checked by the token (wrong:
#      CKR_PIN_INCORRECT, right: CKR_OK); CKU_CONTEXT_SPECIFIC with a NULL PIN for a
#      CKA_ALWAYS_AUTHENTICATE key signs (verified); p11-kit-client.so gets the same
#   3  uid nobody, admitted by --allow-uid but named by no policy: no protected path, and its NULL-PIN
#      C_Login gets the module's own answer, CKR_ARGUMENTS_BAD as SoftHSM loaded directly gives; no key
#   4  a gid policy (nobody's group) lets nobody log in with the held PIN
#   5  a wrong PIN in the file: the NULL-PIN login is CKR_PIN_INCORRECT
#   6  credential source; ask-pass source (with a percent-encoded argument): pkcs11-tool --login signs
#   7  ask-pass timeout (--askpass-timeout-ms): CKR_FUNCTION_CANCELED, the program and its child
#      killed; a client that leaves, or whose other thread calls C_Finalize, during the ask: the
#      program is killed at once (the login: CKR_FUNCTION_CANCELED)
#   8  --login-on-arrival: the client finds its session logged in (CKS_RO_USER_FUNCTIONS) without a
#      C_Login and signs; the hidden session is not counted and its C_CloseAllSessions keeps the
#      login; nobody, not named, gets a public session
set -euo pipefail
OUT=${1:-out}
DIR=$(dirname "$0")
. "$DIR/lib.sh"
. "$DIR/isolation-lib.sh"
fixture_token held
iso_build
MODULE=$(cd "$OUT" && pwd)/p11proxy.so
BROKER=$OUT/p11proxy-broker
URI="pkcs11:token=$FIXTURE_LABEL"
CKR_ARGUMENTS_BAD=0x7
CKR_FUNCTION_CANCELED=0x50
CKS_RO_PUBLIC_SESSION=0
CKS_RO_USER_FUNCTIONS=1
nobody=$(id -u nobody)
nogroup=$(id -gn nobody)
chmod 0711 "$FIXTURE_DIR"
mkdir -m 0700 "$FIXTURE_DIR/nobody" && chown nobody "$FIXTURE_DIR/nobody" # where uid nobody's client writes

# A second key, id 02, with CKA_ALWAYS_AUTHENTICATE: each use needs a context-specific login.
pkcs11-tool --module "$SOFTHSM_MODULE" --login --pin "$FIXTURE_PIN" --keypairgen --key-type rsa:2048 --id 02 \
  --label always-auth --always-auth >/dev/null 2>&1 || fail "cannot make the CKA_ALWAYS_AUTHENTICATE key"
pkcs11-tool --module "$SOFTHSM_MODULE" --read-object --type pubkey --id 02 -o "$FIXTURE_DIR/pub2.der" >/dev/null 2>&1
openssl pkey -pubin -inform DER -in "$FIXTURE_DIR/pub2.der" -out "$FIXTURE_DIR/pub2.pem" || fail "cannot read key 02's public key"

printf '%s\n' "$FIXTURE_PIN" >"$FIXTURE_DIR/pin"
chmod 0600 "$FIXTURE_DIR/pin"
printf 'to-be-signed' >"$FIXTURE_DIR/data"

# verify SIGNATURE [PUBKEY]: the SHA256-RSA-PKCS signature of $FIXTURE_DIR/data verifies.
verify() {
  openssl dgst -sha256 -verify "${2:-$FIXTURE_DIR/pub.pem}" -signature "$1" "$FIXTURE_DIR/data" >/dev/null \
    || fail "the signature $1 does not verify"
}

# pkcs11_tool_sign NAME: `pkcs11-tool --login` with no PIN through our module signs; verified.
pkcs11_tool_sign() {
  rm -f "$FIXTURE_DIR/sig-$1"
  P11_KIT_SERVER_ADDRESS=$FIXTURE_ADDRESS pkcs11-tool --module "$MODULE" --login --sign -m SHA256-RSA-PKCS --id 01 \
    -i "$FIXTURE_DIR/data" -o "$FIXTURE_DIR/sig-$1" </dev/null >"$FIXTURE_DIR/tool-$1.out" 2>&1 \
    || fail "$1: pkcs11-tool --login --sign without a PIN failed: $(cat "$FIXTURE_DIR/tool-$1.out")"
  verify "$FIXTURE_DIR/sig-$1"
}

# broker_restart ARGS...: a fresh broker (the previous one stopped) serving the token.
BROKER_PID=""
broker_restart() {
  if [ -n "$BROKER_PID" ]; then kill "$BROKER_PID"; wait "$BROKER_PID" 2>/dev/null || true; fi
  rm -f "$FIXTURE_DIR/broker.sock"
  fixture_start_broker --allow-uid "$nobody" "$@"
  BROKER_PID=${FIXTURE_PIDS[-1]}
}

# As uid nobody (group nogroup): clients started with client_start run through this wrapper.
cat >"$FIXTURE_DIR/as-nobody" <<EOF
#!/bin/sh
exec setpriv --reuid=$nobody --regid=$(id -g nobody) --clear-groups "$ISO_CLIENT" "\$@"
EOF
chmod 0755 "$FIXTURE_DIR/as-nobody"
nobody_start() {
  local saved=$ISO_CLIENT
  ISO_CLIENT=$FIXTURE_DIR/as-nobody
  client_start "$1" "$MODULE" "$FIXTURE_ADDRESS"
  ISO_CLIENT=$saved
}

# ---- 1: start-up refusals --------------------------------------------------------------------------
refused() { # refused WHAT EXPECTED-TEXT ARGS...: the broker exits 2 naming the problem
  local what=$1 text=$2 status=0
  shift 2
  "$BROKER" serve --module "$SOFTHSM_MODULE" --socket "$FIXTURE_DIR/refused.sock" "$@" >/dev/null 2>"$FIXTURE_DIR/refused.err" || status=$?
  [ "$status" = 2 ] || fail "1 $what: exit status $status, not 2: $(cat "$FIXTURE_DIR/refused.err")"
  grep -qF -- "$text" "$FIXTURE_DIR/refused.err" || fail "1 $what: the error does not say '$text': $(cat "$FIXTURE_DIR/refused.err")"
  [ ! -e "$FIXTURE_DIR/refused.sock" ] || fail "1 $what: the socket was created"
  grep -q "$FIXTURE_PIN" "$FIXTURE_DIR/refused.err" && fail "1 $what: the error shows the PIN"
  echo "1 $what: exit 2, '$(cut -c1-150 "$FIXTURE_DIR/refused.err")...'"
}
cp -p "$FIXTURE_DIR/pin" "$FIXTURE_DIR/pin-open" && chmod 0640 "$FIXTURE_DIR/pin-open"
refused "PIN file mode 0640" "chmod 600 $FIXTURE_DIR/pin-open" --pin "$URI?pin-source=file:$FIXTURE_DIR/pin-open"
cp -p "$FIXTURE_DIR/pin" "$FIXTURE_DIR/pin-theirs" && chown nobody "$FIXTURE_DIR/pin-theirs"
refused "PIN file owned by nobody" "owned by uid $nobody, not by the broker's user" --pin "$URI?pin-source=file:$FIXTURE_DIR/pin-theirs"
refused "PIN file missing" "No such file or directory" --pin "$URI?pin-source=file:$FIXTURE_DIR/absent"
refused "credential without \$CREDENTIALS_DIRECTORY" "CREDENTIALS_DIRECTORY is not set" --pin "$URI?pin-source=credential:token-pin"
mkdir -m 0700 "$FIXTURE_DIR/creds"
CREDENTIALS_DIRECTORY=$FIXTURE_DIR/creds refused "credential not passed" "no credential named 'token-pin'" --pin "$URI?pin-source=credential:token-pin"
refused "login-on-arrival without --pin" "no --pin holds a PIN" --login-on-arrival "uid:0=$URI"
refused "PIN in the URI" "pin-value puts the PIN on the command line" --pin "$URI?pin-value=$FIXTURE_PIN"

# ---- 2: file source, protected path for root -------------------------------------------------------
broker_restart --pin "$URI?pin-source=file:$FIXTURE_DIR/pin" --protected-login "uid:0=$URI"
P11_KIT_SERVER_ADDRESS=$FIXTURE_ADDRESS pkcs11-tool --module "$MODULE" -L >"$FIXTURE_DIR/list" 2>&1
grep -q "PIN pad present" "$FIXTURE_DIR/list" || fail "2: pkcs11-tool -L does not show the protected path: $(cat "$FIXTURE_DIR/list")"
pkcs11-tool --module "$SOFTHSM_MODULE" -L 2>&1 | grep -q "PIN pad present" && fail "2: SoftHSM itself has a protected path?"
echo "2 pkcs11-tool -L through the broker: '$(grep -o 'token flags.*' "$FIXTURE_DIR/list")' (SoftHSM direct: no PIN pad)"
pkcs11_tool_sign file
echo "2 pkcs11-tool --login --sign, no PIN given: the signature verifies"
client_start root "$MODULE" "$FIXTURE_ADDRESS"
expect root $CKR_OK tokeninfo
[ "$(field protected)" = 1 ] || fail "2: root sees no protected path: $REPLY"
expect root $CKR_OK open ro
expect root $CKR_OK count private
[ "$(field count)" = 0 ] || fail "2: private keys visible before any login"
expect root $CKR_PIN_INCORRECT login user 9999
expect root $CKR_OK login user -
expect root $CKR_OK count private
[ "$(field count)" = 2 ] || fail "2: after the NULL-PIN login root finds $(field count) private keys, not 2"
expect root $CKR_OK sign "$(cat "$FIXTURE_DIR/data")" "$FIXTURE_DIR/sig-iso"
expect root $CKR_OK signctx "$(cat "$FIXTURE_DIR/data")" - "$FIXTURE_DIR/sig-ctx"
verify "$FIXTURE_DIR/sig-ctx" "$FIXTURE_DIR/pub2.pem"
expect root $CKR_OK logout
expect root $CKR_OK login user "$FIXTURE_PIN"
expect root $CKR_OK logout
client_quit root
# p11-kit's own client sends the NULL PIN its way: the same login.
client_start kit "$P11KIT_CLIENT" "$FIXTURE_ADDRESS"
expect kit $CKR_OK tokeninfo
[ "$(field protected)" = 1 ] || fail "2: p11-kit-client.so sees no protected path: $REPLY"
expect kit $CKR_OK open ro
expect kit $CKR_OK login user -
expect kit $CKR_OK sign "$(cat "$FIXTURE_DIR/data")" "$FIXTURE_DIR/sig-kit"
verify "$FIXTURE_DIR/sig-kit"
client_quit kit
echo "2 p11-kit-client.so: protected path shown, C_Login(NULL) CKR_OK, signs (verified)"
echo "2 C_Login(CKU_USER, NULL): CKR_OK; a sent PIN is checked (9999: CKR_PIN_INCORRECT, the right one: CKR_OK); CKU_CONTEXT_SPECIFIC with NULL signs with the always-authenticate key (verified)"

# ---- 3: a peer the policy does not name -----------------------------------------------------------
# The same NULL-PIN login on SoftHSM loaded directly: the answer a peer outside the policy must get.
client_start direct "$SOFTHSM_MODULE" unused
expect direct $CKR_OK open ro
expect direct $CKR_ARGUMENTS_BAD login user -
client_quit direct
nobody_start outsider
expect outsider $CKR_OK tokeninfo
[ "$(field protected)" = 0 ] || fail "3: uid nobody, named by no policy, sees the protected path: $REPLY"
expect outsider $CKR_OK open ro
expect outsider $CKR_ARGUMENTS_BAD login user -
expect outsider $CKR_OK count private
[ "$(field count)" = 0 ] || fail "3: uid nobody finds private keys"
expect outsider $CKR_OK sign "by nobody"
[ "$(field nokey)" = 1 ] || fail "3: uid nobody signed: $REPLY"
client_quit outsider
grep -q "uid $nobody" "$FIXTURE_DIR/broker.err" || fail "3: no log line for uid $nobody"
echo "3 uid $nobody (admitted, no policy): no protected path; C_Login(NULL) = CKR_ARGUMENTS_BAD (SoftHSM direct: the same); no key"

# ---- 4: a gid policy ------------------------------------------------------------------------------
broker_restart --pin "$URI?pin-source=file:$FIXTURE_DIR/pin" --protected-login "gid:$nogroup=$URI"
nobody_start member
expect member $CKR_OK tokeninfo
[ "$(field protected)" = 1 ] || fail "4: gid $nogroup's member sees no protected path: $REPLY"
expect member $CKR_OK open ro
expect member $CKR_OK login user -
expect member $CKR_OK sign "$(cat "$FIXTURE_DIR/data")" "$FIXTURE_DIR/nobody/sig-gid"
client_quit member
verify "$FIXTURE_DIR/nobody/sig-gid"
client_start root-not-member "$MODULE" "$FIXTURE_ADDRESS"
expect root-not-member $CKR_OK tokeninfo
[ "$(field protected)" = 0 ] || fail "4: root (not in $nogroup) sees the protected path"
client_quit root-not-member
echo "4 --protected-login gid:$nogroup: uid nobody logs in with NULL and signs (verified); root, not in the group, sees no protected path"

# ---- 5: a wrong PIN in the file ---------------------------------------------------------------------
printf '999999\n' >"$FIXTURE_DIR/wrong-pin"
chmod 0600 "$FIXTURE_DIR/wrong-pin"
broker_restart --pin "$URI?pin-source=file:$FIXTURE_DIR/wrong-pin" --protected-login "uid:0=$URI"
client_start wrong "$MODULE" "$FIXTURE_ADDRESS"
expect wrong $CKR_OK open ro
expect wrong $CKR_PIN_INCORRECT login user -
client_quit wrong
echo "5 a wrong PIN in the file: C_Login(NULL) = CKR_PIN_INCORRECT"

# ---- 6: credential and ask-pass sources -------------------------------------------------------------
install -m 0400 "$FIXTURE_DIR/pin" "$FIXTURE_DIR/creds/token-pin"
CREDENTIALS_DIRECTORY=$FIXTURE_DIR/creds broker_restart --pin "$URI?pin-source=credential:token-pin" --protected-login "uid:0=$URI"
pkcs11_tool_sign credential
echo "6 credential:token-pin (\$CREDENTIALS_DIRECTORY): pkcs11-tool --login signs (verified)"
cat >"$FIXTURE_DIR/askpass" <<EOF
#!/bin/sh
# An SSH_ASKPASS-style program: the PIN on standard output, only for the expected prompt.
echo "askpass run with: \$1" >>"$FIXTURE_DIR/askpass.log"
[ "\$1" = "PIN for the token" ] || exit 1
echo "$FIXTURE_PIN"
EOF
chmod 0700 "$FIXTURE_DIR/askpass"
broker_restart --pin "$URI?pin-source=|$FIXTURE_DIR/askpass%20'PIN%20for%20the%20token'" --protected-login "uid:0=$URI"
pkcs11_tool_sign askpass
grep -qx "askpass run with: PIN for the token" "$FIXTURE_DIR/askpass.log" || fail "6: the ask-pass program did not get its argument: $(cat "$FIXTURE_DIR/askpass.log")"
echo "6 |askpass%20'PIN%20for%20the%20token': run with 'PIN for the token', pkcs11-tool --login signs (verified)"

# ---- 7: ask-pass timeout and cancellation -----------------------------------------------------------
cat >"$FIXTURE_DIR/slowpass" <<EOF
#!/bin/sh
# Never answers: a dialog nobody sees. Its child's pid tells the test whether the group was killed.
sleep 300 &
echo \$! >"$FIXTURE_DIR/slowpass.child"
wait
EOF
chmod 0700 "$FIXTURE_DIR/slowpass"
broker_restart --pin "$URI?pin-source=|$FIXTURE_DIR/slowpass" --protected-login "uid:0=$URI" --askpass-timeout-ms 1500
client_start slow "$MODULE" "$FIXTURE_ADDRESS"
expect slow $CKR_OK open ro
started=$(date +%s%N)
expect slow $CKR_FUNCTION_CANCELED login user -
took=$(( ($(date +%s%N) - started) / 1000000 ))
[ "$took" -ge 1400 ] || fail "7: the login was cancelled after $took ms, before the 1500 ms timeout"
child=$(cat "$FIXTURE_DIR/slowpass.child")
for _ in $(seq 50); do kill -0 "$child" 2>/dev/null || break; sleep 0.1; done
kill -0 "$child" 2>/dev/null && fail "7: the ask-pass program's child (pid $child) still runs after the timeout"
grep -q "gave no PIN within 1500 ms" "$FIXTURE_DIR/broker.err" || fail "7: no log line for the timeout"
client_quit slow
echo "7 --askpass-timeout-ms 1500: C_Login(NULL) = CKR_FUNCTION_CANCELED after $took ms; the program and its child are gone"
broker_restart --pin "$URI?pin-source=|$FIXTURE_DIR/slowpass" --protected-login "uid:0=$URI"
rm -f "$FIXTURE_DIR/slowpass.child"
client_start leaving "$MODULE" "$FIXTURE_ADDRESS"
expect leaving $CKR_OK open ro
send leaving login user -
for _ in $(seq 100); do [ -s "$FIXTURE_DIR/slowpass.child" ] && break; sleep 0.1; done
child=$(cat "$FIXTURE_DIR/slowpass.child")
kill -9 "${CLIENT_PID[leaving]}"
wait "${CLIENT_PID[leaving]}" 2>/dev/null || true
for _ in $(seq 50); do kill -0 "$child" 2>/dev/null || break; sleep 0.1; done
kill -0 "$child" 2>/dev/null && fail "7: the ask-pass program's child (pid $child) still runs after its client was killed"
echo "7 the client killed during the ask (default 60 s timeout): the program and its child are gone at once"
rm -f "$FIXTURE_DIR/slowpass.child"
client_start finalizing "$MODULE" "$FIXTURE_ADDRESS"
expect finalizing $CKR_OK open ro
expect finalizing $CKR_FUNCTION_CANCELED login-finalize 1000
[ "$(field finalize)" = $CKR_OK ] || fail "7: C_Finalize during the ask: $REPLY"
[ "$(field ms)" -lt 10000 ] || fail "7: the login ended $(field ms) ms after it began, not at the C_Finalize"
child=$(cat "$FIXTURE_DIR/slowpass.child")
for _ in $(seq 50); do kill -0 "$child" 2>/dev/null || break; sleep 0.1; done
kill -0 "$child" 2>/dev/null && fail "7: the ask-pass program's child (pid $child) still runs after the client's C_Finalize"
client_quit finalizing
echo "7 C_Finalize from another thread 1 s into the ask: that thread's C_Login = CKR_FUNCTION_CANCELED, both returned after $(field ms) ms, the program is gone"

# ---- 8: login on arrival ----------------------------------------------------------------------------
broker_restart --pin "$URI?pin-source=file:$FIXTURE_DIR/pin" --login-on-arrival "uid:0=$URI"
client_start arrived "$MODULE" "$FIXTURE_ADDRESS"
expect arrived $CKR_OK tokeninfo
[ "$(field protected)" = 1 ] || fail "8: a login-on-arrival client sees no protected path"
sessions_before=$(field sessions)
expect arrived $CKR_OK open ro
expect arrived $CKR_OK state
[ "$(field state)" = $CKS_RO_USER_FUNCTIONS ] || fail "8: the client's new session is not logged in: $REPLY"
expect arrived $CKR_OK tokeninfo
sessions_open=$(field sessions)
expect arrived $CKR_OK sign "$(cat "$FIXTURE_DIR/data")" "$FIXTURE_DIR/sig-arrival"
verify "$FIXTURE_DIR/sig-arrival"
expect arrived $CKR_OK closeall
expect arrived $CKR_OK open ro
expect arrived $CKR_OK state
[ "$(field state)" = $CKS_RO_USER_FUNCTIONS ] || fail "8: after its C_CloseAllSessions the client's login is gone: $REPLY"
expect arrived $CKR_USER_ALREADY_LOGGED_IN login user -
client_quit arrived
grep -q "logged in to token '$FIXTURE_LABEL' (slot [0-9]*) on arrival" "$FIXTURE_DIR/broker.err" || fail "8: no log line for the login on arrival"
echo "8 --login-on-arrival uid:0: a new session is CKS_RO_USER_FUNCTIONS with no C_Login, signs (verified), still logged in after C_CloseAllSessions; C_GetTokenInfo session count $sessions_before before, $sessions_open with one session open (-1: SoftHSM does not count)"
nobody_start stranger
expect stranger $CKR_OK open ro
expect stranger $CKR_OK state
[ "$(field state)" = $CKS_RO_PUBLIC_SESSION ] || fail "8: uid nobody, not named, found a logged-in session: $REPLY"
expect stranger $CKR_OK count private
[ "$(field count)" = 0 ] || fail "8: uid nobody finds private keys"
client_quit stranger
echo "8 uid $nobody, not named: a public session, 0 private keys"
echo PASS
