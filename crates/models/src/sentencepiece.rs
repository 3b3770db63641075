//! A GGUF `llama` (SentencePiece) vocabulary as a `tokenizer.json`, built the way
//! transformers' GGUF loader does (`integrations/gguf/gguf_tokenizer_mapping.py`): a BPE model
//! with byte fallback (`<0xXX>` tokens) whose merges are rebuilt from the vocabulary
//! (`generate_merges`, ranked by the token scores; Gemma: by file order), then the normalizer,
//! pre-tokenizer and decoder of `LlamaTokenizer` or `GemmaTokenizer`. CONTROL tokens (type 3)
//! and the BOS/EOS/UNK/PAD tokens become special added tokens, USER_DEFINED ones (type 4)
//! plain added tokens. Not here: `gpt2` byte-level BPE (`tokenizer.rs`).

use serde_json::{json, Map, Value};
use std::collections::HashMap;

/// Which transformers tokenizer class the vocabulary is given to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpFlavor {
    /// `LlamaTokenizer`: Metaspace pre-tokenizer prepending `▁` to the first word.
    Llama,
    /// `GemmaTokenizer` (GGUF architectures `gemma`, `gemma2`, `gemma3`): spaces become `▁`
    /// in the normalizer, no prefix space; merges ranked by file order.
    Gemma,
}

impl SpFlavor {
    /// The flavour for a GGUF `general.architecture`.
    pub fn for_arch(arch: &str) -> Self {
        match arch {
            "gemma" | "gemma2" | "gemma3" => SpFlavor::Gemma,
            _ => SpFlavor::Llama,
        }
    }
}

/// GGUF `tokenizer.ggml.token_type` values.
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

/// The `tokenizer.json` of a SentencePiece vocabulary. `scores` and `types` are per token
/// (the caller checks their lengths); `special` holds the ids of BOS/EOS/UNK/PAD, `unk` the id
/// of the unknown token (`GemmaTokenizer` names it in the BPE model; absent: none).
pub fn sentencepiece_tokenizer_json(
    tokens: &[&str],
    scores: &[f32],
    types: &[i64],
    special: &[u32],
    unk: Option<u32>,
    flavor: SpFlavor,
) -> Value {
    let tokens: Vec<String> = match flavor {
        // a whitespace-only token is stored as real spaces, GemmaTokenizer looks it up as `▁`s
        SpFlavor::Gemma => tokens
            .iter()
            .map(|t| {
                if t.contains(' ') && t.trim().is_empty() {
                    "\u{2581}".repeat(t.chars().count())
                } else {
                    t.to_string()
                }
            })
            .collect(),
        SpFlavor::Llama => tokens.iter().map(|t| t.to_string()).collect(),
    };
    let rank: Vec<f64> = match flavor {
        SpFlavor::Gemma => (0..tokens.len()).map(|i| -(i as f64)).collect(),
        SpFlavor::Llama => scores.iter().map(|&s| s as f64).collect(),
    };
    let merges: Vec<Value> = generate_merges(&tokens, &rank).into_iter().map(|(l, r)| json!([l, r])).collect();
    let mut vocab = Map::new();
    for (i, t) in tokens.iter().enumerate() {
        vocab.insert(t.clone(), json!(i));
    }
    let added: Vec<Value> = tokens
        .iter()
        .enumerate()
        .filter_map(|(i, t)| {
            let ty = types.get(i).copied().unwrap_or(1);
            let is_special = ty == CONTROL || special.contains(&(i as u32));
            (is_special || ty == USER_DEFINED).then(|| {
                json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                       "normalized": false, "special": is_special})
            })
        })
        .collect();
    let bpe = |unk: Value| {
        json!({"type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
               "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
               "vocab": vocab, "merges": merges})
    };
    let replace = json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "});
    let (normalizer, pre_tokenizer, mut decoders, model) = match flavor {
        SpFlavor::Llama => (
            Value::Null,
            json!({"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "first", "split": false}),
            vec![replace, json!({"type": "ByteFallback"}), json!({"type": "Fuse"})],
            bpe(Value::Null),
        ),
        SpFlavor::Gemma => (
            json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"}),
            json!({"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious", "invert": false}),
            vec![replace, json!({"type": "ByteFallback"}), json!({"type": "Fuse"})],
            bpe(unk.and_then(|i| tokens.get(i as usize)).map_or(Value::Null, |t| json!(t))),
        ),
    };
    if flavor == SpFlavor::Llama {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": normalizer, "pre_tokenizer": pre_tokenizer, "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": decoders}, "model": model,
    })
}

/// transformers' `generate_merges(vocab, vocab_scores)`: every split of every token into two
/// tokens of the vocabulary, highest `rank` first (ties: shorter left piece, then shorter
/// right piece, then vocabulary order). Duplicate tokens keep their first place and their
/// last id and rank, as Python dicts do.
fn generate_merges(tokens: &[String], rank: &[f64]) -> Vec<(String, String)> {
    let mut id: HashMap<&str, usize> = HashMap::with_capacity(tokens.len());
    let mut score: HashMap<&str, f64> = HashMap::with_capacity(tokens.len());
    let mut order: Vec<&str> = Vec::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        if id.insert(t, i).is_none() {
            order.push(t);
        }
        score.insert(t, rank.get(i).copied().unwrap_or(0.0));
    }
    // (left, right, rank, left chars, right chars)
    let mut merges: Vec<(&str, &str, f64, usize, usize)> = Vec::new();
    for t in order {
        let s = score[t];
        let mut local: Vec<(&str, &str, f64, usize, usize)> = t
            .char_indices()
            .skip(1)
            .enumerate()
            .filter_map(|(k, (at, _))| {
                let (l, r) = t.split_at(at);
                (id.contains_key(l) && id.contains_key(r)).then(|| (l, r, s, k + 1, t.chars().count() - k - 1))
            })
            .collect();
        local.sort_by_key(|m| (id[m.0], id[m.1]));
        merges.extend(local);
    }
    // stable and descending, as Python's `sorted(..., reverse=True)`
    merges.sort_by(|a, b| b.2.total_cmp(&a.2).then(b.3.cmp(&a.3)).then(b.4.cmp(&a.4)));
    merges.into_iter().map(|(l, r, ..)| (l.to_string(), r.to_string())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn merges_are_ranked_by_score_then_piece_length() {
        let tokens = strings(&["a", "b", "c", "ab", "bc", "abc"]);
        // abc splits as a+bc and ab+c; ab and bc each once
        let m = generate_merges(&tokens, &[0.0, 0.0, 0.0, -1.0, -2.0, -0.5]);
        let m: Vec<(&str, &str)> = m.iter().map(|(l, r)| (l.as_str(), r.as_str())).collect();
        assert_eq!(m, [("ab", "c"), ("a", "bc"), ("a", "b"), ("b", "c")]);
    }

    #[test]
    fn multibyte_tokens_split_on_characters() {
        let tokens = strings(&["\u{2581}", "é", "\u{2581}é"]);
        let m = generate_merges(&tokens, &[0.0, 0.0, 1.0]);
        assert_eq!(m, [("\u{2581}".to_string(), "é".to_string())]);
    }
}
