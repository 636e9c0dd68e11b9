"""Draws deliveries per server CPU-second by fan-out workload for every server of the last
bench/compare run (target/bench/<server>-<workload>.json) as a grouped bar chart, in SVG
with no dependencies: python3 bench/plot.py [OUT.svg] (default bench/deliveries.svg)."""
import glob
import json
import os
import statistics
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
RESULTS = os.path.join(ROOT, "target", "bench")
SERVERS = ["wshub", "seed-go", "node-ws", "bun-uws"]
COLORS = {"wshub": "#d9480f", "seed-go": "#1971c2", "node-ws": "#2f9e44", "bun-uws": "#7048e8"}
# bench/compare's fan-out workloads, in its order.
WORKLOADS = [
    "1 sender 10k 8 in flight",
    "1 sender 1k 32 in flight",
    "fanout 1k 64 B",
    "fanout 1k 4 KiB",
    "fanout 10k 64 B",
    "fanout 10k 4 KiB",
    "rate 100k/s",
]


def load():
    """{(server, workload): deliveries per server CPU-s}, the median where bench/compare ran
    the workload several times (<name>.json, <name>.rep2.json, …)."""
    values = {}
    for server in SERVERS:
        for workload in WORKLOADS:
            name = f"{server}-{workload}".replace(" ", "_").replace("/", "")
            paths = [os.path.join(RESULTS, f"{name}.json")]
            paths += sorted(glob.glob(os.path.join(RESULTS, f"{name}.rep*.json")))
            runs = []
            for path in paths:
                if not os.path.exists(path):
                    continue
                with open(path) as f:
                    result = json.load(f)
                value = (result.get("server") or {}).get("deliveries_per_cpu_s")
                if value:
                    runs.append(value)
            if runs:
                values[(server, workload)] = statistics.median(runs)
    return values


def svg(values):
    servers = [s for s in SERVERS if any((s, w) in values for w in WORKLOADS)]
    workloads = [w for w in WORKLOADS if any((s, w) in values for s in servers)]
    top = max(values.values())
    width, height, left, bottom, plot_h = 980, 420, 70, 90, 280
    group = (width - left - 20) / max(len(workloads), 1)
    bar = group * 0.8 / max(len(servers), 1)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="15">'
        "Fan-out deliveries per server CPU-second (higher is better; bench/compare, one run: medians where repeated)</text>",
    ]
    base = height - bottom
    for i in range(6):  # grid lines and labels, in millions
        v = top * i / 5
        y = base - plot_h * i / 5
        out.append(f'<line x1="{left}" x2="{width - 20}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{v / 1e6:.1f}M</text>')
    for gi, workload in enumerate(workloads):
        x0 = left + gi * group + group * 0.1
        for si, server in enumerate(servers):
            v = values.get((server, workload))
            if not v:
                continue
            h = plot_h * v / top
            x = x0 + si * bar
            out.append(f'<rect x="{x:.1f}" y="{base - h:.1f}" width="{bar - 2:.1f}" height="{h:.1f}" '
                       f'fill="{COLORS[server]}"><title>{server}, {workload}: {v:,.0f}</title></rect>')
        label_x = left + gi * group + group / 2
        words = workload.split()
        half = (len(words) + 1) // 2
        for line, text in enumerate([" ".join(words[:half]), " ".join(words[half:])]):
            out.append(f'<text x="{label_x:.1f}" y="{base + 16 + 14 * line}" text-anchor="middle">{text}</text>')
    for si, server in enumerate(servers):  # legend
        x = left + si * 120
        out.append(f'<rect x="{x}" y="{height - 40}" width="12" height="12" fill="{COLORS[server]}"/>')
        out.append(f'<text x="{x + 18}" y="{height - 30}">{server}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    target = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "bench", "deliveries.svg")
    values = load()
    if not values:
        sys.exit(f"no results in {RESULTS}: run bench/compare first")
    with open(target, "w") as f:
        f.write(svg(values))
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
