#!/usr/bin/env bash
# p11-kit's trust module served through the broker lists the same certificates (count, labels
# and the SHA-256 of every DER value) as when loaded directly; each host loads, dlcloses and
# reloads the module.
set -euo pipefail
OUT=${1:-out}
. "$(dirname "$0")/lib.sh"
trust=/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-trust.so
[ -f "$trust" ] || fail "$trust is missing (Debian package p11-kit-modules)"
FIXTURE_DIR=$(mktemp -d "${TMPDIR:-/tmp}/p11proxy-trust.XXXXXX")
cc -O2 -Wall -o "$FIXTURE_DIR/certdump" "$(dirname "$0")/hosts/certdump.c" -I/usr/include/p11-kit-1 -ldl -lcrypto \
  || fail "cannot build the host (needs libssl-dev)"
"$FIXTURE_DIR/certdump" "$trust" | sort > "$FIXTURE_DIR/direct" || fail "the trust module loaded directly lists nothing"
socket=$FIXTURE_DIR/broker.sock
"$OUT/p11proxy-broker" serve --module "$trust" --socket "$socket" >/dev/null 2>"$FIXTURE_DIR/broker.err" &
FIXTURE_PIDS+=($!)
fixture_wait_socket "$socket"
P11_KIT_SERVER_ADDRESS="unix:path=$socket" "$FIXTURE_DIR/certdump" "$OUT/p11proxy.so" | sort > "$FIXTURE_DIR/proxied" \
  || fail "nothing listed through the broker"
diff "$FIXTURE_DIR/direct" "$FIXTURE_DIR/proxied" >&2 || fail "certificates differ between direct and proxied"
echo "$(wc -l < "$FIXTURE_DIR/direct") certificates, identical labels and DER values through the broker; dlclose and reload fine"
