#!/usr/bin/env bash
# Unattended 802.1X (issue 16): wpa_supplicant EAP-TLS with the token's key and no pin= in its
# configuration, against hostapd (wired driver, internal EAP server), the two in network
# namespaces joined by a veth pair (as 15-wpa-supplicant.sh). The broker holds the PIN, from a
# systemd credential (pin-source=credential:token-pin, $CREDENTIALS_DIRECTORY as a unit with
# LoadCredentialEncrypted= gives it), and logs root's group in on arrival
# (--login-on-arrival gid:root=TOKEN):
#   root's wpa_supplicant (engine=1 with key_id/cert_id, RSA; private_key="pkcs11:..." with a
#     certificate file, EC): CTRL-EVENT-EAP-SUCCESS, hostapd verified the token's certificate;
#   the same supplicant run as the system user nobody (admitted by --allow-uid, named by no
#     policy; CAP_NET_RAW and CAP_NET_ADMIN kept as ambient capabilities): its engine cannot load
#     the key, wpa_supplicant asks for the smart card's PIN (CTRL-REQ-PIN) and hostapd sees no
#     EAP success.
# Debian's wpa_supplicant loads PKCS#11 modules only from under /usr/lib/, hence ./build.sh install.
set -euo pipefail
OUT=${1:-out}
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/fixture-clients.sh"
INSTALLED_MODULE=/usr/lib/x86_64-linux-gnu/pkcs11/p11proxy.so
ENGINE=/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so
for tool in hostapd wpa_supplicant ip setpriv; do
  command -v $tool >/dev/null || fail "no $tool (packages hostapd, wpasupplicant, iproute2, util-linux; ./build.sh installs them)"
done
[ -f "$ENGINE" ] || fail "no OpenSSL pkcs11 engine at $ENGINE (package libengine-pkcs11-openssl)"
[ "$(id -u)" -eq 0 ] || fail "needs root: it creates network namespaces and installs the module under /usr/lib"

CLIENTS_PIN=unattended-PIN-4711
fixture_clients_token wpa-unattended
d=$FIXTURE_DIR
fixture_unattended_broker arrival credential --login-on-arrival "gid:root=$TOKEN_URI"
echo "broker: $BROKER_ADDRESS, --pin $TOKEN_URI?pin-source=$BROKER_PIN_SOURCE (CREDENTIALS_DIRECTORY=$d/credentials)," \
  "--login-on-arrival gid:root=$TOKEN_URI," \
  "--allow-uid $STRANGER_UID (nobody)"
fixture_install
[ -f "$INSTALLED_MODULE" ] || fail "./build.sh install did not install $INSTALLED_MODULE"

AUTH=p11a$$
SUPP=p11s$$
fixture_netns_pair "$AUTH" "$SUPP"
fixture_clients_hostapd "$AUTH"

# supplicant WHO NAME KIND NETWORK-LINES: one wpa_supplicant run as WHO (root or nobody), no pin=
# in its configuration and no terminal; its log in $d/wpa-NAME.log, the part of hostapd's log it
# caused in $d/hostapd-NAME.log. Returns 0 on CTRL-EVENT-EAP-SUCCESS, 1 on another result (EAP
# failure, a PIN request), fails the test when nothing happens within 30 s.
supplicant() {
  local who=$1 name=$2 kind=$3 network=$4 log="$d/wpa-$2.log" offset pid status=0
  cat > "$d/wpa-$name.conf" <<EOF
ap_scan=0
eapol_version=2
pkcs11_engine_path=$ENGINE
pkcs11_module_path=$INSTALLED_MODULE
network={
  key_mgmt=IEEE8021X
  eap=TLS
  eapol_flags=0
  identity="p11proxy-$kind"
  ca_cert="$d/ca.pem"
$network
}
EOF
  chmod 0644 "$d/wpa-$name.conf"
  fixture_unattended_no_pin_anywhere "$d/wpa-$name.conf"
  grep -q 'pin=' "$d/wpa-$name.conf" && fail "$name: the configuration has a pin= line"
  local runner=()
  [ "$who" = nobody ] && runner=(setpriv --reuid="$STRANGER_UID" --regid="$STRANGER_GID" --clear-groups
                                 --inh-caps=+net_raw,+net_admin --ambient-caps=+net_raw,+net_admin)
  offset=$(($(wc -c <"$HOSTAPD_LOG") + 1))
  timeout 60 ip netns exec "$SUPP" setsid -w "${runner[@]}" env P11_KIT_SERVER_ADDRESS="$BROKER_ADDRESS" \
    wpa_supplicant -D wired -i "$SUPP" -c "$d/wpa-$name.conf" -dd </dev/null >"$log" 2>&1 &
  pid=$!
  FIXTURE_PIDS+=($pid)
  fixture_wait_file "$log" "CTRL-EVENT-EAP-SUCCESS|CTRL-EVENT-EAP-FAILURE|CTRL-REQ-PIN|Not in trusted path|Failed to initialize" 30 || status=$?
  sleep 0.5
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  tail -c +"$offset" "$HOSTAPD_LOG" > "$d/hostapd-$name.log"
  [ $status -eq 0 ] || { grep -E 'CTRL-EVENT|ENGINE|PKCS|TLS:' "$log" | tail -15 >&2; fail "$name: no EAP result from wpa_supplicant within 30 s"; }
  grep -q "CTRL-EVENT-EAP-SUCCESS" "$log"
}

