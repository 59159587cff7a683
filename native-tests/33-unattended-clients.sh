#!/usr/bin/env bash
# Unattended clients (issue 16): the broker holds the token's PIN (--pin ...?pin-source=file:...)
# and no client is given it: no --pin, no PIN in any configuration, no terminal to type one into,
# an ssh askpass that fails if it is run. Through out/p11proxy.so -> p11proxy-broker -> SoftHSM,
# for root (named by the policy) and for the system user nobody (admitted by --allow-uid, named by
# no policy, so it sees the token as without --pin and must be asked for a PIN), two brokers, one
# per policy:
#   --protected-login uid:root=TOKEN, pkcs11-tool --login: root's token shows a protected
#     authentication path ("PIN pad present"); root signs with the RSA and the EC key, openssl
#     verifies both signatures; nobody's shows none, and pkcs11-tool asks nobody for the PIN
#   --login-on-arrival uid:root=TOKEN for the others (and pkcs11-tool --login again: its NULL-PIN
#     C_Login on the token its worker logged in to on arrival answers CKR_OK):
#   ssh -I: root logs in to a local sshd, the askpass never run; nobody's ssh asks the askpass
#     for the token's PIN, gets none, and is denied (publickey)
#   curl with libp11's engine and a pkcs11: key URI with no pin-value: root fetches a page that
#     requires a client certificate and shows its subject; nobody's engine asks for the PIN, no page
#   NSS certutil -K / -L -h TOKEN / -R (no -f pwfile): root lists the private keys and signs a
#     request (openssl verifies it); nobody's certutil cannot authenticate, lists no key, signs nothing
# The brokers' traces show the logins made for root's clients and none for nobody's.
set -euo pipefail
OUT=${1:-out}
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/fixture-clients.sh"
MODULE=$(readlink -f "$OUT/p11proxy.so")
ENGINE=/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so
[ "$(id -u)" -eq 0 ] || fail "needs root: it runs clients as another user (nobody) and an sshd"
for tool in pkcs11-tool ssh certutil modutil curl setpriv; do
  command -v $tool >/dev/null || fail "no $tool (packages opensc, openssh-client, libnss3-tools, curl, util-linux)"
done
[ -f "$ENGINE" ] || fail "no OpenSSL pkcs11 engine at $ENGINE (package libengine-pkcs11-openssl)"
[ -r "$MODULE" ] && setpriv --reuid=nobody --regid=nogroup --clear-groups test -r "$MODULE" \
  || fail "nobody cannot read $MODULE: build in a directory others can read"

# A PIN no port number or path can contain by chance, so that "not in the configuration" is a real check.
CLIENTS_PIN=unattended-PIN-4711
fixture_clients_token unattended
d=$FIXTURE_DIR
fixture_unattended_broker protected file --protected-login "uid:root=$TOKEN_URI"
ME=root
NOBODY="nobody (uid $STRANGER_UID)"
echo "== broker $BROKER_ADDRESS: --pin $TOKEN_URI?pin-source=$BROKER_PIN_SOURCE (0600),"\
  "--protected-login uid:root=$TOKEN_URI, --allow-uid $STRANGER_UID (nobody)"
printf 'data signed without a PIN\n' > "$d/data"
chmod 0644 "$d/data"

# An askpass that must never run: it records the call (the test checks the record) and fails.
cat > "$d/askpass" <<EOF
#!/bin/sh
echo "asked by uid \$(id -u): \$*" >> "$d/askpass.log"
exit 1
EOF
chmod 0755 "$d/askpass"
: > "$d/askpass.log"
chmod 0666 "$d/askpass.log"
askpass_never_ran() {
  [ ! -s "$d/askpass.log" ] || fail "$1: the askpass program was run: $(cat "$d/askpass.log")"
}

# ---- pkcs11-tool --login, protected authentication path ----------------------------------------
out=$(timeout 30 pkcs11-tool --module "$MODULE" --list-token-slots 2>&1) || fail "pkcs11-tool -L failed: $out"
flags=$(grep -m1 'token flags' <<<"$out") || fail "pkcs11-tool -L shows no token flags: $out"
grep -q 'PIN pad present' <<<"$flags" \
  || fail "the token does not show CKF_PROTECTED_AUTHENTICATION_PATH (pkcs11-tool: 'PIN pad present'): $flags"
echo "pkcs11-tool -L: $(sed 's/^ *//' <<<"$flags")"

