#!/usr/bin/env bash
# Issue 16, PIN hygiene of the held PIN: with each source (file, systemd credential, ask-pass
# program) and both uses (a protected-path C_Login with a NULL PIN, and --login-on-arrival), after
# the login has happened:
#   - the broker's --verbose log holds no trace of the PIN;
#   - the memory of the worker that logged in (every readable mapping, through /proc/PID/mem), of
#     the listener and of the client holds no copy of it, neither as bytes nor as UTF-16 (a .NET string);
#   - the search itself is shown able to find the PIN: a client that sends the PIN itself holds it.
# The PIN is distinctive (739164825301) so that no other data matches it by chance.
set -euo pipefail
OUT=${1:-out}
DIR=$(dirname "$0")
. "$DIR/lib.sh"
. "$DIR/isolation-lib.sh"
fixture_token hygiene
iso_build
MODULE=$(cd "$OUT" && pwd)/p11proxy.so
URI="pkcs11:token=$FIXTURE_LABEL"
PIN=739164825301
pkcs11-tool --module "$SOFTHSM_MODULE" --login --pin "$FIXTURE_PIN" --change-pin --new-pin "$PIN" >/dev/null 2>&1 \
  || fail "cannot set the token's PIN"
CKS_RO_USER_FUNCTIONS=1

printf '%s\n' "$PIN" >"$FIXTURE_DIR/pin"
chmod 0600 "$FIXTURE_DIR/pin"
mkdir -m 0700 "$FIXTURE_DIR/creds"
install -m 0400 "$FIXTURE_DIR/pin" "$FIXTURE_DIR/creds/token-pin"
printf '#!/bin/sh\ncat %s\n' "$FIXTURE_DIR/pin" >"$FIXTURE_DIR/askpass"
chmod 0700 "$FIXTURE_DIR/askpass"

# holds PID: whether the process's memory holds the PIN (as bytes or UTF-16); prints where.
cat >"$FIXTURE_DIR/scan.py" <<'EOF'
import re, sys
pid, pin = sys.argv[1], sys.argv[2].encode()
needles = [pin, sys.argv[2].encode("utf-16-le")]
found, scanned = [], 0
with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
    for line in maps:
        fields = line.split()
        start, end = (int(x, 16) for x in fields[0].split("-"))
        name = fields[5] if len(fields) > 5 else ""
        if "r" not in fields[1] or name in ("[vvar]", "[vsyscall]", "[vvar_vclock]"):
            continue
        try:
            mem.seek(start)
            data = mem.read(end - start)
        except OSError:
            continue
        scanned += len(data)
        for needle in needles:
            at = data.find(needle)
            if at >= 0:
                found.append(f"{hex(start + at)} in {name or 'anonymous'} ({'utf-16' if needle != pin else 'bytes'})")
print(f"scanned={scanned}")
for place in found:
    print(f"found {place}")
sys.exit(0 if found else 1)
EOF
holds() {
  python3 "$FIXTURE_DIR/scan.py" "$1" "$PIN" >"$FIXTURE_DIR/scan.out" 2>&1
}
scanned_mib() { echo $(( $(sed -n 's/^scanned=//p' "$FIXTURE_DIR/scan.out") >> 20 )); }

# worker_of CLIENT-PID: the worker serving that client, from the listener's log.
worker_of() {
  sed -n "s/.*pid $1) served by worker pid \([0-9]*\).*/\1/p" "$FIXTURE_DIR/broker.err" | tail -1
}

BROKER_PID=""
broker_restart() {
  if [ -n "$BROKER_PID" ]; then kill "$BROKER_PID"; wait "$BROKER_PID" 2>/dev/null || true; fi
  rm -f "$FIXTURE_DIR/broker.sock"
  fixture_start_broker --verbose "$@"
  BROKER_PID=${FIXTURE_PIDS[-1]}
}

# The search finds a PIN that is there: a client that typed the PIN itself (its stdin line, its
# request buffers) holds it.
broker_restart
client_start typed "$MODULE" "$FIXTURE_ADDRESS"
expect typed $CKR_OK open ro
expect typed $CKR_OK login user "$PIN"
holds "${CLIENT_PID[typed]}" || fail "the memory search does not find the PIN in a client that sent it: $(cat "$FIXTURE_DIR/scan.out")"
echo "control: the search finds the PIN in a client that sent it itself ($(grep -c ^found "$FIXTURE_DIR/scan.out") places, $(scanned_mib) MiB scanned)"
client_quit typed

# check SOURCE-NAME USE PIN-URI [ENV...]: one source and one use (protected or arrival).
check() {
  local source=$1 use=$2 pin_uri=$3 client worker
  shift 3
  local policy=(--protected-login "uid:0=$URI")
  [ "$use" = arrival ] && policy=(--login-on-arrival "uid:0=$URI")
  if [ $# -gt 0 ]; then
    export "$@"
  fi
  broker_restart --pin "$pin_uri" "${policy[@]}"
  unset CREDENTIALS_DIRECTORY
  client=$source-$use
  client_start "$client" "$MODULE" "$FIXTURE_ADDRESS"
  expect "$client" $CKR_OK open ro
  [ "$use" = protected ] && expect "$client" $CKR_OK login user -
  expect "$client" $CKR_OK state
  [ "$(field state)" = $CKS_RO_USER_FUNCTIONS ] || fail "$source/$use: the session is not logged in: $REPLY"
  expect "$client" $CKR_OK sign "by-$client" "$FIXTURE_DIR/sig-$client"
  printf 'by-%s' "$client" >"$FIXTURE_DIR/data-$client"
  openssl dgst -sha256 -verify "$FIXTURE_DIR/pub.pem" -signature "$FIXTURE_DIR/sig-$client" "$FIXTURE_DIR/data-$client" >/dev/null \
    || fail "$source/$use: the signature does not verify"
  worker=$(worker_of "${CLIENT_PID[$client]}")
  [ -n "$worker" ] && [ -d "/proc/$worker" ] || fail "$source/$use: no worker found for client pid ${CLIENT_PID[$client]}"
  if holds "$worker"; then fail "$source/$use: the worker (pid $worker) holds the PIN after the login: $(cat "$FIXTURE_DIR/scan.out")"; fi
  local worker_mib; worker_mib=$(scanned_mib)
  if holds "$BROKER_PID"; then fail "$source/$use: the listener holds the PIN: $(cat "$FIXTURE_DIR/scan.out")"; fi
  if holds "${CLIENT_PID[$client]}"; then fail "$source/$use: the client holds the PIN: $(cat "$FIXTURE_DIR/scan.out")"; fi
  grep -q "C_Login" "$FIXTURE_DIR/broker.err" || [ "$use" = arrival ] || fail "$source/$use: the --verbose log traced no C_Login"
  grep -qF "$PIN" "$FIXTURE_DIR/broker.err" && fail "$source/$use: the broker's log shows the PIN"
  client_quit "$client"
  echo "$source/$use: logged in and signed (verified); PIN in none of worker $worker ($worker_mib MiB), listener, client, --verbose log ($(wc -l <"$FIXTURE_DIR/broker.err") lines)"
}

for use in protected arrival; do
  check file "$use" "$URI?pin-source=file:$FIXTURE_DIR/pin"
  check credential "$use" "$URI?pin-source=credential:token-pin" CREDENTIALS_DIRECTORY="$FIXTURE_DIR/creds"
  check askpass "$use" "$URI?pin-source=|$FIXTURE_DIR/askpass"
done
echo PASS
