#!/usr/bin/env bash
# Session 6, call B (right after call A, same machine): the --decode-min-chunk sweep on the
# 1B, the decode step at ctx 8192 / pos 8000 beside main at 45ac9af (encore-old), and an
# ncu profile of the new 1B batch-1 graphed step.
set -uo pipefail
cd "$(dirname "$0")"
P=$PWD; O=/tmp/res-B; rm -rf $O; mkdir -p $O; T0=$SECONDS; R=()
snap() { tar czf $OUT/results.tgz -C $O . 2>/dev/null; }
el() { echo "[$((SECONDS - T0))s] $*"; snap; }
B() { local name=$1 t=$2 bin=$3; shift 3; timeout $t $bin bench "$@" --json $O/bench-$name.json > $O/bench-$name.txt 2>&1; R+=("bench-$name rc=$?"); }
for k in 64 512 1024; do B 1b-chunk$k 40 ./encore --preset llama-3.2-1b --batch 1,8 --modes graph-inline --steps 100 --decode-min-chunk $k; done
el chunks
for v in new old; do
  bin=./encore; [[ $v == old ]] && bin=./encore-old
  B 1b-8k-$v 60 $bin --preset llama-3.2-1b --batch 1,8 --ctx 8192 --pos 8000 --modes graph-inline --steps 50
  B 8b-8k-$v 60 $bin --preset llama-3.1-8b --batch 1 --ctx 8192 --pos 8000 --modes graph-inline --steps 30
done
el long
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
rep=$O/ncu-1b-b1
timeout 150 "$NCU" --clock-control none --graph-profiling node \
  --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum --launch-skip 1500 --launch-count 340 -f -o $rep \
  ./encore bench --preset llama-3.2-1b --batch 1 --modes graph-inline --steps 60 --prefill 16 > $O/ncu-bench.txt 2>&1
R+=("ncu rc=$?")
"$NCU" --import $rep.ncu-rep --csv --page raw --print-units base > $rep.csv 2>$O/import.err
python3 shared/ncu_step_table.py $rep.csv --copy-gbps 4247 --label "llama-3.2-1b batch 1 (graph-inline, ctx 1024, pos 300)" --json $rep.json > $rep.md 2>&1
rm -f $rep.ncu-rep $rep.csv
el ncu
printf '%s\n' "${R[@]}"
for f in $O/bench-*.txt; do echo "== $(basename $f)"; grep -E ' graph-inline ' $f | cut -c1-75; done
head -16 $rep.md
