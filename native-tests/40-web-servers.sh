#!/usr/bin/env bash
# nginx and Apache httpd serving TLS with their own (server) key on the token, RSA and EC: the
# key files are deleted once imported, the servers name the key only by its pkcs11: URI through
# OpenSSL's pkcs11 engine, and `curl --cacert ca.pem` must complete the handshake against the
# token's certificate (subject "CN=p11proxy rsa server" / "ec server") and read the page.
# Workers run as www-data, as Debian's packages run them.
#
#   direct  the engine loads SoftHSM itself (the reference: a failure here is not ours). SoftHSM
#           reads its token files in every worker, as www-data, so they are copied to a www-data
#           directory.
#   broker  the engine loads out/p11proxy.so; one p11proxy-broker (root) serves the token with
#           --allow-uid 33. nginx.conf has no `env` line (neither run has one): the worker, whose
#           environment nginx empties and in which libp11 initialises the module again, must still
#           find the broker the master found (the module settles its address once per load). The
#           broker's log must show that worker's own connection (its pid, uid 33) on a socket path
#           made for this run, which only the master's environment names. httpd's www-data
#           children must be admitted by the broker's allow list alone: no chmod of the socket or
#           its directory, which the broker creates itself; the log must show a child's connection
#           (its pid, uid 33).
# This took over issue 14's native-tests/25-nginx-worker-env.sh (nginx, no `env` line, the broker
# seeing the worker's connection), here as www-data with the server's own keys. Its check of
# /proc/WORKER/environ is not carried over: it could not fail, as nginx's process title
# overwrites that area in master and worker alike.
set -euo pipefail
OUT=${1:-out}
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/fixture-clients.sh"
MODULE=$(readlink -f "$OUT/p11proxy.so")
ENGINE=/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so
NGINX=/usr/sbin/nginx
APACHE=/usr/sbin/apache2
APACHE_MODULES=/usr/lib/apache2/modules
[ -x "$NGINX" ] || fail "no $NGINX (package nginx; ./build.sh installs it)"
[ -x "$APACHE" ] || fail "no $APACHE (package apache2; ./build.sh installs it)"
[ -f "$ENGINE" ] || fail "no OpenSSL pkcs11 engine at $ENGINE (package libengine-pkcs11-openssl)"
[ "$(id -u)" -eq 0 ] || fail "needs root: the servers' workers run as www-data"
WWW_UID=$(id -u www-data) || fail "no user www-data"

fixture_clients_token web
fixture_clients_server_keys
d=$FIXTURE_DIR

# Files www-data must read (the page; for the direct runs, SoftHSM's token files).
WWW=$(mktemp -d /tmp/p11proxy-web-www.XXXXXX)
fixture_on_exit "rm -rf '$WWW'"
chmod 0755 "$WWW"
printf 'served with a key on the token\n' > "$WWW/index.html"
cp -a "$d/tokens" "$WWW/tokens"
chown -R www-data: "$WWW/tokens"
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$WWW/tokens" > "$WWW/softhsm2.conf"
chmod 0644 "$WWW/softhsm2.conf"

# The broker, as root, on a socket in a directory it creates itself, admitting www-data.
SOCKET_DIR=/tmp/p11proxy-web-broker.$$
fixture_on_exit "rm -rf '$SOCKET_DIR'"
"$OUT/p11proxy-broker" serve --module "$SOFTHSM_MODULE" --socket "$SOCKET_DIR/pkcs11" --allow-uid "$WWW_UID" --verbose \
  >"$d/broker.out" 2>"$d/broker.err" &
FIXTURE_PIDS+=($!)
fixture_wait_socket "$SOCKET_DIR/pkcs11"
BROKER_ADDRESS="unix:path=$SOCKET_DIR/pkcs11"

fixture_clients_engine_conf "$d/openssl-direct.cnf" "$SOFTHSM_MODULE"
fixture_clients_engine_conf "$d/openssl-broker.cnf" "$MODULE"

