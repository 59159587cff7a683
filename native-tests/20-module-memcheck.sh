#!/usr/bin/env bash
# p11proxy.so under valgrind's memcheck against a lying peer (hosts/lyingpeer.py): more slots,
# longer signatures, labels and random bytes, and more attributes than the caller's buffers hold,
# and cut replies. The host's buffers (hosts/overflowprobe.c) are heap blocks of exactly the
# declared size, so a write past one is an "Invalid write". Every call must fail and memcheck
# must find nothing. A control run first shows that memcheck sees the module's writes: a
# signature written into a block smaller than the size declared to the module is reported.
set -euo pipefail
OUT=${1:-out}
. "$(dirname "$0")/lib.sh"
command -v valgrind >/dev/null || fail "valgrind is needed (./build.sh installs it)"
FIXTURE_DIR=$(mktemp -d "${TMPDIR:-/tmp}/p11proxy-memcheck.XXXXXX")
probe=$FIXTURE_DIR/overflowprobe
cc -g -O1 -Wall -o "$probe" "$(dirname "$0")/hosts/overflowprobe.c" -I/usr/include/p11-kit-1 -ldl || fail "cannot build the probe"
module=$(cd "$(dirname "$OUT/p11proxy.so")" && pwd)/p11proxy.so

# run_under_memcheck NAME [control]: a fresh peer on its own socket, the probe under memcheck.
run_under_memcheck() {
  local socket=$FIXTURE_DIR/$1.sock
  python3 "$(dirname "$0")/hosts/lyingpeer.py" "$socket" ${2:-} &
  FIXTURE_PIDS+=($!)
  fixture_wait_socket "$socket"
  set +e
  P11_KIT_SERVER_ADDRESS="unix:path=$socket" timeout 240 valgrind --tool=memcheck --error-exitcode=3 \
    "$probe" "$module" ${2:-} >"$FIXTURE_DIR/$1.out" 2>&1
  status=$?
  set -e
}

run_under_memcheck control control
grep -q "Invalid write" "$FIXTURE_DIR/control.out" && [ $status -eq 3 ] \
  || { cat "$FIXTURE_DIR/control.out" >&2; fail "memcheck did not report the control's write past an 8-byte block"; }
echo "control: memcheck reports the module's write past an 8-byte block declared as 16"

run_under_memcheck lies
grep -v '^==' "$FIXTURE_DIR/lies.out" | grep -v '^p11proxy:' || true
grep 'ERROR SUMMARY' "$FIXTURE_DIR/lies.out"
[ $status -eq 0 ] || { grep '^==' "$FIXTURE_DIR/lies.out" | head -60 >&2; fail "memcheck found errors, or a lie was accepted (exit $status)"; }
grep -q "ERROR SUMMARY: 0 errors" "$FIXTURE_DIR/lies.out" || fail "no clean memcheck summary"
echo "9 lies refused, memcheck: no invalid access by p11proxy.so"
