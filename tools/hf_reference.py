#!/usr/bin/env python3
"""Greedy reference from Hugging Face transformers for encore's bf16 agreement test.

Loads an HF model folder in bf16 on the GPU, runs greedy decoding from fixed prompt ids and
writes, per step, the chosen token, its log-probability and the top-5 ids. The decoder runs
in bf16; the LM head multiplies the bf16 final hidden state by the bf16 weight in f32 (as
encore does: bf16 logits alone would quantise a logprob by ~0.03), then log-softmax in f32.
Then the same token sequence is run again in f32 (teacher-forced) and each step's f32
logprob of the chosen token is recorded as `logprob_f32`: the exact value both bf16 runs
approximate, from which the test derives its tolerance (encore's bf16 error may not exceed
twice transformers' own, with a 5e-2 floor). The Rust test
`random_llama_3_2_1b_bf16_on_cuda_matches_transformers` (crates/engine/tests/cuda_decode.rs)
reads the JSON. Run on the GPU host:

    python3 hf_reference.py MODEL_DIR OUT.json [--steps 32]
"""
import argparse, json
import torch
from transformers import AutoModelForCausalLM

ap = argparse.ArgumentParser()
ap.add_argument("model"); ap.add_argument("out"); ap.add_argument("--steps", type=int, default=32)
a = ap.parse_args()
model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.bfloat16).cuda().eval()
V = model.config.vocab_size
prompt = [(i * 7919 + 13) % V for i in range(12)]
ids = torch.tensor([prompt], device="cuda")
steps = []
with torch.no_grad():
    past = None
    x = ids
    for _ in range(a.steps):
        out = model.model(input_ids=x, past_key_values=past, use_cache=True)
        past = out.past_key_values
        h = out.last_hidden_state[0, -1].float()  # after the final norm
        lp = torch.log_softmax(h @ model.lm_head.weight.float().t(), -1)
        tok = int(lp.argmax())
        steps.append({"token": tok, "logprob": float(lp[tok]), "top5": [int(t) for t in lp.topk(5).indices]})
        x = torch.tensor([[tok]], device="cuda")
# the exact reference: f32 weights and activations over the same tokens
model = model.float()
with torch.no_grad():
    seq = prompt + [s["token"] for s in steps]
    h = model.model(input_ids=torch.tensor([seq], device="cuda")).last_hidden_state[0]
    lp = torch.log_softmax(h @ model.lm_head.weight.t(), -1)
    for k, s in enumerate(steps):
        s["logprob_f32"] = float(lp[len(prompt) - 1 + k, s["token"]])
json.dump({"generator": "tools/hf_reference.py", "model": a.model, "dtype": "bf16 (f32 LM head)",
           "transformers_device": torch.cuda.get_device_name(0), "prompt_ids": prompt, "steps": steps},
          open(a.out, "w"), indent=1)
print(f"hf_reference: {len(steps)} steps -> {a.out}")
