//! Qwen3 and Gemma 3 from GGUF: the committed tiny safetensors models written out the way
//! llama.cpp's converter writes them (its tensor names, Gemma's norm weights stored as
//! `1 + w`, q/k rows in HF order: no permutation for these architectures), then read back
//! through the GGUF path: the same tensors under their HF names, the config from the
//! arch-prefixed metadata, and the golden logits of transformers.

mod common;

use common::{f32_bytes, write, GgufBuilder};
use encore_cpu::Cpu;
use encore_models::config::ModelConfig;
use encore_models::gguf::{hf_name_for, GgufFile, GgufWeights};
use encore_models::golden::{golden_dir, LogitsGolden};
use encore_models::safetensors::SafetensorsWeights;
use encore_models::weights::{validate_weights, WeightSource};
use encore_models::{HostInputs, InputDims, Llama, LogitRow, StepInputs, StepKind, TokenRow};
use encore_tensor::{Backend, DType};

/// llama.cpp's name of an HF tensor name (the inverse of `hf_name_for`).
fn gguf_name(arch: &str, hf: &str) -> String {
    let top = [("model.embed_tokens", "token_embd"), ("model.norm", "output_norm"), ("lm_head", "output")];
    for (h, g) in top {
        if let Some(rest) = hf.strip_prefix(h) {
            return format!("{g}{rest}");
        }
    }
    let rest = hf.strip_prefix("model.layers.").unwrap();
    let (layer, rest) = rest.split_once('.').unwrap();
    let (module, suffix) = rest.rsplit_once('.').unwrap();
    let gemma = arch == "gemma3";
    let kind = match module {
        "input_layernorm" => "attn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "post_attention_layernorm" if gemma => "post_attention_norm",
        "post_attention_layernorm" => "ffn_norm",
        "pre_feedforward_layernorm" => "ffn_norm",
        "post_feedforward_layernorm" => "post_ffw_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        other => panic!("no GGUF name for {other}"),
    };
    format!("blk.{layer}.{kind}.{suffix}")
}

/// The GGUF of a committed tiny model: metadata under `arch.`, every tensor f32.
fn to_gguf(name: &str, arch: &str) -> (tempfile::TempDir, std::path::PathBuf, ModelConfig, SafetensorsWeights) {
    let dir = golden_dir().join(name);
    let cfg = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let st = SafetensorsWeights::open_dir(&dir).unwrap();
    let k = |key: &str| format!("{arch}.{key}");
    let u = |v: usize| v as u32;
    let mut b = GgufBuilder::default()
        .kv_str("general.architecture", arch)
        .kv_u32(&k("block_count"), u(cfg.num_hidden_layers))
        .kv_u32(&k("context_length"), u(cfg.max_position_embeddings))
        .kv_u32(&k("embedding_length"), u(cfg.hidden_size))
        .kv_u32(&k("feed_forward_length"), u(cfg.intermediate_size))
        .kv_u32(&k("attention.head_count"), u(cfg.num_attention_heads))
        .kv_u32(&k("attention.head_count_kv"), u(cfg.num_key_value_heads))
        .kv_u32(&k("attention.key_length"), u(cfg.head_dim))
        .kv_u32(&k("attention.value_length"), u(cfg.head_dim))
        .kv_f32(&k("attention.layer_norm_rms_epsilon"), cfg.rms_norm_eps)
        .kv_f32(&k("rope.freq_base"), cfg.rope_theta)
        .kv_u32(&k("vocab_size"), u(cfg.vocab_size))
        .kv_u32("tokenizer.ggml.bos_token_id", cfg.bos_token_id.unwrap())
        .kv_u32("tokenizer.ggml.eos_token_id", cfg.eos_token_ids[0]);
    if arch == "gemma3" {
        b = b
            .kv_u32(&k("attention.sliding_window"), u(cfg.sliding_window.unwrap()))
            .kv_u32(&k("attention.sliding_window_pattern"), 2)
            .kv_str(&k("rope.scaling.type"), "linear")
            .kv_f32(&k("rope.scaling.factor"), 2.0)
            .kv_f32(&k("final_logit_softcapping"), cfg.flags.final_logit_softcapping.unwrap());
    }
    for hf in st.names() {
        let t = st.get(&hf, DType::F32).unwrap();
        let mut vals = t.to_f32();
        if arch == "gemma3" && hf.ends_with("norm.weight") {
            vals.iter_mut().for_each(|v| *v += 1.0); // llama.cpp's Gemma converter adds the one
        }
        let dims: Vec<u64> = t.dims.iter().rev().map(|&d| d as u64).collect();
        b = b.tensor(&gguf_name(arch, &hf), &dims, 0, f32_bytes(&vals));
    }
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join(format!("{name}.gguf"));
    write(&path, &b.build());
    (tmp, path, cfg, st)
}

