//! Tokenizers: a byte-level BPE built from GGUF-style vocab + merges, BOS handling, streaming
//! detokenisation that never splits a character, and bad tokenizer files.

mod common;

use common::{tiny_llama_gguf, write};
use encore_models::gguf::GgufFile;
use encore_models::tokenizer::{gpt2_tokenizer_json, Tokenizer};

/// GPT-2's `bytes_to_unicode`: printable bytes map to themselves, the rest to U+0100 onwards.
fn byte_chars() -> Vec<String> {
    let printable = |b: u32| (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
    let mut n = 0;
    (0..256u32)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).unwrap().to_string()
            } else {
                n += 1;
                char::from_u32(255 + n).unwrap().to_string()
            }
        })
        .collect()
}

/// Specials 0..2, the 256 byte tokens from 3, then merged tokens.
fn vocab() -> (Vec<String>, Vec<i64>, Vec<&'static str>) {
    let mut tokens: Vec<String> = vec!["<|endoftext|>".into(), "<|im_start|>".into(), "<|im_end|>".into()];
    tokens.extend(byte_chars());
    let merges = vec!["h e", "Ġ t", "Ġt he", "1 2"];
    tokens.extend(["he", "Ġt", "Ġthe", "12"].map(String::from));
    let mut types = vec![3; 3];
    types.resize(tokens.len(), 1);
    (tokens, types, merges)
}

fn tokenizer_dir(config: Option<serde_json::Value>, pre: Option<&str>) -> tempfile::TempDir {
    let (tokens, types, merges) = vocab();
    let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
    let json = gpt2_tokenizer_json(&refs, &types, &merges, pre).unwrap();
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("tokenizer.json"), json.to_string().as_bytes());
    if let Some(c) = config {
        write(&dir.path().join("tokenizer_config.json"), c.to_string().as_bytes());
    }
    dir
}

fn id(t: &Tokenizer, s: &str) -> u32 {
    t.token_to_id(s).unwrap_or_else(|| panic!("no token {s}"))
}

#[test]
fn byte_level_bpe_from_vocab_and_merges() {
    let dir = tokenizer_dir(None, Some("smollm"));
    let t = Tokenizer::from_file(&dir.path().join("tokenizer.json")).unwrap();
    assert_eq!(t.vocab_size(), 3 + 256 + 4);
    let ids = t.encode("the the", false).unwrap();
    assert_eq!(ids, vec![id(&t, "t"), id(&t, "he"), id(&t, "Ġthe")]);
    // smollm pre-tokenizer splits digits one by one, so the "1 2" merge never applies
    let ids = t.encode("12", false).unwrap();
    assert_eq!(ids, vec![id(&t, "1"), id(&t, "2")]);
    let ids = t.encode("<|im_start|>hi<|im_end|>", false).unwrap();
    assert_eq!(ids, vec![1, id(&t, "h"), id(&t, "i"), 2]);
    for text in ["héllo wörld", "日本語 🦀\n\ttabs  ", "the 12 the"] {
        let ids = t.encode(text, false).unwrap();
        assert_eq!(t.decode(&ids, false).unwrap(), text);
    }
    assert_eq!(t.decode(&[1, id(&t, "h"), 2], true).unwrap(), "h", "specials skipped");

    let plain = tokenizer_dir(None, Some("gpt-2"));
    let t = Tokenizer::from_file(&plain.path().join("tokenizer.json")).unwrap();
    assert_eq!(t.encode("12", false).unwrap(), vec![id(&t, "12")], "no digit split without smollm pre");
}

#[test]
fn bos_is_added_once_and_only_when_asked() {
    let cfg = serde_json::json!({"add_bos_token": true, "bos_token": "<|endoftext|>", "eos_token": {"content": "<|im_end|>"}});
    let dir = tokenizer_dir(Some(cfg), None);
    let t = Tokenizer::from_file(&dir.path().join("tokenizer.json")).unwrap();
    assert_eq!(t.bos(), Some((0, "<|endoftext|>")));
    assert_eq!(t.eos(), Some((2, "<|im_end|>")));
    let plain = t.encode("he", false).unwrap();
    assert_eq!(plain, vec![id(&t, "he")]);
    assert_eq!(t.encode("he", true).unwrap(), vec![0, id(&t, "he")]);
    assert_eq!(t.encode("<|endoftext|>he", true).unwrap(), vec![0, id(&t, "he")], "not doubled");

    // a tokenizer whose post-processor already adds BOS (Llama-3 style): not doubled either
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("tokenizer.json")).unwrap()).unwrap();
    json["post_processor"] = serde_json::json!({
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<|endoftext|>": {"id": "<|endoftext|>", "ids": [0], "tokens": ["<|endoftext|>"]}}
    });
    write(&dir.path().join("tokenizer.json"), json.to_string().as_bytes());
    let t = Tokenizer::from_file(&dir.path().join("tokenizer.json")).unwrap();
    assert_eq!(t.encode("he", true).unwrap(), vec![0, id(&t, "he")]);
    assert_eq!(t.encode("he", false).unwrap(), vec![id(&t, "he")]);

    // add_bos_token false (SmolLM2): nothing added even with special tokens
    let dir = tokenizer_dir(Some(serde_json::json!({"add_bos_token": false, "bos_token": "<|im_start|>"})), None);
    let t = Tokenizer::from_file(&dir.path().join("tokenizer.json")).unwrap();
    assert_eq!(t.encode("he", true).unwrap(), vec![id(&t, "he")]);
}

