#!/usr/bin/env bash
# p11proxy build, demo and test driver.
#   ./build.sh          build out/p11proxy.so (and the broker when it exists)
#   ./build.sh demo     build, make a throw-away SoftHSM token, serve it, list and sign through out/p11proxy.so
#   ./build.sh test     build and run every test suite; last line: "N passed, N failed"
#   ./build.sh deb      build out/p11proxy_VERSION_amd64.deb (and show lintian's findings)
# Installs what a fresh Debian 12 machine lacks (apt-get) and restores NuGet packages.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$PWD
OUT=$ROOT/out
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'build.sh: %s\n' "$*" >&2; exit 1; }

# Debian packages, each with a file that proves it is installed.
PACKAGES=(
  "clang:/usr/bin/clang"                                         # NativeAOT links with clang
  "zlib1g-dev:/usr/include/zlib.h"                               # NativeAOT runtime links -lz
  "p11-kit:/usr/bin/p11-kit"                                     # p11-kit server / remote: the reference peer
  "p11-kit-modules:/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so"
  "softhsm2:/usr/lib/softhsm/libsofthsm2.so"                     # the demo and test token
  "opensc:/usr/bin/pkcs11-tool"                                  # a real client
  "gnutls-bin:/usr/bin/p11tool"
  "openssl:/usr/bin/openssl"
  "libnss3-dev:/usr/include/nss/pkcs11t.h"                       # header the constants are generated from
  "strace:/usr/bin/strace"                                       # golden-vector capture
  "libssl-dev:/usr/include/openssl/sha.h"                        # native test hosts
  "openssh-client:/usr/bin/ssh-keygen"                           # real clients (native-tests/1*.sh)
  "openssh-server:/usr/sbin/sshd"
  "libnss3-tools:/usr/bin/modutil"
  "libengine-pkcs11-openssl:/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so"
  "curl:/usr/bin/curl"
  "default-jdk-headless:/usr/bin/javac"                          # SunPKCS11; java Sign.java needs a JDK
  "hostapd:/usr/sbin/hostapd"
  "wpasupplicant:/usr/sbin/wpa_supplicant"
  "iproute2:/sbin/ip"
  "valgrind:/usr/bin/valgrind"                                   # bench: instructions per call (callgrind)
  "python3:/usr/bin/python3"                                     # bench: the report; man/generate.py (also at build time: --help)
  "nginx:/usr/sbin/nginx"                                        # servers with their key on the token (native-tests/40)
  "apache2:/usr/sbin/apache2"
  "wget:/usr/bin/wget"                                           # GnuTLS clients through p11-kit (native-tests/41)
  "man-db:/usr/bin/man"                                          # man pages checked (native-tests/42)
  "chromium:/usr/bin/chromium"                                   # browsers: TLS client auth with a PIN dialog (native-tests/43)
  "chromium-driver:/usr/bin/chromedriver"
  "firefox-esr:/usr/bin/firefox-esr"
  "xvfb:/usr/bin/Xvfb"
  "xdotool:/usr/bin/xdotool"
  "libreswan:/usr/sbin/ipsec"                                    # IKEv2 with a token key (native-tests/45)
  "iputils-ping:/usr/bin/ping"                                   # traffic through the tunnel
  "lintian:/usr/bin/lintian"                                     # ./build.sh deb checks the package
  "systemd:/usr/bin/systemd-socket-activate"                     # socket activation test (native-tests/24)
  "systemd:/usr/bin/systemd-analyze"                             # the packaged units are verified (native-tests/46)
  "util-linux:/usr/bin/prlimit"                                  # limits and other users in tests (prlimit, setpriv)
  "passwd:/usr/sbin/useradd"                                     # throw-away users in tests
  "pcscd:/usr/sbin/pcscd"                                         # smart-card events: pcscd, vpcd's virtual reader and
  "vsmartcard-vpcd:/usr/lib/pcsc/drivers/serial/libifdvpcd.so"   #   our virtual card (native-tests/30-card-events.sh)
)

ensure_packages() {
  local missing=()
  for entry in "${PACKAGES[@]}"; do
    [ -e "${entry#*:}" ] || missing+=("${entry%%:*}")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing Debian packages: ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  # Waits for another apt-get (a second build on the same machine) instead of failing at once.
  $sudo apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || die "apt-get could not install: ${missing[*]}"
}

ensure_dotnet() {
  command -v dotnet >/dev/null || die "the .NET SDK (10.0) is required: install it and put dotnet on PATH"
}

