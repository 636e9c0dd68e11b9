"""The engine of bench/compare: start each server pinned to CPU 0, run wshub-bench
pinned to CPU 1 for each workload, collect its JSON, print and record the comparison."""
import argparse
import datetime
import json
import os
import platform
import shutil
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
SHARED = os.environ.get("WSHUB_SHARED", os.path.join(os.path.dirname(ROOT), "shared"))
OUT = os.path.join(ROOT, "target", "bench")
BENCH = os.path.join(ROOT, "target", "release", "wshub-bench")
WSHUB = os.path.join(ROOT, "target", "release", "wshub")
SERVERS = ["wshub", "seed-go", "node-ws", "bun-uws"]


def workloads(smoke):
    """(label, wshub-bench arguments). Saturation runs are closed loop: K messages in
    flight in total; the fixed-rate run sends 10 msg/s to 10k clients = 100k deliveries/s."""
    if smoke:
        return [
            ("idle", ["idle", "--conns", "200", "--hold", "1s"]),
            ("fanout 64 B", ["fanout", "--conns", "100", "--senders", "5", "--in-flight", "8", "--size", "64", "--duration", "2s", "--warmup", "0.5s"]),
            ("fanout 4 KiB", ["fanout", "--conns", "100", "--senders", "5", "--in-flight", "8", "--size", "4096", "--duration", "2s", "--warmup", "0.5s"]),
            ("fixed rate", ["fanout", "--conns", "100", "--senders", "5", "--rate", "50", "--size", "64", "--duration", "2s", "--warmup", "0.5s"]),
            ("churn", ["churn", "--conns", "10", "--cycles", "500"]),
        ]
    return [
        ("idle 1k", ["idle", "--conns", "1000", "--hold", "3s"]),
        ("idle 10k", ["idle", "--conns", "10000", "--hold", "5s"]),
        ("idle max", ["idle", "--conns", "19000", "--hold", "5s"]),
        # Shallow batching: one sender, few messages in flight (each arrives alone).
        ("1 sender 10k 8 in flight", ["fanout", "--conns", "10000", "--senders", "1", "--in-flight", "8", "--size", "64", "--duration", "10s"]),
        ("1 sender 1k 32 in flight", ["fanout", "--conns", "1000", "--senders", "1", "--in-flight", "32", "--size", "64", "--duration", "10s"]),
        ("fanout 1k 64 B", ["fanout", "--conns", "1000", "--senders", "10", "--in-flight", "32", "--size", "64", "--duration", "10s"]),
        ("fanout 1k 4 KiB", ["fanout", "--conns", "1000", "--senders", "10", "--in-flight", "32", "--size", "4096", "--duration", "10s"]),
        ("fanout 10k 64 B", ["fanout", "--conns", "10000", "--senders", "10", "--in-flight", "8", "--size", "64", "--duration", "10s"]),
        ("fanout 10k 4 KiB", ["fanout", "--conns", "10000", "--senders", "10", "--in-flight", "8", "--size", "4096", "--duration", "10s"]),
        ("rate 100k/s", ["fanout", "--conns", "10000", "--senders", "10", "--rate", "10", "--size", "64", "--duration", "10s"]),
        ("churn", ["churn", "--conns", "100", "--cycles", "20000"]),
    ]


def channel_workloads(smoke):
    """wshub only (the peers have no channels): the same fan-out through a wshub.v1
    channel and as a plain broadcast, recovery cost, memory per subscription. A channel
    push carries ~76 bytes of JSON around its data, so the broadcast runs send 140 bytes
    for 64 bytes of channel data: the same bytes on the wire."""
    if smoke:
        return [
            ("broadcast 140 B", ["fanout", "--conns", "100", "--senders", "5", "--in-flight", "8", "--size", "140", "--duration", "2s", "--warmup", "0.5s"]),
            ("channel 64 B", ["channel", "--conns", "100", "--senders", "5", "--in-flight", "8", "--size", "64", "--duration", "2s", "--warmup", "0.5s"]),
            ("recover", ["recover", "--messages", "500", "--repeat", "2"]),
            ("idle v1", ["idle", "--conns", "200", "--hold", "1s", "--subprotocol", "wshub.v1"]),
            ("idle subscribed", ["idle", "--conns", "200", "--hold", "1s", "--subscribe", "bench"]),
        ]
    return [
        ("broadcast 10k 140 B", ["fanout", "--conns", "10000", "--senders", "10", "--in-flight", "8", "--size", "140", "--duration", "10s"]),
        ("channel 10k 64 B", ["channel", "--conns", "10000", "--senders", "10", "--in-flight", "8", "--size", "64", "--duration", "10s"]),
        ("broadcast rate 100k/s", ["fanout", "--conns", "10000", "--senders", "10", "--rate", "10", "--size", "140", "--duration", "10s"]),
        ("channel rate 100k/s", ["channel", "--conns", "10000", "--senders", "10", "--rate", "10", "--size", "64", "--duration", "10s"]),
        ("recover 10k", ["recover", "--messages", "10000", "--repeat", "5"]),
        ("idle 10k v1", ["idle", "--conns", "10000", "--hold", "3s", "--subprotocol", "wshub.v1"]),
        ("idle 10k subscribed", ["idle", "--conns", "10000", "--hold", "3s", "--subscribe", "bench"]),
    ]


