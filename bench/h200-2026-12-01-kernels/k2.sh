#!/usr/bin/env bash
# The kernels branch's GPU call: tests (fail fast), the GEMV sweep, encore benches of this
# branch (new/) and of main c565975 (base/), the PyTorch anchor, ncu profiles; all one call.
set -uo pipefail
P=/tmp/p
O=$OUT; T0=$SECONDS
el() { echo "[$((SECONDS - T0))s] $*"; }
export ENCORE_REPO_ROOT="$PWD"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee $O/gpu.txt
fail=0
for t in encore-cuda.lib encore-cuda.ops encore-cuda.graph encore-engine.cuda_decode; do
  timeout 150 $P/new/tests/$t --test-threads=1 --skip random_llama --skip smollm2 --skip matches_transformers > $O/test.$t.log 2>&1; rc=$?
  echo "$t rc=$rc $(grep -E '^test result' $O/test.$t.log | tail -1 | cut -c1-90)"; [ $rc = 0 ] || fail=1
done
grep -h "panicked" -A6 $O/test.*.log | head -60
el tests
timeout 100 $P/gemv_sweep > $O/gemv_sweep.txt 2>&1; echo "sweep rc=$?"
sed -n '/best variant/,$p' $O/gemv_sweep.txt
grep -c FAIL $O/gemv_sweep.txt
el sweep
B() { local who=$1 name=$2; shift 2; timeout 100 $P/$who/encore bench "$@" --modes graph-inline --steps 50 --prefill 64 --json $O/bench-$who-$name.json > $O/bench-$who-$name.txt 2>&1; echo "bench $who $name rc=$?"; }
B new 1b --preset llama-3.2-1b --batch 1,8,64
B base 1b --preset llama-3.2-1b --batch 1,8,64
el bench-1b
grep -h "graph-inline" $O/bench-*-1b.txt
if [ $fail = 0 ]; then
  for who in new base; do
    B $who 8b --preset llama-3.1-8b --batch 1,8
    B $who small --preset smollm2-135m,qwen2.5-0.5b --batch 1
  done
  B new 7b --preset qwen2.5-7b --batch 1,8
  el benches
  A() { local name=$1; shift; timeout 60 python3 $P/new/shared/torch_decode.py "$@" --json $O/anchor-$name.json > $O/anchor-$name.txt 2>&1; echo "anchor $name rc=$?"; }
  A 1b-b1 --preset llama-3.2-1b --batch 1
  A 1b-b8 --preset llama-3.2-1b --batch 8
  A 8b-b1 --preset llama-3.1-8b --batch 1
  el anchors
  left() { [ $((SECONDS - T0)) -lt ${1} ]; }
  NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
  for who in new base; do
    left 290 || { echo "skip ncu $who: out of time"; continue; }
    rep=$O/ncu-$who-1b-b1
    timeout 70 $NCU --clock-control none --graph-profiling node --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum \
      --launch-skip 4000 --launch-count 440 -f -o $rep $P/$who/encore bench --preset llama-3.2-1b --batch 1 --modes graph-inline --steps 20 --prefill 16 > $rep.log 2>&1
    echo "ncu $who rc=$?"
    $NCU --import $rep.ncu-rep --csv --page raw --print-units base > $rep.csv 2>>$rep.log
    python3 $P/new/shared/ncu_step_table.py $rep.csv --copy-gbps 4274 --label "llama-3.2-1b b1 $who" --json $rep.json > $rep.md 2>&1
    head -40 $rep.md
    rm -f $rep.ncu-rep
  done
  el profile
fi
grep -h "on NVIDIA\|graph-inline" $O/bench-*.txt
for f in $O/anchor-*.txt; do echo "$(basename $f): $(tail -c 600 $f)"; done
(cd $O && tar czf results.tgz *.txt *.json *.log *.md *.csv 2>/dev/null && find . -type f ! -name results.tgz ! -name gpu.txt -delete)
el done
