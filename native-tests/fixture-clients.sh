# Fixture for the real-client tests (native-tests/1*.sh). Source it after lib.sh.
#
# fixture_clients_token NAME makes a throw-away SoftHSM token holding two key pairs with
# certificates issued by a throw-away test CA, plus a server certificate for TLS peers:
#
#   id 01 label rsa-key   RSA-2048 key pair (imported), certificate rsa.pem / rsa.der
#   id 02 label ec-key    EC P-256 key pair (imported), certificate ec.pem / ec.der
#   files in $FIXTURE_DIR: ca.pem, server.pem, server-key.pem (CN 127.0.0.1), rsa-key.pem, ec-key.pem,
#                          rsa-pub.pem, ec-pub.pem, pinfile
#
# fixture_clients_brokers starts our broker (BROKER_ADDRESS) and p11-kit's server
# (P11KIT_ADDRESS) for that token. Everything started or registered here is undone at exit: the
# processes in FIXTURE_PIDS by lib.sh's cleanup, then the actions added with fixture_on_exit.
# shellcheck shell=bash

FIXTURE_EXIT_ACTIONS=()
FIXTURE_STARTED=$(date +%s%N)

# fixture_on_exit 'COMMAND': run COMMAND (eval) at exit, after the processes are stopped; last
# added runs first.
fixture_on_exit() { FIXTURE_EXIT_ACTIONS+=("$1"); }

