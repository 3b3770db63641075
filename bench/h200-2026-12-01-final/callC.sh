#!/usr/bin/env bash
# Call C: encore serving again with a prompt seed per concurrency (no cross-run prefix hits),
# at the default step budget and at 1024.
set -uo pipefail
P=/tmp/p; O=/tmp/res-C; rm -rf $O; mkdir -p $O
snap() { tar czf $OUT/results.tgz -C $O . 2>/dev/null; }
TOK=$(bash $P/llamacpp/llamacpp.sh tok)
python3 $P/shared/gen_random_hf.py llama-3.2-1b /tmp/l1b --tokenizer-dir $TOK > $O/gen.log 2>&1
cd $P
for cfg in "b512:" "b1024:--max-num-batched-tokens 1024 --graph-max-tokens 1024"; do
  name=${cfg%%:*}; args=${cfg#*:}; mkdir -p $O/$name
  conc="1 16 64"; [[ $name == b1024 ]] && conc="64"
  ENCORE=$P/encore MODEL=/tmp/l1b OUT_DIR=$O/$name CONCURRENCY="$conc" PROMPTS_PER_CLIENT=8 SERVE_ARGS="$args" \
    timeout 150 bash .gpu-lead-serving.sh > $O/$name/summary.txt 2>&1
  echo "$name: $(tr '\n' ' ' < $O/$name/summary.txt)"; snap
done
snap