def channel_table(results, smoke):
    """Channel vs broadcast figures from one run of the channel workloads."""
    def get(label):
        return results.get(label, {})
    def per_cpu(label):
        return (get(label).get("server") or {}).get("deliveries_per_cpu_s")
    def p99(label):
        return (get(label).get("latency") or {}).get("p99_ms")
    rows = ["| figure | broadcast | channel | channel / broadcast |", "|---|---|---|---|"]
    pairs = [("saturation", "broadcast 140 B", "channel 64 B")] if smoke else [
        ("10k, saturation (8 in flight)", "broadcast 10k 140 B", "channel 10k 64 B"),
        ("10k, 100k deliveries/s", "broadcast rate 100k/s", "channel rate 100k/s"),
    ]
    for name, b, c in pairs:
        vb, vc = per_cpu(b), per_cpu(c)
        if vb and vc:
            rows.append(f"| {name}: deliveries/CPU-s | {vb:,.0f} | {vc:,.0f} | {vc / vb:.2f} |")
        pb, pc = p99(b), p99(c)
        if pb and pc:
            rows.append(f"| {name}: p99 | {pb:.1f} ms | {pc:.1f} ms | {pc / pb:.2f} |")
    rec = get("recover" if smoke else "recover 10k")
    if rec.get("rounds"):
        cpu = sorted(r.get("server_cpu_s") or 0 for r in rec["rounds"])[len(rec["rounds"]) // 2]
        rows.append(f"| recovery of {rec.get('messages')} publications | – | catch-up {rec['catch_up']['median_ms']:.1f} ms (median of {len(rec['rounds'])}), reply {rec['rounds'][0]['reply_bytes']:,} bytes, server CPU {cpu * 1e3:.1f} ms | – |")
    v1 = (get("idle v1" if smoke else "idle 10k v1").get("server") or {}).get("bytes_per_conn")
    sub = (get("idle subscribed" if smoke else "idle 10k subscribed").get("server") or {}).get("bytes_per_conn")
    if v1 and sub:
        rows.append(f"| memory per subscription (RSS/conn subscribed − not) | – | {sub - v1:,.0f} bytes ({v1 / 1000:.1f} → {sub / 1000:.1f} KB per connection) | – |")
    return "\n".join(rows)


def compression_workloads(smoke):
    """wshub only: permessage-deflate on (server `--compression true`, clients `--deflate`)
    against off (defaults), with JSON-like 1 KiB messages (`--payload json`), the 1k fan-out
    shapes of the main table, and idle 10k for the memory a compressing connection costs.
    The clients send uncompressed (RFC 7692 allows it per message), so the server only
    compresses, once per broadcast. Each shape runs twice: off, then on."""
    json_1k = ["--size", "1024", "--payload", "json"]
    if smoke:
        return [
            ("fanout 1 KiB JSON", ["fanout", "--conns", "100", "--senders", "5", "--in-flight", "8", "--duration", "2s", "--warmup", "0.5s"] + json_1k),
            ("idle", ["idle", "--conns", "200", "--hold", "1s"]),
        ]
    return [
        ("1 sender 1k 32 in flight", ["fanout", "--conns", "1000", "--senders", "1", "--in-flight", "32", "--duration", "5s"] + json_1k),
        ("fanout 1k", ["fanout", "--conns", "1000", "--senders", "10", "--in-flight", "32", "--duration", "5s"] + json_1k),
        # The same rate on and off (100 messages/s to 1k = 100k deliveries/s): in the closed
        # loops above the load generator's own inflating slows the rounds, which makes
        # them smaller, so their server CPU per delivery is not the cost of compressing.
        ("rate 1k 100k/s", ["fanout", "--conns", "1000", "--senders", "10", "--rate", "100", "--duration", "5s"] + json_1k),
        ("idle 10k", ["idle", "--conns", "10000", "--hold", "3s"]),
    ]


def compression_table(results):
    """On vs off for each shape of `compression_workloads`; `results[(label, on)]`."""
    def fan(r):
        server = r.get("server") or {}
        per_cpu = server.get("deliveries_per_cpu_s")
        return [
            ("bytes on the wire per delivery", r.get("wire_bytes_per_delivery"), "{:,.0f}"),
            ("deliveries/CPU-s", per_cpu, "{:,.0f}"),
            ("server CPU-µs per delivery", 1e6 / per_cpu if per_cpu else None, "{:.3f}"),
            ("p99", (r.get("latency") or {}).get("p99_ms"), "{:.1f} ms"),
        ]
    def idle(r):
        per_conn = (r.get("server") or {}).get("bytes_per_conn")
        return [("RSS per connection", per_conn / 1000 if per_conn else None, "{:.2f} KB")]
    rows = ["| workload | figure | off | on | on / off |", "|---|---|---|---|---|"]
    labels = []
    for label, _ in results:
        if label not in labels:
            labels.append(label)
    for label in labels:
        off, on = results.get((label, False), {}), results.get((label, True), {})
        kind = fan if (off.get("scenario") or on.get("scenario")) == "fanout" else idle
        for (name, v_off, fmt), (_, v_on, _) in zip(kind(off), kind(on)):
            cell = lambda r, v: "error" if "error" in r else ("–" if v is None else fmt.format(v))
            ratio = f"{v_on / v_off:.2f}" if v_on is not None and v_off else "–"
            rows.append(f"| {label} | {name} | {cell(off, v_off)} | {cell(on, v_on)} | {ratio} |")
    return "\n".join(rows)


def check_compressed(label, result):
    """With compression on, every delivery must have come compressed."""
    if "error" in result or result.get("scenario") != "fanout":
        return []
    got, of = result.get("compressed_in_window", 0), result.get("received_in_window", 0)
    if not result.get("deflate") or not of or got != of:
        return [f"{label}: {got} of {of} deliveries came compressed"]
    return []


# Scale-out on Redis (wshub only): the same channel fan-out on one node in memory, one node
# on Redis and three nodes on one Redis (publishers on node A, subscribers spread over A, B,
# C). (label, nodes, on Redis); the smoke run leaves out the in-memory one.
SCALEOUT_SETUPS = [("1 node, memory", 1, False), ("1 node + Redis", 1, True), ("3 nodes + Redis", 3, True)]


def scaleout_workloads(smoke):
    """Shaped like the channel workloads: closed-loop saturation and 100k deliveries/s."""
    if smoke:
        return [
            ("saturation", ["channel", "--conns", "300", "--senders", "3", "--in-flight", "8", "--size", "64", "--duration", "2s", "--warmup", "0.5s"]),
            ("rate", ["channel", "--conns", "300", "--senders", "3", "--rate", "30", "--size", "64", "--duration", "2s", "--warmup", "0.5s"]),
        ]
    return [
        ("saturation", ["channel", "--conns", "10000", "--senders", "10", "--in-flight", "8", "--size", "64", "--duration", "10s"]),
        ("rate 100k/s", ["channel", "--conns", "10000", "--senders", "10", "--rate", "10", "--size", "64", "--duration", "10s"]),
    ]


# INFO commandstats entries that are ours (redis-cli), not the nodes'.
OWN_COMMANDS = ("info", "flushall", "config")


class Redis:
    """A redis-server of our own, without persistence, on a free port, files in a temp
    dir, pinned to `cpu` (CPU 0, with the servers; None: not pinned); redis-cli for
    everything we ask of it."""

    def __init__(self, log, cpu="0"):
        self.dir = tempfile.mkdtemp(prefix="wshub-bench-redis-")
        self.port = free_port()
        pin = ["taskset", "-c", cpu] if cpu is not None else []
        self.proc = subprocess.Popen(
            pin + ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                   "--save", "", "--appendonly", "no", "--dir", self.dir],
            stdout=log, stderr=log)
        if not wait_accept(self.port, self.proc):
            self.stop()
            raise RuntimeError("redis-server did not start (is Debian's redis-server installed?)")

    def url(self):
        return f"redis://127.0.0.1:{self.port}"

    def cli(self, *args):
        done = subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True, timeout=30)
        return done.stdout

    def commandstats(self):
        """{command: calls} from INFO commandstats, without our own commands."""
        calls = {}
        for line in self.cli("INFO", "commandstats").splitlines():
            m = re.match(r"cmdstat_([^:]+):calls=(\d+)", line.strip())
            if m and not m.group(1).startswith(OWN_COMMANDS):
                calls[m.group(1)] = int(m.group(2))
        return calls

    def stop(self):
        stop_process(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


def stop_process(proc):
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def calls_delta(before, after):
    return {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}


# wshub-bench's progress line: "[   3.0s] window: 10000 open, 0 dropped, 12345 sent, ...".
PROGRESS = re.compile(r"^\[\s*[\d.]+s\] (warm-up|window|drain): .*?, (\d+) sent,")


def run_scaleout(command, setup, args, redis, log):
    """One run of `args` against `setup` = (label, nodes, on Redis): FLUSHALL, start the
    nodes (node A takes the publishers, the subscribers are spread over all), run
    wshub-bench, stop the nodes. With Redis, its commands are counted twice: over the whole
    run (INFO commandstats before and after: every subscribe, presence join and leave
    included) and over the window alone (snapshots taken as the tool reports progress,
    against the publications it had sent by then)."""
    label, count, on_redis = setup
    if on_redis:
        redis.cli("FLUSHALL")
    nodes = []
    try:
        for i in range(count):
            port = free_port()
            extra = ["--broker", redis.url(), "--node-name", "abcdefgh"[i]] if on_redis else []
            proc = subprocess.Popen(["taskset", "-c", "0"] + command(port) + extra, stdout=log, stderr=log)
            nodes.append((port, proc))
            if not wait_accept(port, proc):
                return {"error": f"wshub node {i} of {label} did not start (exit {proc.poll()})"}
        urls = [f"ws://127.0.0.1:{port}/ws" for port, _ in nodes]
        pids = [str(proc.pid) for _, proc in nodes] + ([str(redis.proc.pid)] if on_redis else [])
        cmd = ["taskset", "-c", "1", BENCH] + args + ["--url", ",".join(urls), "--server-pid", ",".join(pids), "--json"]
        if count > 1:
            cmd += ["--sender-url", urls[0]]
        print(f"  $ {' '.join(cmd[3:])}", flush=True)
        before = redis.commandstats() if on_redis else None
        window = []  # (phase, sent, commandstats) at each progress line

        def progress(pipe):
            for line in pipe:
                m = PROGRESS.match(line)
                if m and on_redis and m.group(1) == "window":
                    window.append((int(m.group(2)), redis.commandstats()))

        bench = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        reader = threading.Thread(target=progress, args=(bench.stderr,), daemon=True)
        reader.start()
        try:
            out, _ = bench.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            bench.kill()
            out, _ = bench.communicate()
        reader.join(timeout=10)
        try:
            result = json.loads(out.strip().splitlines()[-1])
        except (json.JSONDecodeError, IndexError):
            return {"error": f"wshub-bench exit {bench.returncode}: {out[-400:]}"}
        if on_redis:
            after = redis.commandstats()
            whole = calls_delta(before, after)
            published = result.get("sent_total") or 0
            redis_figures = {"calls": whole, "publications": published,
                             "commands_per_publication": sum(whole.values()) / published if published else None}
            # The progress lines' counts lag the snapshots by up to 250 ms (the workers
            # report four times a second): only a span of 3 s or more says something.
            if len(window) >= 4 and window[-1][0] > window[0][0]:
                (sent0, stats0), (sent1, stats1) = window[0], window[-1]
                inside = calls_delta(stats0, stats1)
                redis_figures["window"] = {"calls": inside, "publications": sent1 - sent0,
                                           "commands_per_publication": sum(inside.values()) / (sent1 - sent0)}
            result["redis"] = redis_figures
        return result
    finally:
        for _, proc in nodes:
            stop_process(proc)


def scaleout_section(command, smoke, log, problems):
    """Every scale-out workload on every setup (workload by workload, every setup in turn:
    ratios between runs close together), on one redis-server of our own."""
    try:
        redis = Redis(log)
    except (OSError, RuntimeError) as e:
        problems.append(f"wshub scale-out: {e} (is Debian's redis-server installed?)")
        return {}
    results = {}
    try:
        setups = [s for s in SCALEOUT_SETUPS if s[2]] if smoke else SCALEOUT_SETUPS
        for label, args in scaleout_workloads(smoke):
            for setup in setups:
                result = run_scaleout(command, setup, args, redis, log)
                results[(setup[0], label)] = result
                name = f"wshub-scaleout-{setup[0]}-{label}".replace(" ", "_").replace("/", "").replace(",", "")
                with open(os.path.join(OUT, f"{name}.json"), "w") as f:
                    json.dump(result, f, indent=1)
                problems += check(f"wshub scale-out {setup[0]} {label}", result)
                problems += check_nodes(f"wshub scale-out {setup[0]} {label}", result)
                shown = result.get("error") or (
                    f"{result.get('deliveries_per_s', 0):,.0f} deliveries/s, "
                    f"{(result.get('server') or {}).get('deliveries_per_cpu_s', 0):,.0f}/CPU-s, "
                    f"p99 {(result.get('latency') or {}).get('p99_ms', 0):.1f} ms, lost {result.get('lost')}")
                print(f"  {setup[0]}, {label}: {shown}", flush=True)
    finally:
        redis.stop()
    return results


def check_nodes(label, result):
    """Scale-out: every node's subscribers got everything (a node delivering nothing shows
    here even when the totals are hidden by an error)."""
    problems = []
    for u in result.get("per_url") or []:
        if not u.get("opened"):
            problems.append(f"{label}: no connection opened to {u.get('url')}")
        if u.get("lost"):
            problems.append(f"{label}: {u.get('lost')} deliveries lost on {u.get('url')}")
    return problems


def scaleout_table(results, smoke):
    """`results[(setup label, workload label)]`: one row per figure, one column per setup,
    ratios against one node in memory."""
    setups = [s for s, *_ in SCALEOUT_SETUPS if any(k[0] == s for k in results)]
    base = "1 node, memory"
    others = [s for s in setups if s != base] if base in setups else []
    loads = []
    for _, w in results:
        if w not in loads:
            loads.append(w)

    def server_cpu(r):
        return r.get("server") or {}

    def split(r):
        procs = server_cpu(r).get("processes") or []
        if not procs:
            cpu = server_cpu(r).get("cpu_s")
            return None if cpu is None else f"wshub {cpu:.2f} s"
        wshub = sum(p["cpu_s"] for p in procs if p.get("name") != "redis-server")
        redis = sum(p["cpu_s"] for p in procs if p.get("name") == "redis-server")
        nodes = sum(1 for p in procs if p.get("name") != "redis-server")
        return f"wshub {wshub:.2f} s ({nodes} node{'s' if nodes > 1 else ''}) + redis {redis:.2f} s"

    def window_cmds(r):
        return ((r.get("redis") or {}).get("window") or {}).get("commands_per_publication")

    figures = [
        ("deliveries/s", lambda r: r.get("deliveries_per_s"), "{:,.0f}"),
        ("deliveries per server CPU-s (all wshub + redis-server)", lambda r: server_cpu(r).get("deliveries_per_cpu_s"), "{:,.0f}"),
        ("server CPU in the window", split, "{}"),
        ("p50", lambda r: (r.get("latency") or {}).get("p50_ms"), "{:.1f} ms"),
        ("p99", lambda r: (r.get("latency") or {}).get("p99_ms"), "{:.1f} ms"),
        ("Redis commands per publication, window", window_cmds, "{:.1f}"),
        ("Redis commands per publication, whole run (with 10k subscribes, joins, leaves)" if not smoke
         else "Redis commands per publication, whole run", lambda r: (r.get("redis") or {}).get("commands_per_publication"), "{:.1f}"),
        ("lost + gaps + duplicates + publish errors", lambda r: r.get("failures"), "{:.0f}"),
        # Neither the tool nor the servers (from /proc/stat): other work on the machine
        # disturbs the run, and not every run the same.
        ("other load during the window", lambda r: (r.get("client") or {}).get("other_load_pct"), "{:.0f}% of a core"),
    ]
    head = "| workload | figure | " + " | ".join(setups) + "".join(f" | {o} / memory" for o in others) + " |"
    rows = [head, "|" + "---|" * (2 + len(setups) + len(others))]
    verdicts = []
    for w in loads:
        for name, get, fmt in figures:
            cells, values = [], {}
            for s in setups:
                r = results.get((s, w), {})
                if "error" in r:
                    cells.append("error")
                    continue
                v = get(r)
                if v is None:
                    cells.append("–")
                    continue
                values[s] = v
                cells.append(fmt.format(v) + (" (client-bound)" if name == "deliveries/s" and (r.get("client") or {}).get("client_bound") else ""))
            ratios = []
            for o in others:
                a, b = values.get(o), values.get(base)
                if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b and not name.startswith(("lost", "other")):
                    cell = f"{a / b:.2f}"
                    if name == "p99" and o == "3 nodes + Redis" and w.startswith("rate"):
                        ok = a <= 2 * b
                        cell += " ✓ (≤ 2)" if ok else " ✗ (> 2)"
                        verdicts.append(f"p99 goal at {w} (3 nodes + Redis ≤ 2 × 1 node in memory): "
                                        f"{'met' if ok else 'NOT met'}, {a:.1f} ms vs {b:.1f} ms ({a / b:.2f}×)")
                    ratios.append(cell)
                else:
                    ratios.append("–")
            if all(c == "–" for c in cells):
                continue
            rows.append(f"| {w} | {name} | " + " | ".join(cells) + "".join(f" | {r}" for r in ratios) + " |")
    text = "\n".join(rows)
    if verdicts:
        text += "\n\n" + "\n".join(verdicts)
    # Which commands a publication costs in the window (3 nodes, saturation, if there).
    for s in ("3 nodes + Redis", "1 node + Redis"):
        r = results.get((s, loads[0]), {}) if loads else {}
        inside = (r.get("redis") or {}).get("window")
        if inside and inside.get("publications"):
            n = inside["publications"]
            parts = sorted(inside["calls"].items(), key=lambda kv: -kv[1])
            text += (f"\n\nRedis commands per publication in the window, {s}, {loads[0]}: "
                     + ", ".join(f"{k} {v / n:.2f}" for k, v in parts if v / n >= 0.01) + ".")
            break
    return text


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_accept(port, proc, limit=20.0):
    deadline = time.time() + limit
    while time.time() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def build(servers, work):
    subprocess.run(["cargo", "build", "--release", "--locked", "-p", "wshub-server", "-p", "wshub-bench"], cwd=ROOT, check=True)
    commands = {}
    peers = os.path.join(SHARED, "peers")
    if "wshub" in servers:
        # At its defaults (send_queue 256, send_queue_bytes 1 MiB): the peers have no
        # such limit, and a benchmark that evicts a client is a failed run.
        commands["wshub"] = lambda port: [WSHUB, "serve", "--bind", f"127.0.0.1:{port}", "--log-format", "json"]
    if "seed-go" in servers:
        out = os.path.join(work, "seed-go")
        subprocess.run(["bash", os.path.join(peers, "seed-go", "build.sh"), out], check=True)
        commands["seed-go"] = lambda port, out=out: [os.path.join(out, "seed-go"), "-addr", f"127.0.0.1:{port}",
                                            "-html", os.path.join(peers, "seed-go", "home.html"),
                                            "-static", os.path.join(peers, "seed-go", "static")]
    if "node-ws" in servers:
        out = os.path.join(work, "node-ws")
        subprocess.run(["bash", os.path.join(peers, "node-ws", "build.sh"), out], check=True)
        commands["node-ws"] = lambda port, out=out: ["node", os.path.join(out, "server.js"), "--port", str(port), "--host", "127.0.0.1"]
    if "bun-uws" in servers:
        out = os.path.join(work, "bun-uws")
        subprocess.run(["bash", os.path.join(peers, "bun-uws", "build.sh"), out], check=True)
        bun = os.path.join(out, "node_modules", "@oven", "bun-linux-x64", "bin", "bun")
        commands["bun-uws"] = lambda port, bun=bun, out=out: [bun, os.path.join(out, "server.js"), "--port", str(port), "--host", "127.0.0.1"]
    return commands


def run_one(server, command, label, args, log):
    port = free_port()
    proc = subprocess.Popen(["taskset", "-c", "0"] + command(port), stdout=log, stderr=log)
    try:
        if not wait_accept(port, proc):
            return {"error": f"{server} did not start"}
        cmd = ["taskset", "-c", "1", BENCH] + args + ["--url", f"ws://127.0.0.1:{port}/ws", "--server-pid", str(proc.pid), "--json"]
        print(f"  $ {' '.join(cmd[3:])}", flush=True)
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, timeout=600)
        try:
            return json.loads(done.stdout.strip().splitlines()[-1])
        except (json.JSONDecodeError, IndexError):
            return {"error": f"wshub-bench exit {done.returncode}: {done.stdout[-400:]}"}
    finally:
        stop_process(proc)


