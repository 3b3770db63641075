//! `validate_weights`: the weights are checked against the config before anything is loaded
//! (every tensor the decoder loads, in its shape; an untied config has its `lm_head`), and
//! what the decoder would ignore is reported as a warning.

mod common;

use common::{safetensors_bytes, write};
use encore_models::config::ModelConfig;
use encore_models::golden::golden_dir;
use encore_models::safetensors::SafetensorsWeights;
use encore_models::weights::{validate_weights, WeightSource};
use encore_tensor::DType;

/// The tiny Llama checkpoint rewritten without the tensors `drop` names.
fn tiny_llama_without(drop: &[&str]) -> (tempfile::TempDir, ModelConfig, SafetensorsWeights) {
    let src = golden_dir().join("tiny-llama3");
    let cfg = ModelConfig::from_file(&src.join("config.json")).unwrap();
    let w = SafetensorsWeights::open_dir(&src).unwrap();
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = w
        .names()
        .into_iter()
        .filter(|n| !drop.contains(&n.as_str()))
        .map(|n| {
            let t = w.get(&n, DType::F32).unwrap();
            (n, t.dims.clone(), t.data)
        })
        .collect();
    let entries: Vec<_> = tensors.iter().map(|(n, d, b)| (n.as_str(), "F32", d.clone(), b.clone())).collect();
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("model.safetensors"), &safetensors_bytes(&entries));
    let w = SafetensorsWeights::open_dir(dir.path()).unwrap();
    (dir, cfg, w)
}

#[test]
fn the_committed_tiny_models_validate_without_warnings() {
    for name in ["tiny-llama3", "tiny-qwen2", "tiny-mistral", "tiny-qwen3", "tiny-gemma3"] {
        let dir = golden_dir().join(name);
        let cfg = ModelConfig::from_file(&dir.join("config.json")).unwrap();
        let w = SafetensorsWeights::open_dir(&dir).unwrap();
        assert_eq!(validate_weights(&cfg, &w).unwrap(), Vec::<String>::new(), "{name}");
    }
}

#[test]
fn untied_config_without_lm_head_is_an_error_not_silently_tied() {
    let (_d, cfg, w) = tiny_llama_without(&["lm_head.weight"]);
    assert!(!cfg.tie_word_embeddings);
    let e = validate_weights(&cfg, &w).unwrap_err().to_string();
    assert!(
        e.contains("model.safetensors") && e.contains("lm_head.weight") && e.contains("tie_word_embeddings"),
        "{e}"
    );
    // tied: fine, and an lm_head next to tied embeddings is a warning (it is ignored)
    let mut tied = cfg.clone();
    tied.tie_word_embeddings = true;
    assert!(validate_weights(&tied, &w).unwrap().is_empty());
    let full = SafetensorsWeights::open_dir(&golden_dir().join("tiny-llama3")).unwrap();
    let warnings = validate_weights(&tied, &full).unwrap();
    assert!(warnings.len() == 1 && warnings[0].contains("`lm_head.weight` is ignored"), "{warnings:?}");
}

#[test]
fn layers_beyond_num_hidden_layers_are_a_warning() {
    let dir = golden_dir().join("tiny-llama3");
    let mut cfg = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    cfg.num_hidden_layers = 1;
    let w = SafetensorsWeights::open_dir(&dir).unwrap();
    let warnings = validate_weights(&cfg, &w).unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("holds layers up to 1 but num_hidden_layers = 1"), "{}", warnings[0]);
}

#[test]
fn a_missing_or_misshapen_layer_tensor_is_an_error_before_anything_is_loaded() {
    let (_d, cfg, w) = tiny_llama_without(&["model.layers.1.mlp.up_proj.weight"]);
    let e = validate_weights(&cfg, &w).unwrap_err().to_string();
    assert!(e.contains("`model.layers.1.mlp.up_proj.weight` not found"), "{e}");
    let mut wide = cfg.clone();
    wide.intermediate_size *= 2;
    let full = SafetensorsWeights::open_dir(&golden_dir().join("tiny-llama3")).unwrap();
    let e = validate_weights(&wide, &full).unwrap_err().to_string();
    assert!(e.contains("model.layers.0.mlp.gate_proj.weight") && e.contains("expected shape [256, 64]"), "{e}");
    // more layers than the file holds
    let mut deep = cfg.clone();
    deep.num_hidden_layers = 3;
    let e = validate_weights(&deep, &full).unwrap_err().to_string();
    assert!(e.contains("model.layers.2."), "{e}");
}