#[test]
fn stream_decoder_never_splits_a_character() {
    let dir = tokenizer_dir(None, None);
    let t = Tokenizer::from_file(&dir.path().join("tokenizer.json")).unwrap();
    let text = "the 日本語 ok 🦀!<|im_end|> é";
    let ids = t.encode(text, false).unwrap();
    assert!(
        ids.len() > text.replace("<|im_end|>", "").chars().count(),
        "multi-byte characters take several byte tokens"
    );
    for skip in [false, true] {
        let mut s = t.stream_decoder(skip);
        let mut pieces = Vec::new();
        for &i in &ids {
            let piece = s.step(i).unwrap();
            assert!(!piece.contains('\u{FFFD}'), "a split character leaked: {piece:?}");
            pieces.push(piece);
        }
        pieces.push(s.flush().unwrap());
        let want = if skip { text.replace("<|im_end|>", "") } else { text.to_string() };
        assert_eq!(pieces.concat(), want);
        // "日" is 3 byte tokens: nothing, nothing, then the character
        let start = pieces.iter().position(|p| p.ends_with(' ')).unwrap() + 1;
        assert_eq!(&pieces[start..start + 3], ["", "", "日"]);
    }
    let mut s = t.stream_decoder(false);
    assert_eq!(s.step(id(&t, &byte_chars()[0xE6])).unwrap(), "");
    assert_eq!(s.flush().unwrap(), "\u{FFFD}", "an incomplete character at the end is flushed as U+FFFD");
    assert_eq!(s.ids().len(), 1);
}

#[test]
fn gguf_tokenizer_keys() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.gguf");
    write(&p, &tiny_llama_gguf().kv_bool("tokenizer.ggml.add_bos_token", true).build());
    let t = Tokenizer::from_gguf(&GgufFile::open(&p).unwrap()).unwrap();
    assert_eq!((t.bos(), t.eos(), t.adds_bos()), (Some((0, "<s>")), Some((1, "</s>")), true));
    assert_eq!(t.encode("ab", true).unwrap(), vec![0, 4], "merge `a b` applied, BOS added");
    assert_eq!(t.encode("<s>ab</s>", false).unwrap(), vec![0, 4, 1]);

    write(&p, &tiny_llama_gguf().kv_str("tokenizer.ggml.model", "llama").build());
    let e = Tokenizer::from_gguf(&GgufFile::open(&p).unwrap()).err().unwrap().to_string();
    assert!(e.contains("t.gguf") && e.contains("llama") && !e.contains('\n'), "{e}");
    write(&p, &tiny_llama_gguf().kv_str_array("tokenizer.ggml.merges", &["ab"]).build());
    let e = Tokenizer::from_gguf(&GgufFile::open(&p).unwrap()).err().unwrap().to_string();
    assert!(e.contains("t.gguf") && e.contains("merge 0"), "{e}");
}

#[test]
fn missing_and_corrupt_tokenizer_files_name_the_file() {
    let dir = tokenizer_dir(None, None);
    let p = dir.path().join("tokenizer.json");
    let e = Tokenizer::from_file(&dir.path().join("nope.json")).err().unwrap().to_string();
    assert!(e.contains("nope.json") && !e.contains('\n'), "{e}");
    let bytes = std::fs::read(&p).unwrap();
    write(&p, &bytes[..bytes.len() / 2]);
    let e = Tokenizer::from_file(&p).err().unwrap().to_string();
    assert!(e.contains("tokenizer.json") && e.contains("tokenizer") && !e.contains('\n'), "{e}");
    write(&p, &bytes);
    write(&dir.path().join("tokenizer_config.json"), b"{\"add_bos_token\": tr");
    let e = Tokenizer::from_file(&p).err().unwrap().to_string();
    assert!(e.contains("tokenizer_config.json"), "{e}");
}

#[test]
fn tokenizer_json_with_a_syntax_error_inside_decoder_is_an_error_not_a_panic() {
    let dir = tokenizer_dir(None, None);
    let p = dir.path().join("tokenizer.json");
    let good = std::fs::read_to_string(&p).unwrap();
    let at = good.find("\"decoder\"").unwrap();
    // inserted where the tokenizers crate's untagged decoder enum panics on the syntax error
    for cut in [30, 50] {
        let mut bad = good.clone();
        bad.insert_str(at + cut, "}{,");
        write(&p, bad.as_bytes());
        let e = Tokenizer::from_file(&p).err().expect("refused").to_string();
        assert!(e.contains("tokenizer.json") && e.contains("invalid JSON") && !e.contains('\n'), "{cut}: {e}");
    }
}

#[test]
fn tokenizer_json_that_is_a_fifo_is_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tokenizer.json");
    if std::process::Command::new("mkfifo").arg(&p).status().map_or(true, |s| !s.success()) {
        eprintln!("no mkfifo here: skipped");
        return;
    }
    let e = Tokenizer::from_file(&p).err().expect("refused").to_string();
    assert!(e.contains("tokenizer.json") && e.contains("not a regular file (a FIFO)"), "{e}");
}

#[test]
fn from_json_str_reads_a_tokenizer_and_names_the_source_in_errors() {
    let (tokens, types, merges) = vocab();
    let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
    let json = gpt2_tokenizer_json(&refs, &types, &merges, None).unwrap().to_string();
    let t = Tokenizer::from_json_str(&json, std::path::Path::new("mem.json")).unwrap();
    assert_eq!(t.encode("the", false).unwrap(), vec![id(&t, "t"), id(&t, "he")]);
    let e = Tokenizer::from_json_str(&json[..json.len() / 2], std::path::Path::new("mem.json")).err().unwrap();
    assert!(e.to_string().starts_with("mem.json: tokenizer: invalid JSON"), "{e}");
}
