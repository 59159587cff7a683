#!/usr/bin/env bash
# Java's SunPKCS11 provider on out/p11proxy.so: keytool lists both token entries (aliases rsa-key
# and ec-key, fingerprints those of the certificate files), and hosts/Sign.java (single-file
# source launcher) signs with SHA256withRSA and SHA256withECDSA on the token and verifies in
# software with the certificates' public keys. Against our broker and against p11-kit's server.
set -euo pipefail
OUT=${1:-out}
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/fixture-clients.sh"
MODULE=$(readlink -f "$OUT/p11proxy.so")
SIGN=$(readlink -f "$(dirname "$0")/hosts/Sign.java")
command -v java >/dev/null && command -v keytool >/dev/null || fail "no java/keytool (package default-jdk-headless; ./build.sh installs it)"
command -v javac >/dev/null || fail "no javac: 'java Sign.java' needs a JDK, not only a JRE (package default-jdk-headless)"

fixture_clients_token java
fixture_clients_brokers
d=$FIXTURE_DIR
printf 'name=p11proxy\nlibrary=%s\nslotListIndex=0\n' "$MODULE" > "$d/java.cfg"
for kind in rsa ec; do
  openssl x509 -in "$d/$kind.pem" -noout -fingerprint -sha256 | sed 's/.*=//' > "$d/$kind.fp"
done
export JAVA_TOOL_OPTIONS="-Djava.io.tmpdir=$d"

exercise() {
  local name=$1 out
  echo "== $name: $P11_KIT_SERVER_ADDRESS"
  out=$(timeout 120 keytool -list -storetype PKCS11 -providerclass sun.security.pkcs11.SunPKCS11 -providerarg "$d/java.cfg" \
        -storepass "$FIXTURE_PIN" 2>&1) || fail "$name: keytool -list failed: $out"
  for kind in rsa ec; do
    grep -q "^$kind-key, PrivateKeyEntry," <<<"$out" || fail "$name: keytool does not list $kind-key as a PrivateKeyEntry: $out"
    grep -A1 "^$kind-key, PrivateKeyEntry," <<<"$out" | grep -qF "$(cat "$d/$kind.fp")" \
      || fail "$name: keytool shows another certificate for $kind-key: $out"
  done
  echo "$name: keytool -list -storetype PKCS11: $(grep -c PrivateKeyEntry <<<"$out") entries, rsa-key and ec-key with their certificates' SHA-256 fingerprints"
  out=$(timeout 120 java "$SIGN" "$d/java.cfg" "$FIXTURE_PIN" "$d" 2>&1) || fail "$name: java Sign.java failed: $out"
  grep -q "^SHA256withRSA with rsa-key .* verified" <<<"$out" || fail "$name: no verified RSA signature: $out"
  grep -q "^SHA256withECDSA with ec-key .* verified" <<<"$out" || fail "$name: no verified ECDSA signature: $out"
  grep -v '^Picked up JAVA_TOOL_OPTIONS' <<<"$out" | sed "s/^/$name: java Sign.java: /"
}

export P11_KIT_SERVER_ADDRESS=$BROKER_ADDRESS
exercise broker
export P11_KIT_SERVER_ADDRESS=$P11KIT_ADDRESS
exercise p11kit-server
echo "Java SunPKCS11 ok against both brokers ($(fixture_elapsed) s)"
