#!/usr/bin/env bash
# The one test command (README: `bash scripts/test.sh`): installs what it needs on a fresh
# Debian machine, then runs every check. Steps print a banner; the first failure stops it.
#
#   bash scripts/test.sh                       # lint, unit + integration tests, the whole
#                                              # Autobahn suite (it takes ~15 s against wshub)
#   WSHUB_AUTOBAHN=fast bash scripts/test.sh   # Autobahn groups 1-7 and 10 only (--fast)
#   WSHUB_AUTOBAHN=skip bash scripts/test.sh   # no Autobahn (quick local loop)
#   WSHUB_FUZZ_SECONDS=10 bash scripts/test.sh # shorter fuzzing
#
# Shared tools are found in ../shared beside the checkout (override: WSHUB_SHARED).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
SHARED="${WSHUB_SHARED:-$(cd "$ROOT/.." && pwd)/shared}"
WORK="${WSHUB_WORK:-$ROOT/target/test-work}"
mkdir -p "$WORK"
step() { printf '\n=== %s ===\n' "$*"; }

step "toolchain"
cargo --version
rustc --version

step "what the tests start (Debian's redis-server, nginx, openssl, python3-prometheus-client)"
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v openssl >/dev/null || missing+=(openssl)   # the JWT tests make RSA keys with it
# The metrics test reads /metrics with Python's prometheus_client text parser.
/usr/bin/python3 -c 'import prometheus_client' 2>/dev/null || missing+=(python3-prometheus-client)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
    # The packages start their own services; the tests start theirs on free ports.
    for service in "${missing[@]}"; do
      systemctl disable --now "$service" >/dev/null 2>&1 || service "$service" stop >/dev/null 2>&1 || true
    done
  else
    echo "error: missing ${missing[*]}: apt-get install ${missing[*]} (as root)" >&2
    exit 1
  fi
fi
redis-server --version

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test (unit, integration, doc)"
cargo test --workspace --locked

step "browser tests (wshub.js and the chat demo in Chromium)"
bash scripts/browser.sh

case "${WSHUB_AUTOBAHN:-full}" in
  skip) step "Autobahn skipped (WSHUB_AUTOBAHN=skip)" ;;
  *) step "Autobahn|Testsuite (${WSHUB_AUTOBAHN:-full}, compression off)"
     bash scripts/autobahn.sh "${WSHUB_AUTOBAHN:-full}"
     step "Autobahn|Testsuite (${WSHUB_AUTOBAHN:-full}, compression on)"
     WSHUB_COMPRESSION=true bash scripts/autobahn.sh "${WSHUB_AUTOBAHN:-full}" ;;
esac

step "benchmark smoke (correctness of wshub-bench and bench/compare, not speed)"
bench/compare --smoke

step "fuzzing (${WSHUB_FUZZ_SECONDS:-60}s per target)"
bash scripts/fuzz.sh "${WSHUB_FUZZ_SECONDS:-60}"

step "all checks passed"
