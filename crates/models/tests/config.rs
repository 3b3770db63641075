//! config.json parsing: both spellings (hub and transformers 5), every supported option, and
//! a clear one-line error for each unsupported or inconsistent one.

use encore_models::config::{Arch, GluActivation, ModelConfig};
use encore_models::golden::golden_dir;
use encore_tensor::rope::RopeScaling;
use encore_tensor::DType;
use serde_json::{json, Value};

fn llama31() -> Value {
    // the hub's config.json of Llama-3.1-8B (shapes cut down)
    json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "attention_bias": false,
        "hidden_act": "silu", "hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4,
        "num_attention_heads": 8, "num_key_value_heads": 2, "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "tie_word_embeddings": false,
        "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "vocab_size": 128256, "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009],
        "torch_dtype": "bfloat16"
    })
}

fn parse(v: &Value) -> Result<ModelConfig, String> {
    ModelConfig::from_json_str(&v.to_string()).map_err(|e| e.to_string())
}

fn with(mut v: Value, key: &str, val: Value) -> Value {
    v[key] = val;
    v
}

fn error_of(v: &Value) -> String {
    let e = parse(v).expect_err("config should be rejected");
    assert!(!e.contains('\n'), "multi-line error: {e}");
    e
}

#[test]
fn hub_llama31_config() {
    let c = parse(&llama31()).unwrap();
    assert_eq!(c.arch, Arch::Llama);
    assert_eq!((c.hidden_size, c.intermediate_size, c.num_hidden_layers), (256, 688, 4));
    assert_eq!((c.num_attention_heads, c.num_key_value_heads, c.head_dim), (8, 2, 32));
    assert_eq!(c.num_groups(), 4);
    assert_eq!(c.rope_theta, 500000.0);
    assert_eq!(
        c.rope_scaling,
        RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192
        }
    );
    assert_eq!(c.eos_token_ids, vec![128001, 128008, 128009]);
    assert_eq!(c.bos_token_id, Some(128000));
    assert_eq!(c.torch_dtype, Some(DType::BF16));
    assert_eq!(c.rms_norm_eps, 1e-5);
    assert!(!c.tie_word_embeddings && !c.attention_bias);
    assert_eq!(c.sliding_window, None);
}

#[test]
fn transformers5_config_with_rope_parameters_and_dtype() {
    // as `LlamaConfig(...).to_json_string()` writes it in transformers 5.24
    let v = json!({
        "attention_bias": false, "bos_token_id": 1, "dtype": "float16", "eos_token_id": [1, 2],
        "head_dim": 24, "hidden_act": "silu", "hidden_size": 64, "intermediate_size": 128,
        "max_position_embeddings": 2048, "mlp_bias": false, "model_type": "llama",
        "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2,
        "pad_token_id": null, "rms_norm_eps": 1e-06,
        "rope_parameters": {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                            "original_max_position_embeddings": 8192, "rope_theta": 500000.0,
                            "rope_type": "llama3"},
        "tie_word_embeddings": true, "vocab_size": 512
    });
    let c = parse(&v).unwrap();
    assert_eq!(c.head_dim, 24, "explicit head_dim wins over hidden / heads");
    assert_eq!(c.rope_theta, 500000.0);
    assert!(matches!(c.rope_scaling, RopeScaling::Llama3 { factor: 8.0, .. }));
    assert_eq!(c.torch_dtype, Some(DType::F16));
    assert_eq!(c.eos_token_ids, vec![1, 2]);
    assert!(c.tie_word_embeddings);
    let plain = json!({"rope_theta": 10000.0, "rope_type": "default"});
    assert_eq!(parse(&with(v, "rope_parameters", plain)).unwrap().rope_scaling, RopeScaling::None);
}