fixture_clients_cleanup() {
  local status=$? i
  fixture_cleanup
  for ((i = ${#FIXTURE_EXIT_ACTIONS[@]} - 1; i >= 0; i--)); do
    eval "${FIXTURE_EXIT_ACTIONS[$i]}" >/dev/null 2>&1 || true
  done
  exit $status
}
trap fixture_clients_cleanup EXIT

# Elapsed seconds since the fixture was sourced, for the last line of each script.
fixture_elapsed() {
  local ms=$((($(date +%s%N) - FIXTURE_STARTED) / 1000000))
  printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100))
}

# fixture_clients_cert NAME KEYFILE CN EXTENSIONS: a certificate NAME.pem (and NAME.der) for
# KEYFILE issued by the test CA.
fixture_clients_cert() {
  local name=$1 key=$2 cn=$3 ext=$4 d=$FIXTURE_DIR
  openssl req -new -key "$key" -subj "/O=p11proxy tests/CN=$cn" -out "$d/$name.csr" 2>/dev/null \
    || fail "openssl could not make a request for $name"
  printf '%s\n' "$ext" > "$d/$name.ext"
  openssl x509 -req -in "$d/$name.csr" -CA "$d/ca.pem" -CAkey "$d/ca-key.pem" -CAcreateserial -days 2 -sha256 \
    -extfile "$d/$name.ext" -out "$d/$name.pem" 2>/dev/null || fail "the test CA could not issue $name"
  openssl x509 -in "$d/$name.pem" -outform DER -out "$d/$name.der"
}

# fixture_clients_token NAME: see the top of this file (the user PIN is $CLIENTS_PIN if set, else
# 1234). Sets FIXTURE_DIR, FIXTURE_LABEL, FIXTURE_PIN, FIXTURE_SO_PIN, SOFTHSM2_CONF, RSA_URI, EC_URI, TOKEN_URI.
fixture_clients_token() {
  FIXTURE_DIR=$(mktemp -d "${TMPDIR:-/tmp}/p11proxy-$1.XXXXXX")
  FIXTURE_LABEL="p11proxy-$1"
  FIXTURE_PIN=${CLIENTS_PIN:-1234}
  FIXTURE_SO_PIN=12345678
  local d=$FIXTURE_DIR
  mkdir -p "$d/tokens"
  printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$d/tokens" > "$d/softhsm2.conf"
  export SOFTHSM2_CONF="$d/softhsm2.conf"
  softhsm2-util --init-token --free --label "$FIXTURE_LABEL" --so-pin "$FIXTURE_SO_PIN" --pin "$FIXTURE_PIN" >/dev/null \
    || fail "softhsm2-util could not create a token"
  printf '%s\n' "$FIXTURE_PIN" > "$d/pinfile"

  # The test CA (EC, so that the chain mixes algorithms).
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$d/ca-key.pem" -out "$d/ca.pem" \
    -days 2 -subj "/O=p11proxy tests/CN=p11proxy test CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null \
    || fail "openssl could not make the test CA"

  # Client keys, made in files, imported into the token, certificates written next to them.
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$d/rsa-key.pem" 2>/dev/null || fail "no RSA key"
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$d/ec-key.pem" 2>/dev/null || fail "no EC key"
  chmod 0600 "$d/rsa-key.pem" "$d/ec-key.pem"
  local client_ext='basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid'
  fixture_clients_cert rsa "$d/rsa-key.pem" "p11proxy rsa client" "$client_ext"
  fixture_clients_cert ec "$d/ec-key.pem" "p11proxy ec client" "$client_ext"
  local kind id
  for kind in rsa ec; do
    id=01; [ $kind = ec ] && id=02
    openssl pkey -in "$d/$kind-key.pem" -pubout -out "$d/$kind-pub.pem" 2>/dev/null
    softhsm2-util --import "$d/$kind-key.pem" --token "$FIXTURE_LABEL" --label "$kind-key" --id "$id" --pin "$FIXTURE_PIN" >/dev/null \
      || fail "softhsm2-util could not import $kind-key"
    pkcs11-tool --module "$SOFTHSM_MODULE" --token-label "$FIXTURE_LABEL" --login --pin "$FIXTURE_PIN" \
      --write-object "$d/$kind.der" --type cert --id "$id" --label "$kind-key" >/dev/null 2>&1 \
      || fail "pkcs11-tool could not store the $kind certificate"
  done

  # The TLS/EAP server's certificate: a file key, never on the token.
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$d/server-key.pem" 2>/dev/null || fail "no server key"
  fixture_clients_cert server "$d/server-key.pem" "127.0.0.1" 'basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost'

  TOKEN_URI="pkcs11:token=$FIXTURE_LABEL"
  RSA_URI="pkcs11:token=$FIXTURE_LABEL;object=rsa-key;type=private"
  EC_URI="pkcs11:token=$FIXTURE_LABEL;object=ec-key;type=private"
}

# fixture_clients_brokers: our broker and p11-kit's server, both serving the token.
fixture_clients_brokers() {
  fixture_start_broker
  BROKER_ADDRESS=$FIXTURE_ADDRESS
  fixture_start_p11kit_server
  P11KIT_ADDRESS=$FIXTURE_ADDRESS
}

# fixture_free_port: prints a TCP port in 20000-59999 nothing listens on (127.0.0.1).
fixture_free_port() {
  local port i
  for i in $(seq 1 50); do
    port=$((20000 + RANDOM % 40000))
    if [ -z "$(ss -Htln "sport = :$port" 2>/dev/null)" ]; then echo "$port"; return 0; fi
  done
  fail "no free TCP port found"
}

# fixture_wait_port PORT PID [NAME]: waits (10 s) until something listens on PORT; fails if PID died.
fixture_wait_port() {
  local port=$1 pid=$2 name=${3:-server} i
  for i in $(seq 1 100); do
    [ -n "$(ss -Htln "sport = :$port" 2>/dev/null)" ] && return 0
    kill -0 "$pid" 2>/dev/null || fail "$name exited before listening on port $port"
    sleep 0.1
  done
  fail "$name is not listening on port $port after 10 s"
}

# fixture_wait_file FILE REGEX SECONDS: waits until FILE has a line matching REGEX; status 1 if not.
fixture_wait_file() {
  local file=$1 regex=$2 limit=$(($3 * 10)) i
  for i in $(seq 1 "$limit"); do
    grep -qE "$regex" "$file" 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

# fixture_install: ./build.sh install now, ./build.sh uninstall at exit.
fixture_install() {
  local root
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  [ "$(readlink -f "$OUT")" = "$root/out" ] || fail "./build.sh install copies $root/out, but the test runs $OUT"
  fixture_on_exit "'$root/build.sh' uninstall"
  "$root/build.sh" install >"$FIXTURE_DIR/install.out" 2>&1 || fail "./build.sh install failed: $(cat "$FIXTURE_DIR/install.out")"
}

# fixture_clients_server_keys: adds TLS *server* keys to the token made by fixture_clients_token,
# for servers (nginx, httpd) whose own key lives on the token:
#   id 03 label rsa-server  RSA-2048, certificate rsa-server.pem (CN "p11proxy rsa server")
#   id 04 label ec-server   EC P-256, certificate ec-server.pem (CN "p11proxy ec server")
# both issued by the test CA for 127.0.0.1 and localhost (serverAuth). The key files are removed
# once imported: a server can only sign with the token. Sets RSA_SERVER_URI, EC_SERVER_URI.
fixture_clients_server_keys() {
  local d=$FIXTURE_DIR kind id algorithm
  for kind in rsa ec; do
    if [ $kind = rsa ]; then id=03; algorithm=(-algorithm RSA -pkeyopt rsa_keygen_bits:2048)
    else id=04; algorithm=(-algorithm EC -pkeyopt ec_paramgen_curve:P-256); fi
    openssl genpkey "${algorithm[@]}" -out "$d/$kind-server-key.pem" 2>/dev/null || fail "no $kind server key"
    fixture_clients_cert "$kind-server" "$d/$kind-server-key.pem" "p11proxy $kind server" 'basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost'
    softhsm2-util --import "$d/$kind-server-key.pem" --token "$FIXTURE_LABEL" --label "$kind-server" --id "$id" \
      --pin "$FIXTURE_PIN" >/dev/null || fail "softhsm2-util could not import $kind-server"
    pkcs11-tool --module "$SOFTHSM_MODULE" --token-label "$FIXTURE_LABEL" --login --pin "$FIXTURE_PIN" \
      --write-object "$d/$kind-server.der" --type cert --id "$id" --label "$kind-server" >/dev/null 2>&1 \
      || fail "pkcs11-tool could not store the $kind server certificate"
    rm -f "$d/$kind-server-key.pem"
  done
  RSA_SERVER_URI="pkcs11:token=$FIXTURE_LABEL;object=rsa-server;type=private"
  EC_SERVER_URI="pkcs11:token=$FIXTURE_LABEL;object=ec-server;type=private"
}

# fixture_clients_engine_conf FILE MODULE [INIT] [no-pin]: an OpenSSL configuration loading libp11's
# pkcs11 engine on MODULE with the token's PIN (what nginx, httpd, openssl and curl read via
# OPENSSL_CONF), or with no PIN at all when the fourth argument is no-pin (the broker holds it).
# INIT (default 1) is the engine's `init`: 1 for nginx, which loads keys from the engine without
# initialising it itself; 0 leaves that to the program (openssl -engine, curl --engine).
fixture_clients_engine_conf() {
  local pin_line="PIN = $FIXTURE_PIN"
  [ "${4:-}" != no-pin ] || pin_line="# no PIN: the broker holds it"
  cat > "$1" <<EOF
openssl_conf = openssl_init
[openssl_init]
engines = engine_section
[engine_section]
pkcs11 = pkcs11_section
[pkcs11_section]
engine_id = pkcs11
dynamic_path = /usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so
MODULE_PATH = $2
$pin_line
init = ${3:-1}
EOF
}

# fixture_clients_s_server_www: openssl s_server -www on 127.0.0.1:$WWW_PORT with the test CA's
# server certificate (a file key), demanding a client certificate from the test CA (-Verify 1);
# the page it serves describes the client certificate it got. Log: $FIXTURE_DIR/s_server-www.log.
# s_server ends when its standard input ends, so it reads a pipe nobody writes to (fd 7).
fixture_clients_s_server_www() {
  local d=$FIXTURE_DIR
  [ -p "$d/server-stdin" ] || mkfifo "$d/server-stdin"
  exec 7<>"$d/server-stdin"
  WWW_PORT=$(fixture_free_port)
  timeout 250 openssl s_server -accept "127.0.0.1:$WWW_PORT" -www -cert "$d/server.pem" -key "$d/server-key.pem" \
    -Verify 1 -CAfile "$d/ca.pem" <&7 >"$d/s_server-www.log" 2>&1 &
  FIXTURE_PIDS+=($!)
  fixture_wait_port "$WWW_PORT" "$!" "s_server -www"
}

# fixture_clients_sshd [CONFIG LINE]...: an sshd of the test's own on 127.0.0.1:$SSHD_PORT (own
# host key $FIXTURE_DIR/host_key, own configuration, keys from $FIXTURE_DIR/authorized_keys,
# public-key logins only, root included), log in $FIXTURE_DIR/sshd.log; extra configuration
# lines as arguments.
fixture_clients_sshd() {
  local d=$FIXTURE_DIR sshd=/usr/sbin/sshd
  [ -x "$sshd" ] || fail "no $sshd (package openssh-server; ./build.sh installs it)"
  [ -d /run/sshd ] || { mkdir -m 0755 /run/sshd; fixture_on_exit "rmdir /run/sshd"; }
  ssh-keygen -q -t ed25519 -N '' -f "$d/host_key" || fail "cannot make a host key"
  SSHD_PORT=$(fixture_free_port)
  cat > "$d/sshd_config" <<EOF
Port $SSHD_PORT
ListenAddress 127.0.0.1
HostKey $d/host_key
PidFile none
AuthorizedKeysFile $d/authorized_keys
StrictModes no
UsePAM no
PermitRootLogin prohibit-password
AuthenticationMethods publickey
PasswordAuthentication no
KbdInteractiveAuthentication no
LogLevel VERBOSE
EOF
  [ $# -eq 0 ] || printf '%s\n' "$@" >> "$d/sshd_config"
  "$sshd" -t -f "$d/sshd_config" || fail "sshd rejects the test configuration"
  timeout 250 "$sshd" -D -e -f "$d/sshd_config" 2>"$d/sshd.log" &
  FIXTURE_PIDS+=($!)
  fixture_wait_port "$SSHD_PORT" "$!" sshd
}

# fixture_netns_pair A B: network namespaces A and B (deleted at exit) joined by a veth pair whose
# ends are named A (in namespace A) and B (in namespace B); both ends and both loopbacks up.
fixture_netns_pair() {
  local a=$1 b=$2
  ip netns add "$a" || fail "cannot create network namespace $a"
  fixture_on_exit "ip netns del $a"
  ip netns add "$b" || fail "cannot create network namespace $b"
  fixture_on_exit "ip netns del $b"
  ip link add "$a" type veth peer name "$b" || fail "cannot create a veth pair"
  ip link set "$a" netns "$a"
  ip link set "$b" netns "$b"
  ip -n "$a" link set lo up && ip -n "$a" link set "$a" up || fail "cannot bring up $a's links"
  ip -n "$b" link set lo up && ip -n "$b" link set "$b" up || fail "cannot bring up $b's links"
}

# --- unattended clients (issue 16): the broker holds the PIN, the client is given none -----------------

# fixture_unattended_broker NAME SOURCE [ARGS...]: a broker of ours (socket broker-NAME.sock,
# trace broker-NAME.err) serving the token made by fixture_clients_token, holding its PIN, and
# admitting the system user nobody besides the test's own uid, traced (--verbose); ARGS add the
# policy under test. SOURCE is where the broker reads the PIN (--pin TOKEN?pin-source=...):
#   file        a 0600 file of the broker's own, $FIXTURE_DIR/broker-pin
#   credential  credential:token-pin, $CREDENTIALS_DIRECTORY (0700) set for the broker as systemd
#               does for LoadCredentialEncrypted=token-pin:...
#   askpass     |$FIXTURE_DIR/broker-askpass, an ask-pass program (0700) that answers with the PIN
#               and appends a line to broker-askpass.log each time it runs
# These (0600/0700, root's) are the only places the PIN is written for a client test. Sets
# BROKER_ADDRESS (also exported as P11_KIT_SERVER_ADDRESS), BROKER_LOG, BROKER_PIN_SOURCE,
# STRANGER_UID, STRANGER_GID.
fixture_unattended_broker() {
  local d=$FIXTURE_DIR name=$1 source=$2 socket environment=()
  shift 2
  socket=$d/broker-$name.sock
  STRANGER_UID=$(id -u nobody)
  STRANGER_GID=$(id -g nobody)
  case $source in
    file)
      [ -e "$d/broker-pin" ] || ( umask 077; printf '%s\n' "$FIXTURE_PIN" > "$d/broker-pin" )
      BROKER_PIN_SOURCE="file:$d/broker-pin" ;;
    credential)
      ( umask 077; mkdir -p "$d/credentials"; printf '%s\n' "$FIXTURE_PIN" > "$d/credentials/token-pin" )
      environment=(CREDENTIALS_DIRECTORY="$d/credentials")
      BROKER_PIN_SOURCE="credential:token-pin" ;;
    askpass)
      ( umask 077; printf '#!/bin/sh\necho "asked: $*" >> %s/broker-askpass.log\necho %s\n' "$d" "$FIXTURE_PIN" > "$d/broker-askpass" )
      chmod 0700 "$d/broker-askpass"
      : > "$d/broker-askpass.log"
      BROKER_PIN_SOURCE="|$d/broker-askpass" ;;
    *) fail "fixture_unattended_broker: no PIN source '$source'" ;;
  esac
  env "${environment[@]}" "${OUT:-out}/p11proxy-broker" serve --module "$SOFTHSM_MODULE" --socket "$socket" \
    --pin "$TOKEN_URI?pin-source=$BROKER_PIN_SOURCE" --allow-uid "$STRANGER_UID" --verbose "$@" \
    >"$d/broker-$name.out" 2>"$d/broker-$name.err" &
  local pid=$! i
  FIXTURE_PIDS+=($pid)
  for i in $(seq 1 100); do
    [ -S "$socket" ] && break
    kill -0 "$pid" 2>/dev/null || fail "the broker ($name) did not start: $(cat "$d/broker-$name.err")"
    sleep 0.1
  done
  [ -S "$socket" ] || fail "the broker ($name) is not listening on $socket after 10 s"
  BROKER_ADDRESS="unix:path=$socket"
  BROKER_LOG=$d/broker-$name.err
  export P11_KIT_SERVER_ADDRESS=$BROKER_ADDRESS
  # The stranger reaches the fixture directory (public files only: the key files and the PIN
  # file stay 0600 root) and has a home of its own.
  chmod 0711 "$d"
  chmod 0644 "$d"/*.pem "$d"/*.der 2>/dev/null || true
  chmod 0600 "$d"/*-key.pem "$d/pinfile"
  mkdir -p "$d/stranger-home"
  chown "$STRANGER_UID:$STRANGER_GID" "$d/stranger-home"
}

# as_stranger COMMAND...: runs COMMAND as the system user nobody (uid STRANGER_UID, no
# supplementary groups), with HOME in the fixture directory and the broker's address.
as_stranger() {
  setpriv --reuid="$STRANGER_UID" --regid="$STRANGER_GID" --clear-groups \
    env HOME="$FIXTURE_DIR/stranger-home" P11_KIT_SERVER_ADDRESS="$P11_KIT_SERVER_ADDRESS" "$@"
}

# fixture_unattended_no_pin_anywhere FILE...: fails if the PIN appears in any of FILE (the
# configuration a client was given): a test of unattended clients must not hand it the PIN.
fixture_unattended_no_pin_anywhere() {
  local f
  for f in "$@"; do
    ! grep -qF "$FIXTURE_PIN" "$f" || fail "$f holds the token's PIN: the client must be given none"
  done
}

# broker_log_since OFFSET: the broker's trace from byte OFFSET (see broker_log_mark).
broker_log_mark() { wc -c <"$BROKER_LOG"; }
broker_log_since() { tail -c +"$(($1 + 1))" "$BROKER_LOG"; }

# fixture_clients_hostapd NAMESPACE: a wired-driver hostapd in NAMESPACE (interface of the same
# name) doing EAP-TLS with the test CA's server certificate (from fixture_clients_token's $d);
# its log in $HOSTAPD_LOG. Used by 15-wpa-supplicant and 35-unattended-wpa.
fixture_clients_hostapd() {
  local auth=$1
  printf '* TLS\n' > "$d/eap_user"
  cat > "$d/hostapd.conf" <<EOF
interface=$auth
driver=wired
logger_stdout=-1
logger_stdout_level=0
ieee8021x=1
eapol_version=2
eap_reauth_period=0
use_pae_group_addr=1
eap_server=1
eap_user_file=$d/eap_user
ca_cert=$d/ca.pem
server_cert=$d/server.pem
private_key=$d/server-key.pem
EOF
  HOSTAPD_LOG=$d/hostapd.log
  timeout 250 ip netns exec "$auth" hostapd -dd "$d/hostapd.conf" >"$HOSTAPD_LOG" 2>&1 &
  FIXTURE_PIDS+=($!)
  fixture_wait_file "$HOSTAPD_LOG" "$auth: interface state .*->ENABLED|CTRL-EVENT-.*ENABLED|Deauthenticate all stations" 10 \
    || fail "hostapd did not start: $(tail -5 "$HOSTAPD_LOG")"
}

# fixture_clients_nginx_conf PREFIX RSA_PORT EC_PORT: PREFIX/nginx.conf for a root master with one
# www-data worker and two TLS servers on loopback, their keys on the token through libp11's
# engine ($RSA_SERVER_URI, $EC_SERVER_URI, certificates in $d). Used by 40 and 36.
fixture_clients_nginx_conf() {
  local prefix=$1 rsa_port=$2 ec_port=$3
  cat > "$prefix/nginx.conf" <<EOF
user www-data;
worker_processes 1;
daemon off;
pid $prefix/nginx.pid;
error_log $prefix/logs/error.log info;
events { worker_connections 64; }
http {
  access_log $prefix/logs/access.log;
  default_type text/plain;
  root $WWW;
  server {
    listen 127.0.0.1:$rsa_port ssl;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_certificate $d/rsa-server.pem;
    ssl_certificate_key "engine:pkcs11:$RSA_SERVER_URI";
  }
  server {
    listen 127.0.0.1:$ec_port ssl;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_certificate $d/ec-server.pem;
    ssl_certificate_key "engine:pkcs11:$EC_SERVER_URI";
  }
}
EOF
}
