#!/usr/bin/env bash
# p11proxy build, demo and test driver.
#   ./build.sh          build out/p11proxy.so (and the broker when it exists)
#   ./build.sh demo     build, make a throw-away SoftHSM token, serve it, list and sign through out/p11proxy.so
#   ./build.sh test     build and run every test suite; last line: "N passed, N failed"
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
  $sudo apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
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

# Runs one NUnit project and adds its counts. Skipped tests count as failed: none may be skipped.
run_dotnet_tests() {
  local project=$1 name=$2 log
  log=$(mktemp)
  say "running $name"
  set +e
  dotnet test "$project" -c Release --nologo --logger "console;verbosity=normal" 2>&1 | tee "$log" | grep -E '^\s*(Failed|Skipped) |Error Message|Assert' | head -200 >&2
  set -e
  local summary
  summary=$(grep -E '(Passed|Failed)!? +- +Failed: +[0-9]+' "$log" | tail -1 || true)
  if [ -z "$summary" ]; then
    say "$name: no test summary (build failure?)"; tail -40 "$log" >&2
    FAILED=$((FAILED + 1)); rm -f "$log"; return
  fi
  local f p s
  f=$(sed -E 's/.*Failed: +([0-9]+).*/\1/' <<<"$summary")
  p=$(sed -E 's/.*Passed: +([0-9]+).*/\1/' <<<"$summary")
  s=$(sed -E 's/.*Skipped: +([0-9]+).*/\1/' <<<"$summary")
  say "$name: $p passed, $f failed, $s skipped"
  PASSED=$((PASSED + p)); FAILED=$((FAILED + f + s))
  rm -f "$log"
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
  mkdir -p "$ROOT/.build"
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

case "${1:-build}" in
  build) build ;;
  test) run_tests ;;
  demo) demo ;;
  *) die "unknown command '$1' (use: build, demo, test)" ;;
esac
