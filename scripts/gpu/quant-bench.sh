#!/usr/bin/env bash
# Quantized decode on the GPU host, encore beside llama.cpp on the same GGUF files.
#
# Runs from a pack folder holding: `encore` (release, --features cuda), gen_random_hf.py
# (tools/), and llamacpp/ (llamacpp.sh, llamacpp-src.tar.xz, tok/: llama.cpp's source and
# the Llama-3 tokenizer: the pack step below). No network, no Rust.
#
#   1. starts the llama.cpp build in the background (llama-bench, llama-quantize; ~4-5 min)
#   2. writes random-weight HF folders (gen_random_hf.py, the Llama-3 tokenizer) and
#      converts them to bf16 GGUF (llama.cpp's convert_hf_to_gguf.py)
#   3. quantizes them with llama-quantize (Q4_K_M, Q8_0, ...) once the build is done
#   4. per file: `encore bench --model FILE.gguf` (graph-inline, batch 1 and 8, decode at
#      position $QB_POS) and `llama-bench -m FILE.gguf -p 0 -n 128 -ngl 99 -fa 1`
#   5. prints a table: tok/s of both, and their ratio at batch 1
#
# Pack (on the build machine):
#   cargo build --release -p encore-cli --features cuda
#   mkdir -p P && cp target/release/encore tools/gen_random_hf.py scripts/gpu/quant-bench.sh P/
#   cp -r <llama.cpp anchor folder> P/llamacpp && tar cJf pack.tar.xz -C P .
# GPU host:  tar xJf pack.tar.xz -C /tmp/p && bash /tmp/p/quant-bench.sh
#
# Env: QB_PRESETS  presets (default "llama-3.2-1b llama-3.1-8b")
#      QB_TYPES    llama-quantize types (default "Q4_K_M Q8_0")
#      QB_BATCH    encore batches (default 1,8)
#      QB_POS      decode position of encore's bench (default 64: llama-bench's tg128
#                  decodes positions 0..128)
#      QB_OUT      results folder (default $OUT, else /tmp/qb-out)
#      QB_WORK     scratch for models (default /tmp/qb)
#      QB_LLAMACPP 0: no llama.cpp build and no llama-bench; Q8_0 files are then written by
#                  the converter itself (--outtype q8_0), other types are skipped
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PRESETS="${QB_PRESETS:-llama-3.2-1b llama-3.1-8b}"
TYPES="${QB_TYPES:-Q4_K_M Q8_0}"
BATCH="${QB_BATCH:-1,8}"
POS="${QB_POS:-64}"
RES="${QB_OUT:-${OUT:-/tmp/qb-out}}"
WORK="${QB_WORK:-/tmp/qb}"
LCPP="$HERE/llamacpp/llamacpp.sh"
WITH_LLAMA="${QB_LLAMACPP:-1}"
mkdir -p "$RES" "$WORK"
log() { echo "[quant-bench $(date -u +%T)] $*"; }

[[ -x "$HERE/encore" ]] || { echo "quant-bench: $HERE/encore missing"; exit 2; }
[[ -f "$LCPP" ]] || { echo "quant-bench: $LCPP missing"; exit 2; }

# 1. llama.cpp builds while the models are written
if [[ $WITH_LLAMA == 1 ]]; then
    bash "$LCPP" build-bg
else
    mkdir -p /tmp/llamacpp   # the source only: the converter and gguf-py
    [[ -f /tmp/llamacpp/CMakeLists.txt ]] || xz -dc "$HERE/llamacpp/llamacpp-src.tar.xz" | tar xf - -C /tmp/llamacpp
fi
TOK="$(bash "$LCPP" tok)"

