#!/usr/bin/env bash
# Unattended web servers (issue 16): nginx and Apache httpd serve TLS with their server keys on
# the token, named only by pkcs11: URIs through libp11's engine on out/p11proxy.so, and no PIN
# anywhere (no PIN line in openssl.cnf, no pin-value in the URIs). The broker holds the PIN
# (pin-source=file:) and logs in on arrival the clients of the users its policy names. The
# server's parent (root) loads the key at start; its worker or children (www-data, each with its
# own connection to the broker) sign the handshakes:
#   policy naming root and www-data: curl --cacert verifies the token's certificate and reads the
#     page, for the RSA and the EC key, from nginx and from httpd;
#   policy naming root only (www-data admitted by --allow-uid, named by no policy): the parent
#     (logged in) still starts, but a www-data process's connection is not logged in: the private
#     key the parent found is no object for it (C_SignInit -> CKR_OBJECT_HANDLE_INVALID), and the
#     handshake fails with an internal-error alert.
set -euo pipefail
OUT=${1:-out}
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/fixture-clients.sh"
MODULE=$(readlink -f "$OUT/p11proxy.so")
ENGINE=/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so
NGINX=/usr/sbin/nginx
[ -x "$NGINX" ] || fail "no $NGINX (package nginx; ./build.sh installs it)"
[ -f "$ENGINE" ] || fail "no OpenSSL pkcs11 engine at $ENGINE (package libengine-pkcs11-openssl)"
[ "$(id -u)" -eq 0 ] || fail "needs root: nginx's worker runs as www-data"
APACHE=/usr/sbin/apache2
APACHE_MODULES=/usr/lib/apache2/modules
[ -x "$APACHE" ] || fail "no $APACHE (package apache2; ./build.sh installs it)"
WWW_UID=$(id -u www-data) || fail "no user www-data"
setpriv --reuid=www-data --regid=www-data --clear-groups test -r "$MODULE" || fail "www-data cannot read $MODULE"

CLIENTS_PIN=unattended-PIN-4711
fixture_clients_token web-unattended
fixture_clients_server_keys
d=$FIXTURE_DIR
fixture_clients_engine_conf "$d/openssl.cnf" "$MODULE" 1 no-pin
fixture_unattended_no_pin_anywhere "$d/openssl.cnf"
WWW=$d/www
mkdir -p "$WWW"
printf 'served with a key on the token, no PIN given\n' > "$WWW/index.html"
chmod -R a+rX "$WWW"

# nginx_run NAME: nginx (master root, one www-data worker) with the RSA and the EC server key, on
# the broker at BROKER_ADDRESS. Leaves the port of each server in RSA_PORT / EC_PORT, the error log
# in $d/nginx-NAME/logs/error.log, the worker's pid in WORKER; nginx runs until nginx_stop.
nginx_run() {
  local name=$1 prefix="$d/nginx-$1"
  mkdir -p "$prefix/logs"
  RSA_PORT=$(fixture_free_port)
  EC_PORT=$(fixture_free_port)
  fixture_clients_nginx_conf "$prefix" "$RSA_PORT" "$EC_PORT"
  fixture_unattended_no_pin_anywhere "$prefix/nginx.conf"
  OPENSSL_CONF="$d/openssl.cnf" P11_KIT_SERVER_ADDRESS="$BROKER_ADDRESS" timeout 120 setsid -w "$NGINX" -p "$prefix" \
    -c "$prefix/nginx.conf" </dev/null >"$prefix/logs/stdout" 2>&1 &
  NGINX_PID=$!
  FIXTURE_PIDS+=($NGINX_PID)
  fixture_wait_port "$RSA_PORT" "$NGINX_PID" "nginx ($name)"
  fixture_wait_port "$EC_PORT" "$NGINX_PID" "nginx ($name)"
  # timeout -> nginx master (root) -> worker (www-data); setsid execs in place (timeout's child
  # leads no process group) or forks once.
  local master i
  for i in $(seq 1 50); do
    master=$(pgrep -P "$NGINX_PID" -x nginx | head -1 || true)
    [ -n "$master" ] || master=$(pgrep -P "$(pgrep -P "$NGINX_PID" | head -1)" -x nginx | head -1 || true)
    WORKER=$([ -z "$master" ] || pgrep -P "$master" -x nginx | head -1 || true)
    [ -n "$WORKER" ] && break
    sleep 0.1
  done
  [ -n "$WORKER" ] || fail "nginx $name: no worker process under master ${master:-?}"
  [ "$(stat -c %U "/proc/$WORKER")" = www-data ] || fail "nginx $name: the worker does not run as www-data"
}
nginx_stop() {
  kill "$NGINX_PID" 2>/dev/null || true
  wait "$NGINX_PID" 2>/dev/null || true
}

