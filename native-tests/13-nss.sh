#!/usr/bin/env bash
# NSS through out/p11proxy.so: modutil adds the module to a fresh NSS database, certutil lists the
# token's two certificates (-L, one exported and compared) and, after login, its two private keys
# (-K); certutil -R signs a certificate request with each token key, and openssl verifies it and
# finds the key file's public key in it. Against our broker and against p11-kit's server.
set -euo pipefail
OUT=${1:-out}
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/fixture-clients.sh"
MODULE=$(readlink -f "$OUT/p11proxy.so")
command -v modutil >/dev/null && command -v certutil >/dev/null || fail "no modutil/certutil (package libnss3-tools; ./build.sh installs it)"

fixture_clients_token nss
fixture_clients_brokers
d=$FIXTURE_DIR

exercise() {
  local name=$1 db="sql:$d/db-$1" out kind id
  echo "== $name: $P11_KIT_SERVER_ADDRESS"
  mkdir "$d/db-$name"
  timeout 60 certutil -N -d "$db" --empty-password || fail "$name: certutil -N failed"
  out=$(timeout 60 modutil -dbdir "$db" -add p11proxy -libfile "$MODULE" -force 2>&1) || fail "$name: modutil -add failed: $out"
  out=$(timeout 60 modutil -dbdir "$db" -list p11proxy 2>&1) || fail "$name: modutil -list p11proxy failed: $out"
  grep -q "Token Name: $FIXTURE_LABEL" <<<"$out" || grep -q "token: $FIXTURE_LABEL" <<<"$out" \
    || fail "$name: modutil does not show the token: $out"
  echo "$name: modutil -add p11proxy -libfile $MODULE: module loaded, token $FIXTURE_LABEL present"

  out=$(timeout 60 certutil -L -d "$db" -h all 2>&1) || fail "$name: certutil -L failed: $out"
  for kind in rsa ec; do
    grep -qE "^$FIXTURE_LABEL:$kind-key +u,u,u\$" <<<"$out" || fail "$name: certutil -L does not list $FIXTURE_LABEL:$kind-key as a user certificate: $out"
  done
  timeout 60 certutil -L -d "$db" -h "$FIXTURE_LABEL" -f "$d/pinfile" -n "$FIXTURE_LABEL:ec-key" -r >"$d/ec-nss.der" 2>/dev/null \
    || fail "$name: certutil -L -n $FIXTURE_LABEL:ec-key -r failed"
  cmp -s "$d/ec-nss.der" "$d/ec.der" || fail "$name: the certificate NSS reads differs from the one written"
  echo "$name: certutil -L -h all lists $FIXTURE_LABEL:rsa-key and $FIXTURE_LABEL:ec-key (u,u,u); ec-key's certificate read back byte for byte"

  out=$(timeout 60 certutil -K -d "$db" -h all -f "$d/pinfile" 2>&1) || fail "$name: certutil -K failed: $out"
  grep -qE "<[ 0-9]+> rsa +01 +rsa-key\$" <<<"$out" || fail "$name: certutil -K does not list the RSA key: $out"
  grep -qE "<[ 0-9]+> ec +02 +ec-key\$" <<<"$out" || fail "$name: certutil -K does not list the EC key: $out"
  echo "$name: certutil -K -h all -f pinfile lists rsa 01 rsa-key and ec 02 ec-key"

  for kind in rsa ec; do
    id=01; [ $kind = ec ] && id=02
    rm -f "$d/req.pem"
    timeout 60 certutil -R -d "$db" -h "$FIXTURE_LABEL" -f "$d/pinfile" -k "$id" -s "CN=nss $kind request" -a \
      -o "$d/req.pem" </dev/null >"$d/req.out" 2>&1 || fail "$name: certutil -R with key id $id failed: $(cat "$d/req.out")"
    openssl req -in "$d/req.pem" -verify -noout 2>&1 | grep -q "verify OK" || fail "$name: the $kind request's signature does not verify"
    openssl req -in "$d/req.pem" -pubkey -noout | cmp -s - "$d/$kind-pub.pem" || fail "$name: the $kind request holds another public key"
  done
  echo "$name: certutil -R -k 01 / -k 02 signs requests with the token keys; openssl verifies both"
}

export P11_KIT_SERVER_ADDRESS=$BROKER_ADDRESS
exercise broker
export P11_KIT_SERVER_ADDRESS=$P11KIT_ADDRESS
exercise p11kit-server
echo "NSS ok against both brokers ($(fixture_elapsed) s)"
