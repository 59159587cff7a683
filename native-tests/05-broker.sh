#!/usr/bin/env bash
# p11proxy-broker: served to p11-kit's own client and to ours (socket and stdio), clients
# isolated from each other, tokens filtered by URI, foreign uids refused, garbage contained.
set -euo pipefail
OUT=${1:-out}
. "$(dirname "$0")/lib.sh"
fixture_token broker
cc -O2 -Wall -o "$FIXTURE_DIR/probe" "$(dirname "$0")/hosts/brokerprobe.c" -I/usr/include/p11-kit-1 -ldl \
  || fail "cannot build the probe"
timeout 120 pkcs11-tool --module "$SOFTHSM_MODULE" --login --pin "$FIXTURE_PIN" --test > "$FIXTURE_DIR/test-direct" 2>&1 || true

fixture_start_broker
export P11_KIT_SERVER_ADDRESS=$FIXTURE_ADDRESS
socket=${FIXTURE_ADDRESS#unix:path=}

# p11-kit's own client against our broker: --test gives what SoftHSM gives directly, except that
# p11-kit 0.24's client hides the mechanisms whose parameters it cannot carry, so pkcs11-tool
# has fewer of them to skip ("mechanism can't be used to decrypt, skipping" lines).
timeout 120 pkcs11-tool --module "$P11KIT_CLIENT" --login --pin "$FIXTURE_PIN" --test > "$FIXTURE_DIR/test-client" 2>&1 || true
skipped="mechanism can't be used to decrypt, skipping"
diff <(sed 1d "$FIXTURE_DIR/test-direct" | grep -vF "$skipped") <(sed 1d "$FIXTURE_DIR/test-client" | grep -vF "$skipped") \
  || fail "p11-kit-client.so + broker --test differs from direct"
echo "p11-kit-client.so against the broker: --test as SoftHSM direct ($(grep -cF "$skipped" "$FIXTURE_DIR/test-direct") vs $(grep -cF "$skipped" "$FIXTURE_DIR/test-client") skipped mechanisms)"

# Two clients: one cannot use or close the other's session, and its disconnect leaves it alone.
# (bash unsets HOLD_PID once the coprocess ends, so its pid is kept first)
coproc HOLD { "$FIXTURE_DIR/probe" hold "$OUT/p11proxy.so"; }
hold_pid=$HOLD_PID
exec {hold_out}<&"${HOLD[0]}" {hold_in}>&"${HOLD[1]}"
read -r handle <&"$hold_out"
"$FIXTURE_DIR/probe" steal "$OUT/p11proxy.so" "$handle" || fail "a client could touch another client's session $handle"
echo done >&"$hold_in"
wait "$hold_pid" || fail "the first client's session did not survive the second client"
echo "clients isolated: session $handle refused to the other client and still alive after it left"

# A malformed message closes only its own connection; the broker keeps serving.
"$FIXTURE_DIR/probe" garbage "$socket" || fail "the broker did not drop a garbage connection"
pkcs11-tool --module "$OUT/p11proxy.so" -L | grep -q "$FIXTURE_LABEL" || fail "the broker stopped serving after garbage"
grep -q "refused a request" "$FIXTURE_DIR/broker.err" || fail "no log line for the garbage connection"
echo "garbage connection dropped and logged; others unaffected"

# A peer of another uid is refused by its credentials: a throw-away user made for this test (the
# socket mode is opened up to let it try; the credential check must still refuse it).
stranger="p11proxy-t$$"
useradd --system --no-create-home --shell /usr/sbin/nologin "$stranger" || fail "cannot create a throw-away user"
trap 'userdel "$stranger" 2>/dev/null || true; fixture_cleanup' EXIT
stranger_uid=$(id -u "$stranger")
chmod 0777 "$FIXTURE_DIR"
chmod 0666 "$socket"
if setpriv --reuid="$stranger_uid" --regid="$(id -g "$stranger")" --clear-groups env P11_KIT_SERVER_ADDRESS="$FIXTURE_ADDRESS" \
     pkcs11-tool --module "$OUT/p11proxy.so" -L >"$FIXTURE_DIR/stranger.out" 2>&1; then
  fail "uid $stranger_uid was served: $(cat "$FIXTURE_DIR/stranger.out")"
fi
grep -q "refused a connection from uid $stranger_uid" "$FIXTURE_DIR/broker.err" || fail "no log line for the refused uid"
echo "throw-away user $stranger (uid $stranger_uid) refused and logged"
chmod 0700 "$FIXTURE_DIR"
chmod 0600 "$socket"

# stdio mode through a '|' address, for our module and for p11-kit's client.
stdio="|$OUT/p11proxy-broker stdio --module $SOFTHSM_MODULE"
P11_KIT_SERVER_ADDRESS="$stdio" pkcs11-tool --module "$OUT/p11proxy.so" -L | grep -q "$FIXTURE_LABEL" \
  || fail "p11proxy.so with a '|p11proxy-broker stdio' address does not list the token"
printf 'stdio data' > "$FIXTURE_DIR/data"
P11_KIT_SERVER_ADDRESS="$stdio" pkcs11-tool --module "$OUT/p11proxy.so" --login --pin "$FIXTURE_PIN" --sign -m SHA256-RSA-PKCS \
  --id 01 -i "$FIXTURE_DIR/data" -o "$FIXTURE_DIR/sig" 2>/dev/null
openssl dgst -sha256 -verify "$FIXTURE_DIR/pub.pem" -signature "$FIXTURE_DIR/sig" "$FIXTURE_DIR/data" >/dev/null \
  || fail "signature through the stdio broker does not verify"
P11_KIT_SERVER_ADDRESS="$stdio" pkcs11-tool --module "$P11KIT_CLIENT" -L | grep -q "$FIXTURE_LABEL" \
  || fail "p11-kit-client.so with a '|p11proxy-broker stdio' address does not list the token"
echo "stdio mode works for p11proxy.so and p11-kit-client.so"

# At C_Finalize the spawned broker sees end-of-file and exits by itself, finalizing the module it
# serves (an HSM's sessions end cleanly), instead of being killed. The address is split like
# p11-kit splits it, without a shell: sh here only records how the broker ended.
status_file=$FIXTURE_DIR/stdio.status
rm -f "$status_file"
P11_KIT_SERVER_ADDRESS="|sh -c '\"\$0\" stdio --module \"\$1\"; echo \$? > \"\$2\"' $OUT/p11proxy-broker $SOFTHSM_MODULE $status_file" \
  pkcs11-tool --module "$OUT/p11proxy.so" -L | grep -q "$FIXTURE_LABEL" \
  || fail "p11proxy.so with a '|sh -c ...' address does not list the token"
[ "$(cat "$status_file" 2>/dev/null)" = 0 ] \
  || fail "the spawned broker did not exit by itself with status 0 after C_Finalize (status: '$(cat "$status_file" 2>/dev/null)')"
echo "spawned broker exits by itself (status 0) at C_Finalize"

# Token filtering: a URI that matches nothing hides the token and its slot id.
slot=$(pkcs11-tool --module "$OUT/p11proxy.so" -L | sed -n 's/^Slot 0 (\(0x[0-9a-f]*\)).*/\1/p')
filtered="|$OUT/p11proxy-broker stdio --module $SOFTHSM_MODULE --token pkcs11:token=no%20such%20token"
if P11_KIT_SERVER_ADDRESS="$filtered" pkcs11-tool --module "$OUT/p11proxy.so" -L | grep -q "$FIXTURE_LABEL"; then
  fail "a token filtered out by URI is still listed"
fi
if P11_KIT_SERVER_ADDRESS="$filtered" pkcs11-tool --module "$OUT/p11proxy.so" --slot "$slot" -I 2>&1 | grep -q "$FIXTURE_LABEL"; then
  fail "the hidden token's slot $slot is still usable"
fi
P11_KIT_SERVER_ADDRESS="|$OUT/p11proxy-broker stdio --module $SOFTHSM_MODULE --token pkcs11:token=$FIXTURE_LABEL" \
  pkcs11-tool --module "$OUT/p11proxy.so" -L | grep -q "$FIXTURE_LABEL" || fail "a matching URI hides the token"
echo "token filter: non-matching URI hides the token and slot $slot; matching URI shows it"
