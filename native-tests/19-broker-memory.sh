#!/usr/bin/env bash
# The broker's memory under large call outputs and requests. Each client has a worker process of
# its own, and the budgets are per worker: its outputs stay within --output-memory-mib (one output
# at most half of it, as it counts twice: the module's buffer and the reply); what does not fit
# gets CKR_DEVICE_MEMORY and a log line. A worker churning the largest outputs keeps its peak RSS
# under 64 MiB (the C heap it shares with the module returns what a call used, see
# src/Broker/NativeHeap.cs; without that the same load took a shared broker to 77 MiB), as does a
# worker reading a 12 MiB request; the listener itself does not grow with its clients' traffic.
set -euo pipefail
OUT=${1:-out}
. "$(dirname "$0")/lib.sh"
fixture_token memory
probe=$FIXTURE_DIR/outputprobe
cc -O2 -Wall -o "$probe" "$(dirname "$0")/hosts/outputprobe.c" -I/usr/include/p11-kit-1 -ldl || fail "cannot build the probe"
module=$OUT/p11proxy.so
CKR_OK=0 CKR_DEVICE_MEMORY=31
mib=$((1 << 20))

# A 4 MiB budget: one output may be 2 MiB.
fixture_start_broker --output-memory-mib 4
export P11_KIT_SERVER_ADDRESS=$FIXTURE_ADDRESS
"$probe" random "$module" $((2 * mib)) $CKR_OK || fail "a 2 MiB random output within a 4 MiB budget was refused"
"$probe" random "$module" $((2 * mib + 1)) $CKR_DEVICE_MEMORY || fail "a random output over half the budget was not refused"
grep -q "C_GenerateRandom: refused a $((2 * mib + 1))-byte output" "$FIXTURE_DIR/broker.err" \
  || fail "no log line for the refused random output"
# One template naming a 1 MiB value twice fits; three times (3 MiB) does not, although each copy would.
"$probe" attribute "$module" $mib 2 $CKR_OK || fail "two copies of a 1 MiB value were not read back intact"
"$probe" attribute "$module" $mib 3 $CKR_DEVICE_MEMORY || fail "three copies of a 1 MiB value were not refused"
grep -q "C_GetAttributeValue: refused a $((3 * mib))-byte output" "$FIXTURE_DIR/broker.err" \
  || fail "no log line for the refused attribute values"
echo "--output-memory-mib 4: 2 MiB outputs served, larger ones and a 3 x 1 MiB template refused and logged"

# The default budget: outputs up to 4 MiB. Two bursts of four clients, each asking for the
# largest outputs down to 512 KiB at the same time: every worker's peak stays under 64 MiB, and
# the listener is no larger after the second burst than after the first.
kill "${FIXTURE_PIDS[-1]}"
wait "${FIXTURE_PIDS[-1]}" 2>/dev/null || true
fixture_start_broker
broker=${FIXTURE_PIDS[-1]}
status_kib() { awk -v field="$1:" '$1 == field { print $2 }' "/proc/$broker/status"; }
# worker_peak: the largest peak RSS (MiB) of the workers that have ended so far, from the log.
worker_peak() { grep -oE "left: worker pid [0-9]+ exited after [0-9.]+ s, peak RSS [0-9.]+ MiB" "$FIXTURE_DIR/broker.err" | awk '{ print $(NF - 1) }' | sort -n | tail -1; }
# workers_done: until only the spare worker is left (the clients' workers have been reaped).
workers_done() { for _ in $(seq 1 100); do [ "$(pgrep -cP "$broker" || true)" -le 1 ] && return 0; sleep 0.1; done; fail "workers did not end"; }
"$probe" random "$module" 32 $CKR_OK >/dev/null || fail "a small random output failed"
burst() {
  local pids=() client pid status=0
  for client in 1 2 3 4; do
    timeout 240 "$probe" churn "$module" 3 $((4 * mib)) >"$FIXTURE_DIR/churn-$1-$client.out" 2>&1 &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || status=1; done
  cat "$FIXTURE_DIR"/churn-"$1"-*.out
  [ $status -eq 0 ] || fail "burst $1: a client's large outputs failed (lines above)"
}
idle=$(status_kib VmRSS)
burst 1
first=$(status_kib VmRSS)
burst 2
second=$(status_kib VmRSS)
workers_done
peak=$(worker_peak)
echo "listener RSS: ${idle} KiB idle, ${first} KiB after burst 1, ${second} KiB after burst 2; the workers' largest peak RSS ${peak} MiB"
awk -v p="$peak" 'BEGIN { exit !(p < 64) }' || fail "a worker's peak RSS ${peak} MiB is not under 64 MiB"
[ $((second - first)) -lt 2048 ] || fail "the listener grew by $(( (second - first) / 1024 )) MiB in the second burst"