#[test]
fn linear_and_default_rope_and_absent_optional_fields() {
    let mut v = llama31();
    v["rope_scaling"] = json!({"type": "linear", "factor": 4.0});
    assert_eq!(parse(&v).unwrap().rope_scaling, RopeScaling::Linear { factor: 4.0 });
    v["rope_scaling"] = json!({"rope_type": "default"});
    assert_eq!(parse(&v).unwrap().rope_scaling, RopeScaling::None);
    for k in ["rope_scaling", "rope_theta", "num_key_value_heads", "eos_token_id", "bos_token_id", "torch_dtype"] {
        v.as_object_mut().unwrap().remove(k);
    }
    let c = parse(&v).unwrap();
    assert_eq!((c.rope_scaling, c.rope_theta), (RopeScaling::None, 10000.0));
    assert_eq!(c.num_key_value_heads, 8, "defaults to num_attention_heads");
    assert!(c.eos_token_ids.is_empty() && c.bos_token_id.is_none() && c.torch_dtype.is_none());
    let c = parse(&with(llama31(), "eos_token_id", json!(128009))).unwrap();
    assert_eq!(c.eos_token_ids, vec![128009], "an int is a list of one");
}

#[test]
fn qwen2_has_qkv_bias_and_no_window_unless_enabled() {
    let v = json!({
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
        "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
        "num_attention_heads": 14, "num_key_value_heads": 2, "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768,
        "use_sliding_window": false, "max_window_layers": 21, "tie_word_embeddings": true,
        "vocab_size": 151936, "bos_token_id": 151643, "eos_token_id": 151645, "torch_dtype": "bfloat16"
    });
    let c = parse(&v).unwrap();
    assert_eq!(c.arch, Arch::Qwen2);
    assert!(c.attention_bias, "Qwen2ForCausalLM => q/k/v bias");
    assert_eq!(c.head_dim, 64);
    assert_eq!(c.sliding_window, None);
    let e = error_of(&with(v, "use_sliding_window", json!(true)));
    assert!(e.contains("use_sliding_window"), "{e}");
}

#[test]
fn mistral_sliding_window_int_or_null() {
    let mut v = llama31();
    v["architectures"] = json!(["MistralForCausalLM"]);
    v["rope_scaling"] = Value::Null;
    v["sliding_window"] = json!(4096);
    let c = parse(&v).unwrap();
    assert_eq!((c.arch, c.sliding_window), (Arch::Mistral, Some(4096)));
    v["sliding_window"] = Value::Null;
    assert_eq!(parse(&v).unwrap().sliding_window, None);
    v["sliding_window"] = json!(0);
    assert!(error_of(&v).contains("sliding_window"));
}

#[test]
fn unknown_architecture_is_an_error_naming_it() {
    let e = error_of(&with(llama31(), "architectures", json!(["GemmaForCausalLM"])));
    assert!(e.contains("architectures") && e.contains("GemmaForCausalLM"), "{e}");
    let mut v = llama31();
    v.as_object_mut().unwrap().remove("architectures");
    assert_eq!(parse(&v).unwrap().arch, Arch::Llama, "model_type is the fallback");
    v["model_type"] = json!("phi3");
    assert!(error_of(&v).contains("phi3"));
}

#[test]
fn unsupported_options_are_errors_not_guesses() {
    let cases = [
        ("rope_scaling", json!({"rope_type": "yarn", "factor": 4.0}), "yarn"),
        ("rope_scaling", json!({"rope_type": "dynamic", "factor": 2.0}), "dynamic"),
        ("rope_scaling", json!({"rope_type": "llama3", "factor": 8.0}), "low_freq_factor"),
        ("attention_bias", json!(true), "attention_bias"),
        ("mlp_bias", json!(true), "mlp_bias"),
        ("hidden_act", json!("gelu"), "gelu"),
        ("torch_dtype", json!("float64"), "float64"),
        ("num_key_value_heads", json!(3), "does not divide"),
        ("hidden_size", json!(0), "hidden_size"),
        ("vocab_size", json!("big"), "vocab_size"),
        ("eos_token_id", json!([128001, 999999]), "outside the vocabulary"),
        ("head_dim", json!(33), "odd"),
    ];
    for (key, val, needle) in cases {
        let e = error_of(&with(llama31(), key, val.clone()));
        assert!(e.contains(needle) && e.contains("config.json"), "{key}={val}: {e}");
    }
    let mut v = llama31();
    v.as_object_mut().unwrap().remove("num_hidden_layers");
    assert_eq!(error_of(&v), "config.json: field `num_hidden_layers`: missing");
    assert!(error_of(&json!([1, 2])).contains("object"));
    assert!(ModelConfig::from_json_str("{not json").unwrap_err().to_string().contains("invalid JSON"));
}

