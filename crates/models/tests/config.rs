//! config.json parsing: both spellings (hub and transformers 5), every supported option, and
//! a clear one-line error for each unsupported or inconsistent one.

use encore_models::config::{Arch, ModelConfig};
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
