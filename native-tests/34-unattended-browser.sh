#!/usr/bin/env bash
# Unattended browsers (issue 16): the broker holds the token's PIN and logs root's clients in on
# arrival (--login-on-arrival uid:0=TOKEN), asking its ask-pass program for it (pin-source=|PROGRAM,
# as on a desktop). Chromium and Firefox ESR, each with out/p11proxy.so in its NSS database and
# told to pick the client certificate itself (Chromium: the AutoSelectCertificateForUrls policy, a
# managed policy file removed at exit; Firefox: security.default_personal_cert), fetch a page that
# requires a client certificate and shows its subject, nobody giving them a PIN:
#   root, headless (chromium --headless=new, firefox-esr -headless: no window, no keyboard): the
#     page shows the token certificate's subject, the broker made the signature;
#   root, windowed under Xvfb, windows watched with xdotool and no key ever sent: the page shows
#     the subject and no PIN dialog ever appeared;
#   the system user nobody (admitted by --allow-uid, named by no policy), the same windowed run:
#     the browser asks for the token's PIN in its dialog ("Unlock Security Device", "Password
#     Required"), and no page.
# The broker's trace shows root's on-arrival logins (one ask-pass run each) and none for nobody.
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
# One client certificate on the token, so that Firefox's "Select Automatically" has one to pick
# (set-up, with the PIN, before the broker holds it).
pkcs11-tool --module "$SOFTHSM_MODULE" --token-label "$FIXTURE_LABEL" --login --pin "$FIXTURE_PIN" \
  --delete-object --type cert --id 02 >/dev/null 2>&1 || fail "cannot remove the EC certificate from the token"
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

# browser_run BROWSER WHO NAME [browserdrive options]: BROWSER (chromium or firefox) as WHO (root
# or nobody) with an NSS database of its own (the test CA trusted, p11proxy.so added), one page;
# drive output in $d/BROWSER-WHO-NAME/drive.out, browserdrive.py's exit status returned.
browser_run() {
  local browser=$1 who=$2 name=$3 dir="$d/$1-$2-$3" port status=0 nssdb
  shift 3
  nssdb=$dir/nssdb
  [ "$browser" = firefox ] && nssdb=$dir
  browsers_nssdb "$nssdb" p11proxy "$MODULE"
  fixture_unattended_no_pin_anywhere "$nssdb/cert9.db" "$nssdb/key4.db" "$nssdb/pkcs11.txt"
  mkdir -p "$dir/home/.pki"
  port=$(fixture_free_port)
  if [ "$browser" = chromium ]; then
    ln -sfn "$dir/nssdb" "$dir/home/.pki/nssdb"
  else
    browsers_firefox_profile "$dir" "$port"   # picks a matching client certificate by itself
  fi
  local runner=() started=$SECONDS
  if [ "$who" = nobody ]; then
    chown -R "$STRANGER_UID:$STRANGER_GID" "$dir"
    runner=(setpriv --reuid="$STRANGER_UID" --regid="$STRANGER_GID" --clear-groups)
  fi
  "${runner[@]}" env HOME="$dir/home" P11_KIT_SERVER_ADDRESS="$BROKER_ADDRESS" timeout 150 /usr/bin/python3 "$BROWSERDRIVE" \
    "$browser" --profile "$dir" --port "$port" --timeout 40 "$@" --visit "$SITE_URL" "$SITE_TITLE" "$SUBJECT" \
    >"$dir/drive.out" 2>&1 || status=$?
  sed "s/^/$browser $who $name: /" "$dir/drive.out"
  echo "$browser $who $name: browser started, driven and stopped in $((SECONDS - started)) s"
  return $status
}

# unattended BROWSER PIN-DIALOG: the three runs for one browser.
unattended() {
  local browser=$1 dialog=$2 mark out status=0
  echo "== $browser"
  mark=$(broker_log_mark)
  browser_run "$browser" root headless --headless || fail "$browser, root, headless: the page did not show the token certificate's subject"
  grep -qxF "$SITE_URL: subject: $SUBJECT" "$d/$browser-root-headless/drive.out" || fail "$browser, root, headless: the page showed another subject"
  broker_log_since "$mark" > "$d/broker-$browser-root-headless.log"
  grep -qE 'C_Sign(Final)? .*CKR_OK' "$d/broker-$browser-root-headless.log" || fail "$browser, root, headless: the broker made no signature"
  echo "$browser root headless: page shows '$SUBJECT';" \
    "the broker logged $(grep -cE 'C_Sign(Final)? .*CKR_OK' "$d/broker-$browser-root-headless.log") C_Sign -> CKR_OK"

  browser_run "$browser" root windowed --unattended || fail "$browser, root, windowed: the page did not show the token certificate's subject"
  out=$d/$browser-root-windowed/drive.out
  grep -qxF "$SITE_URL: subject: $SUBJECT" "$out" || fail "$browser, root, windowed: the page showed another subject"
  ! grep -q ': dialog: ' "$out" || fail "$browser, root, windowed: a PIN dialog appeared"
  echo "$browser root windowed: page shows '$SUBJECT', no PIN dialog appeared, no key sent"

  mark=$(broker_log_mark)
  browser_run "$browser" nobody windowed --unattended || status=$?
  out=$d/$browser-nobody-windowed/drive.out
  [ $status -ne 0 ] || fail "nobody's $browser fetched the page without a PIN: the policy names only root"
  grep -qE "^$(sed 's/[.]/[.]/g' <<<"$SITE_URL"): dialog: $dialog.* \(no PIN to give\)\$" "$out" \
    || fail "nobody's $browser failed otherwise than by asking for the PIN: $(cat "$out")"
  ! grep -q ': subject: CN=' "$out" || fail "nobody's $browser got the page"
  broker_log_since "$mark" > "$d/broker-$browser-nobody-windowed.log"
  grep -q "client [0-9]* (uid $STRANGER_UID, " "$d/broker-$browser-nobody-windowed.log" || fail "nobody's $browser did not reach the broker"
  echo "$browser nobody windowed: the browser shows its '$dialog' PIN dialog, no page"
}

unattended chromium "Unlock Security Device"
unattended firefox "Password Required"

grep -qE "\(uid 0, pid [0-9]+\): logged in to token '$FIXTURE_LABEL' .* on arrival" "$BROKER_LOG" \
  || fail "the broker did not log root's login on arrival: $(grep -i 'arrival' "$BROKER_LOG" | head -3)"
! grep -qE "\(uid $STRANGER_UID, pid [0-9]+\): .*(logged in|C_Login .*-> CKR_OK)" "$BROKER_LOG" || fail "the broker logged nobody in"
logins=$(grep -cE "\(uid 0, pid [0-9]+\): logged in to token '$FIXTURE_LABEL' .* on arrival, PIN from ask-pass program $d/broker-askpass " "$BROKER_LOG" || true)
[ "$logins" -ge 4 ] || fail "the broker logged $logins logins on arrival with the ask-pass program's PIN, not one per root browser at least"
[ "$(wc -l <"$d/broker-askpass.log")" -eq "$logins" ] \
  || fail "the broker ran its ask-pass program $(wc -l <"$d/broker-askpass.log") times for $logins logins on arrival"
echo "broker: $logins logins on arrival for root's clients (browsers, modutil), each after one run of its ask-pass program; none for uid $STRANGER_UID"
echo "unattended browsers: root's Chromium and Firefox get the page with no PIN, headless and windowed; nobody's are asked for a PIN ($(fixture_elapsed) s)"
