#!/usr/bin/env bash
# The Debian package round trip: ./build.sh deb, dpkg -i, use, dpkg --purge.
# - Reference first: pkcs11-tool on p11-kit-proxy.so signs with the token through Debian's own
#   SoftHSM registration (SoftHSM loaded directly).
# - dpkg -i: every file dpkg -L lists is in place, the two conffiles are registered as such,
#   `man` finds the three pages, systemd-analyze verify accepts the system and user units,
#   p11-kit lists the module; with SoftHSM's registration pointed at
#   an empty directory and the installed broker (/usr/bin/p11proxy-broker) serving the token,
#   pkcs11-tool on p11-kit-proxy.so lists the token and signs through the registered module.
# - dpkg --purge: no file of the package, no conffile and no /etc/p11proxy remain, and the file
#   list of /usr, /lib and /etc equals the one taken before installing.
# System-wide: run under flock /tmp/p11proxy-test.lock (./build.sh test does).
set -euo pipefail
OUT=${1:-out}
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/fixture-clients.sh"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
P11KIT_PROXY=/usr/lib/x86_64-linux-gnu/p11-kit-proxy.so
[ "$(id -u)" -eq 0 ] || fail "needs root: it installs and purges a package"
[ "$(readlink -f "$OUT")" = "$ROOT/out" ] || fail "./build.sh deb packages $ROOT/out, but the test runs $OUT"
if dpkg-query -W -f '${Status}' p11proxy 2>/dev/null | grep -q installed; then
  fail "the p11proxy package is installed already; the test installs and purges it (dpkg --purge p11proxy first)"
fi
for path in /usr/lib/x86_64-linux-gnu/pkcs11/p11proxy.so /usr/libexec/p11proxy-broker /usr/share/p11-kit/modules/p11proxy.module \
            /etc/p11proxy /etc/pkcs11/modules/p11proxy.module; do
  [ ! -e "$path" ] || fail "$path exists (./build.sh install?): remove it so the package's round trip can be checked"
done

fixture_clients_token deb
d=$FIXTURE_DIR
printf 'signed through the package' > "$d/data"

# sign NAME: pkcs11-tool through p11-kit-proxy.so lists the token and signs; openssl verifies.
sign() {
  local out
  out=$(timeout 60 pkcs11-tool --module "$P11KIT_PROXY" -L 2>&1) || fail "$1: pkcs11-tool -L on p11-kit-proxy.so failed: $out"
  grep -q "token label *: $FIXTURE_LABEL\$" <<<"$out" || fail "$1: pkcs11-tool on p11-kit-proxy.so does not list the token: $out"
  rm -f "$d/sig"
  timeout 60 pkcs11-tool --module "$P11KIT_PROXY" --token-label "$FIXTURE_LABEL" --login --pin "$FIXTURE_PIN" \
    --sign -m SHA256-RSA-PKCS --id 01 -i "$d/data" -o "$d/sig" >"$d/sign.out" 2>&1 || fail "$1: signing failed: $(cat "$d/sign.out")"
  openssl dgst -sha256 -verify "$d/rsa-pub.pem" -signature "$d/sig" "$d/data" >/dev/null || fail "$1: the signature does not verify"
  echo "$1: pkcs11-tool --module p11-kit-proxy.so -L lists $FIXTURE_LABEL; SHA256-RSA-PKCS signature verifies"
}
sign direct

snapshot() { find /usr /lib /etc -xdev -path /etc/ld.so.cache -prune -o -print 2>/dev/null | LC_ALL=C sort; }
snapshot > "$d/before.txt"

version=$(sed -n 's|.*<Version>\(.*\)</Version>.*|\1|p' "$ROOT/Directory.Build.props")
DEB=$ROOT/out/p11proxy_${version}_amd64.deb
DEB_LINTIAN=0 "$ROOT/build.sh" deb >"$d/deb-build.out" 2>&1 || fail "./build.sh deb failed: $(tail -20 "$d/deb-build.out")"
[ -f "$DEB" ] || fail "./build.sh deb did not write $DEB"
echo "built $(basename "$DEB"): $(dpkg-deb -f "$DEB" Package Version Architecture Depends | tr '\n' ' ')"

fixture_on_exit "dpkg --purge p11proxy"
dpkg -i "$DEB" >"$d/dpkg-i.out" 2>&1 || fail "dpkg -i failed: $(cat "$d/dpkg-i.out")"
dpkg -L p11proxy > "$d/files.txt"
missing=0
while read -r path; do
  [ -e "$path" ] || [ -L "$path" ] || { echo "missing after dpkg -i: $path" >&2; missing=1; }
done < "$d/files.txt"
[ $missing -eq 0 ] || fail "dpkg -L lists files that are not there"
for path in /usr/lib/x86_64-linux-gnu/pkcs11/p11proxy.so /usr/libexec/p11proxy-broker /usr/bin/p11proxy-broker \
            /usr/share/p11-kit/modules/p11proxy.module /etc/p11proxy/p11proxy.conf /etc/default/p11proxy-broker \
            /usr/lib/systemd/user/p11proxy-broker.socket /usr/lib/systemd/user/p11proxy-broker.service \
            /lib/systemd/system/p11proxy-broker.socket /lib/systemd/system/p11proxy-broker.service \
            /usr/share/man/man8/p11proxy.8.gz /usr/share/man/man8/p11proxy-broker.8.gz /usr/share/man/man5/p11proxy.conf.5.gz; do
  grep -qxF "$path" "$d/files.txt" || fail "the package does not ship $path"