build() {
  ensure_packages
  ensure_dotnet
  mkdir -p "$OUT"
  say "building out/p11proxy.so (NativeAOT)"
  dotnet publish src/ProxyModule/ProxyModule.csproj -c Release -o "$ROOT/.build/module" --nologo -v:q >/dev/null \
    || { dotnet publish src/ProxyModule/ProxyModule.csproj -c Release -o "$ROOT/.build/module" --nologo -v:m; die "module build failed"; }
  install -m 0755 "$ROOT/.build/module/p11proxy.so" "$OUT/p11proxy.so"
  if [ -f src/Broker/Broker.csproj ]; then
    say "building out/p11proxy-broker (NativeAOT)"
    dotnet publish src/Broker/Broker.csproj -c Release -o "$ROOT/.build/broker" --nologo -v:q >/dev/null \
      || { dotnet publish src/Broker/Broker.csproj -c Release -o "$ROOT/.build/broker" --nologo -v:m; die "broker build failed"; }
    install -m 0755 "$ROOT/.build/broker/p11proxy-broker" "$OUT/p11proxy-broker"
  fi
}

# --- test ------------------------------------------------------------------------------------
PASSED=0
FAILED=0

# Runs one NUnit project and adds its counts (read from its TRX report). Skipped tests count as
# failed: none may be skipped.
run_dotnet_tests() {
  local project=$1 name=$2
  local results="$ROOT/.build/results/$(basename "$project" .csproj)"
  rm -rf "$results"
  say "running $name"
  set +e
  dotnet test "$project" -c Release --nologo --logger "trx;LogFileName=results.trx" --results-directory "$results" \
    >"$results.log" 2>&1
  set -e
  grep -E '^\s+Failed |Error Message:|^\s+(Expected|But was):' "$results.log" | head -60 >&2 || true
  local trx="$results/results.trx" counters
  counters=$(grep -o '<Counters [^>]*>' "$trx" 2>/dev/null || true)
  if [ -z "$counters" ]; then
    say "$name: no test report (build failure?)"; tail -40 "$results.log" >&2 || true
    FAILED=$((FAILED + 1)); return
  fi
  local total passed failed
  total=$(sed -E 's/.* total="([0-9]+)".*/\1/' <<<"$counters")
  passed=$(sed -E 's/.* passed="([0-9]+)".*/\1/' <<<"$counters")
  failed=$((total - passed))
  say "$name: $passed passed, $failed failed or skipped (of $total)"
  PASSED=$((PASSED + passed)); FAILED=$((FAILED + failed))
}

# Each native-tests/*.sh script is one test: exit 0 passes, anything else fails.
run_native_tests() {
  local script status
  for script in native-tests/[0-9]*.sh; do
    [ -e "$script" ] || continue
    say "native test $(basename "$script")"
    set +e
    timeout 300 bash "$script" "$OUT" >"$ROOT/.build/$(basename "$script").log" 2>&1
    status=$?
    set -e
    if [ $status -eq 0 ]; then
      PASSED=$((PASSED + 1))
    else
      FAILED=$((FAILED + 1))
      say "FAILED: $script (exit $status); its output:"
      tail -30 "$ROOT/.build/$(basename "$script").log" >&2
    fi
  done
}

run_tests() {
  build
  mkdir -p "$ROOT/.build/results"
  export P11PROXY_MODULE="$OUT/p11proxy.so"
  run_dotnet_tests tests/Unit/Unit.csproj "unit tests"
  [ -f tests/conformance/Conformance.csproj ] && run_dotnet_tests tests/conformance/Conformance.csproj "conformance tests"
  run_native_tests
  echo "$PASSED passed, $FAILED failed"
  [ "$FAILED" -eq 0 ]
}

# --- demo ------------------------------------------------------------------------------------
demo() {
  build
  # shellcheck source=native-tests/lib.sh
  . native-tests/lib.sh
  fixture_token demo
  fixture_start_broker
  export P11_KIT_SERVER_ADDRESS=$FIXTURE_ADDRESS
  say "broker: out/p11proxy-broker serving SoftHSM token '$FIXTURE_LABEL' at $P11_KIT_SERVER_ADDRESS"
  say "pkcs11-tool --module out/p11proxy.so --list-slots"
  pkcs11-tool --module "$OUT/p11proxy.so" --list-slots
  say "pkcs11-tool --module out/p11proxy.so --list-objects --login"
  pkcs11-tool --module "$OUT/p11proxy.so" --list-objects --login --pin "$FIXTURE_PIN"
  say "signing with the token's key through the proxy, verifying with openssl"
  printf 'hello from p11proxy\n' > "$FIXTURE_DIR/data"
  pkcs11-tool --module "$OUT/p11proxy.so" --login --pin "$FIXTURE_PIN" --sign --mechanism SHA256-RSA-PKCS \
    --id 01 --input-file "$FIXTURE_DIR/data" --output-file "$FIXTURE_DIR/sig"
  openssl dgst -sha256 -verify "$FIXTURE_DIR/pub.pem" -signature "$FIXTURE_DIR/sig" "$FIXTURE_DIR/data"
  say "demo done; stopping the broker and removing the token"
}

