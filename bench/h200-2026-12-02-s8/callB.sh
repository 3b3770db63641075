#!/usr/bin/env bash
# Session 8, call B: gemv.cu's K split and register caps, on call A's tail fix (e780046,
# encore-e1) beside fcc23df (encore-fcc). encore-x: e780046 with ENCORE_GEMV_FIT=1 (ksplit
# doubled only while warp_rows * 2 ks <= ENCORE_GEMV_TARGET warps) ; encore-xc: the same with
# the plain m1 gemv capped at 32 registers (64 warps an SM); encore-w: call A's (all m1
# gemv entries capped: plain 32, fused 40). Then ncu of the 8B batch-1 step for the winner.
set -uo pipefail
cd "$(dirname "$0")"
P=$PWD; O=/tmp/res-B; rm -rf $O; mkdir -p $O; T0=$SECONDS; R=()
snap() { tar czf $OUT/results.tgz -C $O . 2>/dev/null; }
el() { echo "[$((SECONDS - T0))s] $*"; snap; }
B() { local name=$1 t=$2; shift 2; timeout $t "$@" --json $O/bench-$name.json > $O/bench-$name.txt 2>&1; R+=("bench-$name rc=$?"); }
run() { local v=$1 bin=$2; shift 2
  B 1b-$v 60 env "$@" $bin bench --preset llama-3.2-1b --batch 1,8 --modes graph-inline --steps 100
  B 8b-$v 60 env "$@" $bin bench --preset llama-3.1-8b,qwen2.5-7b --batch 1 --modes graph-inline --steps 40
  B small-$v 60 env "$@" $bin bench --preset smollm2-135m,qwen2.5-0.5b --batch 1 --modes graph-inline --steps 100
  el "bench $v"; }
for round in 1 2; do
  run fcc$round ./encore-fcc X=1
  run e1$round ./encore-e1 X=1
  run x7920-$round ./encore-x ENCORE_GEMV_FIT=1 ENCORE_GEMV_TARGET=7920
  run x8448-$round ./encore-x ENCORE_GEMV_FIT=1 ENCORE_GEMV_TARGET=8448
  run xc$round ./encore-xc X=1
  run xcfit$round ./encore-xc ENCORE_GEMV_FIT=1
  run wfit$round ./encore-w ENCORE_GEMV_FIT=1
done
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
prof() { local name=$1 bin=$2 preset=$3 skip=$4 count=$5; shift 5; local rep=$O/ncu-$name
  timeout 150 env "$@" "$NCU" --clock-control none --graph-profiling node \
    --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum --launch-skip $skip --launch-count $count -f -o $rep \
    $bin bench --preset $preset --batch 1 --modes graph-inline --steps 60 --prefill 16 > $O/ncu-bench-$name.txt 2>&1
  R+=("ncu-$name rc=$?")
  "$NCU" --import $rep.ncu-rep --csv --page raw --print-units base > $rep.csv 2>$O/import-$name.err
  python3 shared/ncu_step_table.py $rep.csv --copy-gbps 4247 --label "$preset batch 1 (graph-inline, ctx 1024, pos 300)" --json $rep.json > $rep.md 2>&1
  rm -f $rep.ncu-rep $rep.csv; el "ncu $name"; }
[[ $((SECONDS - T0)) -lt 330 ]] && prof 8b-e1 ./encore-e1 llama-3.1-8b 3000 660 X=1
[[ $((SECONDS - T0)) -lt 430 ]] && prof 8b-xcfit ./encore-xc llama-3.1-8b 3000 660 ENCORE_GEMV_FIT=1
printf '%s\n' "${R[@]}"
for f in $O/bench-*.txt; do echo "== $(basename $f .txt) $(grep -E ' graph-inline ' $f | awk '{printf "%s/%s ", $3, $7}')"; done
for f in $O/ncu-*.md; do echo "== $f"; head -30 $f; done
