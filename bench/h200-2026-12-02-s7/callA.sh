#!/usr/bin/env bash
# Session 7, call A: gemv.cu's first weight loads before the PDL wait (Rhs::Weight) beside
# main at b07be64 (encore-old) in the same call: the GPU tests, memcheck of the gemv tests,
# and the decode step at ctx 1024 / pos 300 with and without --pdl.
set -uo pipefail
cd "$(dirname "$0")"
P=$PWD; O=/tmp/res-A; rm -rf $O; mkdir -p $O; T0=$SECONDS; R=()
snap() { tar czf $OUT/results.tgz -C $O . 2>/dev/null; }
el() { echo "[$((SECONDS - T0))s] $*"; snap; }
: "${ENCORE_REPO_ROOT:?set by the command}"; export ENCORE_REPO_ROOT
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee $O/gpu.txt
TOK=$(bash $P/llamacpp/llamacpp.sh tok)
(python3 shared/gen_random_hf.py llama-3.2-1b /tmp/l1b --tokenizer-dir $TOK > /dev/null && python3 shared/hf_reference.py /tmp/l1b /tmp/l1b.hf.json > /dev/null && touch /tmp/l1b.ref.ready) &
for t in tests/encore-cuda.ops tests/encore-engine.cuda_decode tests/encore-engine.consistency tests/encore-cuda.graph tests/encore-cuda.lib; do
  n=$(basename $t)
  if [[ $n == encore-engine.cuda_decode ]]; then
    for _ in $(seq 60); do [[ -f /tmp/l1b.ref.ready ]] && break; sleep 2; done
    export ENCORE_RANDOM_LLAMA_1B=/tmp/l1b ENCORE_HF_REFERENCE=/tmp/l1b.hf.json
  fi
  timeout 120 $t --test-threads=1 --skip smollm2 > $O/test.$n.log 2>&1
  R+=("$n rc=$? $(grep -E '^test result' $O/test.$n.log | tail -1 | cut -c1-60)")
  grep -E '^test .* FAILED$|panicked' $O/test.$n.log | head -5
  el "$n"
done
SAN=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
timeout 120 $SAN --tool memcheck --report-api-errors no --error-exitcode 1 tests/encore-cuda.ops --test-threads=1 projection > $O/memcheck.gemv.log 2>&1
R+=("memcheck.gemv rc=$? $(grep -E '^test result|ERROR SUMMARY' $O/memcheck.gemv.log | tail -2 | tr '\n' ' ' | cut -c1-90)")
el memcheck
B() { local name=$1 t=$2 bin=$3; shift 3; timeout $t $bin bench "$@" --json $O/bench-$name.json > $O/bench-$name.txt 2>&1; R+=("bench-$name rc=$?"); }
for v in new old newpdl oldpdl new2 newpdl2; do
  bin=./encore; [[ $v == old* ]] && bin=./encore-old
  f=(); [[ $v == *pdl* ]] && f=(--pdl)
  B 1b-$v 60 $bin --preset llama-3.2-1b --batch 1,8 --modes graph-inline --steps 100 "${f[@]}"
  B 8b-$v 60 $bin --preset llama-3.1-8b --batch 1,8 --modes graph-inline --steps 40 "${f[@]}"
done
el benches
for v in new old newpdl oldpdl; do
  bin=./encore; [[ $v == old* ]] && bin=./encore-old
  f=(); [[ $v == *pdl* ]] && f=(--pdl)
  B small-$v 60 $bin --preset smollm2-135m,qwen2.5-0.5b,qwen3-0.6b,gemma3-270m --batch 1 --modes graph-inline --steps 100 "${f[@]}"
  B qwen7b-$v 60 $bin --preset qwen2.5-7b --batch 1 --modes graph-inline --steps 30 "${f[@]}"
done
el small
printf '%s\n' "${R[@]}"
for f in $O/bench-*.txt; do echo "== $(basename $f)"; grep -E ' graph-inline ' $f | cut -c1-75; done
