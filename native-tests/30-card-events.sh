#!/usr/bin/env bash
# Issue 16: a real source of token events. pcscd, vsmartcard's vpcd reader driver and our virtual
# OpenPGP card (lib-card.sh), in a mount and network namespace of the test's own.
#   1  OpenSC loaded directly (pkcs11-tool -L -O) sees the card in "Virtual PCD 00 00", signs
#      with its key (the signature verifies with openssl), and sees the reader empty once it left
#   2  one sequence (native-tests/hosts/cardhost), run with OpenSC loaded directly and through
#      p11proxy.so and the broker, gives the same transcript row for row: slot lists and slot
#      info with the card present, removed, back, and in the other reader; C_WaitForSlotEvent with CKF_DONT_BLOCK and
#      blocking; another thread's calls answered while one waits; sessions after removal; a
#      signature with the card present (verified with openssl) and absent (an error, not a hang);
#      C_Finalize during a blocking wait (the wait ends with CKR_CRYPTOKI_NOT_INITIALIZED)
#   3  --wait-for-token: the card leaves reader 0; the client's C_OpenSession on its old slot
#      waits and opens where the same card (label, serial) comes back, in reader 1; it signs there
#      (verified). Without the option the same call fails at once, as direct (row of 2). C_Login
#      on a session whose card left waits too (OpenSC then says the session is gone)
#   4  the wait's deadline (--token-wait-ms) gives the direct error; C_Finalize and leaving end it
#   5  a client logged in on arrival (--login-on-arrival, PIN held by the broker) is logged in
#      again once its card is back, in the other reader: it signs before and after, sending no PIN
set -euo pipefail
OUT=${1:-out}
DIR=$(dirname "$0")
. "$DIR/lib.sh"
. "$DIR/isolation-lib.sh"
. "$DIR/lib-card.sh"
card_namespace "$@"
card_fixture
printf 'signed on the card\n' >"$FIXTURE_DIR/data"

# 1
card_insert one "$CARD_READER0_PORT"
pkcs11-tool --module "$OPENSC_MODULE" -L >"$FIXTURE_DIR/list" 2>&1 || fail "pkcs11-tool -L: $(cat "$FIXTURE_DIR/list")"
grep -q 'token label *: OpenPGP card (User PIN (sig))' "$FIXTURE_DIR/list" || fail "no OpenPGP card token: $(cat "$FIXTURE_DIR/list")"
grep -q 'serial num *: ffff0000a001' "$FIXTURE_DIR/list" || fail "not the card's serial: $(cat "$FIXTURE_DIR/list")"
pkcs11-tool --module "$OPENSC_MODULE" -O --slot 1 >"$FIXTURE_DIR/objects" 2>&1 || fail "pkcs11-tool -O: $(cat "$FIXTURE_DIR/objects")"
grep -q 'Public Key Object; RSA 2048 bits' "$FIXTURE_DIR/objects" || fail "no public key listed: $(cat "$FIXTURE_DIR/objects")"
pkcs11-tool --module "$OPENSC_MODULE" --slot 1 --login --pin "$CARD_PIN" --sign -m SHA256-RSA-PKCS \
  -i "$FIXTURE_DIR/data" -o "$FIXTURE_DIR/direct.sig" >/dev/null 2>&1 || fail "pkcs11-tool could not sign with the card"
openssl dgst -sha256 -verify "$FIXTURE_DIR/card-pub.pem" -signature "$FIXTURE_DIR/direct.sig" "$FIXTURE_DIR/data" >/dev/null \
  || fail "the card's signature does not verify"
card_remove one
pkcs11-tool --module "$OPENSC_MODULE" -L >"$FIXTURE_DIR/list" 2>&1 || true
grep -q 'OpenPGP' "$FIXTURE_DIR/list" && fail "the card is still listed after it left: $(cat "$FIXTURE_DIR/list")"
grep -q 'Virtual PCD 00 00' "$FIXTURE_DIR/list" || fail "the reader is not listed: $(cat "$FIXTURE_DIR/list")"
echo "1 OpenSC directly: the virtual card is listed, signs (verified), and is gone once removed"