# --- install ---------------------------------------------------------------------------------
# ./build.sh install: the built module, broker and registration into the system's places (run
# ./build.sh first); ./build.sh uninstall removes them (the config file only while unmodified).
INSTALL_MODULE=/usr/lib/x86_64-linux-gnu/pkcs11/p11proxy.so
INSTALL_BROKER=/usr/libexec/p11proxy-broker
INSTALL_REGISTRATION=/usr/share/p11-kit/modules/p11proxy.module
INSTALL_CONF=/etc/p11proxy/p11proxy.conf

install_files() {
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  [ -f "$OUT/p11proxy.so" ] && [ -f "$OUT/p11proxy-broker" ] || die "out/p11proxy.so and out/p11proxy-broker are not built: run ./build.sh first"
  $sudo install -D -m 0755 "$OUT/p11proxy.so" "$INSTALL_MODULE"
  $sudo install -D -m 0755 "$OUT/p11proxy-broker" "$INSTALL_BROKER"
  $sudo install -D -m 0644 module-config/p11proxy.module "$INSTALL_REGISTRATION"
  if [ -e "$INSTALL_CONF" ]; then
    say "keeping the existing $INSTALL_CONF"
  else
    $sudo install -D -m 0644 module-config/p11proxy.conf "$INSTALL_CONF"
  fi
  say "installed $INSTALL_MODULE $INSTALL_BROKER $INSTALL_REGISTRATION $INSTALL_CONF"
}

uninstall_files() {
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo rm -f "$INSTALL_MODULE" "$INSTALL_BROKER" "$INSTALL_REGISTRATION"
  if [ -f "$INSTALL_CONF" ] && cmp -s "$INSTALL_CONF" module-config/p11proxy.conf; then
    $sudo rm -f "$INSTALL_CONF"
    $sudo rmdir "$(dirname "$INSTALL_CONF")" 2>/dev/null || true
  elif [ -e "$INSTALL_CONF" ]; then
    say "keeping $INSTALL_CONF (changed since installation)"
  fi
  say "removed $INSTALL_MODULE $INSTALL_BROKER $INSTALL_REGISTRATION"
}

# --- deb -------------------------------------------------------------------------------------
# ./build.sh deb: out/p11proxy_VERSION_amd64.deb from the built module and broker (the same places
# as ./build.sh install), with the p11-kit registration, user and system systemd units, conffiles
# /etc/p11proxy/p11proxy.conf and /etc/default/p11proxy-broker, and the man pages generated from
# man/reference.json; then lintian's findings. Built as any user (dpkg-deb --root-owner-group).
# The project has no public contact address yet: lintian reports this default (bogus-mail-host).
DEB_MAINTAINER=${DEB_MAINTAINER:-p11proxy developers <p11proxy@localhost>}
# DEB_LINTIAN=0 skips lintian (native-tests/46 builds the package only to install it).
DEB_LINTIAN=${DEB_LINTIAN:-1}
package_version() { sed -n 's|.*<Version>\(.*\)</Version>.*|\1|p' Directory.Build.props; }

