#!/usr/bin/env bash
# Session 8, call F: ncu of the Llama-3.2-1B batch-64 step (the one target miss call E did not profile), final code.
set -uo pipefail
cd "$(dirname "$0")"
P=$PWD; O=/tmp/res-F; rm -rf $O; mkdir -p $O; T0=$SECONDS; R=()
snap() { tar czf $OUT/results.tgz -C $O . 2>/dev/null; }
el() { echo "[$((SECONDS - T0))s] $*"; snap; }
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
prof() { local name=$1 preset=$2 batch=$3 skip=$4 count=$5; local rep=$O/ncu-$name
  timeout 150 "$NCU" --clock-control none --graph-profiling node \
    --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum --launch-skip $skip --launch-count $count -f -o $rep \
    ./encore bench --preset $preset --batch $batch --modes graph-inline --steps 60 --prefill 16 > $O/ncu-bench-$name.txt 2>&1
  R+=("ncu-$name rc=$?")
  "$NCU" --import $rep.ncu-rep --csv --page raw --print-units base > $rep.csv 2>$O/import-$name.err
  python3 shared/ncu_step_table.py $rep.csv --copy-gbps 4247 --label "$preset batch $batch (graph-inline, ctx 1024, pos 300)" --json $rep.json > $rep.md 2>&1
  rm -f $rep.ncu-rep $rep.csv; el "ncu $name"; }
prof 1b-b64 llama-3.2-1b 64 2200 500
printf '%s\n' "${R[@]}"
for f in $O/ncu-*.md; do echo "== $f"; sed -n 2,14p $f; done