# 2: the same sequence with OpenSC loaded directly and through p11proxy.so and the broker.
cardhost_build
ASK_TIMEOUT=30
scenario() {
  local name=$1 module=$2 address=$3
  card_insert "$name" "$CARD_READER0_PORT"
  client_start "$name" "$module" "$address"
  row "$name" "slots, card present" slots
  row "$name" "token info" token 1
  row "$name" "events after C_Initialize (CKF_DONT_BLOCK)" drain
  row "$name" "open a session" open 1
  row "$name" "login" login "$CARD_PIN"
  row "$name" "sign, card present" sign "signed-on-the-card" "$FIXTURE_DIR/$name-1.sig"
  row "$name" "blocking wait started" wait-start
  row "$name" "blocking wait, no event yet" wait-result 1
  row "$name" "other thread while one waits: slots" slots
  row "$name" "other thread while one waits: token info" token 1
  card_remove "$name"
  row "$name" "blocking wait ends: card removed" wait-result 20
  row "$name" "further events (CKF_DONT_BLOCK)" drain
  row "$name" "slots after removal" slots
  row "$name" "token info after removal" token 1
  row "$name" "session after removal" sessioninfo
  row "$name" "sign, card absent" sign "signed-on-the-card" "$FIXTURE_DIR/$name-absent.sig"
  row "$name" "open a session, card absent" open 1
  row "$name" "blocking wait started" wait-start
  card_insert "$name" "$CARD_READER0_PORT"
  row "$name" "blocking wait ends: card inserted" wait-result 20
  row "$name" "further events (CKF_DONT_BLOCK)" drain
  row "$name" "slots after insertion" slots
  row "$name" "token info after insertion" token 1
  row "$name" "open a session" open 1
  row "$name" "login" login "$CARD_PIN"
  row "$name" "sign, card back" sign "signed-on-the-card" "$FIXTURE_DIR/$name-2.sig"
  row "$name" "blocking wait started" wait-start
  # OpenSC's C_Finalize cancels a wait that is in pcscd; one that has not got there yet is not
  # cancelled and lasts until the next event (measured: 1 run in 3): the wait gets a second first.
  row "$name" "blocking wait, no event yet" wait-result 1
  row "$name" "C_Finalize during the wait" finalize
  row "$name" "the wait's result" wait-result 10
  row "$name" "C_Initialize again" initialize
  row "$name" "slots" slots
  # OpenSC notices a removal when asked about the slot: until then a session opens, and the
  # card's operations fail.
  card_remove "$name"
  row "$name" "open a session, removal not yet noticed" open 1
  row "$name" "login, removal not yet noticed" login "$CARD_PIN"
  # The card in the other reader: OpenSC adds a slot for its second PIN.
  row "$name" "blocking wait started" wait-start
  card_insert "$name" "$CARD_READER1_PORT"
  row "$name" "blocking wait ends: card in reader 1" wait-result 20
  row "$name" "further events (CKF_DONT_BLOCK)" drain
  row "$name" "slots, card in reader 1" slots
  row "$name" "token info, reader 1" token 5
  client_quit "$name"
  card_remove "$name"
}
scenario direct "$OPENSC_MODULE" ""
card_start_broker
scenario proxy "$OUT/p11proxy.so" "$FIXTURE_ADDRESS"
card_stop_broker

# Every row equal to OpenSC direct...
if ! diff -u "$FIXTURE_DIR/direct.transcript" "$FIXTURE_DIR/proxy.transcript" >"$FIXTURE_DIR/transcript.diff"; then
  cat "$FIXTURE_DIR/transcript.diff" >&2
  fail "through the broker the card's events differ from OpenSC loaded directly"