# SoftHSM's ECDSA takes the digest (CKM_ECDSA): the EC key signs data's SHA-256.
openssl dgst -sha256 -binary "$d/data" > "$d/data.sha256"
chmod 0644 "$d/data.sha256"

# p11tool_sign WHO KIND MECHANISM [RUNNER]: pkcs11-tool --login --sign with no PIN, on a session
# with no terminal (setsid), so a PIN prompt could only fail. The signature goes to SIG (in a
# directory WHO may write).
p11tool_sign() {
  local who=$1 kind=$2 mechanism=$3 id=01 input=$d/data format=()
  shift 3
  [ "$kind" = ec ] && { id=02; input=$d/data.sha256; format=(--signature-format openssl); }
  SIG=$d/sig-$kind
  [ "$who" = root ] || SIG=$d/stranger-home/sig-$kind
  rm -f "$SIG"
  "$@" timeout 30 setsid -w pkcs11-tool --module "$MODULE" --token-label "$FIXTURE_LABEL" --login --sign --id "$id" \
    --mechanism "$mechanism" "${format[@]}" --input-file "$input" --output-file "$SIG" \
    </dev/null >"$d/p11tool-$who-$kind.out" 2>&1
}
p11tool_sign root rsa SHA256-RSA-PKCS || fail "root: pkcs11-tool --login --sign (RSA) failed: $(cat "$d/p11tool-root-rsa.out")"
openssl dgst -sha256 -verify "$d/rsa-pub.pem" -signature "$d/sig-rsa" "$d/data" >/dev/null \
  || fail "root: the RSA signature made without a PIN does not verify"
p11tool_sign root ec ECDSA || fail "root: pkcs11-tool --login --sign (EC) failed: $(cat "$d/p11tool-root-ec.out")"
openssl dgst -sha256 -verify "$d/ec-pub.pem" -signature "$d/sig-ec" "$d/data" >/dev/null \
  || fail "root: the ECDSA signature made without a PIN does not verify"
echo "$ME: pkcs11-tool --login --sign, no --pin: SHA256-RSA-PKCS (RSA key) and ECDSA over SHA-256 (EC key),"\
  "both signatures verified by openssl"

out=$(as_stranger timeout 30 pkcs11-tool --module "$MODULE" --list-token-slots 2>&1) || fail "nobody: pkcs11-tool -L failed: $out"
flags=$(grep -m1 'token flags' <<<"$out") || fail "nobody: pkcs11-tool -L shows no token flags: $out"
! grep -q 'PIN pad present' <<<"$flags" || fail "nobody, named by no policy, is shown a protected authentication path: $flags"
status=0
p11tool_sign nobody rsa SHA256-RSA-PKCS as_stranger || status=$?
[ $status -ne 0 ] || fail "nobody signed with pkcs11-tool --login and no PIN: the policy names only root"
[ ! -s "$SIG" ] || fail "nobody's pkcs11-tool wrote a signature"
grep -q '^Please enter User PIN: error: util_getpass error$' "$d/p11tool-nobody-rsa.out" \
  || fail "nobody: pkcs11-tool failed otherwise than by asking for the PIN: $(cat "$d/p11tool-nobody-rsa.out")"
echo "$NOBODY: pkcs11-tool -L: no 'PIN pad present'; --login --sign: 'Please enter User PIN:' (no terminal to answer:"\
  "util_getpass error), exit $status, no signature"

grep -qE "\(uid 0, pid [0-9]+\): C_Login \(user\) with the held PIN .* -> CKR_OK" "$BROKER_LOG" \
  || fail "the protected-path broker did not log root's C_Login with the held PIN"
! grep -qE "\(uid $STRANGER_UID, pid [0-9]+\): C_Login .*CKR_OK" "$BROKER_LOG" || fail "the protected-path broker logged nobody in"
echo "protected-path broker: root's C_Login (user) with the held PIN -> CKR_OK logged $(grep -cE "\(uid 0, pid [0-9]+\): C_Login \(user\) with the held PIN .* -> CKR_OK" "$BROKER_LOG") times; no login for nobody"
! grep -qF "$FIXTURE_PIN" "$BROKER_LOG" || fail "the broker's trace holds the PIN"

