#!/usr/bin/env bash
# Call A: background prep for call B (llama.cpp build, random HF models, GGUFs), the GPU test
# suites, and a 5-minute soak of encore serve beside them.
set -uo pipefail
cd "$(dirname "$0")"
P=$PWD; O=/tmp/res-$(basename $0 .sh); rm -rf $O; mkdir -p $O; T0=$SECONDS; R=()
snap() { tar czf $OUT/results.tgz -C $O . 2>/dev/null; }
el() { echo "[$((SECONDS - T0))s] $*"; snap; }
: "${ENCORE_REPO_ROOT:?set by the command}"; export ENCORE_REPO_ROOT
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee $O/gpu.txt
L=$P/llamacpp/llamacpp.sh
bash $L build-bg llama-bench llama-quantize llama-server > /dev/null 2>&1
TOK=$(bash $L tok)
# prep chain, in its own session so it outlives this call (call B follows at once)
cat > /tmp/prep.sh <<PREP
set -x
mkdir -p /tmp/qb
python3 $P/shared/gen_random_hf.py llama-3.2-1b /tmp/l1b --tokenizer-dir $TOK && touch /tmp/l1b.ready
python3 $P/shared/hf_reference.py /tmp/l1b /tmp/l1b.hf.json && touch /tmp/l1b.ref.ready
PYTHONPATH=/tmp/llamacpp/gguf-py python3 /tmp/llamacpp/convert_hf_to_gguf.py /tmp/l1b --outtype bf16 --outfile /tmp/qb/llama-3.2-1b.bf16.gguf
python3 $P/shared/gen_random_hf.py llama-3.1-8b /tmp/qb/llama-3.1-8b --tokenizer-dir $TOK
PYTHONPATH=/tmp/llamacpp/gguf-py python3 /tmp/llamacpp/convert_hf_to_gguf.py /tmp/qb/llama-3.1-8b --outtype bf16 --outfile /tmp/qb/llama-3.1-8b.bf16.gguf && rm -rf /tmp/qb/llama-3.1-8b
bash $L wait
for p in llama-3.2-1b llama-3.1-8b; do for t in Q4_K_M Q8_0; do /tmp/llamacpp/build/bin/llama-quantize /tmp/qb/\$p.bf16.gguf /tmp/qb/\$p.\$t.gguf \$t > /dev/null 2>&1; done; done
rm -f /tmp/qb/llama-3.1-8b.bf16.gguf
touch /tmp/prep.done
PREP
(setsid nohup bash /tmp/prep.sh > /tmp/prep.log 2>&1 < /dev/null &)
for _ in $(seq 90); do [[ -f /tmp/l1b.ready ]] && break; sleep 2; done
# soak: 10 minutes, in its own session (it outlives this call; call B collects it), beside
# the tests
mkdir -p /tmp/soak
setsid nohup bash -c "ENCORE=$P/encore MODEL=/tmp/l1b OUT_DIR=/tmp/soak SECONDS_TO_RUN=600 \
  SERVE_ARGS='--gpu-memory-utilization 0.25' bash $P/scripts/gpu/soak.sh > /tmp/soak/summary.txt 2>&1; touch /tmp/soak/done" \
  > /dev/null 2>&1 < /dev/null &
el soak-started
# the test suites (the random-1B transformers test waits for its reference below)
for t in tests/encore-cuda.ops tests/encore-cuda.graph tests/encore-cuda.lib; do
  timeout 200 $t --test-threads=1 > $O/test.$(basename $t).log 2>&1
  R+=("$(basename $t) rc=$? $(grep -E '^test result' $O/test.$(basename $t).log | tail -1 | cut -c1-70)")
done
el tests-cuda
for _ in $(seq 120); do [[ -f /tmp/l1b.ref.ready ]] && break; sleep 2; done
export ENCORE_RANDOM_LLAMA_1B=/tmp/l1b ENCORE_HF_REFERENCE=/tmp/l1b.hf.json
timeout 300 tests/encore-engine.cuda_decode --test-threads=1 --nocapture --skip smollm2 > $O/test.cuda_decode.log 2>&1
R+=("cuda_decode rc=$? $(grep -E '^test result' $O/test.cuda_decode.log | tail -1 | cut -c1-70)")
el tests-engine
# keep the machine busy (held) until the soak is nearly done; call B waits for the rest
while [[ ! -f /tmp/soak/done && $SECONDS -lt 565 ]]; do sleep 5; done
cp /tmp/soak/*.txt /tmp/soak/*.err $O/ 2>/dev/null
el wait-soak
cp /tmp/prep.log $O/ 2>/dev/null
ls /tmp/qb >> $O/prep.log 2>/dev/null
snap
printf '%s\n' "${R[@]}"
echo "prep: $(ls /tmp/qb 2>/dev/null | tr '\n' ' ') done=$([[ -f /tmp/prep.done ]] && echo yes || echo no)"