def figures(result):
    """The figures compared for one run: (name, value, higher_is_better, format)."""
    if "error" in result:
        return []
    scenario = result.get("scenario")
    server = result.get("server") or {}
    out = []
    if scenario == "idle":
        out.append(("opened", result.get("opened"), True, "{:.0f}"))
        if server.get("bytes_per_conn") is not None:
            out.append(("RSS/conn", server["bytes_per_conn"] / 1000, False, "{:.1f} KB"))
        out.append(("time to open", result.get("time_to_open_s"), False, "{:.2f} s"))
        # Handshakes accepted per second of server CPU while the connections opened
        # (from schedstat, ns resolution; still meaningful only from a few thousand connections).
        if server.get("open_cpu_s") and result.get("opened", 0) >= 5000:
            out.append(("handshakes/CPU-s", result["opened"] / server["open_cpu_s"], True, "{:,.0f}"))
    elif scenario == "fanout":
        out.append(("lost", result.get("lost"), False, "{:.0f}"))
        if server.get("deliveries_per_cpu_s"):
            out.append(("deliveries/CPU-s", server["deliveries_per_cpu_s"], True, "{:,.0f}"))
        out.append(("p99", (result.get("latency") or {}).get("p99_ms"), False, "{:.1f} ms"))
    elif scenario == "churn":
        # One cycle = connect, handshake, close handshake, TCP close.
        if server.get("handshakes_per_cpu_s"):
            out.append(("cycles/CPU-s", server["handshakes_per_cpu_s"], True, "{:,.0f}"))
        out.append(("cycles/s", result.get("handshakes_per_s"), True, "{:,.0f}"))
    return out


