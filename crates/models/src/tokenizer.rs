//! Text <-> token ids. A Hugging Face `tokenizer.json` (plus `tokenizer_config.json` for the
//! BOS/EOS strings and `add_bos_token`) goes straight to the `tokenizers` crate; a GGUF
//! `gpt2` vocabulary + merges is turned into the same kind of `tokenizer.json` (byte-level
//! BPE, as HF's GPT-2-style tokenizers) the way `tools/gguf2hf.py` does; a GGUF `llama`
//! (SentencePiece) vocabulary is built in `sentencepiece.rs`.
//! [`StreamDecoder`] turns generated ids into text without ever splitting a UTF-8 character.

use crate::error::{catch_panic, escaped, ModelError, Result};
use crate::gguf::{GgufFile, GgufValue};
use crate::sentencepiece::{sentencepiece_tokenizer_json, SpFlavor};
use crate::weights::read_text;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::str::FromStr;

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    source: PathBuf,
    bos: Option<(u32, String)>,
    eos: Option<(u32, String)>,
    /// Prepend BOS when encoding with special tokens, if the tokenizer itself did not.
    add_bos: bool,
}

/// `tokenizer_config.json` token fields are a string or `{"content": ...}`.
fn token_string(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(m) => m.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

impl Tokenizer {
    /// A `tokenizer.json`, with the `tokenizer_config.json` beside it if there is one.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bad = |msg: String| ModelError::Tokenizer { path: path.to_path_buf(), msg };
        let text = read_text(path)?;
        let inner = parse_tokenizer_json(&text).map_err(bad)?;
        let config_path = path.with_file_name("tokenizer_config.json");
        let config: Value = if config_path.is_file() {
            let text = read_text(&config_path)?;
            serde_json::from_str(&text).map_err(|e| ModelError::json(&config_path, e))?
        } else {
            Value::Null
        };
        let mut t = Tokenizer { inner, source: path.to_path_buf(), bos: None, eos: None, add_bos: false };
        t.bos = token_string(config.get("bos_token")).and_then(|s| t.with_id(s));
        t.eos = token_string(config.get("eos_token")).and_then(|s| t.with_id(s));
        t.add_bos = config.get("add_bos_token").and_then(Value::as_bool).unwrap_or(false);
        Ok(t)
    }

    /// A `tokenizer.json` text with no `tokenizer_config.json` (no BOS/EOS strings, no
    /// `add_bos_token`); `source` names it in errors.
    pub fn from_json_str(json: &str, source: &Path) -> Result<Self> {
        let inner =
            parse_tokenizer_json(json).map_err(|msg| ModelError::Tokenizer { path: source.to_path_buf(), msg })?;
        Ok(Tokenizer { inner, source: source.to_path_buf(), bos: None, eos: None, add_bos: false })
    }

    /// The tokenizer stored in a GGUF file's `tokenizer.ggml.*` keys: `gpt2` (byte-level BPE)
    /// or `llama` (SentencePiece with byte fallback, `sentencepiece.rs`).
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let path = file.path().to_path_buf();
        let bad = |msg: String| ModelError::Tokenizer { path: path.clone(), msg };
        let strings = |key: &str| -> Result<Vec<&str>> {
            let arr = file.get(key).and_then(GgufValue::as_array).ok_or_else(|| bad(format!("no `{key}` array")))?;
            arr.iter().map(|v| v.as_str().ok_or_else(|| bad(format!("`{key}` holds a non-string")))).collect()
        };
        let model = match file.str("tokenizer.ggml.model") {
            Some(m @ ("gpt2" | "llama")) => m,
            Some(other) => {
                return Err(bad(format!(
                    "tokenizer.ggml.model `{}` is not supported (gpt2 BPE or llama SentencePiece)",
                    escaped(other)
                )))
            }
            None => return Err(bad("no tokenizer.ggml.model".to_string())),
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let types: Vec<i64> = match file.get("tokenizer.ggml.token_type").and_then(GgufValue::as_array) {
            Some(a) if a.len() != tokens.len() => {
                return Err(bad(format!(
                    "tokenizer.ggml.token_type has {} entries for {} tokens",
                    a.len(),
                    tokens.len()
                )))
            }
            Some(a) => a.iter().map(|v| v.as_i64().unwrap_or(1)).collect(),
            None => vec![1; tokens.len()],
        };
        let id = |key: &str| file.get(key).and_then(GgufValue::as_u64).and_then(|v| u32::try_from(v).ok());
        let json = if model == "gpt2" {
            let merges = strings("tokenizer.ggml.merges")?;
            gpt2_tokenizer_json(&tokens, &types, &merges, file.str("tokenizer.ggml.pre"))
                .map_err(|m| bad(format!("tokenizer.ggml.merges: {m}")))?
        } else {
            let scores: Vec<f32> = match file.get("tokenizer.ggml.scores").and_then(GgufValue::as_array) {
                Some(a) if a.len() == tokens.len() => a.iter().map(|v| v.as_f64().unwrap_or(0.0) as f32).collect(),
                Some(a) => {
                    return Err(bad(format!(
                        "tokenizer.ggml.scores has {} entries for {} tokens",
                        a.len(),
                        tokens.len()
                    )))
                }
                None => return Err(bad("no `tokenizer.ggml.scores` array (needed by a llama vocabulary)".to_string())),
            };
            let special: Vec<u32> = ["bos", "eos", "unknown", "padding"]
                .iter()
                .filter_map(|k| id(&format!("tokenizer.ggml.{k}_token_id")))
                .collect();
            let flavor = SpFlavor::for_arch(file.str("general.architecture").unwrap_or(""));
            let unk = id("tokenizer.ggml.unknown_token_id");
            sentencepiece_tokenizer_json(&tokens, &scores, &types, &special, unk, flavor)
        };
        let inner = parse_tokenizer_json(&json.to_string()).map_err(bad)?;
        let with_text = |id: Option<u32>| id.and_then(|i| tokens.get(i as usize).map(|s| (i, s.to_string())));
        // llama.cpp (and transformers) add BOS to a SentencePiece vocabulary that does not say
        let add_bos_default = model == "llama";
        Ok(Tokenizer {
            inner,
            source: path.clone(),
            bos: with_text(id("tokenizer.ggml.bos_token_id")),
            eos: with_text(id("tokenizer.ggml.eos_token_id")),
            add_bos: file.get("tokenizer.ggml.add_bos_token").and_then(GgufValue::as_bool).unwrap_or(add_bos_default),
        })
    }

    fn with_id(&self, token: String) -> Option<(u32, String)> {
        self.inner.token_to_id(&token).map(|id| (id, token))
    }

    fn err(&self, e: impl std::fmt::Display) -> ModelError {
        ModelError::Tokenizer { path: self.source.clone(), msg: e.to_string() }
    }

    /// Token ids of `text`. With `add_special_tokens`, the tokenizer's own post-processor runs
    /// and BOS is prepended when `add_bos_token` asks for it and it is not there yet. A
    /// rendered chat template already carries its special tokens: encode it without.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = catch_panic(|| self.inner.encode(text, add_special_tokens))
            .map_err(|p| self.err(format!("encoding failed inside the tokenizers crate: {p}")))?
            .map_err(|e| self.err(e))?;
        let mut ids = enc.get_ids().to_vec();
        if let (true, true, Some((bos, _))) = (add_special_tokens, self.add_bos, &self.bos) {
            if ids.first() != Some(bos) {
                ids.insert(0, *bos);
            }
        }
        Ok(ids)
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        catch_panic(|| self.inner.decode(ids, skip_special_tokens))
            .map_err(|p| self.err(format!("decoding failed inside the tokenizers crate: {p}")))?
            .map_err(|e| self.err(e))
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// `(id, text)` of the BOS token the tokenizer config names, if any.
    pub fn bos(&self) -> Option<(u32, &str)> {
        self.bos.as_ref().map(|(i, s)| (*i, s.as_str()))
    }

    pub fn eos(&self) -> Option<(u32, &str)> {
        self.eos.as_ref().map(|(i, s)| (*i, s.as_str()))
    }

    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }

    pub fn source(&self) -> &Path {
        &self.source
    }

    pub fn stream_decoder(&self, skip_special_tokens: bool) -> StreamDecoder<'_> {
        StreamDecoder { tokenizer: self, ids: Vec::new(), prefix: 0, read: 0, skip_special_tokens }
    }
}