# ---- ssh -I, logged in on arrival -----------------------------------------------------------------
fixture_unattended_broker arrival file --login-on-arrival "uid:root=$TOKEN_URI"
echo "== broker $BROKER_ADDRESS: the same --pin, --login-on-arrival uid:root=$TOKEN_URI, --allow-uid $STRANGER_UID (nobody)"
p11tool_sign root rsa SHA256-RSA-PKCS || fail "root: pkcs11-tool --login --sign on the login-on-arrival broker failed: $(cat "$d/p11tool-root-rsa.out")"
openssl dgst -sha256 -verify "$d/rsa-pub.pem" -signature "$d/sig-rsa" "$d/data" >/dev/null \
  || fail "root: the RSA signature made on the login-on-arrival broker does not verify"
echo "$ME: pkcs11-tool --login --sign, no --pin, logged in on arrival: SHA256-RSA-PKCS signature verified by openssl"
for kind in rsa ec; do ssh-keygen -y -f "$d/$kind-key.pem"; done > "$d/authorized_keys"
chmod 0644 "$d/authorized_keys"
ssh-keygen -l -f "$d/authorized_keys" | awk '{print $2}' > "$d/token-key.fps"
fixture_clients_sshd "PubkeyAcceptedAlgorithms rsa-sha2-512,rsa-sha2-256,ecdsa-sha2-nistp256"

# ssh_login WHO [RUNNER]: ssh -I p11proxy.so root@127.0.0.1 echo ok, no terminal, askpass forced
# (it fails if run); ssh -v's output in ssh-WHO.err.
ssh_login() {
  local who=$1
  shift
  "$@" env SSH_ASKPASS="$d/askpass" SSH_ASKPASS_REQUIRE=force DISPLAY=:0 timeout 60 setsid -w \
    ssh -v -F /dev/null -I "$MODULE" -p "$SSHD_PORT" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
      -o PreferredAuthentications=publickey -o ConnectTimeout=20 -o IdentityFile=none \
      root@127.0.0.1 echo token-login-ok </dev/null >"$d/ssh-$who.out" 2>"$d/ssh-$who.err"
}
before=$(grep -c 'Accepted publickey' "$d/sshd.log" || true)
ssh_login root || fail "root: ssh -I without a PIN failed: $(grep -v '^debug' "$d/ssh-root.err" | tail -5)"
grep -qx token-login-ok "$d/ssh-root.out" || fail "root: the remote command did not print token-login-ok"
askpass_never_ran "root: ssh -I"
fixture_wait_file "$d/sshd.log" 'Accepted publickey' 5 || true
line=$(grep 'Accepted publickey' "$d/sshd.log" | tail -1)
[ "$(grep -c 'Accepted publickey' "$d/sshd.log")" -gt "$before" ] || fail "root: sshd logged no accepted key"
grep -qFf "$d/token-key.fps" <<<"$line" || fail "root: sshd accepted a key that is not the token's: $line"
echo "$ME: ssh -I p11proxy.so root@127.0.0.1 -> token-login-ok, askpass never run;" \
  "sshd: $(grep -o 'Accepted publickey for root .* [A-Z0-9]*:[^ ]*' <<<"$line" | awk '{print $(NF-1), $NF}')"

status=0
ssh_login nobody as_stranger || status=$?
[ $status -ne 0 ] || fail "nobody logged in with ssh -I and no PIN: the policy names only root"
! grep -q token-login-ok "$d/ssh-nobody.out" || fail "nobody's ssh ran the remote command"
grep -q 'Permission denied (publickey)' "$d/ssh-nobody.err" \
  || fail "nobody's ssh failed otherwise than 'Permission denied (publickey)': $(grep -v '^debug' "$d/ssh-nobody.err" | tail -3)"
# No protected path for nobody: ssh asks for the PIN (askpass), gets none, and cannot sign.
grep -qx "asked by uid $STRANGER_UID: Enter PIN for '$FIXTURE_LABEL': " "$d/askpass.log" \
  || fail "nobody's ssh did not ask for the token's PIN: $(cat "$d/askpass.log")"
grep -q 'pkcs11_login_slot: no pin specified' "$d/ssh-nobody.err" \
  || fail "nobody's ssh failed otherwise than for want of a PIN: $(grep -iE 'pkcs11|login|pin' "$d/ssh-nobody.err" | tail -5)"
echo "$NOBODY: ssh -I: askpass asked \"$(head -1 "$d/askpass.log" | sed 's/^asked by uid [0-9]*: //')\" (once per key, and"\
  "failed), 'no pin specified', 'Permission denied (publickey)'"
: > "$d/askpass.log"