# check_https NAME PORT KIND: curl --cacert must verify the token's KIND server certificate and
# get the page.
check_https() {
  local name=$1 port=$2 kind=$3 body subject
  body=$(timeout 60 curl -sS -v --cacert "$d/ca.pem" "https://127.0.0.1:$port/" 2>"$d/curl.err") \
    || fail "$name $kind: curl --cacert failed: $(grep -vE '^[<>{}] ' "$d/curl.err" | tail -5)"
  [ "$body" = "served with a key on the token" ] || fail "$name $kind: unexpected page: $body"
  subject=$(sed -n 's/^\*  subject: //p' "$d/curl.err")
  [ "$subject" = "O=p11proxy tests; CN=p11proxy $kind server" ] || fail "$name $kind: the server presented '$subject'"
  grep -q '^\*  SSL certificate verify ok\.' "$d/curl.err" || fail "$name $kind: curl did not verify the certificate"
  echo "$name: $kind: curl --cacert ca.pem https://127.0.0.1:$port/ verified '$subject'" \
    "($(sed -n 's/^\* SSL connection using //p' "$d/curl.err")) and read the page"
}

# broker_signatures: how many C_Sign calls the broker has answered with CKR_OK so far.
broker_signatures() { grep -cE 'C_Sign(Final)? .*CKR_OK' "$d/broker.err" || true; }

# broker_served_www PID...: the broker's log shows a client of uid www-data with one of these pids.
broker_served_www() {
  local pid
  for pid in "$@"; do
    grep -qE "\(uid $WWW_UID, gid [0-9]+, pid $pid\) served by worker pid" "$d/broker.err" && return 0
  done
  return 1
}

# --- nginx -----------------------------------------------------------------------------------
# nginx MODE: one master (root) with one www-data worker, two TLS servers (RSA, EC).
nginx_run() {
  local mode=$1 prefix="$d/nginx-$1" rsa_port ec_port pid status=0 signed
  mkdir -p "$prefix/logs"
  rsa_port=$(fixture_free_port)
  ec_port=$(fixture_free_port)
  fixture_clients_nginx_conf "$prefix" "$rsa_port" "$ec_port"
  echo "== nginx $mode"
  signed=$(broker_signatures)
  local softhsm_conf=$WWW/softhsm2.conf address=""
  [ "$mode" = broker ] && { softhsm_conf=$d/softhsm2.conf; address=$BROKER_ADDRESS; }
  env SOFTHSM2_CONF="$softhsm_conf" OPENSSL_CONF="$d/openssl-$mode.cnf" ${address:+P11_KIT_SERVER_ADDRESS=$address} \
    timeout 120 "$NGINX" -p "$prefix" -c "$prefix/nginx.conf" >"$prefix/logs/stdout" 2>&1 &
  pid=$!
  FIXTURE_PIDS+=($pid)
  fixture_wait_port "$rsa_port" "$pid" "nginx ($mode)"
  fixture_wait_port "$ec_port" "$pid" "nginx ($mode)"
  # timeout -> master (root) -> worker (www-data)
  local master worker
  master=$(pgrep -P "$pid" -x nginx | head -1)
  worker=$(pgrep -P "$master" -x nginx | head -1)
  [ -n "$worker" ] || fail "nginx $mode: no worker process under master ${master:-?}"
  ( check_https "nginx $mode" "$rsa_port" rsa && check_https "nginx $mode" "$ec_port" ec ) || status=$?
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  if [ $status -ne 0 ]; then
    # The module's own complaint (a worker's stderr is nginx's error log) says which address it tried.
    grep -E 'emerg|alert|crit|error|^p11proxy:' "$prefix/logs/error.log" | tail -8 >&2 || true
    fail "nginx $mode: see above"
  fi
  grep -q '^user www-data;' "$prefix/nginx.conf" && ! grep -q '^ *env ' "$prefix/nginx.conf" \
    || fail "nginx $mode: the configuration passes an environment variable on to the workers"
  if [ "$mode" = broker ]; then
    [ "$(broker_signatures)" -ge $((signed + 2)) ] || fail "nginx broker: the broker did not make the two signatures"
    broker_served_www "$worker" \
      || fail "nginx broker: the broker's log shows no connection of the worker (pid $worker, uid $WWW_UID): $(grep 'served by worker' "$d/broker.err" | tail -3)"
    echo "nginx broker: worker $worker (www-data) connected to the broker itself:" \
      "'$(grep -oE "client [0-9]+ \(uid $WWW_UID, gid [0-9]+, pid $worker\) served by worker pid [0-9]+" "$d/broker.err" | head -1)';" \
      "the broker made $(($(broker_signatures) - signed)) signatures; nginx.conf has no env line"
  fi
}