def check(label, result):
    """Correctness only: everything opened, nothing lost."""
    problems = []
    if "error" in result:
        problems.append(result["error"])
    if result.get("failures"):
        problems.append(f"failures = {result['failures']} (lost, gaps, duplicates, publish errors)")
    for r in result.get("rounds") or []:
        if not r.get("recovered") or r.get("missing") or r.get("duplicates") or r.get("out_of_order") or r.get("error"):
            problems.append(f"recovery round failed: {r}")
    # "dropped": connections closed during the run (an eviction, say): never allowed.
    for key in ("failed", "lost", "duplicates", "dropped"):
        if result.get(key):
            problems.append(f"{key} = {result[key]}")
    if result.get("scenario") == "churn" and result.get("ok") != result.get("cycles"):
        problems.append(f"churn ok {result.get('ok')} of {result.get('cycles')}")
    return [f"{label}: {p}" for p in problems]


# Run `--repeat` times per workload: wshub and the peer to beat. The other peers are far
# enough behind that one run each tells.
REPEATED = {"wshub", "bun-uws"}


def result_file(server, label, rep):
    """target/bench/<server>-<workload>.json for the first run, ….rep2.json on (bench/plot.py
    reads them all)."""
    name = f"{server}-{label}".replace(" ", "_").replace("/", "")
    return f"{name}.json" if rep == 0 else f"{name}.rep{rep + 1}.json"