/// A `tokenizer.json` text into a `tokenizers::Tokenizer`. The JSON is checked first (the
/// `tokenizers` crate panics on some syntax errors inside `"decoder"`), and a panic that
/// still happens inside the crate becomes an error. Messages are one line.
fn parse_tokenizer_json(text: &str) -> std::result::Result<tokenizers::Tokenizer, String> {
    if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(text) {
        return Err(format!("invalid JSON: {e}"));
    }
    match catch_panic(|| tokenizers::Tokenizer::from_str(text)) {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err(e.to_string().replace('\n', " ")),
        Err(p) => Err(format!("the tokenizers crate could not read it: {p}")),
    }
}

/// The `tokenizer.json` of a GGUF `gpt2` vocabulary, as `gguf2hf.py` writes it: byte-level
/// BPE; SmolLM-style `pre` types split digits one by one first; CONTROL (3) and
/// USER_DEFINED (4) tokens are special added tokens.
pub fn gpt2_tokenizer_json(
    tokens: &[&str],
    types: &[i64],
    merges: &[&str],
    pre: Option<&str>,
) -> Result<Value, String> {
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let digits_first = matches!(pre, Some("smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone"));
    let pre_tokenizer = if digits_first {
        json!({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level]})
    } else {
        byte_level
    };
    let added: Vec<Value> = types
        .iter()
        .enumerate()
        .filter(|(_, &t)| t == 3 || t == 4)
        .filter_map(|(i, _)| tokens.get(i).map(|s| (i, s)))
        .map(|(i, s)| {
            json!({"id": i, "content": s, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": true})
        })
        .collect();
    let vocab: serde_json::Map<String, Value> =
        tokens.iter().enumerate().map(|(i, t)| (t.to_string(), json!(i))).collect();
    let merges: Vec<Value> = merges
        .iter()
        .enumerate()
        .map(|(i, m)| {
            m.split_once(' ').map(|(a, b)| json!([a, b])).ok_or(format!("merge {i} `{}` has no space", escaped(m)))
        })
        .collect::<Result<_, _>>()?;
    Ok(json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": pre_tokenizer,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": false, "vocab": vocab, "merges": merges}
    }))
}

