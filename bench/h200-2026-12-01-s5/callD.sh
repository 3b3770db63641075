#!/usr/bin/env bash
# Session 5, call D: call C less the two changes it measured slower (the GEMVs' L2 prefetch,
# the in-kernel attention merge): the tensor-core GEMV for 3..16 rows against cuBLAS (the
# previous binary, encore-old, main at 232bb45) at batch 4, 8, 16 in the same call, the GPU
# tests, and ncu profiles of the 1B batch-8 step of both binaries.
set -uo pipefail
cd "$(dirname "$0")"
P=$PWD; O=/tmp/res-D; rm -rf $O; mkdir -p $O; T0=$SECONDS; R=()
snap() { tar czf $OUT/results.tgz -C $O . 2>/dev/null; }
el() { echo "[$((SECONDS - T0))s] $*"; snap; }
: "${ENCORE_REPO_ROOT:?set by the command}"; export ENCORE_REPO_ROOT
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee $O/gpu.txt
B() { local name=$1 t=$2 bin=$3; shift 3; timeout $t $bin bench "$@" --json $O/bench-$name.json > $O/bench-$name.txt 2>&1; R+=("bench-$name rc=$?"); }
for v in new old; do
  bin=./encore; [[ $v == old ]] && bin=./encore-old
  B 1b-$v 60 $bin --preset llama-3.2-1b --batch 1,4,8,16 --modes graph-inline --steps 100
  B 8b-$v 60 $bin --preset llama-3.1-8b --batch 1,4,8,16 --modes graph-inline --steps 40
  B small-$v 40 $bin --preset qwen2.5-0.5b --batch 1,8 --modes graph-inline --steps 100
done
el benches
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
for v in new old; do
  bin=./encore; [[ $v == old ]] && bin=./encore-old
  rep=$O/ncu-1b-b8-$v
  timeout 80 "$NCU" --clock-control none --graph-profiling node --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum \
    --launch-skip 3000 --launch-count 600 -f -o $rep $bin bench --preset llama-3.2-1b --batch 8 --modes graph-inline --steps 20 --prefill 16 > /dev/null 2>&1
  "$NCU" --import $rep.ncu-rep --csv --page raw --print-units base > $rep.csv 2>/dev/null
  python3 shared/ncu_step_table.py $rep.csv --copy-gbps 4247 --label "llama-3.2-1b batch 8 $v (graph-inline, ctx 1024, pos 300)" --json $rep.json > $rep.md 2>&1
  rm -f $rep.ncu-rep $rep.csv
done
el profile
for t in tests/encore-cuda.ops tests/encore-cuda.lib tests/encore-cuda.graph tests/encore-engine.cuda_decode; do
  n=$(basename $t)
  timeout 100 $t --test-threads=1 --skip smollm2 --skip random_llama --skip matches_transformers > $O/test.$n.log 2>&1
  R+=("$n rc=$? $(grep -E '^test result' $O/test.$n.log | tail -1 | cut -c1-60)")
  grep -E '^test .* FAILED$|panicked' $O/test.$n.log | head -5
done
el tests
printf '%s\n' "${R[@]}"
for f in $O/bench-*.txt; do echo "== $(basename $f)"; grep -E ' graph-inline ' $f | cut -c1-75; done
for v in new old; do head -14 $O/ncu-1b-b8-$v.md; done