# httpd_run NAME: Apache httpd (prefork: the parent root, children www-data) with the RSA and the
# EC server key, on the broker at BROKER_ADDRESS; ports in RSA_PORT / EC_PORT, logs in
# $d/httpd-NAME/; runs until httpd_stop, which leaves the children's pids in CHILD_PIDS.
httpd_run() {
  local name=$1 dir="$d/httpd-$1"
  mkdir -p "$dir"
  RSA_PORT=$(fixture_free_port)
  EC_PORT=$(fixture_free_port)
  cat > "$dir/httpd.conf" <<EOF
ServerName 127.0.0.1
ServerRoot $dir
PidFile $dir/httpd.pid
DefaultRuntimeDir $dir
ErrorLog $dir/error.log
LogLevel info
User www-data
Group www-data
LoadModule mpm_prefork_module $APACHE_MODULES/mod_mpm_prefork.so
LoadModule authz_core_module $APACHE_MODULES/mod_authz_core.so
LoadModule mime_module $APACHE_MODULES/mod_mime.so
TypesConfig /etc/mime.types
LoadModule dir_module $APACHE_MODULES/mod_dir.so
LoadModule socache_shmcb_module $APACHE_MODULES/mod_socache_shmcb.so
LoadModule ssl_module $APACHE_MODULES/mod_ssl.so
StartServers 1
MinSpareServers 1
MaxSpareServers 2
DocumentRoot $WWW
DirectoryIndex index.html
<Directory $WWW>
  Require all granted
</Directory>
SSLCryptoDevice pkcs11
SSLSessionCache none
Listen 127.0.0.1:$RSA_PORT
Listen 127.0.0.1:$EC_PORT
<VirtualHost 127.0.0.1:$RSA_PORT>
  SSLEngine on
  SSLCertificateFile $d/rsa-server.pem
  SSLCertificateKeyFile "$RSA_SERVER_URI"
</VirtualHost>
<VirtualHost 127.0.0.1:$EC_PORT>
  SSLEngine on
  SSLCertificateFile $d/ec-server.pem
  SSLCertificateKeyFile "$EC_SERVER_URI"
</VirtualHost>
EOF
  fixture_unattended_no_pin_anywhere "$dir/httpd.conf"
  OPENSSL_CONF="$d/openssl.cnf" P11_KIT_SERVER_ADDRESS="$BROKER_ADDRESS" timeout 120 setsid -w "$APACHE" -f "$dir/httpd.conf" \
    -DFOREGROUND </dev/null >"$dir/stdout" 2>&1 &
  HTTPD_PID=$!
  FIXTURE_PIDS+=($HTTPD_PID)
  fixture_wait_port "$RSA_PORT" "$HTTPD_PID" "httpd ($name)"
  fixture_wait_port "$EC_PORT" "$HTTPD_PID" "httpd ($name)"
}
httpd_stop() {
  local parent
  parent=$(pgrep -P "$HTTPD_PID" -x apache2 | head -1 || true)
  [ -n "$parent" ] || parent=$HTTPD_PID
  CHILD_PIDS=$(ps -o pid= --ppid "$parent" 2>/dev/null | xargs)
  [ "$(ps -o user= --ppid "$parent" | sort -u | xargs)" = www-data ] || fail "httpd: the children do not run as www-data"
  kill "$HTTPD_PID" 2>/dev/null || true
  wait "$HTTPD_PID" 2>/dev/null || true
}