done
conffiles=$(dpkg-query -W -f '${Conffiles}' p11proxy | awk '{print $1}' | sort | tr '\n' ' ')
[ "$conffiles" = "/etc/default/p11proxy-broker /etc/p11proxy/p11proxy.conf " ] || fail "conffiles are '$conffiles'"
for page in p11proxy.8 p11proxy-broker.8 p11proxy.conf.5; do
  man -w "${page%.*}" 2>/dev/null | grep -q "/$page.gz\$" || man -w "${page##*.}" "${page%.*}" 2>/dev/null | grep -q "/$page.gz\$" \
    || fail "man does not find $page"
done
echo "dpkg -i: $(grep -c . "$d/files.txt") paths from dpkg -L present; conffiles $conffiles; man finds p11proxy(8), p11proxy-broker(8), p11proxy.conf(5)"

# The units as systemd reads them (no systemd needs to run for this).
out=$(systemd-analyze verify --man=no /lib/systemd/system/p11proxy-broker.socket /lib/systemd/system/p11proxy-broker.service 2>&1) \
  || fail "systemd-analyze verify rejects the system units: $out"
[ -z "$out" ] || fail "systemd-analyze verify warns about the system units: $out"
mkdir -m 0700 "$d/runtime"
out=$(XDG_RUNTIME_DIR="$d/runtime" systemd-analyze --user verify --man=no /usr/lib/systemd/user/p11proxy-broker.socket \
        /usr/lib/systemd/user/p11proxy-broker.service 2>&1) || fail "systemd-analyze --user verify rejects the user units: $out"
[ -z "$out" ] || fail "systemd-analyze --user verify warns about the user units: $out"
echo "systemd-analyze verify: the system and the user socket/service units load without a warning"

# Through the installed module and broker; SoftHSM's own registration sees no token meanwhile.
/usr/bin/p11proxy-broker serve --module "$SOFTHSM_MODULE" --socket "$d/broker.sock" >"$d/broker.out" 2>"$d/broker.err" &
FIXTURE_PIDS+=($!)
fixture_wait_socket "$d/broker.sock"
export P11_KIT_SERVER_ADDRESS="unix:path=$d/broker.sock"
mkdir "$d/no-tokens"
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$d/no-tokens" > "$d/no-tokens.conf"
broker_conf=$SOFTHSM2_CONF
export SOFTHSM2_CONF="$d/no-tokens.conf"
out=$(timeout 30 p11-kit list-modules 2>&1) || true
grep -qx 'p11proxy: /usr/lib/x86_64-linux-gnu/pkcs11/p11proxy.so' <<<"$out" || fail "p11-kit list-modules does not show p11proxy: $out"
awk '/^[^ ]/ { on = ($1 == "p11proxy:") } on' <<<"$out" | grep -qx "    token: $FIXTURE_LABEL" \
  || fail "p11-kit list-modules does not show the token under p11proxy: $out"
echo "p11-kit list-modules: 'p11proxy: /usr/lib/x86_64-linux-gnu/pkcs11/p11proxy.so' with $FIXTURE_LABEL, served by /usr/bin/p11proxy-broker"
sign installed
export SOFTHSM2_CONF=$broker_conf

# Purge: nothing of the package stays behind.
kill "${FIXTURE_PIDS[-1]}" && wait "${FIXTURE_PIDS[-1]}" 2>/dev/null || true
dpkg --purge p11proxy >"$d/dpkg-purge.out" 2>&1 || fail "dpkg --purge failed: $(cat "$d/dpkg-purge.out")"
left=0
while read -r path; do
  [ "$path" = /. ] && continue
  if [ -e "$path" ] || [ -L "$path" ]; then
    # A directory that was there before stays (on a merged /usr, /lib/systemd is /usr/lib/systemd).
    grep -qxF "$path" "$d/before.txt" || grep -qxF "$(readlink -f "$path")" "$d/before.txt" \
      || { echo "left after purge: $path" >&2; left=1; }
  fi
done < "$d/files.txt"
[ $left -eq 0 ] || fail "dpkg --purge left files of the package behind"
[ ! -e /etc/p11proxy ] || fail "/etc/p11proxy is still there after purge"
! dpkg-query -W p11proxy >/dev/null 2>&1 || fail "dpkg still knows p11proxy after purge"
snapshot > "$d/after.txt"
if ! cmp -s "$d/before.txt" "$d/after.txt"; then
  fail "the file list of /usr, /lib and /etc changed: $(diff "$d/before.txt" "$d/after.txt" | grep '^[<>]' | head -10)"
fi
echo "dpkg --purge: none of the $(grep -c . "$d/files.txt") paths remains (but directories shared before), /etc/p11proxy gone;" \
  "/usr, /lib and /etc list the same $(grep -c . "$d/after.txt") paths as before dpkg -i"
echo "Debian package round trip ok ($(fixture_elapsed) s)"
