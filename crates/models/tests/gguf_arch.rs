//! GGUF architectures beyond `llama`: keys read under `{general.architecture}.`, Qwen2's
//! q/k/v biases and unpermuted Q/K rows, Mistral's window, Llama-3 `rope_freqs.weight`, and
//! one-line errors naming unsupported architectures and tensor types.

mod common;

use common::{f32_bytes, pattern, tiny_llama_model_gguf, write, GgufBuilder};
use encore_models::config::Arch;
use encore_models::gguf::GgufFile;
use encore_models::gguf_config::GgufArch;
use encore_models::hub::open_model;
use encore_models::weights::WeightSource;
use encore_tensor::rope::{try_tables, RopeScaling};
use encore_tensor::DType;
use std::path::PathBuf;

fn save(b: &GgufBuilder) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.gguf");
    write(&p, &b.build());
    (dir, p)
}

fn one_line(e: impl std::fmt::Display) -> String {
    let s = e.to_string();
    assert!(!s.contains('\n'), "multi-line error: {s}");
    s
}

/// [`tiny_llama_model_gguf`] re-labelled as `arch`: every `llama.*` key moved to `{arch}.*`.
fn as_arch(arch: &str, tied: bool) -> GgufBuilder {
    tiny_llama_model_gguf(tied).rename_prefix("llama.", &format!("{arch}.")).kv_str("general.architecture", arch)
}

#[test]
fn qwen2_keys_biases_and_unpermuted_qk() {
    // C=32, H=2, Hkv=1, D=16
    let q_bias = pattern(32, 90);
    let b = as_arch("qwen2", true)
        .tensor("blk.0.attn_q.bias", &[32], 0, f32_bytes(&q_bias))
        .tensor("blk.0.attn_k.bias", &[16], 0, f32_bytes(&pattern(16, 91)))
        .tensor("blk.0.attn_v.bias", &[16], 0, f32_bytes(&pattern(16, 92)));
    let (_d, p) = save(&b);
    let m = open_model(&p).unwrap();
    assert_eq!((m.config.arch, m.config.attention_bias, m.config.hidden_size), (Arch::Qwen2, true, 32));
    assert_eq!((m.config.num_attention_heads, m.config.num_key_value_heads, m.config.head_dim), (2, 1, 16));
    // NeoX-style RoPE: rows are stored in HF order, nothing is un-permuted
    let q = m.weights.get("model.layers.0.self_attn.q_proj.weight", DType::F32).unwrap().to_f32();
    let stored = pattern(32 * 32, 2); // tensor index 2 in tiny_llama_model_gguf
    assert_eq!(q, stored);
    assert_eq!(m.weights.get("model.layers.0.self_attn.q_proj.bias", DType::F32).unwrap().to_f32(), q_bias);

    // the same file as llama: Q rows come back un-permuted, so they differ
    let (_d, p) = save(&tiny_llama_model_gguf(true));
    let m = open_model(&p).unwrap();
    let q = m.weights.get("model.layers.0.self_attn.q_proj.weight", DType::F32).unwrap().to_f32();
    assert_ne!(q, stored);

    let (_d, p) = save(&as_arch("qwen2", true).kv_u32("qwen2.attention.sliding_window", 64));
    let e = one_line(GgufFile::open(&p).unwrap().model_config().unwrap_err());
    assert!(e.contains("qwen2.attention.sliding_window"), "{e}");
}

#[test]
fn mistral_reads_its_window_and_keys_under_its_prefix() {
    let (_d, p) = save(&as_arch("mistral", false).kv_u32("mistral.attention.sliding_window", 48));
    let c = GgufFile::open(&p).unwrap().model_config().unwrap();
    assert_eq!((c.arch, c.sliding_window, c.intermediate_size), (Arch::Mistral, Some(48), 64));
    // a llama key does not count for a mistral file
    let (_d, p) = save(&as_arch("mistral", false).rename_prefix("mistral.block_count", "llama.block_count"));
    let e = one_line(GgufFile::open(&p).unwrap().model_config().unwrap_err());
    assert!(e.contains("mistral.block_count") && e.contains("missing"), "{e}");
    assert!(GgufArch::Mistral.permutes_qk() && !GgufArch::Qwen2.permutes_qk() && !GgufArch::Gemma3.permutes_qk());
}