# 2. HF folders -> bf16 GGUF
SRC=/tmp/llamacpp   # where llamacpp.sh unpacks the source
for p in $PRESETS; do
    hf="$WORK/$p"
    [[ -f "$WORK/$p.bf16.gguf" || -f "$WORK/$p.Q8_0.gguf" ]] && continue   # made by an earlier run
    if [[ ! -f "$hf/config.json" ]]; then
        log "writing random $p"
        python3 "$HERE/gen_random_hf.py" "$p" "$hf" --tokenizer-dir "$TOK" >"$RES/gen-$p.log" 2>&1 \
            || { log "gen_random_hf $p failed (see gen-$p.log)"; continue; }
    fi
    if [[ $WITH_LLAMA != 1 ]]; then
        log "converting $p to Q8_0 GGUF (the converter quantizes)"
        PYTHONPATH=$SRC/gguf-py python3 $SRC/convert_hf_to_gguf.py "$hf" --outtype q8_0 \
            --outfile "$WORK/$p.Q8_0.gguf" >"$RES/convert-$p.log" 2>&1 \
            || log "convert $p failed (see convert-$p.log)"
    elif [[ ! -f "$WORK/$p.bf16.gguf" ]]; then
        log "converting $p to bf16 GGUF"
        PYTHONPATH=$SRC/gguf-py python3 $SRC/convert_hf_to_gguf.py "$hf" --outtype bf16 \
            --outfile "$WORK/$p.bf16.gguf" >"$RES/convert-$p.log" 2>&1 \
            || { log "convert $p failed (see convert-$p.log)"; continue; }
    fi
    rm -rf "$hf"   # the GGUF holds it now (disk)
done

# 3. quantize (needs the build)
[[ $WITH_LLAMA == 1 ]] && { log "waiting for the llama.cpp build"; bash "$LCPP" wait | tee "$RES/llamacpp-build.txt"; }
QUANT=$SRC/build/bin/llama-quantize
for p in $PRESETS; do
    [[ $WITH_LLAMA == 1 ]] || break
    [[ -f "$WORK/$p.bf16.gguf" ]] || continue
    for t in $TYPES; do
        f="$WORK/$p.$t.gguf"
        [[ -f "$f" ]] && continue
        log "quantizing $p to $t"
        "$QUANT" "$WORK/$p.bf16.gguf" "$f" "$t" >"$RES/quantize-$p-$t.log" 2>&1 \
            || { log "llama-quantize $p $t failed"; rm -f "$f"; }
    done
done

# 4. both engines on each file
ROWS=()
for p in $PRESETS; do
    for t in $TYPES; do
        f="$WORK/$p.$t.gguf"
        [[ -f "$f" ]] || { ROWS+=("| $p | $t | - | not made | | | |"); continue; }
        gb=$(python3 -c "import os;print(f'{os.path.getsize(\"$f\")/1e9:.2f}')")
        log "encore bench $p $t"
        "$HERE/encore" bench --model "$f" --batch "$BATCH" --pos "$POS" --ctx 1024 --modes graph-inline \
            --steps 100 --json "$RES/encore-$p-$t.json" 2>&1 | tee "$RES/encore-$p-$t.txt"
        : >"$RES/llamacpp-$p-$t.txt"
        if [[ $WITH_LLAMA == 1 ]]; then
            log "llama-bench $p $t"
            bash "$LCPP" bench "$f" -p 0 -n 128 2>&1 | tee "$RES/llamacpp-$p-$t.txt"
        fi
        ROWS+=("$(python3 - "$RES/encore-$p-$t.json" "$RES/llamacpp-$p-$t.txt" "$p" "$t" "$gb" <<'PY'
import json, re, sys
enc, lc, p, t, gb = sys.argv[1:]
tok = {}
try:
    for rep in json.load(open(enc)):
        for r in rep["rows"]:
            tok[r["batch"]] = r["tokens_per_s"]
except Exception:
    pass
ll = None
for line in open(lc):
    if "tg128" in line:
        m = re.search(r"\|\s*([0-9.]+)\s*±", line)
        if m:
            ll = float(m.group(1))
b1 = tok.get(1)
fmt = lambda v: f"{v:.1f}" if v else "-"
ratio = f"{b1 / ll:.2f}x" if b1 and ll else "-"
print(f"| {p} | {t} | {gb} | {fmt(b1)} | {fmt(tok.get(8))} | {fmt(ll)} | {ratio} |")
PY
)")
    done
done

# 5. the table
{
    echo
    echo "=== quantized decode (encore bench --model F --pos $POS --modes graph-inline; llama-bench -p 0 -n 128 -ngl 99 -fa 1)"
    echo "| model | type | GB | encore b1 tok/s | encore b8 tok/s | llama.cpp tg128 tok/s | encore/llama.cpp b1 |"
    echo "|---|---|---|---|---|---|---|"
    printf '%s\n' "${ROWS[@]}"
} | tee "$RES/quant-bench.md"