/// Prefill logits `[T, V]` of `model` over `ids` (one sequence in 16-slot blocks).
fn prefill_logits(model: &Llama<Cpu>, ids: &[u32]) -> Vec<f32> {
    let t = ids.len();
    let blocks = t.div_ceil(16);
    let state = model.new_state(&Cpu, t, t).unwrap();
    let inputs = StepInputs::new(&Cpu, InputDims { max_tokens: t, max_seqs: t, max_blocks: blocks }).unwrap();
    let cache = model.new_cache(&Cpu, blocks, 16).unwrap();
    let mut host = HostInputs { block_tables: vec![(0..blocks as i32).collect()], ..Default::default() };
    for (p, &id) in ids.iter().enumerate() {
        host.tokens.push(TokenRow { id, position: p as i32, seq: 0, slot: p as i32 });
        host.logits.push(LogitRow::greedy(p as i32));
    }
    inputs.upload(&Cpu, &host).unwrap();
    model.forward(&Cpu, &state, &inputs, &cache, t, t, StepKind::Mixed).unwrap();
    Cpu.download(&state.logits).unwrap().to_f32()
}

#[test]
fn tiny_qwen3_and_gemma3_gguf_load_under_hf_names_and_match_transformers() {
    for (name, arch) in [("tiny-qwen3", "qwen3"), ("tiny-gemma3", "gemma3")] {
        let (_tmp, path, hf_cfg, st) = to_gguf(name, arch);
        let file = GgufFile::open(&path).unwrap();
        let mut cfg = file.model_config().unwrap();
        // GGUF has no query_pre_attn_scalar: llama.cpp takes head_dim (the tiny model's is
        // deliberately not)
        if arch == "gemma3" {
            assert_eq!(cfg.flags.query_pre_attn_scalar, Some(hf_cfg.head_dim as f32), "{name}");
            cfg.flags.query_pre_attn_scalar = hf_cfg.flags.query_pre_attn_scalar;
        }
        cfg.torch_dtype = hf_cfg.torch_dtype;
        assert_eq!(cfg, hf_cfg, "{name}: the GGUF metadata gives the config.json's config");
        let w = GgufWeights::new(file).unwrap();
        assert_eq!(w.names(), st.names(), "{name}");
        for n in st.names() {
            let (a, b) = (w.get(&n, DType::F32).unwrap(), st.get(&n, DType::F32).unwrap());
            assert_eq!(a.dims, b.dims, "{name} {n}");
            // Gemma's norms come back as (1 + w) - 1 in f32: within an ulp of 1
            let worst = a.to_f32().iter().zip(b.to_f32()).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
            assert!(worst <= 2e-7, "{name} {n}: {worst}");
        }
        assert_eq!(validate_weights(&cfg, &w).unwrap(), Vec::<String>::new());
        let g = LogitsGolden::load(&golden_dir().join(format!("{name}.logits.safetensors"))).unwrap();
        let model = Llama::load(&Cpu, cfg, &w, DType::F32, 64).unwrap();
        let got = prefill_logits(&model, &g.prompt_ids);
        let want = g.prefill_logits.to_f32();
        let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        let diff = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(diff <= 2e-4 * scale, "{name} from GGUF: max |logit diff| {diff} (golden by {})", g.generator);
    }
}

#[test]
fn gemma3_gguf_names_map_to_the_sandwich_norms() {
    let map = |arch: &str, n: &str| hf_name_for(arch, n).unwrap().0;
    assert_eq!(map("gemma3", "blk.3.ffn_norm.weight"), "model.layers.3.pre_feedforward_layernorm.weight");
    assert_eq!(map("gemma3", "blk.3.post_attention_norm.weight"), "model.layers.3.post_attention_layernorm.weight");
    assert_eq!(map("gemma3", "blk.3.post_ffw_norm.weight"), "model.layers.3.post_feedforward_layernorm.weight");
    assert_eq!(map("qwen3", "blk.0.attn_q_norm.weight"), "model.layers.0.self_attn.q_norm.weight");
    assert_eq!(map("gemma3", "blk.0.attn_k_norm.weight"), "model.layers.0.self_attn.k_norm.weight");
    // Llama's ffn_norm is the MLP's input norm
    assert_eq!(map("llama", "blk.3.ffn_norm.weight"), "model.layers.3.post_attention_layernorm.weight");
}

#[test]
fn an_unsupported_gguf_architecture_is_named() {
    let b = GgufBuilder::default().kv_str("general.architecture", "falcon");
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("f.gguf");
    write(&path, &b.build());
    let e = GgufFile::open(&path).unwrap().model_config().unwrap_err().to_string();
    assert!(e.contains("general.architecture") && e.contains("falcon") && e.contains("gemma3"), "{e}");
    assert!(!e.contains('\n'), "{e}");
}

#[test]
fn a_corrupt_gemma3_block_count_fails_before_the_layer_list_is_built() {
    let b = GgufBuilder::default()
        .kv_str("general.architecture", "gemma3")
        .kv_u32("gemma3.embedding_length", 64)
        .kv_u32("gemma3.attention.head_count", 4)
        .kv_u32("gemma3.vocab_size", 8)
        .kv_u32("gemma3.feed_forward_length", 128)
        .kv_u32("gemma3.context_length", 64)
        .kv_f32("gemma3.attention.layer_norm_rms_epsilon", 1e-6)
        .kv_u32("gemma3.block_count", u32::MAX);
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("g.gguf");
    write(&path, &b.build());
    let e = GgufFile::open(&path).unwrap().model_config().unwrap_err().to_string();
    assert!(e.contains("gemma3.block_count") && e.contains("limit"), "{e}");
}
