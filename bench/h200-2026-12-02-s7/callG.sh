#!/usr/bin/env bash
# Session 7, call G: call F's norm_rope_kv_write (every load of a head before the sum) with
# the sums of squares as explicit fmaf here and in rms_norm.cu, beside call C's binary (encore-c): the GPU
# tests, memcheck of the rope / decode-attention tests, Qwen3-0.6B and Gemma-3-270M steps.
set -uo pipefail
cd "$(dirname "$0")"
P=$PWD; O=/tmp/res-G; rm -rf $O; mkdir -p $O; T0=$SECONDS; R=()
snap() { tar czf $OUT/results.tgz -C $O . 2>/dev/null; }
el() { echo "[$((SECONDS - T0))s] $*"; snap; }
: "${ENCORE_REPO_ROOT:?set by the command}"; export ENCORE_REPO_ROOT
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
timeout 90 $SAN --tool memcheck --report-api-errors no --error-exitcode 1 tests/encore-cuda.ops --test-threads=1 decode_attention > $O/memcheck.attn.log 2>&1
R+=("memcheck.attn rc=$? $(grep -E '^test result|ERROR SUMMARY' $O/memcheck.attn.log | tail -2 | tr '\n' ' ' | cut -c1-90)")
el memcheck
B() { local name=$1 t=$2 bin=$3; shift 3; timeout $t $bin bench "$@" --json $O/bench-$name.json > $O/bench-$name.txt 2>&1; R+=("bench-$name rc=$?"); }
for v in new c new2 c2; do
  bin=./encore; [[ $v == c* ]] && bin=./encore-c
  B qk-$v 60 $bin --preset qwen3-0.6b,gemma3-270m --batch 1,8 --modes graph-inline --steps 100
done
el benches
printf '%s\n' "${R[@]}"
for f in $O/bench-*.txt; do echo "== $(basename $f .txt) $(grep -E ' graph-inline ' $f | awk '{printf "%s/%s ", $3, $7}')"; done