# Large requests: six clients at once each send a 12 MiB request (a C_DigestUpdate of 12 MiB) and
# three more announce 60 MiB. The 12 MiB ones are read in turn within the 16 MiB default budget
# for large requests, the 60 MiB ones are refused at their header; the peak stays under 64 MiB.
socket=${FIXTURE_ADDRESS#unix:path=}
/usr/bin/python3 - "$socket" <<'PY' || fail "the large-request clients failed"
import socket, struct, sys, threading
path = sys.argv[1]
def request(size, results, index):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.sendall(b"\x00")                        # protocol version 0
    if s.recv(1) != b"\x00": results[index] = "no handshake"; return
    # C_DigestUpdate (call 39 in p11-kit's table): signature "uay", session 1, then the data.
    body = struct.pack(">I", 39) + struct.pack(">I", 3) + b"uay" + struct.pack(">Q", 1) + struct.pack(">I", size)
    try:
        s.sendall(struct.pack(">III", 7, 0, len(body) + size) + body)
        chunk = bytes(1 << 20)
        for _ in range(size >> 20): s.sendall(chunk)
        s.settimeout(60)
        reply = s.recv(12)
        results[index] = "answered" if len(reply) == 12 else "closed"
    except (BrokenPipeError, ConnectionResetError):
        results[index] = "closed"
    s.close()
results = [None] * 9
threads = [threading.Thread(target=request, args=((12 << 20) if i < 6 else (60 << 20), results, i)) for i in range(9)]
for t in threads: t.start()
for t in threads: t.join()
print("12 MiB requests:", results[:6], "60 MiB requests:", results[6:])
sys.exit(0 if all(r == "answered" for r in results[:6]) and all(r == "closed" for r in results[6:]) else 1)
PY
workers_done
peak=$(worker_peak)
echo "the workers' largest peak RSS after the large requests: ${peak} MiB; listener VmHWM $(status_kib VmHWM) KiB"
awk -v p="$peak" 'BEGIN { exit !(p < 64) }' || fail "a worker's peak RSS ${peak} MiB is not under 64 MiB after large requests"
grep -q "refused a frame of" "$FIXTURE_DIR/broker.err" || fail "no log line for the refused 60 MiB requests"
kill -0 "$broker" || fail "the broker died"

# A client that announces a 12 MiB request, sends 1 MiB and stalls holds its budget for at most
# 10 s: its connection is then dropped with a log line. Another client's 12 MiB request, in a
# worker of its own, is answered meanwhile.
/usr/bin/python3 - "$socket" <<'PY' || fail "a stalled large request kept another client's request from being answered"
import socket, struct, sys, time
path = sys.argv[1]
def connect():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.sendall(b"\x00")
    assert s.recv(1) == b"\x00"
    return s
size = 12 << 20
body = struct.pack(">I", 39) + struct.pack(">I", 3) + b"uay" + struct.pack(">Q", 1) + struct.pack(">I", size)
stalled = connect()
stalled.sendall(struct.pack(">III", 7, 0, len(body) + size) + body + bytes(1 << 20))
time.sleep(0.5)
start = time.monotonic()
other = connect()
other.sendall(struct.pack(">III", 8, 0, len(body) + size) + body)
for _ in range(size >> 20): other.sendall(bytes(1 << 20))
other.settimeout(30)
reply = other.recv(12)
waited = time.monotonic() - start
stalled.settimeout(15)
try:
    dropped = stalled.recv(1) == b""
except ConnectionResetError:
    dropped = True
except socket.timeout:
    dropped = False
stalled_for = time.monotonic() - start
print(f"the other client's request answered after {waited:.1f} s; the stalled connection dropped: {dropped} ({stalled_for:.1f} s)")
sys.exit(0 if len(reply) == 12 and dropped and waited < 20 else 1)
PY
grep -qE "took more than|sent nothing for" "$FIXTURE_DIR/broker.err" || fail "no log line for the stalled large request"
kill -0 "$broker" || fail "the broker died"
echo "PASS"
