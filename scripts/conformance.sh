#!/usr/bin/env bash
# Autobahn|Testsuite conformance comparison: the FULL suite (517 cases) against wshub and the
# reference peers in ../shared/peers (seed-go, node-ws, bun-uws), each a chat server that echoes
# when it has one client. See CONFORMANCE.md for the latest results.
#
#   bash scripts/conformance.sh [NAME...]     # default: wshub seed-go node-ws bun-uws
#
# Builds the peers into a temp dir (../shared is read-only in CI), starts each server on a free
# 127.0.0.1 port, runs ../shared/tools/autobahn/run.sh against ws://ADDR/ws, stops the server and
# prints a summary table. Reports: target/conformance/<name>/ (index.json, server_case_*.json,
# wstest.log, run.txt = run.sh output, server.log); the table also goes to
# target/conformance/summary.txt.
#
# Environment: WSHUB_SHARED (shared folder, default ../shared beside the checkout),
# AUTOBAHN_VENV (default target/autobahn-venv, installed if missing),
# CONFORMANCE_TIMEOUT (wall-clock bound per server, default 1200 s),
# WSHUB_BUILD=1 (cargo build --release even if target/release/wshub exists).
#
# Exit status: 0 iff every server ran the whole suite (every case reported) and wshub has no
# failed case. Peer failures are findings, not errors.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
SHARED="${WSHUB_SHARED:-$(cd "$ROOT/.." && pwd)/shared}"
VENV="${AUTOBAHN_VENV:-$ROOT/target/autobahn-venv}"
TIMEOUT="${CONFORMANCE_TIMEOUT:-1200}"
OUT="$ROOT/target/conformance"
NAMES=("$@")
[ ${#NAMES[@]} -gt 0 ] || NAMES=(wshub seed-go node-ws bun-uws)

WORK="$(mktemp -d "${TMPDIR:-/tmp}/wshub-conformance.XXXXXX")"
PID=""
stop_server() {
  if [ -n "$PID" ]; then
    kill "$PID" 2>/dev/null
    for _ in $(seq 1 50); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$PID" 2>/dev/null
    wait "$PID" 2>/dev/null
    PID=""
  fi
}
cleanup() { stop_server; rm -rf "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

banner() { printf '\n=== %s ===\n' "$*"; }
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
# wait until 127.0.0.1:$1 accepts a TCP connection (and the server process is alive)
wait_accept() {
  for _ in $(seq 1 200); do
    kill -0 "$PID" 2>/dev/null || return 1
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  return 1
}

mkdir -p "$OUT"
banner "autobahn venv"
# No pip bytecode: see scripts/autobahn.sh (stale .pyc files can shadow the 2to3 port).
PIP_NO_COMPILE=1 bash "$SHARED/tools/autobahn/install.sh" "$VENV" || { echo "autobahn install failed"; exit 1; }

# --- build -----------------------------------------------------------------------------------
declare -A BUILT
for name in "${NAMES[@]}"; do
  banner "build $name"
  case "$name" in
    wshub)
      if [ "${WSHUB_BUILD:-0}" = "1" ] || [ ! -x target/release/wshub ]; then
        cargo build --release --locked -p wshub-server && BUILT[$name]=1
      else
        echo "using existing target/release/wshub ($(date -r target/release/wshub '+%F %T'))"
        BUILT[$name]=1
      fi ;;
    seed-go|node-ws|bun-uws)
      bash "$SHARED/peers/$name/build.sh" "$WORK/$name" > "$WORK/build-$name.log" 2>&1 \
        && BUILT[$name]=1
      tail -n 3 "$WORK/build-$name.log" ;;
    *) echo "unknown server '$name' (known: wshub seed-go node-ws bun-uws)"; exit 2 ;;
  esac
  [ -n "${BUILT[$name]:-}" ] || echo "BUILD FAILED: $name"
done
{
  echo "date: $(date -u '+%F %T UTC'), $(nproc) CPUs, $(uname -sr)"
  for name in "${NAMES[@]}"; do
    [ -n "${BUILT[$name]:-}" ] || continue
    case "$name" in
      wshub) echo "wshub: target/release/wshub built $(date -r target/release/wshub '+%F %T'), HEAD $(git rev-parse --short HEAD 2>/dev/null || echo '?')" ;;
      seed-go) echo "seed-go: $(go version 2>/dev/null), gorilla/websocket $(dpkg-query -W -f '${Version}' golang-github-gorilla-websocket-dev 2>/dev/null || echo '?') (Debian)" ;;
      node-ws) echo "node-ws: node $(node --version), ws $(node -e "console.log(require('$WORK/node-ws/node_modules/ws/package.json').version)")" ;;
      bun-uws) echo "bun-uws: bun $("$WORK/bun-uws/node_modules/@oven/bun-linux-x64/bin/bun" --version)" ;;
    esac
  done
} > "$WORK/versions.txt"

