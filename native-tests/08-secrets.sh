#!/usr/bin/env bash
# PINs never reach a log: a verbose broker and a debugging module log every call of a session
# that logs in, changes the PIN, initialises a PIN and fails a login; none of the PINs (nor the
# signed data) appears in any log.
set -euo pipefail
OUT=${1:-out}
. "$(dirname "$0")/lib.sh"
fixture_token secrets
old_pin=$FIXTURE_PIN
new_pin=73918264
wrong_pin=55512399
fixture_start_broker --verbose
export P11_KIT_SERVER_ADDRESS=$FIXTURE_ADDRESS P11PROXY_DEBUG=1
log=$FIXTURE_DIR/module.log
tool=(pkcs11-tool --module "$OUT/p11proxy.so")
printf 'secret-data-9d2f' > "$FIXTURE_DIR/data"
{
  "${tool[@]}" --login --pin "$old_pin" --sign -m SHA256-RSA-PKCS --id 01 -i "$FIXTURE_DIR/data" -o "$FIXTURE_DIR/sig"
  "${tool[@]}" --login --pin "$old_pin" --change-pin --new-pin "$new_pin"
  "${tool[@]}" --login --login-type so --so-pin "$FIXTURE_SO_PIN" --init-pin --new-pin "$old_pin"
  "${tool[@]}" --login --pin "$wrong_pin" -O || true
} >"$log" 2>&1 || fail "the PIN operations failed: $(tail -5 "$log")"
grep -q "C_Login" "$FIXTURE_DIR/broker.err" || fail "the broker did not trace the calls (no C_Login line)"
grep -q "C_SetPIN" "$FIXTURE_DIR/broker.err" || fail "the broker did not trace C_SetPIN"
grep -q "C_Login" "$log" || fail "the module did not trace the calls"
# (the fixture's PIN 1234 is too short to grep for without false alarms; the distinctive PINs
# below travel through the same login and PIN-setting paths)
third_pin=86420357
"${tool[@]}" --login --pin "$old_pin" --change-pin --new-pin "$third_pin" >>"$log" 2>&1 || fail "second PIN change failed"
"${tool[@]}" --login --pin "$third_pin" -O >>"$log" 2>&1 || fail "login with the new PIN failed"
for secret in "$new_pin" "$wrong_pin" "$third_pin" "$FIXTURE_SO_PIN" secret-data-9d2f; do
  for file in "$FIXTURE_DIR/broker.err" "$FIXTURE_DIR/broker.out" "$log"; do
    if grep -q -- "$secret" "$file"; then fail "a secret ($secret) appears in $(basename "$file")"; fi
  done
done
echo "broker trace $(wc -l < "$FIXTURE_DIR/broker.err") lines, module trace $(grep -c '^p11proxy:' "$log") lines: no PIN or data in either"
