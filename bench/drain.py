"""The engine of bench/drain: a node taken out of service with its clients, drained
(POST /api/drain, 1012 over drain_period) against a plain SIGTERM (1001 at once).

For each way of stopping it: a redis-server of our own (Debian's package, a free port, a
temp dir, no persistence), three `wshub serve --broker redis://...` nodes (release build),
and `wshub-bench drain`: N wshub.v1 subscribers on node A, a publisher at a fixed rate
through node B, node A stopped, every subscriber reconnecting to B or C (round-robin) with
`since` and recovering. Prints a table (lost / duplicated publications, peak reconnects per
second on B and C) and the per-second series; the raw JSON goes to target/bench/.
Loopback only; every process it starts it ends."""
import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
OUT = os.path.join(ROOT, "target", "bench")
BENCH = os.path.join(ROOT, "target", "release", "wshub-bench")
WSHUB = os.path.join(ROOT, "target", "release", "wshub")
KEY = "bench-drain-key"


# The same process handling as bench/compare (one way to start and end a server).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import Redis, free_port, stop_process, wait_accept  # noqa: E402


def run_one(stop, args, redis, log):
    """Three fresh nodes on `redis`, wshub-bench drain against node A stopped by `stop`."""
    nodes = []
    try:
        for name in "abc":
            port = free_port()
            proc = subprocess.Popen(
                [WSHUB, "serve", "--bind", f"127.0.0.1:{port}", "--broker", redis.url(),
                 "--node-name", f"{name}-{stop}", "--api-key", KEY,
                 "--drain-period", args.drain_period, "--drain-timeout", "5s",
                 "--history-size", "10000", "--log-format", "json"],
                stdout=log, stderr=log)
            nodes.append((port, proc))
            if not wait_accept(port, proc):
                return {"error": f"node {name} did not start (exit {proc.poll()})"}
        (port_a, proc_a), (port_b, _), (port_c, _) = nodes
        cmd = [BENCH, "drain", "--url", f"ws://127.0.0.1:{port_a}/ws",
               "--reconnect-url", f"ws://127.0.0.1:{port_b}/ws,ws://127.0.0.1:{port_c}/ws",
               "--conns", str(args.conns), "--rate", str(args.rate), "--stop", stop,
               "--api-key", KEY, "--pid", str(proc_a.pid), "--json", "--quiet"]
        print(f"  $ wshub-bench {' '.join(cmd[1:])}", flush=True)
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired:
            return {"error": "wshub-bench drain did not finish in 600 s"}
        try:
            result = json.loads(done.stdout.strip().splitlines()[-1])
        except (json.JSONDecodeError, IndexError):
            return {"error": f"wshub-bench exit {done.returncode}: {(done.stdout + done.stderr)[-600:]}"}
        result["node_a_exit_code"] = proc_a.wait(timeout=30) if proc_a.poll() is None else proc_a.returncode
        return result
    finally:
        for _, proc in nodes:
            stop_process(proc)


def table(results, args):
    rows = [
        f"{args.conns:,} wshub.v1 subscribers on node A of 3 (+ Redis), {args.rate:g} publications/s through node B; "
        f"drain_period {args.drain_period}; clients wait as wshub.js does (1012: up to restartJitter 2 s; else backoff from 200 ms).",
        "",
        "| stop | lost | duplicated | not recovered | peak reconnects/s on B+C | busiest 100 ms | all back after | node A exited after (code) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for stop, r in results.items():
        if "error" in r:
            rows.append(f"| {stop} | error: {r['error'][:200]} | | | | | | |")
            continue
        c, rc = r["check"], r["reconnects"]
        fmt = lambda v: "-" if v is None else f"{v:.1f} s"
        rows.append(
            f"| {'POST /api/drain' if stop == 'drain' else 'SIGTERM'} | {c['lost']} | {c['duplicates']} | {c['not_recovered']} | "
            f"{rc['peak_per_second']:,} | {rc['peak_per_100ms']:,} | {fmt(rc['all_back_s'])} | "
            f"{fmt(rc['node_a_exit_s'])} ({r.get('node_a_exit_code')}) |")
    rows.append("")
    for stop, r in results.items():
        if "error" in r:
            continue
        p = r["publications"]
        series = " ".join(f"{s['second']}s:{s['total']}" for s in r["reconnects"]["per_second"])
        rows.append(f"- {stop}: {p['acked']} publications acknowledged (offsets {p['first_offset']}..{p['last_offset']}), "
                    f"{r['expected_per_subscriber']} per subscriber, {r['check']['delivered']:,} delivered in all; "
                    f"closes {r['reconnects']['closes']}; failed attempts {r['reconnects']['failed_attempts']}; failures {r['failures']}")
        rows.append(f"  reconnects per second since the stop: {series}")
    return "\n".join(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conns", type=int, default=10000)
    parser.add_argument("--rate", type=float, default=10)
    parser.add_argument("--drain-period", default="10s")
    parser.add_argument("--stops", default="drain,sigterm")
    parser.add_argument("--smoke", action="store_true", help="200 subscribers, drain_period 2s")
    parser.add_argument("--no-build", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        args.conns, args.drain_period = 200, "2s"
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--locked", "-p", "wshub-server", "-p", "wshub-bench"],
                       cwd=ROOT, check=True)
    os.makedirs(OUT, exist_ok=True)
    results = {}
    with open(os.path.join(OUT, "drain.log"), "w") as log:
        redis = Redis(log, cpu=None)
        try:
            for stop in args.stops.split(","):
                print(f"{stop}:", flush=True)
                results[stop] = run_one(stop, args, redis, log)
                with open(os.path.join(OUT, f"drain-{stop}.json"), "w") as f:
                    json.dump(results[stop], f, indent=1)
        finally:
            redis.stop()
    print()
    print(table(results, args))
    bad = [s for s, r in results.items() if "error" in r or r.get("failures")]
    if bad:
        print(f"\nFAILED: {', '.join(bad)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
