#!/usr/bin/env bash
# Fuzz encore's file parsers by hand (CI runs 30 s per target; this is for longer runs).
#
#   bash scripts/fuzz.sh                      # every target, 300 s each, release build
#   bash scripts/fuzz.sh 600 gguf chat_template
#   LIBFUZZER=1 bash scripts/fuzz.sh 600 gguf # libFuzzer via cargo-fuzz (nightly, optional)
#
# Stable runner: `encore-fuzz` (fuzz/), memory-capped worker processes, failing inputs
# saved under target/fuzz-artifacts/ (replay one with
# `cargo run -p encore-fuzz -- --target NAME --replay FILE`). Exit 1 if a target failed.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET="${1:-300}"
shift || true
TARGETS=("$@")
[[ ${#TARGETS[@]} -gt 0 ]] || TARGETS=(all)

if [[ -n "${LIBFUZZER:-}" ]]; then
    command -v cargo-fuzz >/dev/null || { echo "fuzz.sh: cargo-fuzz is not installed (cargo install cargo-fuzz)"; exit 2; }
    cargo run -q -p encore-fuzz -- --write-seeds fuzz/libfuzzer/corpus
    [[ "${TARGETS[*]}" == all ]] && TARGETS=(gguf safetensors safetensors_index config_json tokenizer_json chat_template openai_request)
    for t in "${TARGETS[@]}"; do
        cargo +nightly fuzz run --fuzz-dir fuzz/libfuzzer "$t" "fuzz/libfuzzer/corpus/$t" -- \
            -rss_limit_mb=4096 -max_total_time="$SECONDS_PER_TARGET" -timeout=10
    done
    exit 0
fi

args=()
for t in "${TARGETS[@]}"; do args+=(--target "$t"); done
cargo run --release -q -p encore-fuzz -- --seconds "$SECONDS_PER_TARGET" "${args[@]}"
