#!/usr/bin/env bash
# The browser tests (browser/): wshub.js's logic in Node, then the chat demo, the client and
# the /admin dashboard (under wshub-bench load) in headless Chromium against the real release
# binaries; prints wshub.js's gzip size.
#
#   bash scripts/browser.sh
#
# Needs Node 18+ with npm, and Debian's Chromium: installed here when missing and we are
# root (CHROMIUM=/path/to/chrome uses another). Screenshots: target/browser/demo.png,
# target/browser/admin*.png.
set -euo pipefail
cd "$(dirname "$0")/.."

CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
if [ ! -x "$CHROMIUM" ]; then
  if [ "$(id -u)" = 0 ] && [ "$CHROMIUM" = /usr/bin/chromium ]; then
    echo "installing chromium"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq chromium >/dev/null
  else
    echo "error: $CHROMIUM is missing: apt-get install chromium (as root), or set CHROMIUM" >&2
    exit 1
  fi
fi
export CHROMIUM

(cd browser && npm ci --no-audit --no-fund --loglevel=error)
cargo build --release --locked -p wshub-server -p wshub-bench
export WSHUB_BIN="$PWD/target/release/wshub"
export WSHUB_BENCH="$PWD/target/release/wshub-bench"
(cd browser && npm test)
(cd browser && node size.mjs)
