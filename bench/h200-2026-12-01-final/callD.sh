#!/usr/bin/env bash
# Call D: an ncu per-kernel profile of one graphed decode step of Llama-3.1-8B with Q4_K
# blocks (random, `--quantize q4_k`), batch 1: the quantized-weights issue's profile.
set -uo pipefail
P=/tmp/p; O=/tmp/res-D; rm -rf $O; mkdir -p $O
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
echo "ncu: $NCU"
rep=$O/ncu-8b-q4k-b1
timeout 400 "$NCU" --clock-control none --graph-profiling node \
  --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum \
  --launch-skip 6000 --launch-count 1500 -f -o $rep \
  $P/encore bench --preset llama-3.1-8b --quantize q4_k --batch 1 --modes graph-inline --steps 40 --prefill 16 > $O/bench.txt 2>&1
echo "ncu rc=$?"
"$NCU" --import $rep.ncu-rep --csv --page raw --print-units base > $rep.csv 2>$O/import.err
python3 .gpu-lead/ncu_step_table.py $rep.csv --copy-gbps 4247 --label "llama-3.1-8b Q4_K batch 1 (graph-inline, ctx 1024, pos 300)" --json $rep.json | tee $rep.md
rm -f $rep.ncu-rep
tar czf $OUT/results.tgz -C $O .
tail -5 $O/bench.txt
