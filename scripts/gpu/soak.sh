#!/usr/bin/env bash
# Bounded soak of `encore serve` on a GPU host (the serving issue's: 64 clients, random
# prompt lengths, 10% cancelled mid-stream; 60 places and no queue, so some requests get
# the intended 429): `encore bench soak` samples the server's RSS
# and GPU memory and checks that every request ends once and every KV block comes back.
#
#   ENCORE=./encore MODEL=/tmp/l1b OUT_DIR=/tmp/out SECONDS_TO_RUN=600 bash scripts/gpu/soak.sh
# Env: SERVE_ARGS (extra `encore serve` flags, e.g. --gpu-memory-utilization 0.5), PORT (8021).
set -uo pipefail
ENCORE=${ENCORE:-./encore}; MODEL=${MODEL:?MODEL}; OUT_DIR=${OUT_DIR:?OUT_DIR}; PORT=${PORT:-8021}
mkdir -p "$OUT_DIR"
# shellcheck disable=SC2086
"$ENCORE" serve --model "$MODEL" --device cuda --port "$PORT" --max-num-seqs 64 --max-ctx 2048 --max-concurrent 60 --max-queue 0 \
    ${SERVE_ARGS:-} > "$OUT_DIR/soak-serve.log" 2>&1 &
SP=$!
for _ in $(seq 120); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 1; done
"$ENCORE" bench soak --url "http://127.0.0.1:$PORT" --concurrency 64 --duration "${SECONDS_TO_RUN:-600}" \
    --input-len 16:1024 --output-len 16:512 --cancel-fraction 0.1 --server-pid $SP --sample-every 30 \
    --json "$OUT_DIR/soak.json" > "$OUT_DIR/soak.txt" 2> "$OUT_DIR/soak.err"
echo "soak rc=$?"
curl -s "http://127.0.0.1:$PORT/metrics" > "$OUT_DIR/soak-metrics.txt"
kill -INT $SP; wait $SP; echo "soak serve exit rc=$?"
cat "$OUT_DIR/soak.txt"
