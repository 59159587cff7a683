#!/usr/bin/env bash
# nginx serving TLS with its server key on the token through p11proxy.so, its config without any
# `env` line (issue 14): the master loads the key through OpenSSL's pkcs11 engine (libp11), forks a
# worker whose environment nginx empties, and libp11 initialises the module again in the worker on
# the first handshake. The module must reach the broker it found when the master loaded it. The
# page must come back over TLS with the token's certificate, and the broker must have seen the
# worker (a pid whose environment holds no P11_KIT_SERVER_ADDRESS) connect.
# nginx listens on a unix socket: no port, nothing installed system-wide.
set -euo pipefail
OUT=${1:-out}
. "$(dirname "$0")/lib.sh"
MODULE=$(readlink -f "$OUT/p11proxy.so")
ENGINE=/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so
[ -x /usr/sbin/nginx ] || fail "nginx is not installed (./build.sh installs it)"
[ -f "$ENGINE" ] || fail "no OpenSSL pkcs11 engine at $ENGINE (package libengine-pkcs11-openssl)"

fixture_token nginx
fixture_start_broker
d=$FIXTURE_DIR
cat > "$d/openssl.cnf" <<EOF
openssl_conf = openssl_init
[openssl_init]
engines = engine_section
[engine_section]
pkcs11 = pkcs11_section
[pkcs11_section]
engine_id = pkcs11
dynamic_path = $ENGINE
MODULE_PATH = $MODULE
PIN = $FIXTURE_PIN
init = 1
EOF
mkdir -p "$d/nginx"
# No `env` directive: nginx gives its workers an environment holding only TZ.
cat > "$d/nginx/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes 1;
user root;
pid $d/nginx/nginx.pid;
error_log $d/nginx/error.log info;
events { worker_connections 16; }
http {
    access_log off;
    client_body_temp_path $d/nginx/body;
    proxy_temp_path $d/nginx/proxy;
    fastcgi_temp_path $d/nginx/fastcgi;
    uwsgi_temp_path $d/nginx/uwsgi;
    scgi_temp_path $d/nginx/scgi;
    server {
        listen unix:$d/nginx/https.sock ssl;
        ssl_certificate $d/cert.pem;
        ssl_certificate_key "engine:pkcs11:pkcs11:object=demo-key;type=private";
        location / { return 200 "served by an nginx worker with the token's key\n"; }
    }
}
EOF
[ "$(id -u)" -eq 0 ] || sed -i '/^user root;/d' "$d/nginx/nginx.conf" # a non-root master runs its workers as itself

P11_KIT_SERVER_ADDRESS=$FIXTURE_ADDRESS OPENSSL_CONF=$d/openssl.cnf /usr/sbin/nginx -p "$d/nginx" -c "$d/nginx/nginx.conf" \
  >"$d/nginx/stdout" 2>&1 &
NGINX=$!
FIXTURE_PIDS+=($NGINX)
for _ in $(seq 1 200); do
  [ -S "$d/nginx/https.sock" ] && break
  kill -0 "$NGINX" 2>/dev/null || { cat "$d/nginx/stdout" "$d/nginx/error.log" >&2; fail "nginx exited before listening"; }
  sleep 0.1
done
[ -S "$d/nginx/https.sock" ] || fail "nginx did not listen within 20 s"

worker=$(pgrep -P "$NGINX" | head -1)
[ -n "$worker" ] || fail "no nginx worker process"
if tr '\0' '\n' < "/proc/$worker/environ" | grep -q '^P11_KIT_SERVER_ADDRESS='; then
  fail "the worker's environment still names the broker: the test would not show what it is for"
fi

status=0
page=$(curl -sS -k --max-time 60 --unix-socket "$d/nginx/https.sock" https://localhost/ 2>"$d/curl.err") || status=$?
if [ $status -ne 0 ] || [ "$page" != "served by an nginx worker with the token's key" ]; then
  echo "curl exit $status: $(cat "$d/curl.err")" >&2
  echo "--- nginx error.log" >&2; cat "$d/nginx/error.log" >&2
  echo "--- broker" >&2; cat "$FIXTURE_DIR/broker.err" >&2
  fail "no page over TLS from the worker"
fi

# The certificate nginx presented is the token's (so the handshake was signed with the token's key).
served=$(openssl s_client -unix "$d/nginx/https.sock" </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256)
ours=$(openssl x509 -in "$d/cert.pem" -noout -fingerprint -sha256)
[ "$served" = "$ours" ] || fail "nginx presented another certificate: $served, expected $ours"

grep -q "pid $worker) connected" "$FIXTURE_DIR/broker.err" \
  || { cat "$FIXTURE_DIR/broker.err" >&2; fail "the broker saw no connection from the worker (pid $worker)"; }
echo "nginx worker $worker (environment without P11_KIT_SERVER_ADDRESS) served TLS with the token's key: $page"
