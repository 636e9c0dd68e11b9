#!/usr/bin/env bash
# Rewrites the sample config in docs/operations.md (the ```toml block between
# `<!-- wshub config: begin -->` and `<!-- wshub config: end -->`) from `wshub config`.
#
#   bash scripts/ops-config.sh            rewrite the block
#   bash scripts/ops-config.sh --check    exit 1 if the block differs from `wshub config`
#
# The binary: $WSHUB_BIN, else target/debug/wshub under $CARGO_TARGET_DIR (or ./target),
# built with `cargo build -p wshub-server` when missing.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
doc="$root/docs/operations.md"
bin=${WSHUB_BIN:-${CARGO_TARGET_DIR:-$root/target}/debug/wshub}
if [[ ! -x $bin ]]; then
  (cd "$root" && cargo build -p wshub-server)
fi

config=$(mktemp)
new=$(mktemp)
trap 'rm -f "$config" "$new"' EXIT
"$bin" config >"$config"

awk -v config="$config" '
  /^<!-- wshub config: begin -->$/ {
    print; print "```toml"
    while ((getline line < config) > 0) print line
    print "```"
    skipping = 1; found++; next
  }
  /^<!-- wshub config: end -->$/ { skipping = 0; ended++ }
  !skipping { print }
  END { if (found != 1 || ended != 1) exit 3 }
' "$doc" >"$new" || {
  echo "ops-config: $doc needs exactly one begin and one end marker line" >&2
  exit 2
}

if [[ ${1:-} == --check ]]; then
  if ! diff -u "$doc" "$new"; then
    echo "ops-config: the sample config in docs/operations.md is not \`wshub config\`: run bash scripts/ops-config.sh" >&2
    exit 1
  fi
  exit 0
fi
cat "$new" >"$doc"