#[test]
fn from_file_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("config.json");
    let e = ModelConfig::from_file(&p).unwrap_err().to_string();
    assert!(e.contains("config.json") && !e.contains('\n'), "{e}");
    std::fs::write(&p, with(llama31(), "num_key_value_heads", json!(3)).to_string()).unwrap();
    let e = ModelConfig::from_file(&p).unwrap_err().to_string();
    assert!(e.starts_with(&p.display().to_string()) && e.contains("num_key_value_heads"), "{e}");
}

#[test]
fn golden_tiny_model_configs_parse() {
    let llama = ModelConfig::from_file(&golden_dir().join("tiny-llama3/config.json")).unwrap();
    assert!(matches!(llama.rope_scaling, RopeScaling::Llama3 { .. }));
    let qwen = ModelConfig::from_file(&golden_dir().join("tiny-qwen2/config.json")).unwrap();
    assert!(qwen.attention_bias && qwen.tie_word_embeddings);
    let mistral = ModelConfig::from_file(&golden_dir().join("tiny-mistral/config.json")).unwrap();
    assert_eq!(mistral.sliding_window, Some(5));
    for c in [&llama, &qwen, &mistral] {
        assert_eq!((c.vocab_size, c.hidden_size, c.torch_dtype), (512, 64, Some(DType::F32)));
    }
}

#[test]
fn rope_scaling_factor_of_zero_or_less_is_an_error_not_nan_logits() {
    let llama3 = |key: &str, val: Value| {
        let mut v = llama31();
        v["rope_scaling"][key] = val;
        v
    };
    for (v, field) in [
        (llama3("factor", json!(0.0)), "rope_scaling.factor"),
        (llama3("factor", json!(-8.0)), "rope_scaling.factor"),
        (llama3("low_freq_factor", json!(0.0)), "rope_scaling.low_freq_factor"),
        (llama3("original_max_position_embeddings", json!(0)), "rope_scaling.original_max_position_embeddings"),
        (with(llama31(), "rope_scaling", json!({"rope_type": "linear", "factor": 0.0})), "rope_scaling.factor"),
        (with(llama31(), "rope_scaling", json!({"type": "linear", "factor": -1e30})), "rope_scaling.factor"),
        (
            with(llama31(), "rope_parameters", json!({"rope_type": "linear", "factor": 0, "rope_theta": 1e4})),
            "rope_parameters.factor",
        ),
    ] {
        let e = error_of(&v);
        assert!(e.contains(&format!("`{field}`")), "{field}: {e}");
    }
    // and a config built in code goes through the same check
    let mut cfg = parse(&llama31()).unwrap();
    cfg.rope_scaling = RopeScaling::Linear { factor: f32::NAN };
    let e = cfg.validate("x.json").unwrap_err().to_string();
    assert!(e.contains("rope_scaling.factor") && e.contains("NaN"), "{e}");
}

#[test]
fn layer_count_from_config_json_is_bounded_before_anything_is_allocated() {
    let e = error_of(&with(llama31(), "num_hidden_layers", json!(1_000_000_000_000u64)));
    assert!(e.contains("`num_hidden_layers`") && e.contains("over the limit"), "{e}");
    let e = error_of(&with(llama31(), "hidden_size", json!(1u64 << 40)));
    assert!(e.contains("`hidden_size`") && e.contains("over the limit"), "{e}");
    let e = error_of(&with(with(llama31(), "head_dim", json!(1u64 << 62)), "num_attention_heads", json!(8)));
    assert!(e.contains("`num_attention_heads`") && e.contains("head_dim"), "{e}");
    let e = error_of(&with(llama31(), "vocab_size", json!(u64::MAX)));
    assert!(e.contains("`vocab_size`"), "{e}");
}