/// Incremental detokenisation: feed ids one at a time, get back the text they completed.
/// Text is decoded over a short window (`ids[prefix..]`) and only released once it no longer
/// ends in U+FFFD, i.e. once every byte of its last character has arrived; decoding the window
/// with one token of left context keeps tokenizers that strip a leading space correct.
pub struct StreamDecoder<'a> {
    tokenizer: &'a Tokenizer,
    ids: Vec<u32>,
    /// Start of the decode window.
    prefix: usize,
    /// End of the text already returned.
    read: usize,
    skip_special_tokens: bool,
}

impl StreamDecoder<'_> {
    /// Adds `id`; returns the newly completed text (empty while a character is incomplete).
    pub fn step(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let done = self.tokenizer.decode(&self.ids[self.prefix..self.read], self.skip_special_tokens)?;
        let all = self.tokenizer.decode(&self.ids[self.prefix..], self.skip_special_tokens)?;
        if all.len() > done.len() && !all.ends_with('\u{FFFD}') {
            let new = match all.strip_prefix(done.as_str()) {
                Some(rest) => rest.to_string(),
                None => all.get(done.len()..).unwrap_or_default().to_string(),
            };
            self.prefix = self.read;
            self.read = self.ids.len();
            Ok(new)
        } else {
            Ok(String::new())
        }
    }

    /// Whatever is left at the end of generation (an incomplete character shows as U+FFFD).
    pub fn flush(&mut self) -> Result<String> {
        let done = self.tokenizer.decode(&self.ids[self.prefix..self.read], self.skip_special_tokens)?;
        let all = self.tokenizer.decode(&self.ids[self.prefix..], self.skip_special_tokens)?;
        self.prefix = self.ids.len();
        self.read = self.ids.len();
        Ok(all.get(done.len()..).unwrap_or_default().to_string())
    }

    /// Every id fed so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }
}
