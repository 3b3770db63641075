#!/usr/bin/env bash
# Session 5, call A: background prep for call B (llama.cpp build, random HF 1B + 8B, GGUFs),
# every GPU test executable, memcheck of the kernel tests, the kernel sweeps, and the decode
# benchmarks of 1B and 8B with and without --pdl beside the PyTorch anchor.
set -uo pipefail
cd "$(dirname "$0")"
P=$PWD; O=/tmp/res-A; rm -rf $O; mkdir -p $O; T0=$SECONDS; R=()
snap() { tar czf $OUT/results.tgz -C $O . 2>/dev/null; }
el() { echo "[$((SECONDS - T0))s] $*"; snap; }
: "${ENCORE_REPO_ROOT:?set by the command}"; export ENCORE_REPO_ROOT
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader | tee $O/gpu.txt
L=$P/llamacpp/llamacpp.sh
bash $L build-bg llama-bench llama-quantize > /dev/null 2>&1
TOK=$(bash $L tok)
cat > /tmp/prep.sh <<PREP
set -x
mkdir -p /tmp/qb
python3 $P/shared/gen_random_hf.py llama-3.2-1b /tmp/l1b --tokenizer-dir $TOK && touch /tmp/l1b.ready
python3 $P/shared/hf_reference.py /tmp/l1b /tmp/l1b.hf.json && touch /tmp/l1b.ref.ready
PYTHONPATH=/tmp/llamacpp/gguf-py python3 /tmp/llamacpp/convert_hf_to_gguf.py /tmp/l1b --outtype bf16 --outfile /tmp/qb/llama-3.2-1b.bf16.gguf
python3 $P/shared/gen_random_hf.py llama-3.1-8b /tmp/qb/llama-3.1-8b --tokenizer-dir $TOK
PYTHONPATH=/tmp/llamacpp/gguf-py python3 /tmp/llamacpp/convert_hf_to_gguf.py /tmp/qb/llama-3.1-8b --outtype bf16 --outfile /tmp/qb/llama-3.1-8b.bf16.gguf && rm -rf /tmp/qb/llama-3.1-8b
bash $L wait
for p in llama-3.2-1b llama-3.1-8b; do /tmp/llamacpp/build/bin/llama-quantize /tmp/qb/\$p.bf16.gguf /tmp/qb/\$p.Q4_K_M.gguf Q4_K_M > /dev/null 2>&1; done
touch /tmp/prep.done
PREP
(setsid nohup bash /tmp/prep.sh > /tmp/prep.log 2>&1 < /dev/null &)
# 1. every test executable (the engine's random-1B transformers test waits for its reference)
for t in tests/*; do
  n=$(basename $t)
  if [[ $n == encore-engine.cuda_decode ]]; then
    for _ in $(seq 120); do [[ -f /tmp/l1b.ref.ready ]] && break; sleep 2; done
    export ENCORE_RANDOM_LLAMA_1B=/tmp/l1b ENCORE_HF_REFERENCE=/tmp/l1b.hf.json
  fi
  timeout 240 $t --test-threads=1 --skip smollm2 > $O/test.$n.log 2>&1
  R+=("$n rc=$? $(grep -E '^test result' $O/test.$n.log | tail -1 | cut -c1-60)")
  grep -E '^test .* FAILED$|panicked' $O/test.$n.log | head -5
done
el tests
# 2. memcheck of the kernel tests (the new fused kernels included)
SAN=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
timeout 150 $SAN --tool memcheck --report-api-errors no --error-exitcode 1 tests/encore-cuda.ops --test-threads=1 --skip launch_bench > $O/memcheck.ops.log 2>&1
R+=("memcheck.ops rc=$? $(grep -E '^test result|ERROR SUMMARY' $O/memcheck.ops.log | tail -2 | tr '\n' ' ' | cut -c1-90)")
el memcheck
# 3. the kernel sweeps
for sw in gemv_sweep qgemv_sweep attn_sweep; do
  timeout 60 ./$sw quick > $O/$sw.txt 2>&1; R+=("$sw rc=$?")
done
el sweeps
# 4. decode benches, plain and PDL, beside PyTorch
B() { local name=$1 t=$2; shift 2; timeout $t ./encore bench "$@" --json $O/bench-$name.json > $O/bench-$name.txt 2>&1; R+=("bench-$name rc=$?"); }
B 1b 70 --preset llama-3.2-1b --batch 1,8,64 --modes eager,graph-inline --steps 100
B 1b-pdl 70 --preset llama-3.2-1b --batch 1,8,64 --modes eager,graph-inline --steps 100 --pdl
B 8b 60 --preset llama-3.1-8b --batch 1,8 --modes graph-inline --steps 60
B 8b-pdl 60 --preset llama-3.1-8b --batch 1,8 --modes graph-inline --steps 60 --pdl
el benches
A() { local name=$1; shift; timeout 60 python3 shared/torch_decode.py "$@" --json $O/anchor-$name.json > /dev/null 2>&1; R+=("anchor-$name rc=$?"); }
[[ $((SECONDS - T0)) -lt 480 ]] && A 1b-b1 --preset llama-3.2-1b --batch 1
el anchors
cp /tmp/prep.log $O/ 2>/dev/null; snap
printf '%s\n' "${R[@]}"
for f in $O/bench-*.txt; do echo "== $(basename $f)"; grep -E ' (eager|graph-inline) ' $f | cut -c1-100; done