build_deb() {
  local version stage deb
  version=$(package_version)
  [ -n "$version" ] || die "no <Version> in Directory.Build.props"
  stage=$ROOT/.build/deb/p11proxy
  deb=$OUT/p11proxy_${version}_amd64.deb
  rm -rf "$stage" && mkdir -p "$stage/DEBIAN"
  say "staging the package in ${stage#"$ROOT"/}"
  install -D -m 0644 "$OUT/p11proxy.so" "$stage$INSTALL_MODULE"
  install -D -m 0755 "$OUT/p11proxy-broker" "$stage$INSTALL_BROKER"
  mkdir -p "$stage/usr/bin" && ln -s ../libexec/p11proxy-broker "$stage/usr/bin/p11proxy-broker"
  install -D -m 0644 module-config/p11proxy.module "$stage$INSTALL_REGISTRATION"
  install -D -m 0644 module-config/p11proxy.conf "$stage$INSTALL_CONF"
  install -D -m 0644 module-config/p11proxy-broker.default "$stage/etc/default/p11proxy-broker"
  install -D -m 0644 module-config/p11proxy-broker.socket "$stage/usr/lib/systemd/user/p11proxy-broker.socket"
  install -D -m 0644 module-config/p11proxy-broker.service "$stage/usr/lib/systemd/user/p11proxy-broker.service"
  install -D -m 0644 module-config/system/p11proxy-broker.socket "$stage/lib/systemd/system/p11proxy-broker.socket"
  install -D -m 0644 module-config/system/p11proxy-broker.service "$stage/lib/systemd/system/p11proxy-broker.service"
  python3 man/generate.py man "$ROOT/.build/deb/man"
  install -D -m 0644 "$ROOT/.build/deb/man/p11proxy.8" "$stage/usr/share/man/man8/p11proxy.8"
  install -D -m 0644 "$ROOT/.build/deb/man/p11proxy-broker.8" "$stage/usr/share/man/man8/p11proxy-broker.8"
  install -D -m 0644 "$ROOT/.build/deb/man/p11proxy.conf.5" "$stage/usr/share/man/man5/p11proxy.conf.5"
  gzip -9n "$stage"/usr/share/man/man*/*
  local doc=$stage/usr/share/doc/p11proxy
  install -D -m 0644 module-config/debian-copyright "$doc/copyright"
  install -m 0644 module-config/remote-example.module "$doc/remote-example.module"
  printf 'p11proxy (%s) unstable; urgency=medium\n\n  * Built from commit %s by ./build.sh deb.\n\n -- %s  %s\n' \
    "$version" "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" "$DEB_MAINTAINER" \
    "$(date -R -d "@$(git log -1 --format=%ct 2>/dev/null || date +%s)")" | gzip -9n > "$doc/changelog.gz"
  strip --strip-unneeded --remove-section=.comment --remove-section=.note "$stage$INSTALL_MODULE" "$stage$INSTALL_BROKER"

  # Dependencies as dpkg-shlibdeps finds them for the two binaries.
  local depends
  depends=$(cd "$ROOT/.build/deb" && mkdir -p debian && printf 'Source: p11proxy\n\nPackage: p11proxy\nArchitecture: amd64\n' > debian/control &&
            dpkg-shlibdeps -O "-e$stage$INSTALL_MODULE" "-e$stage$INSTALL_BROKER" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
  [ -n "$depends" ] || die "dpkg-shlibdeps found no dependencies"
  cat > "$stage/DEBIAN/control" <<EOF
Package: p11proxy
Version: $version
Architecture: amd64
Maintainer: $DEB_MAINTAINER
Installed-Size: $(du -sk --exclude=DEBIAN "$stage" | cut -f1)
Depends: $depends
Recommends: p11-kit, p11-kit-modules
Suggests: softhsm2, opensc
Section: admin
Priority: optional
Description: PKCS#11 module that keeps tokens, PINs and vendor code in a broker
 p11proxy.so is a PKCS#11 module that forwards every call over p11-kit's RPC
 protocol to p11proxy-broker, which loads the real module (an HSM's, a smart
 card's, SoftHSM). Applications never load vendor code, see the PIN or hold
 the keys; a crash of the vendor module stays in the broker, and a broker on
 another machine can be reached over ssh.
 .
 The module is registered with p11-kit, so every program using
 p11-kit-proxy.so (GnuTLS, NSS, OpenSSL's pkcs11 engine) sees the broker's
 tokens. It also works against p11-kit server, and p11-kit's client works
 against the broker.
EOF
  printf '/etc/default/p11proxy-broker\n/etc/p11proxy/p11proxy.conf\n' > "$stage/DEBIAN/conffiles"
  cat > "$stage/DEBIAN/postinst" <<'EOF'
#!/bin/sh
set -e
# New units: let a running systemd see them (nothing is enabled: the broker needs a module).
if [ "$1" = configure ] && [ -d /run/systemd/system ]; then
  systemctl --system daemon-reload >/dev/null || true
fi
EOF
  cat > "$stage/DEBIAN/postrm" <<'EOF'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
  systemctl --system daemon-reload >/dev/null || true
fi
if [ "$1" = purge ]; then
  rmdir /etc/p11proxy 2>/dev/null || true
fi
EOF
  chmod 0755 "$stage/DEBIAN/postinst" "$stage/DEBIAN/postrm"
  (cd "$stage" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z | xargs -0 md5sum) > "$stage/DEBIAN/md5sums"
  find "$stage" -type d -exec chmod 0755 {} +
  dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null || die "dpkg-deb failed"
  say "built ${deb#"$ROOT"/}: $(dpkg-deb -f "$deb" Package Version Depends | tr '\n' ' ')"
  [ "$DEB_LINTIAN" = 1 ] || return 0
  say "lintian -I --pedantic ${deb#"$ROOT"/} (findings are listed, not fatal):"
  lintian -I --pedantic --tag-display-limit 0 "$deb" 2>&1 | grep -v '^running with root privileges' >&2 || true
}

# --- bench -----------------------------------------------------------------------------------
# Timings only, never pass/fail: writes bench/results/latest.md (see bench/run.sh).
run_bench() {
  build
  OUT=$OUT bash bench/run.sh
}

case "${1:-build}" in
  build) build ;;
  test) run_tests ;;
  demo) demo ;;
  bench) run_bench ;;
  deb) build; build_deb ;;
  install) install_files ;;
  uninstall) uninstall_files ;;
  *) die "unknown command '$1' (use: build, demo, test, bench, deb, install, uninstall)" ;;
esac