# --- run -------------------------------------------------------------------------------------
for name in "${NAMES[@]}"; do
  [ -n "${BUILT[$name]:-}" ] || continue
  banner "autobahn full suite: $name"
  REPORT="$OUT/$name"
  mkdir -p "$REPORT"
  LOG="$REPORT/server.log"
  : > "$LOG"
  ADDR=""
  case "$name" in
    wshub)
      target/release/wshub serve --bind 127.0.0.1:0 --max-message-size 16777216 \
        --send-queue 4096 --write-wait 60s > "$LOG" 2>&1 &
      PID=$!
      for _ in $(seq 1 100); do
        ADDR="$(sed -n 's/.*listening on http:\/\/\([0-9.:]*\).*/\1/p' "$LOG" | head -n1)"
        [ -n "$ADDR" ] && break
        sleep 0.1
      done ;;
    seed-go)
      PORT="$(free_port)"; ADDR="127.0.0.1:$PORT"
      "$WORK/seed-go/seed-go" -addr "$ADDR" -html "$SHARED/peers/seed-go/home.html" \
        -static "$SHARED/peers/seed-go/static" > "$LOG" 2>&1 &
      PID=$! ;;
    node-ws)
      PORT="$(free_port)"; ADDR="127.0.0.1:$PORT"
      node "$WORK/node-ws/server.js" --port "$PORT" --host 127.0.0.1 > "$LOG" 2>&1 &
      PID=$! ;;
    bun-uws)
      PORT="$(free_port)"; ADDR="127.0.0.1:$PORT"
      "$WORK/bun-uws/node_modules/@oven/bun-linux-x64/bin/bun" "$WORK/bun-uws/server.js" \
        --port "$PORT" --host 127.0.0.1 > "$LOG" 2>&1 &
      PID=$! ;;
  esac
  if [ -z "$ADDR" ] || ! wait_accept "${ADDR##*:}"; then
    echo "SERVER DID NOT START: $name"; cat "$LOG"; stop_server
    echo "server did not start" > "$REPORT/run.txt"
    continue
  fi
  echo "$name pid $PID on $ADDR"
  AUTOBAHN_VENV="$VENV" AUTOBAHN_AGENT="$name" \
    bash "$SHARED/tools/autobahn/run.sh" -o "$REPORT" -t "$TIMEOUT" "ws://$ADDR/ws" '*' \
    | tee "$REPORT/run.txt"
  if kill -0 "$PID" 2>/dev/null; then
    echo "$name still running after the suite: ok"
  else
    echo "SERVER EXITED DURING THE SUITE: $name" | tee -a "$REPORT/run.txt"
  fi
  stop_server
done

# --- summary ---------------------------------------------------------------------------------
banner "summary"
{ cat "$WORK/versions.txt"; echo; "$VENV/bin/python" - "$OUT" "${NAMES[@]}" <<'EOF'; } | tee "$OUT/summary.txt"
import collections, json, os, re, sys
out, names = sys.argv[1], sys.argv[2:]
from autobahntestsuite.caseset import CaseSet
from autobahntestsuite.case import Cases, CaseCategories, CaseSubCategories, CaseBasename, CaseSetname
cs = CaseSet(CaseSetname, CaseBasename, Cases, CaseCategories, CaseSubCategories)
wanted = cs.parseSpecCases({"cases": ["*"], "exclude-cases": [], "exclude-agent-cases": {}})
COLS = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED", "MISSING"]
rows, details, bad = [], [], False
for name in names:
    rep = os.path.join(out, name)
    results = {}
    idx = os.path.join(rep, "index.json")
    if os.path.exists(idx):
        for cases in json.load(open(idx)).values():
            results.update(cases)
    runtxt = open(os.path.join(rep, "run.txt")).read() if os.path.exists(os.path.join(rep, "run.txt")) else ""
    m = re.search(r"wstest exit (\d+) after (\d+)s", runtxt)
    rc, secs = (int(m.group(1)), int(m.group(2))) if m else (None, None)
    beh, groups, passed = collections.Counter(), collections.Counter(), 0
    for cid in wanted:
        r = results.get(cid)
        b, bc = (r["behavior"], r["behaviorClose"]) if r else ("MISSING", "-")
        beh[b] += 1
        comp = b == "UNIMPLEMENTED" and cid.startswith(("12.", "13."))
        ok = comp or (b in ("OK", "NON-STRICT", "INFORMATIONAL") and bc in ("OK", "INFORMATIONAL"))
        if ok:
            passed += 1
        else:
            groups[".".join(cid.split(".")[:2]) + ".*"] += 1
    failed = len(wanted) - passed
    if beh["MISSING"] or rc != 0 and failed == 0 or "EXITED DURING" in runtxt or (name == "wshub" and failed):
        bad = True
    # behaviors outside the usual ones (none expected)
    extra = sorted(set(beh) - set(COLS))
    rows.append([name, str(passed), str(failed)] + [str(beh.get(c, 0)) for c in COLS]
                + ["-" if secs is None else "%ds" % secs, "-" if rc is None else str(rc)])
    key = lambda g: [int(x) for x in g[:-2].split(".")]
    details.append("%-8s failing groups: %s%s" % (name,
        ", ".join("%s (%d)" % (g, groups[g]) for g in sorted(groups, key=key)) or "none",
        ("  other behaviors: " + ", ".join("%s=%d" % (k, beh[k]) for k in extra)) if extra else ""))
head = ["server", "passed", "failed"] + COLS + ["time", "wstest rc"]
w = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
fmt = lambda r: "  ".join(c.rjust(w[i]) if i else c.ljust(w[i]) for i, c in enumerate(r))
print("Autobahn|Testsuite full suite (%d cases); 12.*/13.* UNIMPLEMENTED count as passed" % len(wanted))
print(fmt(head))
for r in rows:
    print(fmt(r))
print()
print("\n".join(details))
sys.exit(1 if bad else 0)
EOF
