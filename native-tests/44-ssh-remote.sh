#!/usr/bin/env bash
# A token on another machine: the HSM host runs sshd (here on 127.0.0.1, own configuration, own
# host key, own port) and lets a client key run exactly one command, pinned in authorized_keys:
#   restrict,command="... p11proxy-broker stdio --module ... --token pkcs11:token=p11proxy-sshremote" ssh-ed25519 ...
# The client's module address is '|ssh -i KEY -p PORT root@127.0.0.1 p11proxy-broker stdio ...'.
# Shown: the client signs with the token's RSA key (openssl verifies); the HSM host's second
# token is invisible, even though the client's own command line asks for it (the pinned command
# wins); the key cannot run anything else; when the ssh connection is killed, the old session
# fails and the next call reconnects over a new ssh connection and signs again.
# Reference run: the same host program on SoftHSM loaded directly.
set -euo pipefail
OUT=${1:-out}
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/fixture-clients.sh"
MODULE=$(readlink -f "$OUT/p11proxy.so")
BROKER=$(readlink -f "$OUT/p11proxy-broker")

fixture_clients_token sshremote
d=$FIXTURE_DIR
softhsm2-util --init-token --free --label p11proxy-other --so-pin "$FIXTURE_SO_PIN" --pin "$FIXTURE_PIN" >/dev/null \
  || fail "softhsm2-util could not create the second token"
cc -O2 -Wall -o "$d/reconnecthost" "$(dirname "$0")/hosts/reconnecthost.c" -I/usr/include/p11-kit-1 -ldl \
  || fail "cannot build the host"
printf 'signed on the HSM host\n' > "$d/data"

echo "== direct: SoftHSM loaded by the host"
out=$(timeout 60 "$d/reconnecthost" "$SOFTHSM_MODULE" "$FIXTURE_PIN" "$d" "$FIXTURE_LABEL" once 2>&1) || fail "direct: $out"
openssl dgst -sha256 -verify "$d/rsa-pub.pem" -signature "$d/sig1" "$d/data" >/dev/null || fail "direct: the signature does not verify"
echo "direct: $(head -1 <<<"$out"); signature verifies"
rm -f "$d/sig1"

# The HSM host: sshd with its own host key, root logins by public key only.
ssh-keygen -q -t ed25519 -N '' -f "$d/client_key" -C p11proxy-client || fail "cannot make a client key"
# The pinned command: the broker, the module and the one token this key may reach. SOFTHSM2_CONF
# only because SoftHSM stands in for the HSM (a real HSM's module needs none).
printf 'restrict,command="SOFTHSM2_CONF=%s exec %s stdio --module %s --token pkcs11:token=%s" %s\n' \
  "$SOFTHSM2_CONF" "$BROKER" "$SOFTHSM_MODULE" "$FIXTURE_LABEL" "$(cat "$d/client_key.pub")" > "$d/authorized_keys"
fixture_clients_sshd
printf '[127.0.0.1]:%s %s\n' "$SSHD_PORT" "$(cut -d' ' -f1,2 "$d/host_key.pub")" > "$d/known_hosts"

SSH="ssh -F /dev/null -i $d/client_key -p $SSHD_PORT -o UserKnownHostsFile=$d/known_hosts -o StrictHostKeyChecking=yes -o BatchMode=yes"
# The client asks for the other token and another module: the pinned command must win.
export P11_KIT_SERVER_ADDRESS="|$SSH root@127.0.0.1 p11proxy-broker stdio --module /usr/lib/softhsm/libsofthsm2.so --token pkcs11:token=p11proxy-other"

echo "== over ssh: $P11_KIT_SERVER_ADDRESS"
out=$(timeout 60 pkcs11-tool --module "$MODULE" -L 2>&1) || fail "pkcs11-tool -L over ssh failed: $out"
grep -q "token label *: $FIXTURE_LABEL\$" <<<"$out" || fail "pkcs11-tool -L over ssh does not list $FIXTURE_LABEL: $out"
! grep -q "p11proxy-other" <<<"$out" || fail "the other token is visible over ssh: $out"
[ "$(grep -c 'token label' <<<"$out")" -eq 1 ] || fail "more than one token over ssh: $out"
echo "pkcs11-tool -L: one token, $FIXTURE_LABEL; p11proxy-other (asked for by the client) is not visible"
if out=$(timeout 60 pkcs11-tool --module "$MODULE" --token-label p11proxy-other -O 2>&1); then
  fail "pkcs11-tool --token-label p11proxy-other worked over ssh: $out"
fi
echo "pkcs11-tool --token-label p11proxy-other: refused ($(tail -1 <<<"$out"))"

# The key runs only the pinned command: `id` starts the broker instead, which prints nothing.
out=$(timeout 30 $SSH root@127.0.0.1 id </dev/null 2>&1) || true
! grep -q 'uid=' <<<"$out" || fail "the client key ran another command: $out"
echo "ssh -i KEY root@127.0.0.1 id: no shell command runs (got: '${out:-nothing}')"

# A long-lived client: signs, the ssh connection is killed, the next call reconnects.
mkfifo "$d/go"
exec 8<>"$d/go"
timeout 120 "$d/reconnecthost" "$MODULE" "$FIXTURE_PIN" "$d" "$FIXTURE_LABEL" <&8 >"$d/host.out" 2>"$d/host.err" &
host=$!
FIXTURE_PIDS+=($host)
fixture_wait_file "$d/host.out" '^signed 1$' 60 || fail "no first signature over ssh: $(cat "$d/host.err")"
openssl dgst -sha256 -verify "$d/rsa-pub.pem" -signature "$d/sig1" "$d/data" >/dev/null || fail "the first signature does not verify"
host_process=$(pgrep -P "$host" -x reconnecthost) || fail "no reconnecthost under timeout"
ssh_pid=$(pgrep -P "$host_process" -x ssh) || fail "the host has no ssh child"
remote_broker=$(pgrep -f "^$BROKER stdio --module $SOFTHSM_MODULE --token pkcs11:token=$FIXTURE_LABEL\$" | head -1) \
  || fail "no broker started by sshd"
echo "signed over ssh ($(head -1 "$d/host.out")); ssh pid $ssh_pid, broker on the HSM host pid $remote_broker"
kill -9 "$ssh_pid"
for _ in $(seq 1 100); do kill -0 "$remote_broker" 2>/dev/null || break; sleep 0.1; done
! kill -0 "$remote_broker" 2>/dev/null || fail "the broker on the HSM host outlived its ssh connection"
echo "killed ssh (SIGKILL); the HSM host's broker exited with its connection"
echo go >&8
status=0
wait "$host" || status=$?
[ $status -eq 0 ] || fail "the host did not sign again after the connection was killed ($status): $(cat "$d/host.err")"
grep -q '^signed 2$' "$d/host.out" || fail "no second signature: $(cat "$d/host.out")"
openssl dgst -sha256 -verify "$d/rsa-pub.pem" -signature "$d/sig2" "$d/data" >/dev/null || fail "the second signature does not verify"
new_ssh=$(grep -c 'Accepted publickey' "$d/sshd.log")
echo "after the kill: $(sed -n 's/^old session after the connection died: 0x30$/old session -> CKR_DEVICE_REMOVED/p; s/^old session after the connection died: /old session -> /p' "$d/host.out");" \
  "C_GetSlotList reconnected ($(sed -n 4p "$d/host.out")), new session, signature verifies; sshd accepted $new_ssh connections in all"
grep -q 'restrict' "$d/authorized_keys" || fail "authorized_keys lost its restrict option"
echo "token over ssh ok ($(fixture_elapsed) s)"