fi
# ...and the rows are what a card that comes and goes gives.
expect_row() {
  local label=$1 pattern=$2 n=${3:-1} line
  line=$(grep -F "$label " "$FIXTURE_DIR/direct.transcript" | sed -n "${n}p")
  grep -Eq -- "\| $pattern\$" <<<"$line" || fail "row '$label' ($n): '$line', expected '$pattern'"
}
expect_row "slots, card present" "rv=0x0 all=0,1,4 present=0,1 0:Virtual_PCD_00_00:0x7 1:Virtual_PCD_00_00:0x7 4:Virtual_PCD_00_01:0x6"
expect_row "token info" "rv=0x0 label=OpenPGP_card_\\(User_PIN_\\(sig\\)\\) serial=ffff0000a001 flags=0x40c"
expect_row "sign, card present" "rv=0x0 length=256"
expect_row "blocking wait, no event yet" "rv=pending"
expect_row "other thread while one waits: slots" "rv=0x0 all=0,1,4 present=0,1 .*"
expect_row "other thread while one waits: token info" "rv=0x0 label=OpenPGP.* serial=ffff0000a001 .*"
expect_row "blocking wait ends: card removed" "rv=0x0 slot=0"
expect_row "further events (CKF_DONT_BLOCK)" "rv=0x8 events=1"
expect_row "slots after removal" "rv=0x0 all=0,1,4 present= 0:Virtual_PCD_00_00:0x6 1:Virtual_PCD_00_00:0x6 4:Virtual_PCD_00_01:0x6"
expect_row "token info after removal" "rv=0xe0"
expect_row "session after removal" "rv=0xb3"
expect_row "sign, card absent" "rv=0xb3 length=0"
expect_row "open a session, card absent" "rv=0xe0"
expect_row "blocking wait ends: card inserted" "rv=0x0 slot=0"
expect_row "slots after insertion" "rv=0x0 all=0,1,4 present=0,1 .*"
expect_row "sign, card back" "rv=0x0 length=256"
expect_row "C_Finalize during the wait" "rv=0x0"
expect_row "the wait's result" "rv=0x190 slot=0"
expect_row "open a session, removal not yet noticed" "rv=0x0"
expect_row "login, removal not yet noticed" "rv=0x32"
expect_row "slots, card in reader 1" "rv=0x0 all=0,1,4,5 present=4,5 0:Virtual_PCD_00_00:0x6 1:Virtual_PCD_00_00:0x6 4:Virtual_PCD_00_01:0x7 5:Virtual_PCD_00_01:0x7"
expect_row "token info, reader 1" "rv=0x0 label=OpenPGP_card_\\(User_PIN_\\(sig\\)\\) serial=ffff0000a001 flags=0x40c"
for sig in direct-1 direct-2 proxy-1 proxy-2; do
  printf 'signed-on-the-card' | openssl dgst -sha256 -verify "$FIXTURE_DIR/card-pub.pem" -signature "$FIXTURE_DIR/$sig.sig" >/dev/null \
    || fail "signature $sig does not verify with the card's public key"
done
cat "$FIXTURE_DIR/direct.transcript"
echo "2 through the broker, every row above equal to OpenSC direct; the four signatures verify"