#[test]
fn unsupported_architectures_are_named() {
    let (_d, p) = save(&as_arch("gptneox", false));
    let e = one_line(GgufFile::open(&p).unwrap().model_config().unwrap_err());
    assert!(e.contains("general.architecture") && e.contains("`gptneox`") && e.contains(GgufArch::SUPPORTED), "{e}");
    let e = one_line(open_model(&p).err().unwrap());
    assert!(e.contains("gptneox") && e.contains("m.gguf"), "{e}");
}

/// llama.cpp's converter (`LlamaModel.generate_extra_tensors`): `rope_freqs.weight[i]` is the
/// divisor Llama-3 scaling applies to frequency `i`.
fn llama3_rope_freqs(d: usize, theta: f64, factor: f64, lo: f64, hi: f64, old: f64) -> Vec<f32> {
    (0..d / 2)
        .map(|i| {
            let freq = 1.0 / theta.powf(2.0 * i as f64 / d as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            if wavelen < old / hi {
                1.0
            } else if wavelen > old / lo {
                factor as f32
            } else {
                let smooth = (old / wavelen - lo) / (hi - lo);
                (1.0 / ((1.0 - smooth) / factor + smooth)) as f32
            }
        })
        .collect()
}

#[test]
fn llama3_rope_freqs_tensor_gives_the_hf_llama3_tables() {
    // D=16 in the tiny model; frequencies spread over the three Llama-3 bands with theta 500000
    // and an original context of 64
    let freqs = llama3_rope_freqs(16, 500000.0, 8.0, 1.0, 4.0, 64.0);
    assert!(freqs.contains(&1.0) && freqs.contains(&8.0) && freqs.iter().any(|&f| f > 1.0 && f < 8.0), "{freqs:?}");
    let b = tiny_llama_model_gguf(true).kv_f32("llama.rope.freq_base", 500000.0).tensor(
        "rope_freqs.weight",
        &[8],
        0,
        f32_bytes(&freqs),
    );
    let (_d, p) = save(&b);
    let m = open_model(&p).unwrap();
    assert_eq!(m.config.rope_scaling, RopeScaling::Factors { divisors: freqs.clone() });
    let hf = RopeScaling::Llama3 {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 64,
    };
    let (cos, sin) = try_tables(16, 512, 500000.0, &m.config.rope_scaling).unwrap();
    let (hf_cos, hf_sin) = try_tables(16, 512, 500000.0, &hf).unwrap();
    let diff = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(
        diff(&cos, &hf_cos) < 1e-4 && diff(&sin, &hf_sin) < 1e-4,
        "{} {}",
        diff(&cos, &hf_cos),
        diff(&sin, &hf_sin)
    );

    let bad = |data: Vec<f32>, dims: &[u64]| {
        let (_d, p) = save(&tiny_llama_model_gguf(true).tensor("rope_freqs.weight", dims, 0, f32_bytes(&data)));
        one_line(GgufFile::open(&p).unwrap().model_config().unwrap_err())
    };
    let e = bad(vec![1.0; 4], &[4]);
    assert!(e.contains("rope_freqs.weight") && e.contains("expected [8]"), "{e}");
    let mut neg = freqs.clone();
    neg[3] = -1.0;
    let e = bad(neg, &[8]);
    assert!(e.contains("rope_freqs.weight") && e.contains("factor 3 = -1"), "{e}");
    let (_d, p) = save(
        &tiny_llama_model_gguf(true)
            .kv_str("llama.rope.scaling.type", "linear")
            .kv_f32("llama.rope.scaling.factor", 2.0)
            .tensor("rope_freqs.weight", &[8], 0, f32_bytes(&freqs)),
    );
    let e = one_line(GgufFile::open(&p).unwrap().model_config().unwrap_err());
    assert!(e.contains("rope_freqs.weight"), "{e}");
}

#[test]
fn unsupported_tensor_types_are_named() {
    // ggml type 11 is Q3_K: the tensor keeps its place and its load names it and the type
    let (_d, p) = save(&tiny_llama_model_gguf(true).tensor("blk.0.attn_q.bias", &[256], 11, vec![0; 110]));
    let f = GgufFile::open(&p).unwrap();
    let w = encore_models::gguf::GgufWeights::new(f).unwrap();
    let e = one_line(w.get("model.layers.0.self_attn.q_proj.bias", DType::F32).unwrap_err());
    assert!(e.contains("model.layers.0.self_attn.q_proj.bias") && e.contains("Q3_K"), "{e}");
}
