#!/usr/bin/env bash
# out/p11proxy.so exports the three PKCS#11 entry points and needs no .NET runtime beside it.
set -euo pipefail
OUT=${1:-out}
. "$(dirname "$0")/lib.sh"
symbols=$(nm -D --defined-only "$OUT/p11proxy.so" | awk '{sub(/@.*/, "", $3); print $3}')
for entry in C_GetFunctionList C_GetInterfaceList C_GetInterface; do
  grep -qx "$entry" <<<"$symbols" || fail "$entry is not exported"
done
# Only libc-level system libraries: no libcoreclr, no libhostfxr.
if ldd "$OUT/p11proxy.so" | grep -Ei 'coreclr|hostfxr|hostpolicy|not found'; then
  fail "p11proxy.so depends on a .NET runtime library or a missing library"
fi
echo "exports ok: C_GetFunctionList C_GetInterfaceList C_GetInterface"
