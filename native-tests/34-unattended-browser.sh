#!/usr/bin/env bash
# Unattended Chromium (issue 16): the broker holds the token's PIN and logs root's clients in on
# arrival (--login-on-arrival uid:0=TOKEN), asking its ask-pass program for it (pin-source=|PROGRAM,
# as on a desktop); Chromium, with out/p11proxy.so in its NSS database
# and Chromium's AutoSelectCertificateForUrls policy (a managed policy file, removed at exit),
# fetches a page that requires a client certificate and shows its subject, nobody giving it a PIN:
#   root, chromium --headless=new (no window, no keyboard): the page shows the token
#     certificate's subject;
#   root, windowed under Xvfb, windows watched with xdotool and no key ever sent: the page shows
#     the subject and no PIN dialog ("Unlock Security Device") ever appeared;
#   the system user nobody (admitted by --allow-uid, named by no policy), the same windowed run:
#     Chromium asks for the token's PIN in its "Unlock Security Device" dialog, and no page.
# The broker's trace shows root's on-arrival logins (one ask-pass run each) and the signature.
set -euo pipefail
OUT=${1:-out}
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/fixture-clients.sh"
. "$(dirname "$0")/fixture-browsers.sh"
MODULE=$(readlink -f "$OUT/p11proxy.so")
browsers_require
[ "$(id -u)" -eq 0 ] || fail "needs root: it writes a Chromium policy under /etc/chromium and runs Chromium as nobody"
setpriv --reuid=nobody --regid=nogroup --clear-groups test -r "$MODULE" || fail "nobody cannot read $MODULE"

CLIENTS_PIN=unattended-PIN-4711
fixture_clients_token browser-unattended
d=$FIXTURE_DIR
fixture_unattended_broker arrival askpass --login-on-arrival "uid:0=$TOKEN_URI"
echo "broker: $BROKER_ADDRESS, --pin '$TOKEN_URI?pin-source=$BROKER_PIN_SOURCE', --login-on-arrival uid:0=$TOKEN_URI," \
  "--allow-uid $STRANGER_UID (nobody)"

browsers_tls_site unattended "$d/ca.pem"
browsers_start_sites
browsers_start_xvfb
SUBJECT="CN=p11proxy rsa client,O=p11proxy tests"
echo "site $SITE_URL (nginx, ssl_verify_client on, the test CA); X display $DISPLAY"

# Chromium picks the client certificate itself for this site: no selector, no key to press.
POLICY_DIR=/etc/chromium/policies/managed
POLICY=$POLICY_DIR/p11proxy-unattended-test.json
[ ! -e "$POLICY" ] || fail "$POLICY exists already (another run?)"
# Directories the test creates are removed at exit (Debian's package ships none of them).
for dir in /etc/chromium /etc/chromium/policies "$POLICY_DIR"; do
  [ -d "$dir" ] || { mkdir "$dir"; fixture_on_exit "rmdir $dir"; }
done
fixture_on_exit "rm -f $POLICY"
cat > "$POLICY" <<EOF
{"AutoSelectCertificateForUrls": ["{\"pattern\":\"https://127.0.0.1:*\",\"filter\":{\"SUBJECT\":{\"CN\":\"p11proxy rsa client\"}}}"]}
EOF
chmod 0644 "$POLICY"

