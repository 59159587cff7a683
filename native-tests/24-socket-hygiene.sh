#!/usr/bin/env bash
# Issue 12, the socket rows:
#  13  --allow-uid 33 alone admits www-data: the socket and the directory the broker creates let it
#      in (0666 / 0711), and it lists the token; one --allow-gid gives the socket to that group
#      (0660, directory 0710); a directory on the way that blocks an admitted uid is warned about
#  14  a directory, a regular file or a symbolic link at --socket: a clear error, exit status 2;
#      a live socket: exit status 2; a stale socket (nothing answers): replaced
#   -  directories the broker creates are 0700 whatever the umask; it removes only its own socket
#  15  another uid listens first on the socket path (in /tmp): p11proxy.so refuses it at
#      C_Initialize with a "p11proxy:" line naming that uid, so the impostor never sees a PIN
#      (p11-kit-client.so logs in to it); with broker-uid = N in p11proxy.conf it is accepted
#   -  systemd socket activation: the broker serves the socket it is passed, and its workers do
#      not hold the listening socket
set -euo pipefail
OUT=${1:-out}
DIR=$(dirname "$0")
. "$DIR/lib.sh"
fixture_token hygiene
BROKER=$OUT/p11proxy-broker
WWW=$(id -u www-data)
mode_of() { stat -c %a "$1"; }
group_of() { stat -c %g "$1"; }
# serve SOCKET [ARGS...]: a broker in the background; sets SERVER, waits for the socket.
SERVES=0
serve() {
  local socket=$1
  shift
  # A log file per broker: the shell truncates a reused one only once the child runs.
  SERVES=$((SERVES + 1))
  LOG=$FIXTURE_DIR/serve-$SERVES.err
  "$BROKER" serve --module "$SOFTHSM_MODULE" --socket "$socket" "$@" >/dev/null 2>"$LOG" &
  SERVER=$!
  FIXTURE_PIDS+=($SERVER)
  local i
  for i in $(seq 1 100); do # not just the socket file: a stale one is there before the broker is
    grep -q "listening on $socket" "$LOG" 2>/dev/null && return 0
    sleep 0.1
  done
  fail "the broker on $socket did not start: $(cat "$LOG")"
}
stop() { kill "$SERVER"; wait "$SERVER" 2>/dev/null || true; }
# as UID GID COMMAND...: runs COMMAND as that user and group, no supplementary groups.
as() {
  local uid=$1 gid=$2
  shift 2
  setpriv --reuid="$uid" --regid="$gid" --clear-groups "$@"
}
# listed [VAR=VALUE...] [-- PREFIX...]: pkcs11-tool -L through p11proxy.so (environment as given) lists the
# token. Its output is read whole before grep (with pipefail, grep -q ending early fails the pipe).
listed() {
  local environment=() out
  while [ $# -gt 0 ] && [ "$1" != -- ]; do environment+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  out=$("$@" env "${environment[@]}" pkcs11-tool --module "$OUT/p11proxy.so" -L 2>&1 || true)
  grep -q "$FIXTURE_LABEL" <<<"$out"
}
lists_token() { # UID GID SOCKET
  listed P11_KIT_SERVER_ADDRESS="unix:path=$3" -- as "$1" "$2"
}

# ---- 13: --allow-uid / --allow-gid ----------------------------------------------------------------------
chmod 0700 "$FIXTURE_DIR"
socket=$FIXTURE_DIR/www/run/pkcs11
serve "$socket" --allow-uid "$WWW"
grep -q "uid $WWW may not be able to reach the socket: $FIXTURE_DIR is mode 0700" "$LOG" \
  || fail "no warning that $FIXTURE_DIR (0700) blocks uid $WWW"
chmod 0711 "$FIXTURE_DIR"
[ "$(mode_of "$FIXTURE_DIR/www")" = 711 ] && [ "$(mode_of "$FIXTURE_DIR/www/run")" = 711 ] \
  || fail "directories created for --allow-uid are $(mode_of "$FIXTURE_DIR/www") and $(mode_of "$FIXTURE_DIR/www/run"), not 711"
[ "$(mode_of "$socket")" = 666 ] || fail "the socket for --allow-uid is $(mode_of "$socket"), not 666"
lists_token "$WWW" "$WWW" "$socket" || fail "uid $WWW (--allow-uid) cannot list the token"
if lists_token 65534 65534 "$socket"; then fail "nobody (not allowed) was served"; fi
grep -q "refused a connection from uid 65534" "$LOG" || fail "no log line for the refused uid 65534"
stop
echo "row 13: --allow-uid $WWW: directories 0711, socket 0666; uid $WWW lists the token, uid 65534 is refused and logged; a 0700 directory on the way was warned about"

socket=$FIXTURE_DIR/group/pkcs11
serve "$socket" --allow-gid "$WWW"
[ "$(mode_of "$socket")" = 660 ] && [ "$(group_of "$socket")" = "$WWW" ] \
  || fail "the socket for --allow-gid is $(mode_of "$socket") group $(group_of "$socket")"
[ "$(mode_of "$FIXTURE_DIR/group")" = 710 ] && [ "$(group_of "$FIXTURE_DIR/group")" = "$WWW" ] \
  || fail "the directory for --allow-gid is $(mode_of "$FIXTURE_DIR/group") group $(group_of "$FIXTURE_DIR/group")"
lists_token 65534 "$WWW" "$socket" || fail "gid $WWW (--allow-gid) cannot list the token"
stop
echo "--allow-gid $WWW: socket 0660 and directory 0710 of group $WWW; a process of gid $WWW lists the token"

socket=$FIXTURE_DIR/custom/pkcs11
serve "$socket" --allow-gid "$WWW" --allow-gid 65534 --socket-mode 0660 --socket-group www-data
[ "$(mode_of "$socket")" = 660 ] && [ "$(group_of "$socket")" = "$WWW" ] || fail "--socket-mode/--socket-group not applied"
stop
echo "--socket-mode 0660 --socket-group www-data applied"

# ---- directories 0700 whatever the umask; only its own socket removed -----------------------------------
socket=$FIXTURE_DIR/deep/er/pkcs11
saved_umask=$(umask)
umask 000
serve "$socket"
umask "$saved_umask"
[ "$(mode_of "$FIXTURE_DIR/deep")" = 700 ] && [ "$(mode_of "$FIXTURE_DIR/deep/er")" = 700 ] && [ "$(mode_of "$socket")" = 600 ] \
  || fail "under umask 000: $(mode_of "$FIXTURE_DIR/deep") $(mode_of "$FIXTURE_DIR/deep/er") $(mode_of "$socket")"
first=$SERVER
rm "$socket"
serve "$socket"
second=$SERVER
kill "$first"
wait "$first" 2>/dev/null || true
[ -S "$socket" ] || fail "the first broker removed the second broker's socket"
listed P11_KIT_SERVER_ADDRESS="unix:path=$socket" \
  || fail "the second broker does not serve after the first one stopped"
SERVER=$second
stop
[ ! -e "$socket" ] || fail "the broker left its own socket behind"
echo "umask 000: created directories 0700, socket 0600; a broker whose socket was replaced leaves the new one alone, removes its own"

# ---- 14: what is at the path -------------------------------------------------------------------------------
check_refused() { # WHAT PATH EXPECTED-MESSAGE
  local status=0
  "$BROKER" serve --module "$SOFTHSM_MODULE" --socket "$2" >/dev/null 2>"$FIXTURE_DIR/refused.err" || status=$?
  [ $status = 2 ] || fail "$1 at --socket: exit status $status, not 2 ($(cat "$FIXTURE_DIR/refused.err"))"
  grep -q "$3" "$FIXTURE_DIR/refused.err" || fail "$1 at --socket: '$(cat "$FIXTURE_DIR/refused.err")' does not say '$3'"
  echo "row 14: $1 at --socket: exit 2, \"$(tail -1 "$FIXTURE_DIR/refused.err")\""
}
mkdir "$FIXTURE_DIR/a-directory"
check_refused "a directory" "$FIXTURE_DIR/a-directory" "is a directory, not a socket; remove it or choose another path with --socket"
echo data >"$FIXTURE_DIR/a-file"
check_refused "a regular file" "$FIXTURE_DIR/a-file" "is a regular file, not a socket"
ln -s "$FIXTURE_DIR/a-file" "$FIXTURE_DIR/a-link"
check_refused "a symbolic link" "$FIXTURE_DIR/a-link" "is a symbolic link, not a socket"
[ -d "$FIXTURE_DIR/a-directory" ] && [ "$(cat "$FIXTURE_DIR/a-file")" = data ] || fail "what was at the path was touched"
socket=$FIXTURE_DIR/live.sock
serve "$socket"
check_refused "a live socket" "$socket" "another server is already listening on $socket"
kill -KILL "$SERVER"
wait "$SERVER" 2>/dev/null || true
sleep 0.3
[ -S "$socket" ] || fail "no stale socket left by SIGKILL"
serve "$socket"
grep -q "replaced a stale socket at $socket (nothing answered on it)" "$LOG" || fail "the stale socket was not reported replaced"
listed P11_KIT_SERVER_ADDRESS="unix:path=$socket" || fail "no service after replacing a stale socket"
stop
echo "row 14: a stale socket (broker killed) replaced and served"

# ---- 15: a squatted socket -------------------------------------------------------------------------------
stranger="p11proxy-s$$"
useradd --system --no-create-home --shell /usr/sbin/nologin "$stranger" || fail "cannot create a throw-away user"
trap 'userdel "$stranger" 2>/dev/null || true; fixture_cleanup' EXIT
suid=$(id -u "$stranger")
sgid=$(id -g "$stranger")
home=$(mktemp -d /tmp/p11proxy-squat.XXXXXX)
trap 'userdel "$stranger" 2>/dev/null || true; rm -rf "$home"; fixture_cleanup' EXIT
chown "$suid:$sgid" "$home"
mkdir "$home/tokens"
printf 'directories.tokendir = %s/tokens\nobjectstore.backend = file\nlog.level = ERROR\n' "$home" >"$home/softhsm2.conf"
chown -R "$suid:$sgid" "$home"
as "$suid" "$sgid" env SOFTHSM2_CONF="$home/softhsm2.conf" softhsm2-util --init-token --free --label "$FIXTURE_LABEL" \
  --so-pin 87654321 --pin "$FIXTURE_PIN" >/dev/null || fail "the stranger cannot make a token"
squat=/tmp/p11proxy-squat-$$.sock
# setpriv itself, not the function "as": $! must be the broker's pid (setpriv and env exec it).
setpriv --reuid="$suid" --regid="$sgid" --clear-groups env SOFTHSM2_CONF="$home/softhsm2.conf" "$BROKER" serve \
  --module "$SOFTHSM_MODULE" --socket "$squat" --allow-uid 0 --verbose >/dev/null 2>"$home/impostor.err" &
impostor=$!
FIXTURE_PIDS+=($impostor)
trap 'kill '"$impostor"' 2>/dev/null || true; wait '"$impostor"' 2>/dev/null || true; userdel "$stranger" 2>/dev/null || true; rm -rf "$home"; fixture_cleanup' EXIT
fixture_wait_socket "$squat"

status=0
P11_KIT_SERVER_ADDRESS="unix:path=$squat" pkcs11-tool --module "$OUT/p11proxy.so" --login --pin "$FIXTURE_PIN" -O \
  >/dev/null 2>"$FIXTURE_DIR/squat.err" || status=$?
[ $status != 0 ] || fail "p11proxy.so used a broker of uid $suid"
grep -q "^p11proxy: C_Initialize: the broker at $squat runs as uid $suid (pid [0-9]*), not as you (uid 0), root.*broker-uid = $suid" \
  "$FIXTURE_DIR/squat.err" || fail "no p11proxy: line naming uid $suid: $(cat "$FIXTURE_DIR/squat.err")"
! grep -q "C_Login" "$home/impostor.err" || fail "the impostor saw a C_Login from p11proxy.so"
echo "row 15, p11proxy.so: refused: $(grep -o '^p11proxy: C_Initialize: the broker at [^:]*: refusing to talk to it' "$FIXTURE_DIR/squat.err" | head -1); the impostor saw no C_Login"

P11_KIT_SERVER_ADDRESS="unix:path=$squat" pkcs11-tool --module "$P11KIT_CLIENT" --login --pin "$FIXTURE_PIN" -O >/dev/null 2>&1 || true
grep -q "C_Login session=[0-9]* -> CKR_OK" "$home/impostor.err" || fail "p11-kit-client.so did not log in to the impostor (expected: it does not check)"
echo "row 15, p11-kit-client.so: logged in to uid $suid's impostor (its log: $(grep -o 'C_Login session=[0-9]* -> CKR_OK' "$home/impostor.err" | head -1))"

mkdir -p "$FIXTURE_DIR/config/p11proxy"
printf 'broker-uid = %s\n' "$suid" >"$FIXTURE_DIR/config/p11proxy/p11proxy.conf"
listed XDG_CONFIG_HOME="$FIXTURE_DIR/config" P11_KIT_SERVER_ADDRESS="unix:path=$squat" || fail "broker-uid = $suid in p11proxy.conf does not admit that broker"
echo "broker-uid = $suid in p11proxy.conf: that broker is accepted"

# ---- systemd socket activation ---------------------------------------------------------------------------
socket=$FIXTURE_DIR/activated.sock
systemd-socket-activate -l "$socket" -E SOFTHSM2_CONF "$BROKER" serve --module "$SOFTHSM_MODULE" --socket "$socket" \
  >/dev/null 2>"$FIXTURE_DIR/activated.err" &
SERVER=$!
FIXTURE_PIDS+=($SERVER)
fixture_wait_socket "$socket"
listed P11_KIT_SERVER_ADDRESS="unix:path=$socket" \
  || fail "the socket-activated broker does not serve: $(cat "$FIXTURE_DIR/activated.err")"
grep -q "listening on the socket systemd passed" "$FIXTURE_DIR/activated.err" || fail "the broker did not take the socket systemd passed"
listening=$(readlink "/proc/$SERVER/fd/3")
for worker in $(pgrep -P "$SERVER"); do
  for fd in /proc/"$worker"/fd/*; do
    [ "$(readlink "$fd")" != "$listening" ] || fail "worker $worker holds the listening socket ($listening) as $fd"
  done
done
stop
echo "socket activation: served; no worker holds the listening socket $listening"
echo PASS