#[test]
fn kv_cache_and_weight_bytes_are_checked_products() {
    let cfg = parse(&llama31()).unwrap();
    // 2 (K, V) x L x seqs x ctx x Hkv x D x bytes
    assert_eq!(cfg.kv_cache_bytes(3, 100, DType::BF16), Some(2 * 4 * 3 * 100 * 2 * 32 * 2));
    assert_eq!(cfg.kv_cache_bytes(usize::MAX, usize::MAX, DType::F32), None);
    let params = cfg.param_count().unwrap();
    // embed + head (untied) + 4 layers of (q, k, v, o, mlp, norms) + final norm
    let layer = 256 * 256 + 2 * 256 * 64 + 256 * 256 + 3 * 256 * 688 + 2 * 256;
    assert_eq!(params, 2 * 128256 * 256 + 4 * layer + 256);
    assert_eq!(cfg.weight_bytes(DType::BF16), Some(2 * params));
}

fn qwen3() -> Value {
    // the hub's config.json of Qwen3-0.6B (shapes cut down)
    json!({
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "attention_bias": false,
        "hidden_act": "silu", "hidden_size": 128, "head_dim": 64, "intermediate_size": 384,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 40960, "max_window_layers": 28, "rms_norm_eps": 1e-06,
        "rope_scaling": null, "rope_theta": 1000000, "sliding_window": null,
        "use_sliding_window": false, "tie_word_embeddings": true, "vocab_size": 1000,
        "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16"
    })
}

fn gemma3() -> Value {
    // the hub's config.json of gemma-3-270m (vocabulary cut down)
    json!({
        "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text",
        "attention_bias": false, "attn_logit_softcapping": null, "bos_token_id": 2,
        "eos_token_id": 1, "final_logit_softcapping": null, "head_dim": 256,
        "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 640, "intermediate_size": 2048,
        "layer_types": ["sliding_attention", "sliding_attention", "sliding_attention",
                        "sliding_attention", "sliding_attention", "full_attention"],
        "max_position_embeddings": 32768, "num_attention_heads": 4, "num_hidden_layers": 6,
        "num_key_value_heads": 1, "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06,
        "rope_local_base_freq": 10000.0, "rope_scaling": null, "rope_theta": 1000000.0,
        "sliding_window": 512, "torch_dtype": "bfloat16", "vocab_size": 1000
    })
}

#[test]
fn hub_qwen3_config_has_qk_norms_an_explicit_head_dim_and_no_bias() {
    let c = parse(&qwen3()).unwrap();
    assert_eq!(c.arch, Arch::Qwen3);
    assert_eq!((c.num_attention_heads, c.head_dim, c.hidden_size), (4, 64, 128));
    assert!(c.flags.qk_norm && !c.flags.sandwich_norms && !c.flags.norm_plus_one && !c.attention_bias);
    assert!(c.tie_word_embeddings);
    assert_eq!((c.sliding_window, c.layer_window(1)), (None, None));
    assert_eq!(c.attention_scale(), 1.0 / 8.0);
    assert!(error_of(&with(qwen3(), "attention_bias", json!(true))).contains("attention_bias"));
    assert!(error_of(&with(qwen3(), "use_sliding_window", json!(true))).contains("use_sliding_window"));
}

