#!/usr/bin/env python3
"""Turns bench/run.sh's raw lines into bench/results/latest.md (standard library only).

  report.py report RAW META            Markdown report on stdout
  report.py chart RAW SVG [CAPTION]    the paired ops/s ratios per workload as an SVG bar chart
  report.py strace-diff SHORT LONG OPS TAGS
                                       per-call system calls from two `strace -f -c` summaries
                                       (long run minus short run, divided by OPS); one PROFILE line
"""
import statistics
import sys

CONFIGS = ["A", "B", "C", "D", "E"]
CONFIG_NAMES = {
    "A": "SoftHSM direct",
    "B": "p11-kit-client → p11-kit server",
    "C": "p11proxy.so → p11-kit server",
    "D": "p11proxy.so → p11proxy-broker",
    "E": "p11-kit-client → p11proxy-broker",
}
SPAWNED = {"B": "Bs", "C": "Cs", "D": "Ds", "E": "Es"}
SPAWNED_NAMES = {
    "Bs": "p11-kit-client.so, `|p11-kit remote`",
    "Cs": "p11proxy.so, `|p11-kit remote`",
    "Ds": "p11proxy.so, `|p11proxy-broker stdio`",
    "Es": "p11-kit-client.so, `|p11proxy-broker stdio`",
}
RATIOS = [("D", "B"), ("D", "A"), ("C", "B"), ("E", "B")]
ROWS = [
    ("random32", 1), ("info", 1), ("getattr", 1), ("find", 1),
    ("sign-ec", 1), ("sign-ec", 2),
    ("sign-rsa", 1), ("sign-rsa", 2), ("sign-rsa", 4), ("sign-rsa", 8),
    ("digest-1m", 1), ("digest-1m", 2),
    ("mix", 2),
]


def parse_fields(line):
    fields = {}
    for token in line.split()[1:]:
        if "=" in token:
            key, value = token.split("=", 1)
            fields[key] = value
    return fields


