#!/usr/bin/env bash
# Session 8, call C: the one-wave gemv (this tree: call A's tail fix, the plain bf16 / f16 m1
# gemv at 32 registers, ksplit from the kernel's occupancy so a grid stays in one wave)
# beside fcc23df (encore-fcc) and an experiment (encore-rq: also gemv_rms m1 capped at 40
# registers, 48 warps an SM: Llama-3.1-8B's 6144-warp qkv in one wave). GPU tests,
# memcheck of the gemv tests, the decode step of every preset, ctx 8192, ncu of 1B / 8B b1.
set -uo pipefail
cd "$(dirname "$0")"
P=$PWD; O=/tmp/res-C; rm -rf $O; mkdir -p $O; T0=$SECONDS; R=()
snap() { tar czf $OUT/results.tgz -C $O . 2>/dev/null; }
el() { echo "[$((SECONDS - T0))s] $*"; snap; }
: "${ENCORE_REPO_ROOT:?set by the command}"; export ENCORE_REPO_ROOT
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee $O/gpu.txt
TOK=$(bash $P/llamacpp/llamacpp.sh tok)
(python3 shared/gen_random_hf.py llama-3.2-1b /tmp/l1b --tokenizer-dir $TOK > /dev/null && python3 shared/hf_reference.py /tmp/l1b /tmp/l1b.hf.json > /dev/null && touch /tmp/l1b.ref.ready) &
for t in tests/encore-cuda.ops tests/encore-engine.cuda_decode tests/encore-engine.consistency tests/encore-cuda.graph; do
  n=$(basename $t)
  if [[ $n == encore-engine.cuda_decode ]]; then
    for _ in $(seq 60); do [[ -f /tmp/l1b.ref.ready ]] && break; sleep 2; done
    export ENCORE_RANDOM_LLAMA_1B=/tmp/l1b ENCORE_HF_REFERENCE=/tmp/l1b.hf.json
  fi
  timeout 150 $t --test-threads=1 --skip smollm2 > $O/test.$n.log 2>&1
  R+=("$n rc=$? $(grep -E '^test result' $O/test.$n.log | tail -1 | cut -c1-60)")
  grep -E '^test .* FAILED$|panicked' $O/test.$n.log | head -5
  el "$n"
done
SAN=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
timeout 120 $SAN --tool memcheck --report-api-errors no --error-exitcode 1 tests/encore-cuda.ops --test-threads=1 decode_shaped_matmul fused_norm > $O/memcheck.gemv.log 2>&1
R+=("memcheck.gemv rc=$? $(grep -E '^test result|ERROR SUMMARY' $O/memcheck.gemv.log | tail -2 | tr '\n' ' ' | cut -c1-90)")
el memcheck
B() { local name=$1 t=$2; shift 2; timeout $t "$@" --json $O/bench-$name.json > $O/bench-$name.txt 2>&1; R+=("bench-$name rc=$?"); }
for v in new fcc rq new2 fcc2; do
  bin=./encore; [[ $v == fcc* ]] && bin=./encore-fcc; [[ $v == rq ]] && bin=./encore-rq
  B 1b-$v 60 $bin bench --preset llama-3.2-1b --batch 1,8,64 --modes graph-inline --steps 100
  B 8b-$v 60 $bin bench --preset llama-3.1-8b,qwen2.5-7b --batch 1,8 --modes graph-inline --steps 40
  B small-$v 60 $bin bench --preset smollm2-135m,qwen2.5-0.5b,qwen3-0.6b,gemma3-270m --batch 1,8 --modes graph-inline --steps 100
  el "bench $v"
done
for v in new fcc; do
  bin=./encore; [[ $v == fcc ]] && bin=./encore-fcc
  B 8k-$v 90 $bin bench --preset llama-3.2-1b,llama-3.1-8b --batch 1,8 --ctx 8192 --pos 8000 --modes graph-inline --steps 30
done
el long
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
prof() { local name=$1 preset=$2 skip=$3 count=$4; local rep=$O/ncu-$name
  timeout 150 "$NCU" --clock-control none --graph-profiling node \
    --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum --launch-skip $skip --launch-count $count -f -o $rep \
    ./encore bench --preset $preset --batch 1 --modes graph-inline --steps 60 --prefill 16 > $O/ncu-bench-$name.txt 2>&1
  R+=("ncu-$name rc=$?")
  "$NCU" --import $rep.ncu-rep --csv --page raw --print-units base > $rep.csv 2>$O/import-$name.err
  python3 shared/ncu_step_table.py $rep.csv --copy-gbps 4247 --label "$preset batch 1 (graph-inline, ctx 1024, pos 300)" --json $rep.json > $rep.md 2>&1
  rm -f $rep.ncu-rep $rep.csv; el "ncu $name"; }
prof 1b-b1 llama-3.2-1b 1500 340
[[ $((SECONDS - T0)) -lt 430 ]] && prof 8b-b1 llama-3.1-8b 3000 660
printf '%s\n' "${R[@]}"
for f in $O/bench-*.txt; do echo "== $(basename $f .txt) $(grep -E ' graph-inline ' $f | awk '{printf "%s/%s ", $3, $7}')"; done
for f in $O/ncu-*.md; do echo "== $f"; sed -n 2,12p $f; done