# https NAME KIND PORT: curl --cacert against the server; status of curl, its log in $d/curl-NAME-KIND.err.
https() {
  timeout 60 curl -sS -v --cacert "$d/ca.pem" "https://127.0.0.1:$3/" >"$d/curl-$1-$2.out" 2>"$d/curl-$1-$2.err"
}

# served SERVER KIND PORT: curl --cacert verifies the token's KIND server certificate and reads the page.
served() {
  local server=$1 kind=$2 port=$3 subject
  https "$server-both" "$kind" "$port" \
    || fail "$server (both named): curl $kind failed: $(grep -vE '^[<>{}] ' "$d/curl-$server-both-$kind.err" | tail -4)"
  [ "$(cat "$d/curl-$server-both-$kind.out")" = "served with a key on the token, no PIN given" ] || fail "$server (both named): unexpected page"
  subject=$(sed -n 's/^\*  subject: //p' "$d/curl-$server-both-$kind.err")
  [ "$subject" = "O=p11proxy tests; CN=p11proxy $kind server" ] || fail "$server (both named): the server presented '$subject'"
  grep -q '^\*  SSL certificate verify ok\.' "$d/curl-$server-both-$kind.err" || fail "$server (both named): curl did not verify the certificate"
  echo "$server (root and www-data named): $kind: curl --cacert verified '$subject'" \
    "($(sed -n 's/^\* SSL connection using //p' "$d/curl-$server-both-$kind.err")), read the page"
}

# ---- the policy names root (the parent) and www-data (worker, children) ------------------------
fixture_unattended_broker both file --allow-uid "$WWW_UID" \
  --login-on-arrival "uid:root=$TOKEN_URI" --login-on-arrival "uid:www-data=$TOKEN_URI"
echo "== broker $BROKER_ADDRESS: --pin $TOKEN_URI?pin-source=$BROKER_PIN_SOURCE (0600), --allow-uid $WWW_UID,"\
  "--login-on-arrival uid:root=$TOKEN_URI and uid:www-data=$TOKEN_URI"
nginx_run both
for kind in rsa ec; do
  port=$RSA_PORT; [ $kind = ec ] && port=$EC_PORT
  served nginx $kind "$port"
done
nginx_stop
grep -qE "\(uid $WWW_UID, pid $WORKER\): logged in to token '$FIXTURE_LABEL' .* on arrival" "$BROKER_LOG" \
  || fail "the broker did not log the worker's (pid $WORKER, www-data) login on arrival: $(grep -i arrival "$BROKER_LOG" | tail -3)"
grep -qE "\(uid $WWW_UID, pid $WORKER\): C_Sign(Final)? .*CKR_OK" "$BROKER_LOG" || fail "the worker (pid $WORKER) made no signature"
echo "broker: nginx worker $WORKER (www-data) logged in on arrival and made $(grep -cE "\(uid $WWW_UID, pid $WORKER\): C_Sign(Final)? .*CKR_OK" "$BROKER_LOG") signatures"
httpd_run both
for kind in rsa ec; do
  port=$RSA_PORT; [ $kind = ec ] && port=$EC_PORT
  served httpd $kind "$port"
done
httpd_stop
signers=0
for pid in $CHILD_PIDS; do
  grep -qE "\(uid $WWW_UID, pid $pid\): logged in to token '$FIXTURE_LABEL' .* on arrival" "$BROKER_LOG" && signers=$((signers + 1))
done
[ $signers -ge 1 ] || fail "the broker logged no login on arrival for an httpd child (pids $CHILD_PIDS)"
echo "broker: $signers httpd children (www-data, pids $CHILD_PIDS) logged in on arrival;" \
  "$(grep -cE "\(uid $WWW_UID, pid [0-9]+\): C_Sign(Final)? .*CKR_OK" "$BROKER_LOG") signatures for www-data in all"

