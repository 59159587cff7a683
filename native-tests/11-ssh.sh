#!/usr/bin/env bash
# OpenSSH through out/p11proxy.so: ssh-keygen -D prints both token keys (the same as the key files
# and the certificates hold), and ssh -I logs in to an sshd the test runs on 127.0.0.1, the PIN
# coming from an SSH_ASKPASS program; sshd's log names the token key it accepted. With the RSA and
# the EC key, against our broker and against p11-kit's server.
set -euo pipefail
OUT=${1:-out}
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/fixture-clients.sh"
MODULE=$(readlink -f "$OUT/p11proxy.so")
command -v ssh >/dev/null || fail "no ssh (package openssh-client)"

fixture_clients_token ssh
fixture_clients_brokers
d=$FIXTURE_DIR

# What the token's keys must look like in OpenSSH's format: from the key files and from the
# certificates.
for kind in rsa ec; do
  ssh-keygen -y -f "$d/$kind-key.pem" | awk '{print $1, $2}' > "$d/$kind.sshpub" || fail "ssh-keygen -y $kind-key.pem failed"
  openssl x509 -in "$d/$kind.pem" -pubkey -noout > "$d/$kind-certpub.pem"
  ssh-keygen -i -m PKCS8 -f "$d/$kind-certpub.pem" | awk '{print $1, $2}' | cmp -s - "$d/$kind.sshpub" \
    || fail "the $kind certificate's public key differs from $kind-key.pem's"
  ssh-keygen -l -f "$d/$kind.sshpub" | awk '{print $2}' > "$d/$kind.fp"
done

list_keys() {
  local name=$1 out
  out=$(timeout 30 ssh-keygen -D "$MODULE" 2>"$d/keygen.err") || fail "$name: ssh-keygen -D failed: $(cat "$d/keygen.err")"
  for kind in rsa ec; do
    grep -qxF "$(cat "$d/$kind.sshpub") $kind-key" <<<"$out" \
      || fail "$name: ssh-keygen -D does not print $kind-key as in $kind-key.pem; it printed: $out"
  done
  echo "$name: ssh-keygen -D prints $(wc -l <<<"$out") keys; rsa-key and ec-key equal ssh-keygen -y of the key files and the certificates' keys"
}

# sshd on 127.0.0.1 with its own host key and configuration, root logins by public key only.
fixture_clients_sshd "PubkeyAcceptedAlgorithms rsa-sha2-512,rsa-sha2-256,ecdsa-sha2-nistp256"

# The PIN comes from an askpass program (no terminal: setsid -w), which records that it was asked.
cat > "$d/askpass" <<EOF
#!/bin/sh
echo "\$*" >> "$d/askpass.log"
echo $FIXTURE_PIN
EOF
chmod 0755 "$d/askpass"

# login NAME KINDS...: authorized_keys holds the token keys KINDS; ssh -I logs in and sshd must
# have accepted one of them.
login() {
  local name=$1 kind out line accepted=""
  shift
  : > "$d/authorized_keys"
  for kind in "$@"; do cat "$d/$kind.sshpub" >> "$d/authorized_keys"; done
  : > "$d/askpass.log"
  local before
  before=$(grep -c 'Accepted publickey' "$d/sshd.log" || true)
  out=$(SSH_ASKPASS="$d/askpass" SSH_ASKPASS_REQUIRE=force DISPLAY=:0 timeout 60 setsid -w \
        ssh -F /dev/null -I "$MODULE" -p "$SSHD_PORT" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
            -o PreferredAuthentications=publickey -o ConnectTimeout=20 \
            root@127.0.0.1 echo token-login-ok </dev/null 2>"$d/ssh.err") \
    || fail "$name: ssh -I failed: $(tail -5 "$d/ssh.err"); sshd: $(tail -5 "$d/sshd.log")"
  grep -qx token-login-ok <<<"$out" || fail "$name: the remote command did not print token-login-ok: $out"
  [ -s "$d/askpass.log" ] || fail "$name: the PIN was never asked for"
  for _ in $(seq 1 20); do
    [ "$(grep -c 'Accepted publickey' "$d/sshd.log" || true)" -gt "$before" ] && break
    sleep 0.1
  done
  line=$(grep 'Accepted publickey' "$d/sshd.log" | tail -1)
  for kind in "$@"; do
    grep -qF "$(cat "$d/$kind.fp")" <<<"$line" && accepted=$kind-key
  done
  [ -n "$accepted" ] || fail "$name: sshd did not log accepting a token key ($*): $line"
  echo "$name: authorized $*: ssh -I p11proxy.so root@127.0.0.1 -> token-login-ok; sshd accepted $accepted ($(awk '{print $(NF-1), $NF}' <<<"$line")); PIN from askpass ($(head -1 "$d/askpass.log"))"
}

export P11_KIT_SERVER_ADDRESS=$BROKER_ADDRESS
echo "== broker: $P11_KIT_SERVER_ADDRESS"
list_keys broker
login broker rsa ec
login broker rsa
login broker ec

export P11_KIT_SERVER_ADDRESS=$P11KIT_ADDRESS
echo "== p11kit-server: $P11_KIT_SERVER_ADDRESS"
list_keys p11kit-server
login p11kit-server rsa ec
login p11kit-server rsa
login p11kit-server ec
echo "ssh ok against both brokers ($(fixture_elapsed) s)"
