#!/usr/bin/env bash
# Runs the Autobahn|Testsuite fuzzing client against wshub in chat mode (with a single
# client, chat is an echo server).
#
#   bash scripts/autobahn.sh [fast|full] [CASES]
#
# fast: groups 1-7 and 10; full: every group, incl. 9 (large and many-frame messages)
# and 12-13 (permessage-deflate). WSHUB_COMPRESSION=true runs wshub with compression on;
# the shared runner counts 12.*/13.* "UNIMPLEMENTED" as passed, so with compression on
# this script fails on any UNIMPLEMENTED case itself. max_message_size is raised to
# 16 MiB so the large-message cases apply. Report: target/autobahn/<mode>[-deflate]/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
MODE="${1:-fast}"
CASES="${2:-*}"
SHARED="${WSHUB_SHARED:-$(cd "$ROOT/.." && pwd)/shared}"
VENV="${AUTOBAHN_VENV:-$ROOT/target/autobahn-venv}"
COMPRESSION="${WSHUB_COMPRESSION:-false}"
REPORT="$ROOT/target/autobahn/$MODE"
if [ "$COMPRESSION" = true ]; then REPORT="$REPORT-deflate"; fi

cargo build --release --locked -p wshub-server
# PIP_NO_COMPILE: pip's own .pyc files of the Python 2 sources can survive the 2to3
# rewrite when both happen within the same second, and then shadow it ("No module
# named 'case'"); install.sh compiles the ported sources itself. If an install still
# fails, clear the bytecode and try once more.
if ! PIP_NO_COMPILE=1 bash "$SHARED/tools/autobahn/install.sh" "$VENV"; then
  find "$VENV" -name __pycache__ -type d -prune -exec rm -rf {} +
  PIP_NO_COMPILE=1 bash "$SHARED/tools/autobahn/install.sh" "$VENV"
fi

LOG="$ROOT/target/autobahn/wshub-$MODE.log"
mkdir -p "$(dirname "$LOG")"
target/release/wshub serve --bind 127.0.0.1:0 --max-message-size 16777216 \
  --send-queue 4096 --write-wait 60s --compression "$COMPRESSION" 2>"$LOG" &
PID=$!
trap 'kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true' EXIT
ADDR=""
for _ in $(seq 1 100); do
  ADDR="$(sed -n 's/.*listening on http:\/\/\([0-9.:]*\).*/\1/p' "$LOG" | head -n1)"
  [ -n "$ADDR" ] && break
  sleep 0.1
done
[ -n "$ADDR" ] || { echo "wshub did not start:"; cat "$LOG"; exit 1; }

ARGS=(-o "$REPORT" -t 3000)
[ "$MODE" = "fast" ] && ARGS+=(--fast)
AUTOBAHN_VENV="$VENV" AUTOBAHN_AGENT=wshub bash "$SHARED/tools/autobahn/run.sh" "${ARGS[@]}" "ws://$ADDR/ws" "$CASES"
if [ "$COMPRESSION" = true ]; then
  unimplemented="$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(sum(1 for a in d.values() for c in a.values() if c["behavior"]=="UNIMPLEMENTED"))' "$REPORT/index.json")"
  echo "with compression on: $unimplemented UNIMPLEMENTED"
  [ "$unimplemented" = 0 ] || { echo "permessage-deflate cases were not run: compression is not negotiated"; exit 1; }
fi
