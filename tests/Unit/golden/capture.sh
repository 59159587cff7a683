#!/bin/sh
# Regenerates the golden vectors in p11kit-0.24.1/ from real p11-kit traffic:
#   pkcs11-tool -> p11-kit-client.so -> capture.py (relay, records) -> p11-kit server -> SoftHSM
# Needs: p11-kit (server + p11-kit-client.so), softhsm2, opensc (pkcs11-tool), openssl, python3.
# The vectors are committed; run this only to refresh them.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
OUT="${OUT:-$HERE/p11kit-0.24.1}"
CLIENT="${CLIENT:-/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so}"
SOFTHSM="${SOFTHSM:-/usr/lib/softhsm/libsofthsm2.so}"
WORK=$(mktemp -d /tmp/p11golden.XXXXXX)
SERVER_PID=""
cleanup() {
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

mkdir -p "$OUT" "$WORK/tokens"
cat > "$WORK/softhsm2.conf" <<CONF
directories.tokendir = $WORK/tokens
objectstore.backend = file
log.level = ERROR
CONF
export SOFTHSM2_CONF="$WORK/softhsm2.conf"
softhsm2-util --init-token --free --label golden --so-pin 12345678 --pin 1234 >/dev/null

p11-kit server -f -n "$WORK/server.sock" --provider "$SOFTHSM" "pkcs11:token=golden" >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 50); do [ -S "$WORK/server.sock" ] && break; sleep 0.1; done
[ -S "$WORK/server.sock" ] || { cat "$WORK/server.log"; exit 1; }

# Test data.
printf 'golden vector data to be signed\n' > "$WORK/data.txt"
openssl dgst -sha256 -binary "$WORK/data.txt" > "$WORK/data.sha256"
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$WORK/cert.key" -subj "/CN=golden" -days 1 \
    -outform DER -out "$WORK/cert.der" 2>/dev/null

RELAY_SOCK="$WORK/relay.sock"
TOOL="pkcs11-tool --module $CLIENT"

# scenario NAME ARGS... : runs pkcs11-tool through a fresh relay, writes $OUT/NAME.txt
scenario() {
    name=$1; shift
    python3 "$HERE/capture.py" --listen "$RELAY_SOCK" --upstream "$WORK/server.sock" \
        --output "$OUT/$name.txt" --command "pkcs11-tool --module p11-kit-client.so $*" &
    relay=$!
    for _ in $(seq 50); do [ -S "$RELAY_SOCK" ] && break; sleep 0.1; done
    P11_KIT_SERVER_ADDRESS="unix:path=$RELAY_SOCK" $TOOL "$@" >"$WORK/$name.out" 2>&1 \
        || { echo "note: scenario $name failed (error replies are vectors too):" >&2; tail -3 "$WORK/$name.out" >&2; }
    sleep 0.3
    kill -TERM "$relay"
    wait "$relay" || true
}

scenario list-slots -L
scenario list-mechanisms -M
scenario info -I
scenario keypairgen-rsa --login --pin 1234 --keypairgen --key-type rsa:2048 --id 01 --label rk
scenario keypairgen-ec --login --pin 1234 --keypairgen --key-type EC:prime256v1 --id 02 --label ek
scenario list-objects -O --login --pin 1234
scenario sign-rsa-pkcs --login --pin 1234 --sign --id 01 -m RSA-PKCS -i "$WORK/data.txt" -o "$WORK/sig1"
scenario sign-sha256-rsa-pkcs --login --pin 1234 --sign --id 01 -m SHA256-RSA-PKCS -i "$WORK/data.txt" -o "$WORK/sig2"
scenario sign-rsa-pss --login --pin 1234 --sign --id 01 -m RSA-PKCS-PSS --hash-algorithm SHA256 --mgf MGF1-SHA256 \
    --salt-len 32 -i "$WORK/data.sha256" -o "$WORK/sig3"
scenario sign-ecdsa --login --pin 1234 --sign --id 02 -m ECDSA -i "$WORK/data.sha256" -o "$WORK/sig4"
scenario read-pubkey --read-object --type pubkey --id 01 -o "$WORK/pub.der"
openssl pkeyutl -encrypt -pubin -keyform DER -inkey "$WORK/pub.der" -in "$WORK/data.txt" -out "$WORK/oaep.bin" \
    -pkeyopt rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:sha256 -pkeyopt rsa_mgf1_md:sha256 2>/dev/null \
    || openssl rsautl -encrypt -oaep -pubin -keyform DER -inkey "$WORK/pub.der" -in "$WORK/data.txt" -out "$WORK/oaep.bin"
scenario decrypt-rsa-oaep --login --pin 1234 --decrypt --id 01 -m RSA-PKCS-OAEP --hash-algorithm SHA256 \
    --mgf MGF1-SHA256 -i "$WORK/oaep.bin" -o "$WORK/plain.txt"
scenario hash-sha256 --hash -m SHA256 -i "$WORK/data.txt" -o "$WORK/hash.bin"
scenario generate-random --generate-random 32 -o "$WORK/random.bin"
scenario keygen-aes --login --pin 1234 --keygen --key-type AES:32 --id 03 --label ak \
    --allowed-mechanisms AES-ECB,AES-CBC,AES-CBC-PAD
scenario verify-sha256-rsa-pkcs --verify --id 01 -m SHA256-RSA-PKCS -i "$WORK/data.txt" --signature-file "$WORK/sig2"
printf '0123456789abcdef0123456789abcdef' > "$WORK/block.bin"
scenario encrypt-aes-ecb --login --pin 1234 --encrypt --id 03 -m AES-ECB -i "$WORK/block.bin" -o "$WORK/block.enc"
scenario write-cert --login --pin 1234 --write-object "$WORK/cert.der" --type cert --id 04 --label golden-cert
scenario read-cert --read-object --type cert --id 04 -o "$WORK/cert-read.der"
scenario delete-cert --login --pin 1234 --delete-object --type cert --id 04
scenario test --test --login --pin 1234
