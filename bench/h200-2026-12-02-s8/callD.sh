#!/usr/bin/env bash
# Session 8, call D: the final code (24226b9 + its two test fixes) with llama.cpp (built here)
# and PyTorch beside it in one call: the GPU tests that call C failed (fixed), random
# Llama-3.2-1B and Llama-3.1-8B HF folders -> bf16 GGUF; llama-bench decode at depth 300;
# encore bench at ctx 1024 / pos 300 (fcc23df as encore-fcc beside) and on the 1B GGUF.
set -uo pipefail
cd "$(dirname "$0")"
P=$PWD; O=/tmp/res-D; rm -rf $O; mkdir -p $O; T0=$SECONDS; R=()
snap() { tar czf $OUT/results.tgz -C $O . 2>/dev/null; }
el() { echo "[$((SECONDS - T0))s] $*"; snap; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee $O/gpu.txt
L=$P/llamacpp/llamacpp.sh
bash $L build-bg llama-bench > /dev/null 2>&1
TOK=$(bash $L tok)
cat > /tmp/prep.sh <<PREP
set -x
mkdir -p /tmp/qb
python3 $P/shared/gen_random_hf.py llama-3.2-1b /tmp/l1b --tokenizer-dir $TOK
PYTHONPATH=/tmp/llamacpp/gguf-py python3 /tmp/llamacpp/convert_hf_to_gguf.py /tmp/l1b --outtype bf16 --outfile /tmp/qb/llama-3.2-1b.bf16.gguf && touch /tmp/qb/1b.ready
python3 $P/shared/gen_random_hf.py llama-3.1-8b /tmp/qb/llama-3.1-8b --tokenizer-dir $TOK
PYTHONPATH=/tmp/llamacpp/gguf-py python3 /tmp/llamacpp/convert_hf_to_gguf.py /tmp/qb/llama-3.1-8b --outtype bf16 --outfile /tmp/qb/llama-3.1-8b.bf16.gguf && rm -rf /tmp/qb/llama-3.1-8b
touch /tmp/prep.done
PREP
(setsid nohup bash /tmp/prep.sh > /tmp/prep.log 2>&1 < /dev/null &)
: "${ENCORE_REPO_ROOT:?set by the command}"; export ENCORE_REPO_ROOT
(python3 shared/gen_random_hf.py llama-3.2-1b /tmp/l1b2 --tokenizer-dir $TOK > /dev/null && python3 shared/hf_reference.py /tmp/l1b2 /tmp/l1b2.hf.json > /dev/null && touch /tmp/l1b2.ref.ready) &
for t in tests/encore-cuda.ops tests/encore-engine.cuda_decode; do
  n=$(basename $t)
  if [[ $n == encore-engine.cuda_decode ]]; then
    for _ in $(seq 60); do [[ -f /tmp/l1b2.ref.ready ]] && break; sleep 2; done
    export ENCORE_RANDOM_LLAMA_1B=/tmp/l1b2 ENCORE_HF_REFERENCE=/tmp/l1b2.hf.json
  fi
  timeout 150 $t --test-threads=1 --skip smollm2 > $O/test.$n.log 2>&1
  R+=("$n rc=$? $(grep -E '^test result' $O/test.$n.log | tail -1 | cut -c1-60)")
  grep -E '^test .* FAILED$|panicked' $O/test.$n.log | head -5
  el "$n"
done
A() { local name=$1; shift; timeout 90 python3 shared/torch_decode.py "$@" --json $O/anchor-$name.json > $O/anchor-$name.txt 2>&1; R+=("anchor-$name rc=$?"); }
A 1b-b1 --preset llama-3.2-1b --batch 1
A 8b-b1 --preset llama-3.1-8b --batch 1
el anchor
bash $L wait > $O/llamacpp-build.txt 2>&1; R+=("llama.cpp build: $(cat $O/llamacpp-build.txt)")
el build
for _ in $(seq 150); do [[ -f /tmp/prep.done ]] && break; [[ $((SECONDS - T0)) -gt 420 ]] && break; sleep 2; done
cp /tmp/prep.log $O/prep.log 2>/dev/null
el prep
B() { local name=$1 t=$2; shift 2; timeout $t ${BIN:-./encore} bench "$@" --json $O/bench-$name.json > $O/bench-$name.txt 2>&1; R+=("bench-$name rc=$?"); }
B 1b 40 --preset llama-3.2-1b --batch 1,8,64 --modes graph-inline --steps 100
B 8b 40 --preset llama-3.1-8b --batch 1,8 --modes graph-inline --steps 40
BIN=./encore-fcc B 1b-fcc 40 --preset llama-3.2-1b --batch 1,8,64 --modes graph-inline --steps 100
BIN=./encore-fcc B 8b-fcc 40 --preset llama-3.1-8b --batch 1,8 --modes graph-inline --steps 40
B small 60 --preset smollm2-135m,qwen2.5-0.5b,qwen3-0.6b,gemma3-270m,qwen2.5-7b --batch 1,8 --modes graph-inline --steps 60
[[ -f /tmp/qb/1b.ready ]] && B 1b-gguf 60 --model /tmp/qb/llama-3.2-1b.bf16.gguf --batch 1 --modes graph-inline --steps 100
el encore
timeout 60 bash $L bench /tmp/qb/llama-3.2-1b.bf16.gguf -p 0 -n 128 -d 300 -r 5 > $O/llama-bench-1b-bf16.txt 2>&1; R+=("llama-bench-1b rc=$?")
[[ -f /tmp/qb/llama-3.1-8b.bf16.gguf ]] && { timeout 90 bash $L bench /tmp/qb/llama-3.1-8b.bf16.gguf -p 0 -n 128 -d 300 -r 3 > $O/llama-bench-8b-bf16.txt 2>&1; R+=("llama-bench-8b rc=$?"); }
el llama-bench
B 1b-after 40 --preset llama-3.2-1b --batch 1 --modes graph-inline --steps 100
B 8b-after 40 --preset llama-3.1-8b --batch 1 --modes graph-inline --steps 40
el done
printf '%s\n' "${R[@]}"
for f in $O/bench-*.txt; do echo "== $(basename $f .txt) $(grep -E ' graph-inline ' $f | awk '{printf "%s/%s ", $3, $7}')"; done
grep -h graph_ms $O/anchor-*.txt | cut -c1-300
grep -hE '^\|' $O/llama-bench-*.txt | cut -c1-160
