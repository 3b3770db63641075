#!/usr/bin/env bash
# Session 7, call B (benches only): main at b07be64 (encore-old) beside three experiment
# binaries, decode step at ctx 1024 / pos 300, graph-inline, with and without --pdl:
#   encore-t    gemv.cu's first weight loads before the PDL wait, and every kernel triggers
#               its dependents before its own wait (call A's encore + trigger-first)
#   encore-f64  attention_decode.cu's fused prologue as its own entry points (the plain
#               kernel without the fused code), fused at D <= 64 as before
#   encore-f128 the same, fused at D <= 128 (Llama-3.1-8B, Qwen2.5-7B)
set -uo pipefail
cd "$(dirname "$0")"
O=/tmp/res-B; rm -rf $O; mkdir -p $O; T0=$SECONDS; R=()
snap() { tar czf $OUT/results.tgz -C $O . 2>/dev/null; }
el() { echo "[$((SECONDS - T0))s] $*"; snap; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee $O/gpu.txt
B() { local name=$1 t=$2 bin=$3; shift 3; timeout $t $bin bench "$@" --json $O/bench-$name.json > $O/bench-$name.txt 2>&1; R+=("bench-$name rc=$?"); }
run() { local v=$1 bin=$2; shift 2
  B 1b-$v 60 $bin --preset llama-3.2-1b --batch 1,8 --modes graph-inline --steps 100 "$@"
  B 8b-$v 60 $bin --preset llama-3.1-8b --batch 1,8 --modes graph-inline --steps 40 "$@"
  B qwen7b-$v 60 $bin --preset qwen2.5-7b --batch 1 --modes graph-inline --steps 30 "$@"
  B small-$v 60 $bin --preset smollm2-135m,qwen2.5-0.5b,qwen3-0.6b,gemma3-270m --batch 1 --modes graph-inline --steps 100 "$@"
  el $v; }
run old ./encore-old
run f64 ./encore-f64
run f128 ./encore-f128
run oldpdl ./encore-old --pdl
run tpdl ./encore-t --pdl
run f64pdl ./encore-f64 --pdl
run f128pdl ./encore-f128 --pdl
run old2 ./encore-old
run f64-2 ./encore-f64
run f128-2 ./encore-f128
printf '%s\n' "${R[@]}" | grep -v 'rc=0$'
for f in $O/bench-*.txt; do echo "== $(basename $f .txt) $(grep -E ' graph-inline ' $f | awk '{printf "%s ", $3}')"; done