def number(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt_ops(value):
    if value is None:
        return "—"
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def fmt_us(value):
    if value is None:
        return "—"
    if value >= 1000:
        return f"{value / 1000:.2f} ms"
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def fmt_ratio(value):
    return "—" if value is None else f"{value:.2f}"


# --- raw lines ---------------------------------------------------------------------------------

def load_raw(raw_path):
    """(results, failures, profiles): results maps (workload, threads, config) to {round: fields}."""
    results, failures, profiles = {}, [], []
    with open(raw_path, encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("RESULT "):
                f = parse_fields(line)
                key = (f.get("workload"), int(f.get("threads", "1")), f.get("config"))
                results.setdefault(key, {})[int(f.get("round", "0"))] = f
            elif line.startswith("FAIL "):
                failures.append(line.strip())
            elif line.startswith("PROFILE "):
                profiles.append(parse_fields(line))
    return results, failures, profiles


def series_of(results, workload, threads, config, field):
    return {r: number(f.get(field)) for r, f in results.get((workload, threads, config), {}).items()}


def paired_ratio(results, workload, threads, first, second, field):
    """Median over the rounds of first/second, each round's pair measured side by side."""
    a = series_of(results, workload, threads, first, field)
    b = series_of(results, workload, threads, second, field)
    return median([a[r] / b[r] for r in a if r in b and a[r] is not None and b[r]])


# --- strace ------------------------------------------------------------------------------------

def strace_counts(path):
    """{syscall: calls} from an `strace -c` summary (columns located by the dashes line)."""
    counts = {}
    spans = None
    with open(path, encoding="utf-8", errors="replace") as handle:
        lines = handle.read().splitlines()
    for line in lines:
        if line.startswith("------"):
            if spans is None:
                spans, position = [], 0
                for part in line.split(" "):
                    spans.append((position, position + len(part)))
                    position += len(part) + 1
            continue
        if spans is None or not line.strip() or line.startswith("% time"):
            continue
        name = line[spans[-1][0]:].strip() if len(spans) >= 6 else line.split()[-1]
        if name == "total" or not name:
            continue
        calls_text = line[spans[3][0]:spans[3][1]].strip()
        if not calls_text.isdigit():
            continue
        counts[name] = counts.get(name, 0) + int(calls_text)
    return counts


def strace_diff(short_path, long_path, ops, tags):
    short, long_ = strace_counts(short_path), strace_counts(long_path)
    names = set(short) | set(long_)
    per_call = {n: (long_.get(n, 0) - short.get(n, 0)) / ops for n in names}
    total = sum(per_call.values())
    top = sorted(((v, n) for n, v in per_call.items() if v >= 0.05), reverse=True)
    breakdown = ",".join(f"{n}:{v:.2f}" for v, n in top[:6]) or "none"
    print(f"PROFILE {tags} per_call={total:.3f} breakdown={breakdown}")


# --- report ------------------------------------------------------------------------------------

def report(raw_path, meta_path):
    meta = {}
    with open(meta_path, encoding="utf-8") as handle:
        for line in handle:
            if "=" in line:
                key, value = line.rstrip("\n").split("=", 1)
                meta[key] = value

    results, failures, profiles = load_raw(raw_path)

    def series(workload, threads, config, field):
        return series_of(results, workload, threads, config, field)

    def med(workload, threads, config, field):
        return median(series(workload, threads, config, field).values())

    def paired(workload, threads, first, second, field):
        return paired_ratio(results, workload, threads, first, second, field)

    out = []
    w = out.append
    w("# p11proxy benchmark")
    w("")
    w(f"{meta.get('date', '?')}, `./build.sh bench` (bench/run.sh). Machine: {meta.get('nproc', '?')} vCPUs, "
      f"{meta.get('cpu', '?')}, {meta.get('kernel', '?')}, {meta.get('os', '?')}; p11-kit {meta.get('p11kit', '?')}, "
      f"SoftHSM {meta.get('softhsm', '?')}; project commit {meta.get('commit', '?')}.")
    w(f"{meta.get('rounds', '?')} interleaved rounds (each round runs every workload on A B C D E in turn), "
      f"{meta.get('seconds', '?')} s per measurement, each in a fresh `bench/p11bench` process; cold: "
      f"{meta.get('cold_runs', '?')} fresh processes per round. Load average before / after the timed rounds: "
      f"{meta.get('load_before', '?')} / {meta.get('load_after_timing', '?')} (1-minute load at the end of each round: "
      f"{meta.get('round_loads', '?')}; on {meta.get('nproc', '?')} vCPUs anything well above the bench's own ~1-2 means "
      f"other work shared the machine, which blurs absolute numbers more than the paired ratios). "
      f"Whole run: {meta.get('elapsed', '?')} s.")
    w("")
    w("| config | module in the host | server |")
    w("|---|---|---|")
    w("| A | /usr/lib/softhsm/libsofthsm2.so | — (in process) |")
    w("| B | p11-kit-client.so | `p11-kit server` (unix socket) |")
    w("| C | out/p11proxy.so | `p11-kit server` (unix socket) |")
    w("| D | out/p11proxy.so | `out/p11proxy-broker serve` (unix socket) |")
    w("| E | p11-kit-client.so | `out/p11proxy-broker serve` (unix socket) |")
    w("")
    w("Both servers serve the same SoftHSM token directory (RSA-2048 key, EC P-256 key, certificate), each "
      "restricted to that token by the same URI (`p11-kit server ... pkcs11:token=LABEL`, "
      "`p11proxy-broker serve --token pkcs11:token=LABEL`). One *op* is "
      "the whole sequence a workload names: `getattr` = size query + fetch of CKA_LABEL/CKA_ID/CKA_VALUE; `find` = "
      "FindObjectsInit/FindObjects/Final over private keys; `sign-*` = SignInit + Sign of 32 bytes; `digest-1m` = "
      "DigestInit + Digest of 1 MiB; `mix` = random32 measured while a second thread signs RSA-2048 in a loop. "
      "With more than one thread each thread has its own session and ops/s is the total.")
    w("")

    # Table 1: medians
    w("## Throughput and latency (medians over the rounds)")
    w("")
    w("Cell: ops/s · p50 / p99 latency in µs (per op, all threads' samples together).")
    w("")
    w("| workload | threads | " + " | ".join(f"{c}: {CONFIG_NAMES[c]}" for c in CONFIGS) + " |")
    w("|---|---:|" + "---:|" * len(CONFIGS))
    for workload, threads in ROWS:
        cells = []
        for c in CONFIGS:
            ops = med(workload, threads, c, "ops_per_s")
            if ops is None:
                cells.append("fail" if any(f" config={c} " in x and workload in x for x in failures) else "—")
                continue
            cells.append(f"{fmt_ops(ops)} · {fmt_us(med(workload, threads, c, 'p50_us'))} / "
                         f"{fmt_us(med(workload, threads, c, 'p99_us'))}")
        w(f"| {workload} | {threads} | " + " | ".join(cells) + " |")
    cells = [fmt_ops(med("mix", 2, c, "rsa_ops_per_s")) for c in CONFIGS]
    w("| mix: RSA signs/s beside it | 2 | " + " | ".join(cells) + " |")
    w("")
    w("Cold life cycle, median wall time of a whole fresh process (posix_spawn → exec → dlopen → C_Initialize → "
      "C_GetSlotList → C_OpenSession → C_CloseSession → C_Finalize → dlclose → exit → waitpid) / of the part inside "
      "the process (dlopen … dlclose) / of C_Initialize alone, in ms:")
    w("")
    w("| cold | " + " | ".join(CONFIGS) + " |")
    w("|---|" + "---:|" * len(CONFIGS))

    def cold_cell(config):
        wall = med("cold", 1, config, "wall_us")
        if wall is None:
            return "fail" if any(f" config={config} " in x and "cold" in x for x in failures) else "—"
        inproc, init = med("cold", 1, config, "inproc_us"), med("cold", 1, config, "init_us")
        return f"{wall / 1000:.1f} / {inproc / 1000:.1f} / {init / 1000:.1f}"

    w("| socket (server already running) | " + " | ".join(cold_cell(c) for c in CONFIGS) + " |")
    w("| spawned (`\\|command` address) | — | " + " | ".join(cold_cell(SPAWNED[c]) for c in CONFIGS[1:]) + " |")
    w("")
    w("Spawned forms: " + "; ".join(f"{c} column = {SPAWNED_NAMES[s]}" for c, s in SPAWNED.items()) + ".")
    w("")

    # Many clients at once: p11-kit's pair and ours, each with a process per client on the server.
    many = [(f"many-{w}", int(meta.get("clients", "64"))) for w in ("random32", "sign-ec")]
    if any(med(w, t, c, "ops_per_s") is not None for w, t in many for c in ("B", "D")):
        clients = meta.get("clients", "64")
        w(f"## Many clients: {clients} client processes at once")
        w("")
        w(f"{clients} processes, one thread and one connection each, set up one after the other (connected, logged "
          "in, warmed up), then measured together; ops/s is their sum, p50/p99 over all their calls. Both servers "
          "run a process per client (p11-kit server forks and execs `p11-kit-remote`; our broker hands each client "
          "to a worker process of its own). *Per idle client*: resident (RSS) and proportional (PSS, shared pages "
          "split between the processes that map them) memory of the server and all its processes with the clients "
          "connected and idle, minus the same before they connected, over the number of clients (medians over the "
          "rounds).")
        w("")
        w("| workload | clients | B: ops/s · p50 / p99 µs | D: ops/s · p50 / p99 µs | D/B ops/s · p50 · p99 | "
          "B per idle client, RSS / PSS MiB | D per idle client, RSS / PSS MiB |")
        w("|---|---:|---:|---:|---:|---:|---:|")
        for workload, threads in many:
            cells = []
            for c in ("B", "D"):
                ops = med(workload, threads, c, "ops_per_s")
                cells.append("—" if ops is None else f"{fmt_ops(ops)} · {fmt_us(med(workload, threads, c, 'p50_us'))} / "
                                                     f"{fmt_us(med(workload, threads, c, 'p99_us'))}")
            ratio = (f"{fmt_ratio(paired(workload, threads, 'D', 'B', 'ops_per_s'))} · "
                     f"{fmt_ratio(paired(workload, threads, 'D', 'B', 'p50_us'))} · "
                     f"{fmt_ratio(paired(workload, threads, 'D', 'B', 'p99_us'))}")
            memory = []
            for c in ("B", "D"):
                rss, pss = med(workload, threads, c, "rss_per_client_kb"), med(workload, threads, c, "pss_per_client_kb")
                memory.append("—" if rss is None or pss is None else f"{rss / 1024:.1f} / {pss / 1024:.1f}")
            w(f"| {workload[len('many-'):]} | {threads} | " + " | ".join(cells) + f" | {ratio} | " + " | ".join(memory) + " |")
        w("")

    # The floor under any RPC: raw socket round trips measured in the same run.
    floor48, floor1m = med("roundtrip-48", 1, "floor", "p50_us"), med("roundtrip-1m", 1, "floor", "p50_us")
    if floor48 is not None:
        w("## The floor: plain unix-socket round trips in the same run")
        w("")
        w("Two C processes (`bench/pingpong.c`) exchanging a 48-byte request and a 48-byte reply, or a 1 MiB request "
          "and a 48-byte reply, with nothing else: no proxy over a socket can answer a call faster than one such round "
          "trip plus the module's own work (column A).")
        w("")
        w("| round trip | ops/s | p50 µs | p99 µs |")
        w("|---|---:|---:|---:|")
        for name in ("roundtrip-48", "roundtrip-1m"):
            w(f"| {name} | {fmt_ops(med(name, 1, 'floor', 'ops_per_s'))} | {fmt_us(med(name, 1, 'floor', 'p50_us'))} | "
              f"{fmt_us(med(name, 1, 'floor', 'p99_us'))} |")
        w("")
        direct = med("random32", 1, "A", "p50_us")
        ours, theirs = med("random32", 1, "D", "p50_us"), med("random32", 1, "B", "p50_us")
        if None not in (direct, ours, theirs):
            best = floor48 + direct
            w(f"random32, p50: SoftHSM direct {direct:.1f} µs + one round trip {floor48:.1f} µs = {best:.1f} µs at best for "
              f"any proxy, i.e. at most {1e6 / best:,.0f} calls/s one at a time; D took {ours:.1f} µs, B {theirs:.1f} µs, so "
              f"on this machine D/B can reach at most {theirs / best:.2f}x at p50.")
        direct_digest = med("digest-1m", 1, "A", "p50_us")
        if floor1m is not None and direct_digest is not None:
            w(f"digest-1m, p50: SoftHSM direct {direct_digest:.0f} µs + one 1 MiB round trip {floor1m:.0f} µs = "
              f"{direct_digest + floor1m:.0f} µs at best, {direct_digest / (direct_digest + floor1m):.2f}x direct's throughput.")
        w("")

    # Table 2: paired ratios
    w("## Paired ratios (median of the per-round ratios)")
    w("")
    w("Cell: ops/s ratio · p50 ratio · p99 ratio. X/Y > 1 for ops/s means X is faster; < 1 for p50/p99 means "
      "X answers sooner. Cold rows: ratio of the whole-process wall times (< 1: X starts and stops faster); "
      "in the spawned row B, C, D and E stand for their spawned forms and A stays SoftHSM direct.")
    w("")
    w("| workload | threads | " + " | ".join(f"{x}/{y}" for x, y in RATIOS) + " |")
    w("|---|---:|" + "---:|" * len(RATIOS))
    for workload, threads in ROWS:
        cells = []
        for x, y in RATIOS:
            cells.append(f"{fmt_ratio(paired(workload, threads, x, y, 'ops_per_s'))} · "
                         f"{fmt_ratio(paired(workload, threads, x, y, 'p50_us'))} · "
                         f"{fmt_ratio(paired(workload, threads, x, y, 'p99_us'))}")
        w(f"| {workload} | {threads} | " + " | ".join(cells) + " |")
    w("| cold (socket) | 1 | " + " | ".join(fmt_ratio(paired("cold", 1, x, y, "wall_us")) for x, y in RATIOS) + " |")
    spawned_cells = []
    for x, y in RATIOS:
        xs, ys = SPAWNED.get(x, x), SPAWNED.get(y, y)
        spawned_cells.append(fmt_ratio(paired("cold", 1, xs, ys, "wall_us")))
    w("| cold (spawned) | 1 | " + " | ".join(spawned_cells) + " |")
    w("")

    # CPU per operation
    def cpu_per_op(workload, threads, config):
        per_round = []
        for f in results.get((workload, threads, config), {}).values():
            ops, host = number(f.get("ops")), number(f.get("host_cpu_us"))
            server = number(f.get("server_cpu_us")) if config != "A" else 0.0
            if ops and host is not None and server is not None:
                per_round.append((host, server, ops))
        if not per_round:
            return None
        return (median([h / o for h, _, o in per_round]), median([s / o for _, s, o in per_round]),
                median([(h + s) / o for h, s, o in per_round]))

    if any("host_cpu_us" in f for rounds in results.values() for f in rounds.values()):
        nproc = number(meta.get("nproc"))
        w("## CPU time per operation")
        w("")
        w("Cell: µs of CPU per op, host + server = total (medians over the rounds). Host: this process, all threads, "
          "while measuring (getrusage). Server: the server process with its threads and its reaped children "
          "(`p11-kit server` forks a `p11-kit-remote` per connection), for the whole connection (/proc/PID/stat), "
          "so it also holds the host's set-up and warm-up calls, about 1-2% of the total. "
          "*A/D CPU*: direct's CPU per op over D's. When direct already keeps every CPU busy (as many threads as "
          f"vCPUs, here {meta.get('nproc', '?')}, and the work is the module's own), D's ops/s over direct's cannot "
          "exceed this ratio however the calls are scheduled.")
        w("")
        w("| workload | threads | " + " | ".join(CONFIGS) + " | A/D CPU |")
        w("|---|---:|" + "---:|" * len(CONFIGS) + "---:|")
        for workload, threads in ROWS:
            if workload == "mix":
                continue  # ops there count only the measured random32 thread
            cells = []
            for c in CONFIGS:
                value = cpu_per_op(workload, threads, c)
                if value is None:
                    cells.append("—")
                elif c == "A":
                    cells.append(f"{fmt_us(value[2])}")
                else:
                    cells.append(f"{fmt_us(value[0])} + {fmt_us(value[1])} = {fmt_us(value[2])}")
            a, d = cpu_per_op(workload, threads, "A"), cpu_per_op(workload, threads, "D")
            ceiling = fmt_ratio(a[2] / d[2]) if a and d and d[2] else "—"
            if nproc and threads >= nproc and ceiling != "—":
                ceiling = f"**{ceiling}**"
            w(f"| {workload} | {threads} | " + " | ".join(cells) + f" | {ceiling} |")
        w("")

    # RSS
    w("## Peak RSS of the host process (ru_maxrss, MiB, median)")
    w("")
    w("Measured runs include the host's own latency reservoir (1 MiB per measured thread, touched before "
      "measuring, the same for every configuration); the cold runs hold nothing but the module.")
    w("")
    w("| workload | threads | " + " | ".join(CONFIGS) + " |")
    w("|---|---:|" + "---:|" * len(CONFIGS))
    for workload, threads in ROWS + [("cold", 1)]:
        cells = []
        for c in CONFIGS:
            rss = med(workload, threads, c, "rss_kb")
            cells.append("—" if rss is None else f"{rss / 1024:.1f}")
        w(f"| {workload} | {threads} | " + " | ".join(cells) + " |")
    cells = ["—"] + [("—" if med("cold", 1, SPAWNED[c], "rss_kb") is None else
                      f"{med('cold', 1, SPAWNED[c], 'rss_kb') / 1024:.1f}") for c in CONFIGS[1:]]
    w("| cold, spawned | 1 | " + " | ".join(cells) + " |")
    w("")

    # Profiles
    if profiles:
        ops = meta.get("profile_ops", "?")
        w("## Cost per call: instructions and system calls (random32)")
        w("")
        w(f"C_GenerateRandom(32 bytes), counted over {ops} calls: a run of (warm-up + N + {ops}) calls minus a run of "
          "(warm-up + N), so start-up, connection and shut-down cancel out. *Client*: the whole host process (every "
          "thread; includes the host's loop and clock_gettime, which are the same for every configuration; for A it "
          "also includes SoftHSM itself). *Server*: the whole server (every thread and process: p11-kit server forks "
          "and execs a `p11-kit-remote` per connection), including SoftHSM's own work for the call. Instructions: "
          "`valgrind --tool=callgrind` (Ir); system calls: `strace -f -c`.")
        w("")
        w("| config | client instr/call | server instr/call | total instr/call | client syscalls/call | "
          "server syscalls/call |")
        w("|---|---:|---:|---:|---|---|")

        def find_profile(tool, side, config):
            for p in profiles:
                if p.get("tool") == tool and p.get("side") == side and p.get("config") == config:
                    return p
            return None

        def instructions(side, config):
            p = find_profile("callgrind", side, config)
            if p is None:
                return None, "—"
            if p.get("failed"):
                return None, "fail"
            value = (int(p["long"]) - int(p["short"])) / int(p["ops"])
            return value, f"{value:,.0f}"

        def syscalls(side, config):
            p = find_profile("strace", side, config)
            if p is None:
                return "—"
            if p.get("failed"):
                return "fail"
            breakdown = p.get("breakdown", "")
            detail = ", ".join(f"{item.split(':')[0]} {item.split(':')[1]}" for item in breakdown.split(",")
                               if ":" in item)
            return f"**{float(p['per_call']):.2f}**" + (f" ({detail})" if detail else "")

        for c in CONFIGS:
            client_value, client_text = instructions("client", c)
            server_value, server_text = instructions("server", c)
            if c == "A":
                server_text = "— (in process)"
            total = (f"{client_value + server_value:,.0f}" if client_value is not None and server_value is not None
                     else (client_text if c == "A" else "—"))
            server_calls = "— (in process)" if c == "A" else syscalls("server", c)
            w(f"| {c}: {CONFIG_NAMES[c]} | {client_text} | {server_text} | {total} | {syscalls('client', c)} | "
              f"{server_calls} |")
        w("")

    if failures:
        w("## Failures")
        w("")
        for line in failures:
            w(f"- `{line}`")
        w("")
    print("\n".join(out))


# --- chart -------------------------------------------------------------------------------------

CHART_SERIES = [  # (numerator, denominator, label, colour)
    ("D", "B", "p11proxy.so + broker vs p11-kit's pair (D/B)", "#1f6fb4"),
    ("D", "A", "p11proxy.so + broker vs SoftHSM direct (D/A)", "#e07b22"),
    ("C", "B", "p11proxy.so + p11-kit server vs p11-kit's pair (C/B)", "#8fb8de"),
    ("E", "B", "p11-kit-client.so + broker vs p11-kit's pair (E/B)", "#9ccf8f"),
]


def xml_escape(text):
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def chart(raw_path, svg_path, caption=""):
    """A horizontal bar chart (plain SVG) of the paired ops/s ratios per workload, log scale."""
    import math
    results, _, _ = load_raw(raw_path)
    rows = [(f"{w} ×{t}" if t > 1 else w,
             [paired_ratio(results, w, t, x, y, "ops_per_s") for x, y, _, _ in CHART_SERIES]) for w, t in ROWS]
    rows = [(name, ratios) for name, ratios in rows if any(r is not None for r in ratios)]
    values = [r for _, ratios in rows for r in ratios if r]
    low = min([0.125] + [2 ** math.floor(math.log2(v)) for v in values])
    high = max([4.0] + [2 ** math.ceil(math.log2(v)) for v in values])
    bar, gap, label_width, plot_width, top = 9, 14, 120, 560, 70
    group = bar * len(CHART_SERIES) + gap
    plot_height = group * len(rows)
    legend_top = top + plot_height + 34
    height = legend_top + 18 * len(CHART_SERIES) + 10
    width = label_width + plot_width + 60

    def x_of(value):
        return label_width + plot_width * (math.log2(value) - math.log2(low)) / (math.log2(high) - math.log2(low))

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{label_width}" y="22" font-size="15" font-weight="bold">Paired throughput ratios '
           f'(ops/s, median of per-round ratios; log scale)</text>',
           f'<text x="{label_width}" y="42" fill="#555">{xml_escape(caption)}</text>',
           f'<text x="{label_width}" y="58" fill="#555">right of 1: the first is faster; each pair measured '
           f'side by side in one interleaved run</text>']
    tick = low
    while tick <= high * 1.0001:
        x = x_of(tick)
        colour, stroke = ("#333", 1.5) if abs(tick - 1) < 1e-9 else ("#ddd", 1)
        out.append(f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{top + plot_height}" stroke="{colour}" '
                   f'stroke-width="{stroke}"/>')
        text = f"{tick:g}×" if tick >= 1 else f"1/{1 / tick:g}"
        out.append(f'<text x="{x:.1f}" y="{top + plot_height + 16}" text-anchor="middle" fill="#333">{text}</text>')
        tick *= 2
    one = x_of(1.0)
    for index, (name, ratios) in enumerate(rows):
        y0 = top + index * group
        out.append(f'<text x="{label_width - 8}" y="{y0 + group / 2 - 2:.1f}" text-anchor="end">{xml_escape(name)}</text>')
        for position, ((_, _, label, colour), ratio) in enumerate(zip(CHART_SERIES, ratios)):
            if ratio is None:
                continue
            y = y0 + position * bar
            x = x_of(ratio)
            left, right = min(one, x), max(one, x)
            out.append(f'<rect x="{left:.1f}" y="{y}" width="{max(right - left, 1):.1f}" height="{bar - 1}" '
                       f'fill="{colour}"><title>{xml_escape(label)}: {ratio:.2f}</title></rect>')
            anchor, tx = ("start", right + 3) if ratio >= 1 else ("end", left - 3)
            out.append(f'<text x="{tx:.1f}" y="{y + bar - 2}" font-size="9" text-anchor="{anchor}" '
                       f'fill="#333">{ratio:.2f}</text>')
    for position, (_, _, label, colour) in enumerate(CHART_SERIES):
        y = legend_top + position * 18
        out.append(f'<rect x="{label_width}" y="{y}" width="12" height="12" fill="{colour}"/>')
        out.append(f'<text x="{label_width + 18}" y="{y + 10}">{xml_escape(label)}</text>')
    out.append("</svg>")
    with open(svg_path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(out) + "\n")


def main(argv):
    if len(argv) >= 2 and argv[1] == "report" and len(argv) == 4:
        report(argv[2], argv[3])
    elif len(argv) >= 2 and argv[1] == "chart" and len(argv) in (4, 5):
        chart(argv[2], argv[3], argv[4] if len(argv) == 5 else "")
    elif len(argv) >= 2 and argv[1] == "strace-diff" and len(argv) == 6:
        strace_diff(argv[2], argv[3], int(argv[4]), argv[5])
    else:
        sys.stderr.write(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
