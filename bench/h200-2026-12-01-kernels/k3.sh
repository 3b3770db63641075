#!/usr/bin/env bash
# Second half of the kernels call (same pack, machine still warm): benches, anchor, profiles.
set -uo pipefail
P=/tmp/p; O=$OUT; T0=$SECONDS
el() { echo "[$((SECONDS - T0))s] $*"; }
left() { [ $((SECONDS - T0)) -lt $1 ]; }
[ -x $P/new/encore ] || { mkdir -p $P && tar xJf .gpu-kernels/pack.tar.xz -C $P; }
export ENCORE_REPO_ROOT="$PWD"
B() { local who=$1 name=$2; shift 2; left 150 || { echo "skip bench $who $name"; return; }; timeout 60 $P/$who/encore bench "$@" --modes graph-inline --steps 50 --prefill 16 --json $O/bench-$who-$name.json > $O/bench-$who-$name.txt 2>&1; echo "bench $who $name rc=$?"; }
B new 8b --preset llama-3.1-8b --batch 1,8
B base 8b --preset llama-3.1-8b --batch 1,8
B new small --preset smollm2-135m,qwen2.5-0.5b --batch 1
B base small --preset smollm2-135m,qwen2.5-0.5b --batch 1
B new 7b --preset qwen2.5-7b --batch 1,8
el benches
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
for who in new base; do
  left 170 || { echo "skip ncu $who"; continue; }
  rep=$O/ncu-$who-1b-b1
  timeout 45 $NCU --clock-control none --graph-profiling node --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum \
    --launch-skip 4000 --launch-count 440 -f -o $rep $P/$who/encore bench --preset llama-3.2-1b --batch 1 --modes graph-inline --steps 20 --prefill 16 > $rep.log 2>&1
  echo "ncu $who rc=$?"
  $NCU --import $rep.ncu-rep --csv --page raw --print-units base > $rep.csv 2>>$rep.log
  python3 $P/new/shared/ncu_step_table.py $rep.csv --copy-gbps 4274 --label "llama-3.2-1b b1 $who" --json $rep.json > $rep.md 2>&1
  head -30 $rep.md
  rm -f $rep.ncu-rep
done
el profile
A() { local name=$1; shift; left 200 || { echo "skip anchor $name"; return; }; timeout 40 python3 $P/new/shared/torch_decode.py "$@" --steps 100 --json $O/anchor-$name.json > $O/anchor-$name.txt 2>&1; echo "anchor $name rc=$? $(tail -c 400 $O/anchor-$name.txt)"; }
A 1b-b1 --preset llama-3.2-1b --batch 1
A 8b-b1 --preset llama-3.1-8b --batch 1
el anchors
grep -h "on NVIDIA\|graph-inline" $O/bench-*.txt
(cd $O && tar czf results2.tgz *.txt *.json *.log *.md *.csv 2>/dev/null && find . -type f ! -name results2.tgz -delete)
el done
