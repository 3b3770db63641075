#!/usr/bin/env bash
# Session 7, call E: ncu of the Qwen3-0.6B batch-1 step, final code beside b07be64 (base)
# and call B's encore-f64: the plain attention_decode_d128 kernel's time in each.
set -uo pipefail
cd "$(dirname "$0")"
O=/tmp/res-E; rm -rf $O; mkdir -p $O; T0=$SECONDS
snap() { tar czf $OUT/results.tgz -C $O . 2>/dev/null; }
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
for v in new base f64; do
  bin=./encore-$v; rep=$O/ncu-qwen3-$v
  timeout 100 $bin bench --preset qwen3-0.6b --batch 1 --modes graph-inline --steps 100 > $O/bench-$v.txt 2>&1
  timeout 120 "$NCU" --clock-control none --graph-profiling node \
    --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum --launch-skip 3000 --launch-count 1100 -f -o $rep \
    $bin bench --preset qwen3-0.6b --batch 1 --modes graph-inline --steps 60 --prefill 16 > $O/ncu-bench-$v.txt 2>&1
  "$NCU" --import $rep.ncu-rep --csv --page raw --print-units base > $rep.csv 2>/dev/null
  python3 ncu_step_table.py $rep.csv --copy-gbps 4247 --label "qwen3-0.6b b1 $v" --json $rep.json > $rep.md 2>&1
  rm -f $rep.ncu-rep $rep.csv; snap; echo "[$((SECONDS - T0))s] $v"
done
for v in new base f64; do echo "== $v $(grep -E ' graph-inline ' $O/bench-$v.txt | awk '{print $3, $7}')"; head -16 $O/ncu-qwen3-$v.md | grep -E "kernels,|attention|gemv|rope|rms|copy"; done