# 3: --wait-for-token. Mistakes are refused at start-up, naming the option.
refused() {
  local expected=$1 status=0
  shift
  "$OUT/p11proxy-broker" serve --module "$OPENSC_MODULE" --socket "$FIXTURE_DIR/refused.sock" "$@" >/dev/null 2>"$FIXTURE_DIR/refused.err" || status=$?
  [ "$status" -eq 2 ] && grep -qF -- "$expected" "$FIXTURE_DIR/refused.err" \
    || fail "p11proxy-broker $* exited $status with: $(cat "$FIXTURE_DIR/refused.err"), expected status 2 and '$expected'"
}
refused "--wait-for-token 'token=x' is not a PKCS#11 URI" --wait-for-token 'token=x'
refused "--wait-for-token 'pkcs11:slot=1': attribute 'slot' does not select tokens" --wait-for-token 'pkcs11:slot=1'
refused "--token-wait-ms takes a number of milliseconds from 0 to 86400000, not 'soon'" --wait-for-token 'pkcs11:token=x' --token-wait-ms soon
# The card leaves reader 0; the client's C_OpenSession on its old slot waits
# and opens where the same card (label and serial) comes back: reader 1.
SIG_TOKEN='pkcs11:token=OpenPGP%20card%20(User%20PIN%20(sig));serial=ffff0000a001'
broker_log_count() { grep -c "$1" "$FIXTURE_DIR/broker.err" || true; }
card_start_broker --wait-for-token "$SIG_TOKEN" --token-wait-ms 20000
card_insert wait "$CARD_READER0_PORT"
client_start wait "$OUT/p11proxy.so" "$FIXTURE_ADDRESS"
client_start login "$OUT/p11proxy.so" "$FIXTURE_ADDRESS"
expect login "$CKR_OK" open 1
row wait "open a session" open 1
row wait "login" login "$CARD_PIN"
row wait "sign" sign "signed-on-the-card" "$FIXTURE_DIR/wait-1.sig"
card_remove wait
before=$(broker_log_count "is absent: waiting")
send wait open 1
for i in $(seq 1 50); do [ "$(broker_log_count "is absent: waiting")" -gt "$before" ] && break; sleep 0.1; done
[ "$(broker_log_count "is absent: waiting")" -gt "$before" ] || fail "the broker did not wait for the card: $(tail -5 "$FIXTURE_DIR/broker.err")"
card_insert wait "$CARD_READER1_PORT"
receive wait
printf '%-48s | %s\n' "open a session, card away, back in reader 1" "$REPLY" >>"$FIXTURE_DIR/wait.transcript"
row wait "session" sessioninfo
row wait "login" login "$CARD_PIN"
row wait "sign" sign "signed-on-the-card" "$FIXTURE_DIR/wait-2.sig"
# C_Login on a session whose card left waits too; OpenSC closed the session when it noticed the
# removal, so the answer is CKR_SESSION_HANDLE_INVALID, and a new session opens at once.
# (client "login" opened its session in reader 0 at the start and has not called since)
card_remove wait
before=$(broker_log_count "is absent: waiting")
send login login "$CARD_PIN"
for i in $(seq 1 50); do [ "$(broker_log_count "is absent: waiting")" -gt "$before" ] && break; sleep 0.1; done
[ "$(broker_log_count "is absent: waiting")" -gt "$before" ] || fail "C_Login did not wait for the card: $(tail -5 "$FIXTURE_DIR/broker.err")"
card_insert wait "$CARD_READER0_PORT"
receive login
printf '%-48s | %s\n' "login, card away, back in reader 0" "$REPLY" >>"$FIXTURE_DIR/wait.transcript"
row login "open a session, card back" open 1
cat "$FIXTURE_DIR/login.transcript" >>"$FIXTURE_DIR/wait.transcript"
client_quit wait
client_quit login
card_remove wait
card_stop_broker
cat "$FIXTURE_DIR/wait.transcript"
wait_row() {
  local label=$1 pattern=$2 line
  line=$(grep -F "$label " "$FIXTURE_DIR/wait.transcript" | tail -1)
  grep -Eq -- "\| $pattern\$" <<<"$line" || fail "--wait-for-token row '$label': '$line', expected '$pattern'"
}
wait_row "open a session, card away, back in reader 1" "rv=0x0"
wait_row "session" "rv=0x0 slot=5 state=0"
wait_row "sign" "rv=0x0 length=256"
wait_row "login, card away, back in reader 0" "rv=0xb3"
wait_row "open a session, card back" "rv=0x0"
for sig in wait-1 wait-2; do
  printf 'signed-on-the-card' | openssl dgst -sha256 -verify "$FIXTURE_DIR/card-pub.pem" -signature "$FIXTURE_DIR/$sig.sig" >/dev/null \
    || fail "signature $sig does not verify with the card's public key"
done
grep -q "token 'OpenPGP card (User PIN (sig))' (serial ffff0000a001) is back in slot 5" "$FIXTURE_DIR/broker.err" \
  || fail "the broker did not log where the card came back"
echo "3 --wait-for-token: C_OpenSession on the card's old slot waited and opened in reader 1 (slot 5); the signature verifies"

# 4: the wait's deadline gives the direct error (CKR_TOKEN_NOT_PRESENT); C_Finalize and
# disconnecting end a wait at once.
card_start_broker --wait-for-token "$SIG_TOKEN" --token-wait-ms 4000
card_insert limits "$CARD_READER0_PORT"
for name in late final gone; do
  client_start "$name" "$OUT/p11proxy.so" "$FIXTURE_ADDRESS"
  expect "$name" "$CKR_OK" open 1
