#!/usr/bin/env bash
# Serving benchmark on a GPU host: `encore serve` on an HF model folder, loaded by
# `encore bench serve` at several concurrencies (256-token random-id prompts, 128 output
# tokens, ignore_eos), then the same against llama.cpp's llama-server on the same weights
# as GGUF when LLAMA_SERVER and GGUF are given. Results go to OUT_DIR as
# serve-{encore,llama}-c{C}.{txt,json} plus encore's /metrics after the run.
#
#   ENCORE=./encore MODEL=/tmp/l1b OUT_DIR=/tmp/out bash scripts/gpu/serving.sh
# Env: CONCURRENCY ("1 16 64"), PROMPTS_PER_CLIENT (10: num-prompts = max(16, C x this)),
#      SERVE_ARGS (extra `encore serve` flags), LLAMA_SERVER + GGUF (the anchor), PORT (8011).
set -uo pipefail
ENCORE=${ENCORE:-./encore}; MODEL=${MODEL:?MODEL: an HF model folder}; OUT_DIR=${OUT_DIR:?OUT_DIR}
CONC=${CONCURRENCY:-1 16 64}; PER=${PROMPTS_PER_CLIENT:-10}; PORT=${PORT:-8011}
mkdir -p "$OUT_DIR"
wait_health() { for _ in $(seq 120); do curl -sf "http://127.0.0.1:$1/health" >/dev/null && return 0; sleep 1; done; return 1; }
load() { # load NAME PORT
    local name=$1 port=$2 c n
    for c in $CONC; do
        n=$((c * PER)); ((n < 16)) && n=16
        # a seed per concurrency: one run's prompts are not in the prefix cache from another's
        timeout 300 "$ENCORE" bench serve --url "http://127.0.0.1:$port" --concurrency "$c" --num-prompts "$n" --seed "$c" \
            --input-len 256 --output-len 128 --json "$OUT_DIR/serve-$name-c$c.json" > "$OUT_DIR/serve-$name-c$c.txt" 2>&1
        echo "serve-$name-c$c rc=$? $(grep -E 'Output token throughput|P99 TPOT' "$OUT_DIR/serve-$name-c$c.txt" | awk '{print $NF}' | tr '\n' ' ')"
    done
}
# shellcheck disable=SC2086
"$ENCORE" serve --model "$MODEL" --device cuda --port "$PORT" --max-num-seqs 64 --max-ctx 2048 ${SERVE_ARGS:-} \
    > "$OUT_DIR/serve-encore.log" 2>&1 &
SP=$!
if wait_health "$PORT"; then
    load encore "$PORT"
    curl -s "http://127.0.0.1:$PORT/metrics" > "$OUT_DIR/serve-encore-metrics.txt"
else
    echo "encore serve did not become ready"; tail -5 "$OUT_DIR/serve-encore.log"
fi
kill -INT $SP; wait $SP; echo "encore serve exit rc=$?"
if [[ -n ${LLAMA_SERVER:-} && -n ${GGUF:-} ]]; then
    "$LLAMA_SERVER" -m "$GGUF" -ngl 99 -fa on --parallel 64 -c $((64 * 512)) -cb --port $((PORT + 1)) \
        > "$OUT_DIR/llama-server.log" 2>&1 &
    LP=$!
    if wait_health $((PORT + 1)); then load llama $((PORT + 1)); else echo "llama-server did not become ready"; fi
    kill $LP; wait $LP 2>/dev/null
fi
