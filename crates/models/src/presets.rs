//! Model shapes for random-weight benchmarks (`encore bench --preset`), written as the
//! hub's config.json of each model and parsed by the one config parser.

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};

const LLAMA31_ROPE: &str = r#"{"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192, "rope_type": "llama3"}"#;
const LLAMA32_ROPE: &str = r#"{"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192, "rope_type": "llama3"}"#;

pub const PRESETS: [&str; 9] = [
    "smollm2-135m",
    "qwen2.5-0.5b",
    "llama-3.2-1b",
    "qwen2.5-1.5b",
    "qwen2.5-7b",
    "llama-3.1-8b",
    "qwen3-0.6b",
    "gemma3-270m",
    "gemma3-1b",
];

fn llama(v: usize, c: usize, i: usize, l: usize, h: usize, kv: usize, theta: f64, rope: &str, tied: bool) -> String {
    format!(
        r#"{{"architectures": ["LlamaForCausalLM"], "vocab_size": {v}, "hidden_size": {c}, "intermediate_size": {i},
        "num_hidden_layers": {l}, "num_attention_heads": {h}, "num_key_value_heads": {kv}, "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-05, "rope_theta": {theta}, "rope_scaling": {rope}, "tie_word_embeddings": {tied},
        "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16"}}"#
    )
}

fn qwen2(v: usize, c: usize, i: usize, l: usize, h: usize, kv: usize, tied: bool) -> String {
    format!(
        r#"{{"architectures": ["Qwen2ForCausalLM"], "vocab_size": {v}, "hidden_size": {c}, "intermediate_size": {i},
        "num_hidden_layers": {l}, "num_attention_heads": {h}, "num_key_value_heads": {kv}, "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "use_sliding_window": false, "sliding_window": 32768,
        "tie_word_embeddings": {tied}, "bos_token_id": 151643, "eos_token_id": 151645, "torch_dtype": "bfloat16"}}"#
    )
}

fn qwen3(v: usize, c: usize, i: usize, l: usize, h: usize, kv: usize, d: usize, tied: bool) -> String {
    format!(
        r#"{{"architectures": ["Qwen3ForCausalLM"], "vocab_size": {v}, "hidden_size": {c}, "intermediate_size": {i},
        "num_hidden_layers": {l}, "num_attention_heads": {h}, "num_key_value_heads": {kv}, "head_dim": {d},
        "max_position_embeddings": 40960, "rms_norm_eps": 1e-06, "rope_theta": 1000000, "use_sliding_window": false,
        "tie_word_embeddings": {tied}, "bos_token_id": 151643, "eos_token_id": 151645, "torch_dtype": "bfloat16"}}"#
    )
}

/// Gemma 3 text: head_dim 256, sliding window 512 on five layers of six.
fn gemma3(c: usize, i: usize, l: usize, h: usize, kv: usize) -> String {
    format!(
        r#"{{"architectures": ["Gemma3ForCausalLM"], "vocab_size": 262144, "hidden_size": {c}, "intermediate_size": {i},
        "num_hidden_layers": {l}, "num_attention_heads": {h}, "num_key_value_heads": {kv}, "head_dim": 256,
        "query_pre_attn_scalar": 256, "sliding_window": 512, "sliding_window_pattern": 6, "rope_theta": 1000000.0,
        "rope_local_base_freq": 10000.0, "max_position_embeddings": 32768, "rms_norm_eps": 1e-06,
        "hidden_activation": "gelu_pytorch_tanh", "bos_token_id": 2, "eos_token_id": 1, "torch_dtype": "bfloat16"}}"#
    )
}

/// The config of a preset, or an error listing the presets.
pub fn preset(name: &str) -> Result<ModelConfig> {
    let json = match name {
        "smollm2-135m" => llama(49152, 576, 1536, 30, 9, 3, 100000.0, "null", true),
        "qwen2.5-0.5b" => qwen2(151936, 896, 4864, 24, 14, 2, true),
        "llama-3.2-1b" => llama(128256, 2048, 8192, 16, 32, 8, 500000.0, LLAMA32_ROPE, true),
        "qwen2.5-1.5b" => qwen2(151936, 1536, 8960, 28, 12, 2, true),
        "qwen2.5-7b" => qwen2(152064, 3584, 18944, 28, 28, 4, false),
        "llama-3.1-8b" => llama(128256, 4096, 14336, 32, 32, 8, 500000.0, LLAMA31_ROPE, false),
        "qwen3-0.6b" => qwen3(151936, 1024, 3072, 28, 16, 8, 128, true),
        "gemma3-270m" => gemma3(640, 2048, 18, 4, 1),
        "gemma3-1b" => gemma3(1152, 6912, 26, 4, 1),
        _ => {
            return Err(ModelError::Config {
                file: "--preset".into(),
                field: name.into(),
                msg: format!("unknown preset (expected one of {})", PRESETS.join(", ")),
            })
        }
    };
    ModelConfig::parse(&json, &format!("preset {name}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Arch;

    #[test]
    fn every_preset_parses_with_its_shape() {
        for name in PRESETS {
            let c = preset(name).unwrap();
            // Qwen3 and Gemma 3 set head_dim apart from C / H
            let explicit = matches!(c.arch, Arch::Qwen3 | Arch::Gemma3);
            assert_eq!(c.head_dim * c.num_attention_heads == c.hidden_size, !explicit, "{name}");
        }
        let g = preset("gemma3-270m").unwrap();
        assert_eq!(
            (g.head_dim, g.tie_word_embeddings, g.layer_window(0), g.layer_window(5)),
            (256, true, Some(512), None)
        );
        assert!(preset("qwen3-0.6b").unwrap().flags.qk_norm);
        let c = preset("llama-3.2-1b").unwrap();
        assert_eq!((c.head_dim, c.num_key_value_heads, c.tie_word_embeddings), (64, 8, true));
        assert!(preset("qwen2.5-7b").unwrap().attention_bias);
        assert!(preset("gpt-5").unwrap_err().to_string().contains("llama-3.1-8b"));
    }
}