def figure_values(runs, name):
    """The figure `name` of every run that has it, in run order, and its format."""
    values, fmt = [], None
    for r in runs:
        for n, v, _, f in figures(r):
            if n == name and v is not None:
                values.append(v)
                fmt = f
    return values, fmt


def table(results, servers, loads):
    """`results[(server, workload)]`: that server's runs. A cell is the median of its runs;
    a ratio is of the medians, with the range of the run-by-run ratios (run i against run i)
    where both servers ran more than once. `lost` shows the largest."""
    peers = [s for s in servers if s != "wshub"]
    head = "| workload | figure | " + " | ".join(servers) + "".join(f" | wshub / {p}" for p in peers) + " |"
    rows = [head, "|" + "---|" * (2 + len(servers) + len(peers))]
    for label, _ in loads:
        names = []
        for s in servers:
            for r in results.get((s, label), []):
                for name, *_ in figures(r):
                    if name not in names:
                        names.append(name)
        for name in names:
            cells, values = [], {}
            for s in servers:
                runs = results.get((s, label), [])
                if runs and all("error" in r for r in runs):
                    cells.append("error")
                    continue
                vs, fmt = figure_values(runs, name)
                if not vs:
                    cells.append("–")
                    continue
                values[s] = vs
                # A loss in any run shows (and fails the run): never a median.
                cells.append(fmt.format(max(vs) if name == "lost" else statistics.median(vs)))
            ratios = []
            for p in peers:
                if "wshub" in values and p in values and statistics.median(values[p]):
                    ratio = f"{statistics.median(values['wshub']) / statistics.median(values[p]):.2f}"
                    pairs = [a / b for a, b in zip(values["wshub"], values[p]) if b]
                    if len(pairs) > 1:
                        ratio += f" ({min(pairs):.2f}–{max(pairs):.2f})"
                    ratios.append(ratio)
                else:
                    ratios.append("–")
            rows.append(f"| {label} | {name} | " + " | ".join(cells) + "".join(f" | {r}" for r in ratios) + " |")
    return "\n".join(rows)