# ---- curl with libp11's engine, no pin-value ----------------------------------------------------
fixture_clients_engine_conf "$d/openssl.cnf" "$MODULE" 0 no-pin
chmod 0644 "$d/openssl.cnf"
fixture_unattended_no_pin_anywhere "$d/openssl.cnf"
fixture_clients_s_server_www
KEY_URI="pkcs11:token=$FIXTURE_LABEL;object=rsa-key;type=private"
# curl_fetch WHO [RUNNER]: curl --engine pkcs11 with the RSA key's URI (no pin-value).
curl_fetch() {
  local who=$1
  shift
  "$@" env OPENSSL_CONF="$d/openssl.cnf" timeout 60 setsid -w curl -sS --engine pkcs11 --key-type ENG --key "$KEY_URI" \
    --cert "$d/rsa.pem" --cacert "$d/ca.pem" "https://127.0.0.1:$WWW_PORT/" </dev/null >"$d/curl-$who.html" 2>"$d/curl-$who.err"
}
curl_fetch root || fail "root: curl with '$KEY_URI' (no pin-value) failed: $(cat "$d/curl-root.err")"
grep -q "Subject: O=p11proxy tests, CN=p11proxy rsa client" "$d/curl-root.html" \
  || fail "root: s_server's page does not show the token's client certificate: $(grep -i -A3 'client cert' "$d/curl-root.html")"
echo "$ME: curl --engine pkcs11 --key '$KEY_URI' (no pin-value, no PIN in openssl.cnf): page shows" \
  "'$(grep -m1 -o 'Subject: O=p11proxy tests, CN=p11proxy rsa client' "$d/curl-root.html")'"

status=0
curl_fetch nobody as_stranger || status=$?
[ $status -ne 0 ] || fail "nobody fetched the page with curl and no PIN: the policy names only root"
! grep -q "CN=p11proxy rsa client" "$d/curl-nobody.html" || fail "nobody's curl got the page"
# No protected path for nobody: the engine asks for the PIN (no terminal to answer) and the key is not loaded.
grep -q "^Enter PKCS#11 token PIN for $FIXTURE_LABEL:" "$d/curl-nobody.err" && grep -qx "No PIN code was entered" "$d/curl-nobody.err" \
  || fail "nobody's curl did not ask for the PIN: $(cat "$d/curl-nobody.err")"
grep -qx "curl: (58) failed to load private key from crypto engine" "$d/curl-nobody.err" \
  || fail "nobody's curl failed otherwise than at loading the key: $(cat "$d/curl-nobody.err")"
echo "$NOBODY: curl: 'Enter PKCS#11 token PIN for $FIXTURE_LABEL:', 'No PIN code was entered',"\
  "'curl: (58) failed to load private key from crypto engine', no page"

# ---- NSS: certutil without -f -------------------------------------------------------------------
# nss_db WHO [RUNNER]: a new NSS database for WHO with the module added.
nss_db() {
  local who=$1 db
  shift
  db="sql:$d/nss-$who"
  mkdir "$d/nss-$who"
  [ "$who" = root ] || chown "$STRANGER_UID:$STRANGER_GID" "$d/nss-$who"
  "$@" certutil -N -d "$db" --empty-password || fail "$who: certutil -N failed"
  "$@" modutil -dbdir "$db" -add p11proxy -libfile "$MODULE" -force </dev/null >/dev/null 2>&1 || fail "$who: modutil -add failed"
}
nss_db root
nss_db nobody as_stranger
# certutil_no_pin WHO OUTPUT [RUNNER] -- ARGS: certutil with no -f, no terminal, stdin empty.
certutil_no_pin() {
  local who=$1 output=$2
  shift 2
  local runner=()
  while [ "$1" != -- ]; do runner+=("$1"); shift; done
  shift
  "${runner[@]}" timeout 60 setsid -w certutil -d "sql:$d/nss-$who" "$@" </dev/null >"$output" 2>&1
}
certutil_no_pin root "$d/certutil-K-root.out" -- -K -h "$FIXTURE_LABEL" \
  || fail "root: certutil -K -h $FIXTURE_LABEL without -f failed: $(cat "$d/certutil-K-root.out")"
grep -qE "<[ 0-9]+> rsa +01 +rsa-key\$" "$d/certutil-K-root.out" || fail "root: certutil -K lists no RSA key: $(cat "$d/certutil-K-root.out")"
grep -qE "<[ 0-9]+> ec +02 +ec-key\$" "$d/certutil-K-root.out" || fail "root: certutil -K lists no EC key: $(cat "$d/certutil-K-root.out")"
certutil_no_pin root "$d/certutil-L-root.out" -- -L -h "$FIXTURE_LABEL" \
  || fail "root: certutil -L -h $FIXTURE_LABEL failed: $(cat "$d/certutil-L-root.out")"
