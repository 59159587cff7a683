#!/usr/bin/env bash
# 802.1X EAP-TLS with a token key: hostapd (wired driver, internal EAP server) and wpa_supplicant
# (wired driver, OpenSSL pkcs11 engine on p11proxy.so) in two network namespaces joined by a veth
# pair. The supplicant must log CTRL-EVENT-EAP-SUCCESS within 30 s and hostapd must have verified
# the token's client certificate. Both configuration forms: engine=1 + key_id/cert_id (key and
# certificate on the token) and private_key="pkcs11:..." (key on the token, certificate file);
# RSA and EC keys; against our broker and against p11-kit's server.
# Debian's wpa_supplicant loads PKCS#11 modules only from under /usr/lib/ ("Not in trusted
# path"), so the test runs ./build.sh install first and ./build.sh uninstall at the end.
set -euo pipefail
OUT=${1:-out}
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/fixture-clients.sh"
INSTALLED_MODULE=/usr/lib/x86_64-linux-gnu/pkcs11/p11proxy.so
ENGINE=/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so
for tool in hostapd wpa_supplicant ip; do
  command -v $tool >/dev/null || fail "no $tool (packages hostapd, wpasupplicant, iproute2; ./build.sh installs them)"
done
[ -f "$ENGINE" ] || fail "no OpenSSL pkcs11 engine at $ENGINE (package libengine-pkcs11-openssl)"
[ "$(id -u)" -eq 0 ] || fail "needs root: it creates network namespaces and installs the module under /usr/lib"
[ ! -e "$INSTALLED_MODULE" ] || echo "note: $INSTALLED_MODULE exists already; it is replaced by this build and removed at the end"

fixture_clients_token wpa
fixture_clients_brokers
d=$FIXTURE_DIR
fixture_install
[ -f "$INSTALLED_MODULE" ] || fail "./build.sh install did not install $INSTALLED_MODULE"

# Two namespaces, a veth pair between them: authenticator side and supplicant side.
AUTH=p11a$$
SUPP=p11s$$
fixture_netns_pair "$AUTH" "$SUPP"

fixture_clients_hostapd "$AUTH"

# supplicant NAME KIND MODULE NETWORK-LINES: one wpa_supplicant run; EAP-TLS must succeed with the
# client certificate CN "p11proxy KIND client".
supplicant() {
  local name=$1 kind=$2 module=$3 network=$4 log="$d/wpa-$1.log" offset pid
  cat > "$d/wpa-$name.conf" <<EOF
ap_scan=0
eapol_version=2
pkcs11_engine_path=$ENGINE
pkcs11_module_path=$module
network={
  key_mgmt=IEEE8021X
  eap=TLS
  eapol_flags=0
  identity="p11proxy-$kind"
  ca_cert="$d/ca.pem"
  pin="$FIXTURE_PIN"
$network
}
EOF
  offset=$(($(wc -c <"$HOSTAPD_LOG") + 1))
  timeout 60 ip netns exec "$SUPP" wpa_supplicant -D wired -i "$SUPP" -c "$d/wpa-$name.conf" -dd >"$log" 2>&1 &
  pid=$!
  FIXTURE_PIDS+=($pid)
  local status=0
  fixture_wait_file "$log" "CTRL-EVENT-EAP-SUCCESS|CTRL-EVENT-EAP-FAILURE|Not in trusted path|Failed to initialize" 30 || status=$?
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  [ $status -eq 0 ] || { grep -E 'CTRL-EVENT|ENGINE|PKCS|TLS:' "$log" | tail -15 >&2; fail "$name: no EAP result from wpa_supplicant within 30 s"; }
  if ! grep -q "CTRL-EVENT-EAP-SUCCESS" "$log"; then
    grep -E 'CTRL-EVENT|ENGINE|PKCS|pkcs11|TLS:|trusted' "$log" | tail -15 >&2
    fail "$name: EAP-TLS did not succeed: $(grep -m1 -E 'CTRL-EVENT-EAP-FAILURE|Not in trusted path|Failed to initialize' "$log")"
  fi
  tail -c +"$offset" "$HOSTAPD_LOG" | grep -q "tls_verify_cb - preverify_ok=1 .*depth=0 buf='/O=p11proxy tests/CN=p11proxy $kind client'" \
    || fail "$name: hostapd did not verify the token's $kind client certificate"
  tail -c +"$offset" "$HOSTAPD_LOG" | grep -q "CTRL-EVENT-EAP-SUCCESS" || fail "$name: hostapd logged no EAP success"
  grep -q "Using private key from engine" "$log" || fail "$name: wpa_supplicant did not take the private key from the engine"
  echo "$name: CTRL-EVENT-EAP-SUCCESS; $(grep -m1 -o 'Using TLS version TLSv1\.[0-9]' "$log" | sed 's/Using //'),"\
    "hostapd verified 'CN=p11proxy $kind client'; private key from the engine"
}

token_network() { # engine=1 with key_id and cert_id: key and certificate both read from the token
  printf '  engine=1\n  engine_id="pkcs11"\n  key_id="%s"\n  cert_id="%s"\n' "$1" "pkcs11:token=$FIXTURE_LABEL;object=$2;type=cert"
}
uri_network() { # private_key="pkcs11:...", certificate from a file
  printf '  private_key="%s"\n  client_cert="%s"\n' "$1" "$2"
}

export P11_KIT_SERVER_ADDRESS=$BROKER_ADDRESS
echo "== broker: $P11_KIT_SERVER_ADDRESS"
supplicant broker-engine-key_id-rsa rsa "$INSTALLED_MODULE" "$(token_network "$RSA_URI" rsa-key)"
supplicant broker-private_key-uri-ec ec "$INSTALLED_MODULE" "$(uri_network "$EC_URI" "$d/ec.pem")"
supplicant broker-engine-key_id-ec ec "$INSTALLED_MODULE" "$(token_network "$EC_URI" ec-key)"
supplicant broker-private_key-uri-rsa rsa "$INSTALLED_MODULE" "$(uri_network "$RSA_URI" "$d/rsa.pem")"

export P11_KIT_SERVER_ADDRESS=$P11KIT_ADDRESS
echo "== p11kit-server: $P11_KIT_SERVER_ADDRESS"
supplicant p11kit-server-engine-key_id-rsa rsa "$INSTALLED_MODULE" "$(token_network "$RSA_URI" rsa-key)"
supplicant p11kit-server-private_key-uri-ec ec "$INSTALLED_MODULE" "$(uri_network "$EC_URI" "$d/ec.pem")"

# Why the test installs: the same module from the build directory is refused.
export P11_KIT_SERVER_ADDRESS=$BROKER_ADDRESS
if ( supplicant untrusted-path rsa "$(readlink -f "$OUT/p11proxy.so")" "$(token_network "$RSA_URI" rsa-key)" ) >/dev/null 2>&1; then
  echo "note: this wpa_supplicant also accepts $OUT/p11proxy.so outside /usr/lib"
elif grep -q "Not in trusted path" "$d/wpa-untrusted-path.log"; then
  echo "wpa_supplicant refuses $(readlink -f "$OUT/p11proxy.so"): $(grep -m1 -o 'Not in trusted path.*' "$d/wpa-untrusted-path.log" | cut -c1-80) (hence ./build.sh install)"
fi
echo "wpa_supplicant EAP-TLS ok against both brokers ($(fixture_elapsed) s)"
