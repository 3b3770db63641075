#!/usr/bin/env bash
# Session 5, call B (right after A, machine warm): small presets and Qwen2.5-7B, llama-bench on
# the same card (bf16 at depth 300; Q4_K_M beside encore through quant-bench.sh), and an ncu
# per-kernel profile of the 1B batch-1 graphed step. Every step has a timeout.
set -uo pipefail
cd "$(dirname "$0")"
P=$PWD; O=/tmp/res-B; rm -rf $O; mkdir -p $O; T0=$SECONDS; R=()
snap() { tar czf $OUT/results.tgz -C $O . 2>/dev/null; }
el() { echo "[$((SECONDS - T0))s] $*"; snap; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee $O/gpu.txt
L=$P/llamacpp/llamacpp.sh
echo "prep at start: $(ls /tmp/qb 2>/dev/null | tr '\n' ' ') done=$([[ -f /tmp/prep.done ]] && echo yes || echo no)" | tee $O/prep-state.txt
B() { local name=$1 t=$2; shift 2; timeout $t ./encore bench "$@" --json $O/bench-$name.json > $O/bench-$name.txt 2>&1; R+=("bench-$name rc=$?"); }
B small 70 --preset smollm2-135m,qwen2.5-0.5b,qwen3-0.6b,gemma3-270m --batch 1,8 --modes graph-inline --steps 100
B small-pdl 70 --preset smollm2-135m,qwen2.5-0.5b --batch 1,8 --modes graph-inline --steps 100 --pdl
B qwen7b 50 --preset qwen2.5-7b --batch 1,8 --modes graph-inline --steps 30
el benches
# ncu profile of the 1B batch-1 graphed step
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
rep=$O/ncu-1b-b1
timeout 150 "$NCU" --clock-control none --graph-profiling node \
  --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum \
  --launch-skip 3000 --launch-count 600 -f -o $rep \
  ./encore bench --preset llama-3.2-1b --batch 1 --modes graph-inline --steps 20 --prefill 16 > $O/ncu-bench.txt 2>&1
R+=("ncu rc=$?")
"$NCU" --import $rep.ncu-rep --csv --page raw --print-units base > $rep.csv 2>$O/import.err
python3 shared/ncu_step_table.py $rep.csv --copy-gbps 4247 --label "llama-3.2-1b batch 1 (graph-inline, ctx 1024, pos 300)" --json $rep.json > $rep.md 2>&1
rm -f $rep.ncu-rep $rep.csv
el profile
for _ in $(seq 90); do [[ -f /tmp/prep.done ]] && break; sleep 2; done
cp /tmp/prep.log $O/prep.log 2>/dev/null
timeout 60 bash $L bench /tmp/qb/llama-3.2-1b.bf16.gguf -p 0 -n 128 -d 300 -r 3 > $O/llama-bench-1b-bf16.txt 2>&1; R+=("llama-bench-1b-bf16 rc=$?")
timeout 80 bash $L bench /tmp/qb/llama-3.1-8b.bf16.gguf -p 0 -n 64 -d 300 -r 2 > $O/llama-bench-8b-bf16.txt 2>&1; R+=("llama-bench-8b-bf16 rc=$?")
el llama-bench
mkdir -p $O/quant
QB_OUT=$O/quant QB_WORK=/tmp/qb QB_PRESETS="llama-3.2-1b llama-3.1-8b" QB_TYPES="Q4_K_M" timeout 150 bash quant-bench.sh > $O/quant/run.txt 2>&1
R+=("quant rc=$?")
el quant
printf '%s\n' "${R[@]}"
for f in $O/bench-*.txt; do echo "== $(basename $f)"; grep -E ' (eager|graph-inline) |on NVIDIA' $f | cut -c1-100; done
grep -E '^\|' $O/llama-bench-*.txt | cut -c1-160
tail -8 $O/quant/run.txt
head -30 $rep.md