grep -qE "^$FIXTURE_LABEL:rsa-key +u,u,u\$" "$d/certutil-L-root.out" \
  || fail "root: certutil -L -h $FIXTURE_LABEL does not list rsa-key as a user certificate (a key behind it): $(cat "$d/certutil-L-root.out")"
certutil_no_pin root "$d/certutil-R-root.out" -- -R -h "$FIXTURE_LABEL" -k 02 -s "CN=unattended nss request" -a -o "$d/req-root.pem" \
  || fail "root: certutil -R -k 02 without -f failed: $(cat "$d/certutil-R-root.out")"
grep -q "verify OK" <<<"$(openssl req -in "$d/req-root.pem" -verify -noout 2>&1)" || fail "root: the request's signature does not verify"
openssl req -in "$d/req-root.pem" -pubkey -noout | cmp -s - "$d/ec-pub.pem" || fail "root: the request holds another public key"
echo "$ME: certutil -K -h $FIXTURE_LABEL (no -f): rsa 01 rsa-key, ec 02 ec-key; -L: rsa-key u,u,u;" \
  "-R -k 02 signs a request, openssl verifies it"

status=0
certutil_no_pin nobody "$d/certutil-K-nobody.out" as_stranger -- -K -h "$FIXTURE_LABEL" || status=$?
! grep -qE "rsa-key|ec-key" "$d/certutil-K-nobody.out" || fail "nobody's certutil -K lists the token's keys: $(cat "$d/certutil-K-nobody.out")"
grep -q "certutil: could not authenticate to token $FIXTURE_LABEL.: SEC_ERROR_BAD_PASSWORD" "$d/certutil-K-nobody.out" \
  || fail "nobody's certutil -K failed otherwise than at authenticating: $(cat "$d/certutil-K-nobody.out")"
[ $status -ne 0 ] || fail "nobody's certutil -K exited 0"
status=0
certutil_no_pin nobody "$d/certutil-R-nobody.out" as_stranger -- -R -h "$FIXTURE_LABEL" -k 02 -s "CN=nobody" -a \
  -o "$d/nss-nobody/req.pem" || status=$?
[ $status -ne 0 ] && [ ! -s "$d/nss-nobody/req.pem" ] || fail "nobody's certutil -R signed a request"
grep -q "could not authenticate to token $FIXTURE_LABEL.: SEC_ERROR_BAD_PASSWORD" "$d/certutil-R-nobody.out" \
  || fail "nobody's certutil -R failed otherwise than at authenticating: $(cat "$d/certutil-R-nobody.out")"
echo "$NOBODY: certutil -K and -R: 'could not authenticate to token $FIXTURE_LABEL.: SEC_ERROR_BAD_PASSWORD' (no terminal"\
  "to ask), no key listed, no request"

# ---- the brokers' view ------------------------------------------------------------------------
grep -q "client [0-9]* (uid $STRANGER_UID, " "$BROKER_LOG" || fail "the broker logged no client of nobody's"
grep -qE "\(uid 0, pid [0-9]+\): logged in to token '$FIXTURE_LABEL' .* on arrival" "$BROKER_LOG" \
  || fail "the broker did not log root's login on arrival: $(grep -i arrival "$BROKER_LOG" | head -3)"
! grep -qE "\(uid $STRANGER_UID, pid [0-9]+\): .*(logged in|C_Login .*-> CKR_OK)" "$BROKER_LOG" \
  || fail "the broker logged nobody in: $(grep -E "uid $STRANGER_UID.*(logged in|C_Login)" "$BROKER_LOG" | head -3)"
echo "arrival broker: $(grep -cE "\(uid 0, pid [0-9]+\): logged in to token .* on arrival" "$BROKER_LOG") logins on arrival for root's clients,"\
  "none for nobody's ($(grep -c "client [0-9]* (uid $STRANGER_UID, gid [0-9]*, pid" "$BROKER_LOG") clients)"
! grep -qF "$FIXTURE_PIN" "$BROKER_LOG" || fail "the broker's trace holds the PIN"
askpass_never_ran "at the end"
echo "unattended pkcs11-tool, ssh, curl and NSS: root's clients use the token without a PIN, nobody's get no login ($(fixture_elapsed) s)"