SECTIONS = ["peers", "channels", "compression", "scaleout"]


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--servers", default=None)
    parser.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    parser.add_argument("--repeat", type=int, default=None, metavar="N",
                        help="runs of each workload for wshub and bun-uws, interleaved; the table shows "
                             "medians and the range of the run-by-run ratios (default 3; 1 with --smoke)")
    parser.add_argument("--skip", default="", metavar="SECTION[,SECTION]",
                        help=f"sections not to run, of {', '.join(SECTIONS)} (peers: the main table; "
                             "channels, compression and scaleout are wshub only); BENCHMARKS.md is then left alone")
    opts = parser.parse_args()
    skip = {s for s in opts.skip.split(",") if s}
    if skip - set(SECTIONS):
        parser.error(f"--skip: unknown section(s) {', '.join(sorted(skip - set(SECTIONS)))}; known: {', '.join(SECTIONS)}")
    servers = opts.servers.split(",") if opts.servers else (["wshub"] if opts.smoke else SERVERS)
    repeat = opts.repeat if opts.repeat is not None else (1 if opts.smoke else 3)
    if repeat < 1:
        parser.error("--repeat: at least 1")
    loads = workloads(opts.smoke)
    os.makedirs(OUT, exist_ok=True)
    # Repetitions of an earlier run with a larger --repeat would be read by bench/plot.py.
    for stale in os.listdir(OUT):
        if re.search(r"\.rep\d+\.json$", stale):
            os.remove(os.path.join(OUT, stale))
    work = tempfile.mkdtemp(prefix="wshub-bench-")
    results, problems = {}, []
    try:
        commands = build(servers, work)
        # Workload by workload, every server in turn: this machine's speed drifts over
        # minutes, and a ratio is only fair between runs made close together.
        logs = {} if "peers" in skip else {
            server: open(os.path.join(OUT, f"{server}.log"), "w") for server in servers}
        try:
            for label, args in ([] if "peers" in skip else loads):
                print(f"== {label}", flush=True)
                # The repetitions interleaved (wshub, bun-uws, wshub, bun-uws, …), so a
                # slow minute falls on both.
                for rep in range(repeat):
                    for server in (s for s in servers if rep == 0 or s in REPEATED):
                        result = run_one(server, commands[server], label, args, logs[server])
                        results.setdefault((server, label), []).append(result)
                        with open(os.path.join(OUT, result_file(server, label, rep)), "w") as f:
                            json.dump(result, f, indent=1)
                        problems += check(f"{server} {label}", result)
                        shown = ", ".join(fmt.format(v) + " " + n for n, v, _, fmt in figures(result) if v is not None)
                        print(f"  {server}: {shown or result.get('error')}", flush=True)
        finally:
            for log in logs.values():
                log.close()
        channel_results = {}
        if "wshub" in servers and "channels" not in skip:
            print("== wshub channels", flush=True)
            base = commands["wshub"]
            channels_cmd = lambda port: base(port) + ["--history-size", "10000"]
            with open(os.path.join(OUT, "wshub-channels.log"), "w") as log:
                for label, args in channel_workloads(opts.smoke):
                    result = run_one("wshub", channels_cmd, label, args, log)
                    channel_results[label] = result
                    name = f"wshub-{label}".replace(" ", "_").replace("/", "")
                    with open(os.path.join(OUT, f"{name}.json"), "w") as f:
                        json.dump(result, f, indent=1)
                    problems += check(f"wshub {label}", result)
                    print(f"  {label}: done", flush=True)
        compression_results = {}
        if "wshub" in servers and "compression" not in skip:
            print("== wshub compression (off: defaults; on: --compression true, clients --deflate)", flush=True)
            base = commands["wshub"]
            on_cmd = lambda port: base(port) + ["--compression", "true"]
            with open(os.path.join(OUT, "wshub-compression.log"), "w") as log:
                for label, args in compression_workloads(opts.smoke):
                    for on in (False, True):
                        state = "on" if on else "off"
                        result = run_one("wshub", on_cmd if on else base, label, args + (["--deflate"] if on else []), log)
                        compression_results[(label, on)] = result
                        name = f"wshub-compression-{label}-{state}".replace(" ", "_").replace("/", "")
                        with open(os.path.join(OUT, f"{name}.json"), "w") as f:
                            json.dump(result, f, indent=1)
                        problems += check(f"wshub compression {label} {state}", result)
                        if on:
                            problems += check_compressed(f"wshub compression {label} {state}", result)
                        shown = result.get("error") or (
                            f"{result.get('wire_bytes_per_delivery', 0):,.0f} bytes/delivery" if result.get("scenario") == "fanout"
                            else f"{((result.get('server') or {}).get('bytes_per_conn') or 0) / 1000:.2f} KB/conn")
                        print(f"  {label} {state}: {shown}", flush=True)
        scaleout_results = {}
        if "wshub" in servers and "scaleout" not in skip:
            print("== wshub scale-out on Redis (nodes and redis-server on CPU 0)", flush=True)
            with open(os.path.join(OUT, "wshub-scaleout.log"), "w") as log:
                scaleout_results = scaleout_section(commands["wshub"], opts.smoke, log, problems)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    mode = "smoke" if opts.smoke else "full"
    command = ("bench/compare" + (" --smoke" if opts.smoke else "") + (f" --servers {opts.servers}" if opts.servers else "")
               + (f" --skip {opts.skip}" if skip else "") + (f" --repeat {opts.repeat}" if opts.repeat is not None else ""))
    header = (f"Run {datetime.date.today()} ({mode}): `{command}`; {os.cpu_count()} CPUs, "
              f"{platform.system()} {platform.release()}; servers on CPU 0, wshub-bench on CPU 1. "
              + ("Ratios are wshub / peer (for RSS, latency and time, below 1 is better)." if "peers" not in skip
                 else "Ratios are against the section's baseline (for latency, below 1 is better).")
              + (f" In the main table wshub and bun-uws ran each workload {repeat} times, interleaved: their "
                 "cells are medians, and a ratio to bun-uws is of the medians, with the range of the "
                 "run-by-run ratios in brackets." if repeat > 1 and "peers" not in skip else ""))
    text = header + "\n"
    if "peers" not in skip:
        text += "\n" + table(results, servers, loads) + "\n"
    if channel_results:
        text += "\nChannels (wshub only, same run):\n\n" + channel_table(channel_results, opts.smoke) + "\n"
    if compression_results:
        text += ("\nCompression (wshub only, same run; JSON-like 1 KiB messages; off: defaults; on: "
                 "`--compression true` and every client offering permessage-deflate, sending uncompressed):\n\n"
                 + compression_table(compression_results) + "\n")
    if scaleout_results:
        text += ("\nScale-out on Redis (wshub only, same run; `channel`, publishers on node A, subscribers "
                 "spread over the nodes; every wshub node and redis-server on CPU 0, their CPU summed; "
                 "Redis commands from INFO commandstats):\n\n" + scaleout_table(scaleout_results, opts.smoke) + "\n")
    with open(os.path.join(OUT, f"compare-{mode}.md"), "w") as f:
        f.write(text)
    print("\n" + text)
    if skip and not opts.smoke and not opts.no_write:
        print(f"not updating BENCHMARKS.md: --skip {opts.skip}")
    if not opts.smoke and not opts.no_write and not skip:
        path = os.path.join(ROOT, "BENCHMARKS.md")
        doc = open(path).read()
        begin, end = "<!-- compare:begin -->", "<!-- compare:end -->"
        if begin in doc and end in doc:
            doc = doc[: doc.index(begin) + len(begin)] + "\n" + text + doc[doc.index(end):]
            open(path, "w").write(doc)
            print(f"updated {path}")
    if problems:
        print("CORRECTNESS PROBLEMS:\n  " + "\n  ".join(problems))
        sys.exit(1)
    print("0 lost, all counts as expected")


if __name__ == "__main__":
    main()