done
card_remove limits
expect late 0xe0 open 1
grep -q "did not come back within 4000 ms" "$FIXTURE_DIR/broker.err" || fail "no log line for the wait's deadline"
expect final "$CKR_OK" open-start 1
ask final open-result 1
[ "$REPLY" = "rv=pending" ] || fail "C_OpenSession did not wait for the card: $REPLY"
expect final "$CKR_OK" finalize
ASK_TIMEOUT=3 ask final open-result 2
[ "$REPLY" = "rv=0x190 slot=0" ] || fail "C_Finalize did not end the wait with CKR_CRYPTOKI_NOT_INITIALIZED: $REPLY"
ended=$(broker_log_count "ended: the client finalised or left")
expect gone "$CKR_OK" open-start 1
ask gone open-result 1
[ "$REPLY" = "rv=pending" ] || fail "C_OpenSession did not wait for the card: $REPLY"
client_quit gone
for i in $(seq 1 20); do [ "$(broker_log_count "ended: the client finalised or left")" -gt "$ended" ] && break; sleep 0.1; done
[ "$(broker_log_count "ended: the client finalised or left")" -gt "$ended" ] || fail "a client that left did not end its wait"
card_stop_broker
echo "4 the wait's deadline answers CKR_TOKEN_NOT_PRESENT as direct does; C_Finalize (CKR_CRYPTOKI_NOT_INITIALIZED) and leaving end a wait"

# 5: a client logged in on arrival (--login-on-arrival, the PIN held by the broker) is logged in
# again when its card comes back: it signs before and after, never sending a PIN.
SIG_LABEL='OpenPGP%20card%20(User%20PIN%20(sig))'
(umask 077; printf '%s\n' "$CARD_PIN" >"$FIXTURE_DIR/card.pin")
card_start_broker --wait-for-token "$SIG_TOKEN" --pin "pkcs11:token=$SIG_LABEL?pin-source=file:$FIXTURE_DIR/card.pin" \
  --login-on-arrival "uid:$(id -u)=pkcs11:token=$SIG_LABEL"
card_insert arrival "$CARD_READER0_PORT"
client_start arrival "$OUT/p11proxy.so" "$FIXTURE_ADDRESS"
row arrival "open a session" open 1
row arrival "session (logged in on arrival)" sessioninfo
row arrival "sign, no PIN sent" sign "signed-on-the-card" "$FIXTURE_DIR/arrival-1.sig"
card_remove arrival
row arrival "slots, card away" slots
send arrival open 1
for i in $(seq 1 50); do [ "$(broker_log_count "is absent: waiting")" -gt 0 ] && break; sleep 0.1; done
card_insert arrival "$CARD_READER1_PORT"
receive arrival
printf '%-48s | %s\n' "open a session, card back in reader 1" "$REPLY" >>"$FIXTURE_DIR/arrival.transcript"
row arrival "session (logged in again)" sessioninfo
row arrival "sign, no PIN sent" sign "signed-on-the-card" "$FIXTURE_DIR/arrival-2.sig"
client_quit arrival
card_remove arrival
card_stop_broker
cat "$FIXTURE_DIR/arrival.transcript"
arrival_row() {
  local label=$1 pattern=$2 n=$3 line
  line=$(grep -F "$label " "$FIXTURE_DIR/arrival.transcript" | sed -n "${n}p")
  grep -Eq -- "\| $pattern\$" <<<"$line" || fail "login-on-arrival row '$label' ($n): '$line', expected '$pattern'"
}
arrival_row "session (logged in on arrival)" "rv=0x0 slot=1 state=1" 1
arrival_row "open a session, card back in reader 1" "rv=0x0" 1
arrival_row "session (logged in again)" "rv=0x0 slot=5 state=1" 1
arrival_row "sign, no PIN sent" "rv=0x0 length=256" 1
arrival_row "sign, no PIN sent" "rv=0x0 length=256" 2
for sig in arrival-1 arrival-2; do
  printf 'signed-on-the-card' | openssl dgst -sha256 -verify "$FIXTURE_DIR/card-pub.pem" -signature "$FIXTURE_DIR/$sig.sig" >/dev/null \
    || fail "signature $sig does not verify with the card's public key"
done
[ "$(grep -c "logged in to token 'OpenPGP card (User PIN (sig))'.* on arrival" "$FIXTURE_DIR/broker.err")" -ge 2 ] \
  || fail "the broker did not log the login on arrival and the login again: $(grep -i login "$FIXTURE_DIR/broker.err")"
echo "5 --login-on-arrival: logged in on arrival, and again once the card is back in reader 1; both signatures verify"
echo "PASS"
