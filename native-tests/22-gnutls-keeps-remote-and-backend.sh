#!/usr/bin/env bash
# A host that loads the backend module itself and also reaches it through our broker keeps both
# (issue 14). GnuTLS (p11tool) loads every module p11-kit has registered and drops one whose
# C_GetInfo equals a module it loaded already; SoftHSM is registered by Debian's package, and a
# user registers a p11-kit remote module (p11-kit's own client) that starts our broker serving the
# same SoftHSM (`remote: |p11proxy-broker stdio ...`). The broker must answer C_GetInfo as itself,
# as p11-kit's server does, so the token is listed twice: once from SoftHSM, once through the broker.
set -euo pipefail
OUT=${1:-out}
. "$(dirname "$0")/lib.sh"
[ -f /usr/share/p11-kit/modules/softhsm2.module ] || fail "SoftHSM is not registered with p11-kit (package softhsm2)"

fixture_token gnutls
d=$FIXTURE_DIR
BROKER=$(readlink -f "$OUT/p11proxy-broker")
# A user registration (p11-kit reads ~/.config/pkcs11/modules, but never as root): p11-kit's
# client, remote to our broker on its stdin/stdout.
mkdir -p "$d/home/.config/pkcs11/modules"
printf 'remote: |%s stdio --module %s\n' "$BROKER" "$SOFTHSM_MODULE" > "$d/home/.config/pkcs11/modules/p11proxy-broker.module"
run_as_user=()
if [ "$(id -u)" -eq 0 ]; then
  # p11tool runs as nobody, so p11-kit reads the user registration; the token must be theirs to use.
  chmod 755 "$d" "$d/home" "$d/home/.config" "$d/home/.config/pkcs11" "$d/home/.config/pkcs11/modules"
  chmod -R a+rwX "$d/tokens" "$d/softhsm2.conf"
  run_as_user=(setpriv --reuid=65534 --regid=65534 --clear-groups)
fi
tokens=$(env -u P11_KIT_SERVER_ADDRESS -u XDG_CONFIG_HOME HOME="$d/home" SOFTHSM2_CONF="$SOFTHSM2_CONF" \
  "${run_as_user[@]}" timeout 120 p11tool --list-tokens 2>"$d/p11tool.err") \
  || { cat "$d/p11tool.err" >&2; fail "p11tool --list-tokens failed"; }
listed=$(grep -c "^[[:space:]]*URL: pkcs11:.*token=$FIXTURE_LABEL" <<<"$tokens" || true)
if [ "$listed" -ne 2 ]; then
  echo "$tokens" >&2
  echo "--- p11tool's stderr (the broker's log among it)" >&2; cat "$d/p11tool.err" >&2
  fail "token $FIXTURE_LABEL listed $listed time(s) by p11tool, expected 2 (SoftHSM directly and through the broker)"
fi
echo "p11tool lists $FIXTURE_LABEL twice: from SoftHSM and through p11proxy-broker"
