#!/usr/bin/env bash
# Bounded fuzzing of everything wshub parses itself, with cargo-fuzz (libFuzzer) on the
# stable toolchain (no sanitizer: `-s none`). A crash fails the run and leaves its input
# in fuzz/artifacts/<target>/.
#
#   bash scripts/fuzz.sh [SECONDS_PER_TARGET]      (default 60)
#
# Targets (fuzz/fuzz_targets/): config_toml (config files), http_request (the HTTP
# surface: home, static files, upgrade checks, API bodies), websocket_frames (any bytes
# a client may send after the handshake, through a real connection), frame_reader (the
# frame reader alone: the same result however the bytes are split). Seeds: fuzz/seeds/<target>/ (committed); the
# growing corpus lives in target/fuzz-corpus/ (not committed).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
SECONDS_PER="${1:-60}"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz"
  cargo install cargo-fuzz --version 0.13.2 --locked
fi
cargo fuzz build -s none
for target in config_toml http_request websocket_frames frame_reader upgrade_head; do
  corpus="$ROOT/target/fuzz-corpus/$target"
  mkdir -p "$corpus"
  echo "--- fuzz $target for ${SECONDS_PER}s"
  cargo fuzz run "$target" -s none "$corpus" "fuzz/seeds/$target" -- \
    -max_total_time="$SECONDS_PER" -print_final_stats=1 2>&1 | grep -E '^(#[0-9]+ *DONE|Done|stat::number_of_executed_units|==[0-9]+==|SUMMARY|thread .* panicked|artifact_prefix|Test unit written)' || true
  # grep swallows the exit code; a crash leaves an artifact behind.
  if [ -n "$(find fuzz/artifacts/"$target" -type f \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' \) 2>/dev/null)" ]; then
    echo "fuzz $target: FAILED, see fuzz/artifacts/$target/"
    exit 1
  fi
done
echo "fuzzing: no crash"
