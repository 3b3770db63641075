#!/usr/bin/env bash
# Session 5, call F: the GPU tests of 57d7cf5 (gemv.cu and gemv_tc.cu share one layout check
# and argument list), release test executables packed by hand (cargo test --no-run).
set -uo pipefail
cd "$(dirname "$0")"; P=$PWD; O=/tmp/res-F; rm -rf $O; mkdir -p $O; R=()
: "${ENCORE_REPO_ROOT:?}"; export ENCORE_REPO_ROOT
TOK=$(bash $P/llamacpp/llamacpp.sh tok)
(python3 shared/gen_random_hf.py llama-3.2-1b /tmp/l1b --tokenizer-dir $TOK > /dev/null && python3 shared/hf_reference.py /tmp/l1b /tmp/l1b.hf.json > /dev/null && touch /tmp/l1b.ref.ready) &
for t in tests/encore-cuda.ops tests/encore-cuda.lib tests/encore-cuda.graph tests/encore-engine.consistency tests/encore-engine.cuda_decode; do
  n=$(basename $t)
  if [[ $n == encore-engine.cuda_decode ]]; then
    for _ in $(seq 60); do [[ -f /tmp/l1b.ref.ready ]] && break; sleep 2; done
    export ENCORE_RANDOM_LLAMA_1B=/tmp/l1b ENCORE_HF_REFERENCE=/tmp/l1b.hf.json
  fi
  timeout 100 $t --test-threads=1 --skip smollm2 > $O/test.$n.log 2>&1
  R+=("$n rc=$? $(grep -E '^test result' $O/test.$n.log | tail -1 | cut -c1-70)")
  grep -E '^test .* FAILED$|panicked' $O/test.$n.log | head -5
done
for f in $O/test.*.log; do grep -E "^test result|FAILED|panicked" $f > $OUT/$(basename $f .log).result.txt; done
printf '%s\n' "${R[@]}"