# ---- the policy names root only ----------------------------------------------------------------
fixture_unattended_broker rootonly file --allow-uid "$WWW_UID" --login-on-arrival "uid:root=$TOKEN_URI"
echo "== broker $BROKER_ADDRESS: the same, --login-on-arrival uid:root=$TOKEN_URI only"
nginx_run rootonly
status=0
https nginx-rootonly rsa "$RSA_PORT" || status=$?
nginx_stop
[ $status -ne 0 ] || fail "nginx's www-data worker signed with the token although the policy names only root"
grep -q "curl: (35) OpenSSL/.*: error:0A000438:SSL routines::tlsv1 alert internal error" "$d/curl-nginx-rootonly-rsa.err" \
  || fail "curl failed otherwise than with the server's internal-error alert: $(grep -vE '^[<>{}*] ' "$d/curl-nginx-rootonly-rsa.err" | tail -3)"
grep -q "\[crit\] $WORKER#.*SSL_do_handshake() failed (SSL: error:41800082:PKCS#11 module::Object handle invalid" "$d/nginx-rootonly/logs/error.log" \
  || fail "the worker's signature failed otherwise: $(grep -v notice "$d/nginx-rootonly/logs/error.log" | tail -3)"
grep -qE "\(uid $WWW_UID, pid $WORKER\): C_SignInit session=[0-9]+ -> CKR_OBJECT_HANDLE_INVALID" "$BROKER_LOG" \
  || fail "the broker did not answer the worker's C_SignInit with CKR_OBJECT_HANDLE_INVALID"
! grep -qE "\(uid $WWW_UID, pid [0-9]+\): (logged in|C_Login .*CKR_OK)" "$BROKER_LOG" || fail "the broker logged www-data in"
grep -qE "\(uid 0, pid [0-9]+\): logged in to token '$FIXTURE_LABEL' .* on arrival" "$BROKER_LOG" || fail "the master (root) was not logged in"
echo "nginx (root named only): the master (root) logged in and started; the worker $WORKER (www-data, not logged in):"\
  "C_SignInit -> CKR_OBJECT_HANDLE_INVALID, nginx '[crit] SSL_do_handshake() failed (... Object handle invalid ...)',"\
  "curl '$(grep -m1 -o 'curl: (35).*' "$d/curl-nginx-rootonly-rsa.err" | sed 's/OpenSSL[^:]*: //')'"

httpd_run rootonly
status=0
https httpd-rootonly rsa "$RSA_PORT" || status=$?
httpd_stop
[ $status -ne 0 ] || fail "httpd's www-data child signed with the token although the policy names only root"
grep -q "curl: (35) OpenSSL/.*: error:0A000438:SSL routines::tlsv1 alert internal error" "$d/curl-httpd-rootonly-rsa.err" \
  || fail "curl (httpd) failed otherwise than with the server's internal-error alert: $(grep -vE '^[<>{}*] ' "$d/curl-httpd-rootonly-rsa.err" | tail -3)"
grep -q "PKCS#11 module::Object handle invalid" "$d/httpd-rootonly/error.log" \
  || fail "httpd's child failed otherwise: $(grep -vE 'notice|info' "$d/httpd-rootonly/error.log" | tail -3)"
! grep -qE "\(uid $WWW_UID, pid [0-9]+\): (logged in|C_Login .*CKR_OK)" "$BROKER_LOG" || fail "the broker logged www-data in"
grep -qE "\(uid $WWW_UID, pid [0-9]+\): C_SignInit session=[0-9]+ -> CKR_OBJECT_HANDLE_INVALID" "$BROKER_LOG" \
  || fail "the broker did not answer an httpd child's C_SignInit with CKR_OBJECT_HANDLE_INVALID"
echo "httpd (root named only): the parent (root) started; a child (www-data, not logged in): C_SignInit ->" \
  "CKR_OBJECT_HANDLE_INVALID, error.log '$(grep -m1 -o 'SSL Library Error: [^ ]*' "$d/httpd-rootonly/error.log" || true) ... Object handle invalid', curl alert internal error"
echo "unattended nginx and httpd: serve with the token's keys and no PIN when www-data is named, fail the handshake when not ($(fixture_elapsed) s)"
