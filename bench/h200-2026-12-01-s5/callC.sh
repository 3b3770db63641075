#!/usr/bin/env bash
# Session 5, call C: the tensor-core GEMV for 3..16 rows, the in-kernel attention merge and
# the GEMVs' L2 weight prefetch under PDL: GPU tests, memcheck of the changed kernels, and
# decode benches of the new binary beside the previous one (encore-old, main at 232bb45) in
# the same call.
set -uo pipefail
cd "$(dirname "$0")"
P=$PWD; O=/tmp/res-C; rm -rf $O; mkdir -p $O; T0=$SECONDS; R=()
snap() { tar czf $OUT/results.tgz -C $O . 2>/dev/null; }
el() { echo "[$((SECONDS - T0))s] $*"; snap; }
: "${ENCORE_REPO_ROOT:?set by the command}"; export ENCORE_REPO_ROOT
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee $O/gpu.txt
TOK=$(bash $P/llamacpp/llamacpp.sh tok)
(python3 shared/gen_random_hf.py llama-3.2-1b /tmp/l1b --tokenizer-dir $TOK > /dev/null && python3 shared/hf_reference.py /tmp/l1b /tmp/l1b.hf.json > /dev/null && touch /tmp/l1b.ref.ready) &
for t in tests/encore-cuda.ops tests/encore-cuda.graph tests/encore-cuda.lib tests/encore-engine.lib tests/encore-engine.consistency tests/encore-engine.cuda_decode; do
  n=$(basename $t)
  if [[ $n == encore-engine.cuda_decode ]]; then
    for _ in $(seq 120); do [[ -f /tmp/l1b.ref.ready ]] && break; sleep 2; done
    export ENCORE_RANDOM_LLAMA_1B=/tmp/l1b ENCORE_HF_REFERENCE=/tmp/l1b.hf.json
  fi
  timeout 200 $t --test-threads=1 --skip smollm2 > $O/test.$n.log 2>&1
  R+=("$n rc=$? $(grep -E '^test result' $O/test.$n.log | tail -1 | cut -c1-60)")
  grep -E '^test .* FAILED$|panicked' $O/test.$n.log | head -5
done
el tests
SAN=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
for f in decode_shaped attention_decode fused; do
  timeout 60 $SAN --tool memcheck --report-api-errors no --error-exitcode 1 tests/encore-cuda.ops --test-threads=1 $f > $O/memcheck.$f.log 2>&1
  R+=("memcheck.$f rc=$? $(grep -E '^test result|ERROR SUMMARY' $O/memcheck.$f.log | tail -2 | tr '\n' ' ' | cut -c1-90)")
done
el memcheck
B() { local name=$1 t=$2 bin=$3; shift 3; timeout $t $bin bench "$@" --json $O/bench-$name.json > $O/bench-$name.txt 2>&1; R+=("bench-$name rc=$?"); }
for v in new old; do
  bin=./encore; [[ $v == old ]] && bin=./encore-old
  B 1b-$v 60 $bin --preset llama-3.2-1b --batch 1,8,64 --modes graph-inline --steps 100
  B 1b-$v-pdl 60 $bin --preset llama-3.2-1b --batch 1,8,64 --modes graph-inline --steps 100 --pdl
  B 8b-$v 50 $bin --preset llama-3.1-8b --batch 1,8 --modes graph-inline --steps 50
  B 8b-$v-pdl 50 $bin --preset llama-3.1-8b --batch 1,8 --modes graph-inline --steps 50 --pdl
  B small-$v-pdl 50 $bin --preset smollm2-135m,qwen2.5-0.5b --batch 1,8 --modes graph-inline --steps 100 --pdl
done
el benches
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
for b in 1 8; do
  rep=$O/ncu-1b-b$b
  timeout 90 "$NCU" --clock-control none --graph-profiling node --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum \
    --launch-skip 3000 --launch-count 600 -f -o $rep ./encore bench --preset llama-3.2-1b --batch $b --modes graph-inline --steps 20 --prefill 16 > /dev/null 2>&1
  "$NCU" --import $rep.ncu-rep --csv --page raw --print-units base > $rep.csv 2>/dev/null
  python3 shared/ncu_step_table.py $rep.csv --copy-gbps 4247 --label "llama-3.2-1b batch $b (graph-inline, ctx 1024, pos 300)" --json $rep.json > $rep.md 2>&1
  rm -f $rep.ncu-rep $rep.csv
done
el profile
printf '%s\n' "${R[@]}"
for f in $O/bench-*.txt; do echo "== $(basename $f)"; grep -E ' graph-inline ' $f | cut -c1-75; done
head -16 $O/ncu-1b-b1.md; head -16 $O/ncu-1b-b8.md