# --- Apache httpd ----------------------------------------------------------------------------
httpd_run() {
  local mode=$1 dir="$d/httpd-$1" rsa_port ec_port pid status=0 signed
  mkdir -p "$dir"
  rsa_port=$(fixture_free_port)
  ec_port=$(fixture_free_port)
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
Listen 127.0.0.1:$rsa_port
Listen 127.0.0.1:$ec_port
<VirtualHost 127.0.0.1:$rsa_port>
  SSLEngine on
  SSLCertificateFile $d/rsa-server.pem
  SSLCertificateKeyFile "$RSA_SERVER_URI"
</VirtualHost>
<VirtualHost 127.0.0.1:$ec_port>
  SSLEngine on
  SSLCertificateFile $d/ec-server.pem
  SSLCertificateKeyFile "$EC_SERVER_URI"
</VirtualHost>
EOF
  echo "== httpd $mode"
  signed=$(broker_signatures)
  local softhsm_conf=$d/softhsm2.conf address=""
  [ "$mode" = direct ] && softhsm_conf=$WWW/softhsm2.conf
  [ "$mode" = broker ] && address=$BROKER_ADDRESS
  env SOFTHSM2_CONF="$softhsm_conf" OPENSSL_CONF="$d/openssl-$mode.cnf" ${address:+P11_KIT_SERVER_ADDRESS=$address} \
    timeout 120 "$APACHE" -f "$dir/httpd.conf" -DFOREGROUND >"$dir/stdout" 2>&1 &
  pid=$!
  FIXTURE_PIDS+=($pid)
  fixture_wait_port "$rsa_port" "$pid" "httpd ($mode)"
  fixture_wait_port "$ec_port" "$pid" "httpd ($mode)"
  ( check_https "httpd $mode" "$rsa_port" rsa && check_https "httpd $mode" "$ec_port" ec ) || status=$?
  # The handshakes ran in the children: check they are www-data (and not the root parent).
  local parent children child_pids
  parent=$(pgrep -P "$pid" -x apache2 | head -1)
  children=$(ps -o user= --ppid "$parent" 2>/dev/null | sort -u | tr '\n' ' ')
  child_pids=$(ps -o pid= --ppid "$parent" 2>/dev/null | xargs)
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  if [ $status -ne 0 ]; then
    grep -E 'emerg|alert|crit|error|^p11proxy:' "$dir/error.log" "$dir/stdout" | tail -8 >&2 || true
    [ "$mode" = broker ] && grep -E 'refused|warn|error' "$d/broker.err" | tail -3 >&2
    fail "httpd $mode: see above"
  fi
  [ "$children" = "www-data " ] || fail "httpd $mode: the children ran as '$children', not www-data"
  if [ "$mode" = broker ]; then
    [ "$(broker_signatures)" -ge $((signed + 2)) ] || fail "httpd broker: the broker did not make the two signatures"
    # shellcheck disable=SC2086 # one pid per word
    broker_served_www $child_pids \
      || fail "httpd broker: the broker's log shows no connection of a child (pids $child_pids, uid $WWW_UID): $(grep 'served by worker' "$d/broker.err" | tail -3)"
    echo "httpd broker: children (pids $child_pids) run as www-data, admitted by --allow-uid $WWW_UID alone;" \
      "the broker made $(($(broker_signatures) - signed)) signatures for them"
  fi
}

nginx_run direct
nginx_run broker
httpd_run direct
httpd_run broker
if grep -q 'refused a connection' "$d/broker.err"; then
  fail "the broker refused a connection: $(grep -m1 'refused a connection' "$d/broker.err")"
fi
echo "nginx and httpd serve TLS with RSA and EC keys on the token, directly and through p11proxy ($(fixture_elapsed) s)"