#[test]
fn hub_gemma3_config_sets_every_gemma_switch() {
    let c = parse(&gemma3()).unwrap();
    assert_eq!(c.arch, Arch::Gemma3);
    let f = &c.flags;
    assert!(f.qk_norm && f.norm_plus_one && f.scale_embeddings && f.sandwich_norms);
    assert_eq!(f.activation, GluActivation::GeluTanh);
    assert_eq!(f.sliding_layers, vec![true, true, true, true, true, false]);
    assert_eq!((c.layer_window(0), c.layer_window(5)), (Some(512), None));
    assert!(c.layer_uses_local_rope(0) && !c.layer_uses_local_rope(5));
    assert_eq!((c.rope_theta, f.rope_local_theta), (1e6, Some(1e4)));
    assert_eq!((f.query_pre_attn_scalar, f.final_logit_softcapping), (Some(256.0), None));
    assert!(c.tie_word_embeddings, "Gemma 3 ties by default");
    // the older spelling: every 6th layer full
    let mut v = gemma3();
    v.as_object_mut().unwrap().remove("layer_types");
    v["sliding_window_pattern"] = json!(3);
    assert_eq!(parse(&v).unwrap().flags.sliding_layers, vec![true, true, false, true, true, false]);
}

#[test]
fn gemma3_per_layer_type_rope_parameters_of_transformers_5() {
    let mut v = gemma3();
    for k in ["rope_theta", "rope_local_base_freq", "rope_scaling"] {
        v.as_object_mut().unwrap().remove(k);
    }
    v["rope_parameters"] = json!({
        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}
    });
    let c = parse(&v).unwrap();
    assert_eq!((c.rope_theta, c.rope_scaling.clone()), (1e6, RopeScaling::Linear { factor: 8.0 }));
    assert_eq!(c.flags.rope_local_theta, Some(1e4));
}

#[test]
fn gemma3_unsupported_or_inconsistent_fields_are_named() {
    let e = error_of(&with(gemma3(), "attn_logit_softcapping", json!(50.0)));
    assert!(e.contains("attn_logit_softcapping"), "{e}");
    let e = error_of(&with(gemma3(), "layer_types", json!(["full_attention"])));
    assert!(e.contains("layer_types") && e.contains("num_hidden_layers"), "{e}");
    let e = error_of(&with(gemma3(), "layer_types", json!(["x", "x", "x", "x", "x", "x"])));
    assert!(e.contains("layer_types"), "{e}");
    let e = error_of(&with(gemma3(), "hidden_activation", json!("gelu")));
    assert!(e.contains("hidden_activation") && e.contains("gelu"), "{e}");
    let e = error_of(&with(gemma3(), "final_logit_softcapping", json!(-1.0)));
    assert!(e.contains("final_logit_softcapping"), "{e}");
    let e = error_of(&with(gemma3(), "query_pre_attn_scalar", json!(0)));
    assert!(e.contains("query_pre_attn_scalar"), "{e}");
    // a corrupt layer count fails before the per-layer list is built
    let e = error_of(&with(gemma3(), "num_hidden_layers", json!(1u64 << 40)));
    assert!(e.contains("num_hidden_layers") && e.contains("limit"), "{e}");
    let e = error_of(&with(gemma3(), "architectures", json!(["Gemma3ForConditionalGeneration"])));
    assert!(e.contains("Gemma3ForConditionalGeneration") && e.contains("Gemma3ForCausalLM"), "{e}");
}

#[test]
fn committed_tiny_qwen3_and_gemma3_configs() {
    let q = ModelConfig::from_file(&golden_dir().join("tiny-qwen3/config.json")).unwrap();
    assert_eq!((q.arch, q.head_dim, q.flags.qk_norm, q.tie_word_embeddings), (Arch::Qwen3, 32, true, false));
    let g = ModelConfig::from_file(&golden_dir().join("tiny-gemma3/config.json")).unwrap();
    assert_eq!(g.arch, Arch::Gemma3);
    assert_eq!(g.flags.sliding_layers, vec![true, false, true]);
    assert_eq!((g.sliding_window, g.flags.final_logit_softcapping), (Some(5), Some(3.0)));
    assert_eq!(g.attention_scale(), 1.0 / 20f32.sqrt());
    assert_eq!(g.rope_scaling, RopeScaling::Linear { factor: 2.0 });
}
