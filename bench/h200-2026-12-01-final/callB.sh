#!/usr/bin/env bash
# Call B (right after A, machine warm): decode benches beside PyTorch, quantized GGUFs beside
# llama-bench, serving beside llama-server. Every step has a timeout; a table comes last.
set -uo pipefail
cd "$(dirname "$0")"
P=$PWD; O=/tmp/res-$(basename $0 .sh); rm -rf $O; mkdir -p $O; T0=$SECONDS; R=()
snap() { tar czf $OUT/results.tgz -C $O . 2>/dev/null; }
el() { echo "[$((SECONDS - T0))s] $*"; snap; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee $O/gpu.txt
L=$P/llamacpp/llamacpp.sh
echo "prep at start: $(ls /tmp/qb 2>/dev/null | tr '\n' ' ') done=$([[ -f /tmp/prep.done ]] && echo yes || echo no)" | tee $O/prep-state.txt
for _ in $(seq 60); do [[ -f /tmp/soak/done ]] && break; sleep 2; done
mkdir -p $O/soak && cp /tmp/soak/* $O/soak/ 2>/dev/null
R+=("soak: $(grep -E 'soak rc|PASS|FAIL' $O/soak/summary.txt 2>/dev/null | tr '\n' ' ' | cut -c1-300)")
el soak-collected
B() { local name=$1 t=$2; shift 2; timeout $t ./encore bench "$@" --json $O/bench-$name.json > $O/bench-$name.txt 2>&1; R+=("bench-$name rc=$?"); }
B 1b-300 60 --preset llama-3.2-1b --batch 1,8,64 --modes eager,graph-inline --steps 100
B 8b-300 60 --preset llama-3.1-8b --batch 1,8 --modes graph-inline --steps 60
B small 60 --preset smollm2-135m,qwen2.5-0.5b,qwen3-0.6b,gemma3-270m --batch 1,8 --modes graph-inline --steps 100
B qwen7b 40 --preset qwen2.5-7b --batch 1,8,16 --modes graph-inline --steps 30
el benches
A() { local name=$1; shift; timeout 60 python3 shared/torch_decode.py "$@" --json $O/anchor-$name.json > /dev/null 2>&1; R+=("anchor-$name rc=$?"); }
A 1b-b1 --preset llama-3.2-1b --batch 1
A 1b-b8 --preset llama-3.2-1b --batch 8
A 8b-b1 --preset llama-3.1-8b --batch 1
el anchors
for _ in $(seq 60); do [[ -f /tmp/prep.done ]] && break; sleep 2; done
cp /tmp/prep.log $O/prep.log 2>/dev/null
mkdir -p $O/quant
QB_OUT=$O/quant QB_WORK=/tmp/qb QB_PRESETS="llama-3.2-1b llama-3.1-8b" QB_TYPES="Q4_K_M Q8_0" timeout 170 bash quant-bench.sh > $O/quant/run.txt 2>&1
R+=("quant rc=$?")
timeout 60 bash $L bench /tmp/qb/llama-3.2-1b.bf16.gguf -p 0 -n 128 -d 300 -r 3 > $O/llama-bench-tg-bf16.txt 2>&1; R+=("llama-bench-bf16 rc=$?")
el quant
mkdir -p $O/serve
ENCORE=./encore MODEL=/tmp/l1b OUT_DIR=$O/serve CONCURRENCY="1 16 64" PROMPTS_PER_CLIENT=8 \
  LLAMA_SERVER=/tmp/llamacpp/build/bin/llama-server GGUF=/tmp/qb/llama-3.2-1b.bf16.gguf timeout 260 bash scripts/gpu/serving.sh > $O/serve/summary.txt 2>&1
R+=("serve: $(tr '\n' ' ' < $O/serve/summary.txt | cut -c1-300)")
el serve
snap
printf '%s\n' "${R[@]}"