token_network() { # engine=1 with key_id and cert_id: key and certificate both read from the token
  printf '  engine=1\n  engine_id="pkcs11"\n  key_id="%s"\n  cert_id="%s"\n' "$1" "pkcs11:token=$FIXTURE_LABEL;object=$2;type=cert"
}
uri_network() { # private_key="pkcs11:...", certificate from a file
  printf '  private_key="%s"\n  client_cert="%s"\n' "$1" "$2"
}

# succeeded NAME KIND: the checks of a successful run.
succeeded() {
  local name=$1 kind=$2
  grep -q "tls_verify_cb - preverify_ok=1 .*depth=0 buf='/O=p11proxy tests/CN=p11proxy $kind client'" "$d/hostapd-$name.log" \
    || fail "$name: hostapd did not verify the token's $kind client certificate"
  grep -q "CTRL-EVENT-EAP-SUCCESS" "$d/hostapd-$name.log" || fail "$name: hostapd logged no EAP success"
  grep -q "Using private key from engine" "$d/wpa-$name.log" || fail "$name: wpa_supplicant did not take the private key from the engine"
  ! grep -q "CTRL-REQ-PIN" "$d/wpa-$name.log" || fail "$name: wpa_supplicant asked for a PIN"
  echo "$name: no pin=: CTRL-EVENT-EAP-SUCCESS; $(grep -m1 -o 'Using TLS version TLSv1\.[0-9]' "$d/wpa-$name.log" | sed 's/Using //'),"\
    "hostapd verified 'CN=p11proxy $kind client'; private key from the engine, no PIN asked for"
}

supplicant root root-engine-key_id-rsa rsa "$(token_network "$RSA_URI" rsa-key)" \
  || fail "root-engine-key_id-rsa: EAP-TLS did not succeed without pin=: $(grep -m1 -E 'CTRL-EVENT-EAP-FAILURE|CTRL-REQ-PIN|ENGINE' "$d/wpa-root-engine-key_id-rsa.log")"
succeeded root-engine-key_id-rsa rsa
supplicant root root-private_key-uri-ec ec "$(uri_network "$EC_URI" "$d/ec.pem")" \
  || fail "root-private_key-uri-ec: EAP-TLS did not succeed without pin=: $(grep -m1 -E 'CTRL-EVENT-EAP-FAILURE|CTRL-REQ-PIN|ENGINE' "$d/wpa-root-private_key-uri-ec.log")"
succeeded root-private_key-uri-ec ec
grep -qE "uid 0.* logged in to token '$FIXTURE_LABEL' .*on arrival" "$BROKER_LOG" \
  || fail "the broker did not log root's login on arrival: $(grep -i 'arrival' "$BROKER_LOG" | head -3)"

name=nobody-engine-key_id-rsa
if supplicant nobody $name rsa "$(token_network "$RSA_URI" rsa-key)"; then
  fail "$name: EAP-TLS succeeded without a PIN for nobody: the policy names only root"
fi
grep -q "^Enter PKCS#11 token PIN for $FIXTURE_LABEL:" "$d/wpa-$name.log" && grep -qx "No PIN code was entered" "$d/wpa-$name.log" \
  || fail "$name: the engine did not ask for the PIN: $(grep -E 'PIN|ENGINE' "$d/wpa-$name.log" | tail -5)"
grep -qF "ENGINE: cannot load private key with id '$RSA_URI' [error:1400006B:UI routines::processing error]" "$d/wpa-$name.log" \
  || fail "$name: wpa_supplicant's engine failed otherwise: $(grep -m1 'ENGINE: cannot load' "$d/wpa-$name.log")"
grep -q "CTRL-REQ-PIN-0:PIN needed for SSID " "$d/wpa-$name.log" \
  || fail "$name: wpa_supplicant failed otherwise than by asking for the PIN: $(grep -E 'CTRL-|ENGINE' "$d/wpa-$name.log" | tail -5)"
! grep -q "CTRL-EVENT-EAP-SUCCESS" "$d/hostapd-$name.log" || fail "$name: hostapd logged an EAP success"
! grep -qE "uid $STRANGER_UID.* logged in to token" "$BROKER_LOG" || fail "the broker logged nobody in"
echo "$name: no pin=: the engine asks 'Enter PKCS#11 token PIN for $FIXTURE_LABEL:', 'No PIN code was entered'," \
  "'ENGINE: cannot load private key ... [error:1400006B:UI routines::processing error]', then '$(grep -m1 -o 'CTRL-REQ-PIN-0:PIN needed for SSID.*' "$d/wpa-$name.log")'; hostapd: no EAP success"
echo "unattended wpa_supplicant: root's authenticates with no pin=, nobody's is asked for a PIN ($(fixture_elapsed) s)"