# chromium_run WHO NAME [browserdrive options]: Chromium as WHO (root or nobody) with an NSS
# database of its own (the test CA trusted, p11proxy.so added), one page; drive output in
# $d/WHO-NAME/drive.out, exit status of browserdrive.py returned.
chromium_run() {
  local who=$1 name=$2 dir="$d/$1-$2" port status=0
  shift 2
  browsers_nssdb "$dir/nssdb" p11proxy "$MODULE"
  fixture_unattended_no_pin_anywhere "$dir/nssdb"/*
  mkdir -p "$dir/home/.pki"
  ln -sfn "$dir/nssdb" "$dir/home/.pki/nssdb"
  port=$(fixture_free_port)
  local runner=()
  if [ "$who" = nobody ]; then
    chown -R "$STRANGER_UID:$STRANGER_GID" "$dir"
    runner=(setpriv --reuid="$STRANGER_UID" --regid="$STRANGER_GID" --clear-groups)
  fi
  "${runner[@]}" env HOME="$dir/home" P11_KIT_SERVER_ADDRESS="$BROKER_ADDRESS" timeout 150 /usr/bin/python3 "$BROWSERDRIVE" \
    chromium --profile "$dir" --port "$port" --timeout 40 "$@" --visit "$SITE_URL" "$SITE_TITLE" "$SUBJECT" \
    >"$dir/drive.out" 2>&1 || status=$?
  sed "s/^/$who $name: /" "$dir/drive.out"
  return $status
}

mark=$(broker_log_mark)
chromium_run root headless --headless || fail "root, headless: the page did not show the token certificate's subject"
grep -qxF "$SITE_URL: subject: $SUBJECT" "$d/root-headless/drive.out" || fail "root, headless: the page showed another subject"
broker_log_since "$mark" > "$d/broker-root-headless.log"
grep -qE 'C_Sign(Final)? .*CKR_OK' "$d/broker-root-headless.log" || fail "root, headless: the broker made no signature"
echo "root headless: page shows '$SUBJECT'; the broker logged $(grep -cE 'C_Sign(Final)? .*CKR_OK' "$d/broker-root-headless.log") C_Sign -> CKR_OK"

chromium_run root windowed --unattended || fail "root, windowed: the page did not show the token certificate's subject"
grep -qxF "$SITE_URL: subject: $SUBJECT" "$d/root-windowed/drive.out" || fail "root, windowed: the page showed another subject"
! grep -q ': dialog: ' "$d/root-windowed/drive.out" || fail "root, windowed: a PIN dialog appeared"
echo "root windowed: page shows '$SUBJECT', no PIN dialog appeared, no key sent"
grep -qE "uid 0.* logged in to token '$FIXTURE_LABEL' .*on arrival" "$BROKER_LOG" \
  || fail "the broker did not log root's login on arrival: $(grep -i 'arrival' "$BROKER_LOG" | head -3)"

status=0
chromium_run nobody windowed --unattended || status=$?
[ $status -ne 0 ] || fail "nobody's Chromium fetched the page without a PIN: the policy names only root"
grep -qE "^$(sed 's/[.]/[.]/g' <<<"$SITE_URL"): dialog: Unlock Security Device.* \(no PIN to give\)\$" "$d/nobody-windowed/drive.out" \
  || fail "nobody's Chromium failed otherwise than by asking for the PIN: $(cat "$d/nobody-windowed/drive.out")"
! grep -q ': subject: CN=' "$d/nobody-windowed/drive.out" || fail "nobody's Chromium got the page"
! grep -qE "uid $STRANGER_UID.* logged in to token" "$BROKER_LOG" || fail "the broker logged nobody in"
logins=$(grep -cE "\(uid 0, pid [0-9]+\): logged in to token '$FIXTURE_LABEL' .* on arrival, PIN from ask-pass program $d/broker-askpass " "$BROKER_LOG" || true)
[ "$logins" -ge 2 ] || fail "the broker logged $logins logins on arrival with the ask-pass program's PIN, not one per root Chromium at least"
[ "$(wc -l <"$d/broker-askpass.log")" -eq "$logins" ] \
  || fail "the broker ran its ask-pass program $(wc -l <"$d/broker-askpass.log") times for $logins logins on arrival"
echo "nobody windowed: Chromium shows its 'Unlock Security Device' PIN dialog, no page; the broker logged no login for uid $STRANGER_UID"
echo "broker: $logins logins on arrival for root's clients (chromium, modutil), each after one run of its ask-pass program"
echo "unattended Chromium: root's gets the page with no PIN, headless and windowed; nobody's is asked for a PIN ($(fixture_elapsed) s)"
