#!/usr/bin/env bash
# Session 8, call A: gemv.cu's last step with all its loads issued together (encore, this
# tree), beside main at fcc23df (encore-fcc); two experiments: encore-abl (fcc23df, with
# ENCORE_ABLATE_MERGE=1 the attention_merge launch skipped: wrong output, an upper bound
# on what folding the merge elsewhere can buy) and encore-w (the tail fix + register caps:
# plain m1 gemv 32 registers, the fused m1 ones 40; ENCORE_GEMV_FIT=1: ksplit doubled only
# while the grid stays in one wave of 64 warps an SM). GPU tests of this tree first.
set -uo pipefail
cd "$(dirname "$0")"
P=$PWD; O=/tmp/res-A; rm -rf $O; mkdir -p $O; T0=$SECONDS; R=()
snap() { tar czf $OUT/results.tgz -C $O . 2>/dev/null; }
el() { echo "[$((SECONDS - T0))s] $*"; snap; }
: "${ENCORE_REPO_ROOT:?set by the command}"; export ENCORE_REPO_ROOT
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee $O/gpu.txt
TOK=$(bash $P/llamacpp/llamacpp.sh tok)
(python3 shared/gen_random_hf.py llama-3.2-1b /tmp/l1b --tokenizer-dir $TOK > /dev/null && python3 shared/hf_reference.py /tmp/l1b /tmp/l1b.hf.json > /dev/null && touch /tmp/l1b.ref.ready) &
for t in tests/encore-cuda.ops tests/encore-engine.cuda_decode tests/encore-cuda.graph tests/encore-cuda.lib; do
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
B() { local name=$1 t=$2; shift 2; timeout $t "$@" --json $O/bench-$name.json > $O/bench-$name.txt 2>&1; R+=("bench-$name rc=$?"); }
run() { local v=$1 bin=$2; shift 2
  B 1b-$v 60 env "$@" $bin bench --preset llama-3.2-1b --batch 1,8 --modes graph-inline --steps 100
  B 8b-$v 60 env "$@" $bin bench --preset llama-3.1-8b --batch 1,8 --modes graph-inline --steps 40
  B small-$v 60 env "$@" $bin bench --preset smollm2-135m,qwen2.5-0.5b --batch 1 --modes graph-inline --steps 100
  el "bench $v"; }
for round in 1 2; do
  run fcc$round ./encore-fcc X=1
  run new$round ./encore X=1
  run w$round ./encore-w X=1
  run wfit$round ./encore-w ENCORE_GEMV_FIT=1
  [[ $round == 1 ]] && run abl ./encore-abl ENCORE_ABLATE_MERGE=1
  [[ $((SECONDS - T0)) -gt 420 ]] && break
done
printf '%s\n' "${R[@]}"
for f in $O/bench-*.txt; do echo "== $(basename $f .txt) $(grep -E ' graph-inline ' $f | awk '{printf "%s/%s ", $3, $7}')"; done
