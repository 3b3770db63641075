//! Seed inputs per target: the committed golden files (tests/golden) and small files built
//! with the writers the loader tests use (crates/models/tests/common), so every parser
//! starts from valid input and the mutations explore around it.

#[path = "../../crates/models/tests/common/mod.rs"]
mod common;

use common::{f32_bytes, safetensors_bytes, tiny_llama_gguf, tiny_llama_model_gguf, ty, GgufBuilder};
use std::path::PathBuf;

/// The repository root: `$ENCORE_REPO_ROOT`, else the parent of this crate's folder.
pub fn repo_root() -> PathBuf {
    match std::env::var_os("ENCORE_REPO_ROOT") {
        Some(root) => PathBuf::from(root),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."),
    }
}

fn golden(rel: &str) -> Vec<u8> {
    let p = repo_root().join("tests/golden").join(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("seed {}: {e}", p.display()))
}

pub const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

const LLAMA3_LIKE: &str = "{{- bos_token }}{%- set ns = namespace(system='') %}{%- for m in messages %}{%- if m['role'] == 'system' %}{%- set ns.system = m['content'] | trim %}{%- else %}{{- '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] | trim + '<|eot_id|>' }}{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}{{ ns.system | length }}";

const TEMPLATES: &[&str] = &[
    SMOLLM2,
    LLAMA3_LIKE,
    "{% for m in messages %}[{{ m.role | upper }}] {{ m.content.strip() }}{% if not loop.last %}\n{% endif %}{% endfor %}",
    "{{ messages | tojson(indent=2) }}|{{ messages[0] | tojson }}|{{ strftime_now('%d %b %Y') }}",
    "{% if messages[0]['role'] != 'user' %}{{ raise_exception('roles must start with user') }}{% endif %}{% for m in messages %}{% if m.role == 'assistant' %}{% break %}{% endif %}{{ m.content.split(' ') | length }}{{ m.content.replace('a', 'b') }}{% endfor %}",
    "{% for i in range(3) %}{% for m in messages %}{{ loop.index }}{{ m.content * 2 }}{% endfor %}{% endfor %}{{ eos_token }}",
];

/// GPT-2's `bytes_to_unicode` printable characters (a byte-level BPE vocabulary).
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

/// The byte-level BPE `tokenizer.json` of the first tokenizer seed (ChatML specials).
pub fn seed_tokenizer_json() -> String {
    String::from_utf8(tokenizer_seeds().remove(0)).expect("JSON is UTF-8")
}

const REQUESTS: &[&str] = &[
    r#"{"model": "m", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello 12"}], "max_tokens": 4, "temperature": 0.7, "top_p": 0.9, "stream": true, "stream_options": {"include_usage": true}}"#,
    r#"{"messages": [{"role": "user", "content": [{"type": "text", "text": "he"}, {"type": "text", "text": "llo"}]}], "max_completion_tokens": 3, "logprobs": true, "top_logprobs": 2, "seed": 5, "stop": ["x", "y"]}"#,
    r#"{"prompt": "the 12", "max_tokens": 8, "logprobs": 3, "top_k": 40, "min_p": 0.05, "presence_penalty": 0.5, "frequency_penalty": -1, "repetition_penalty": 1.1, "ignore_eos": true}"#,
    r#"{"prompt": [1, 2, 3, 260], "n": 1, "stop": "he", "echo": false}"#,
    r#"{"prompt": [[5, 6]], "max_tokens": 100, "temperature": 1e308, "top_p": -0.5, "tools": [{"type": "function"}], "response_format": {"type": "json_object"}}"#,
];

fn tokenizer_seeds() -> Vec<Vec<u8>> {
    let mut tokens: Vec<String> = vec!["<|endoftext|>".into(), "<|im_start|>".into(), "<|im_end|>".into()];
    tokens.extend(byte_chars());
    tokens.extend(["he", "Ġt", "Ġthe", "12"].map(String::from));
    let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
    let mut types = vec![3i64; 3];
    types.resize(refs.len(), 1);
    let merges = ["h e", "Ġ t", "Ġt he", "1 2"];
    let small = encore_models::tokenizer::gpt2_tokenizer_json(&["a", "b", "ab", "Ġ"], &[1, 1, 1, 4], &["a b"], None);
    [
        encore_models::tokenizer::gpt2_tokenizer_json(&refs, &types, &merges, Some("smollm")),
        encore_models::tokenizer::gpt2_tokenizer_json(&refs, &types, &merges, None),
        small,
    ]
    .into_iter()
    .map(|j| j.expect("seed tokenizer").to_string().into_bytes())
    .collect()
}

fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut r = crate::mutate::Rng::new(seed);
    (0..n).map(|_| r.below(256) as u8).collect()
}

fn gguf_seeds() -> Vec<Vec<u8>> {
    let every_type = GgufBuilder::default()
        .kv_raw("u8", ty::U8, &[200])
        .kv_raw("i16", ty::I16, &(-300i16).to_le_bytes())
        .kv_raw("u64", ty::U64, &(1u64 << 40).to_le_bytes())
        .kv_raw("f64", ty::F64, &1e-300f64.to_le_bytes())
        .kv_bool("b", true)
        .kv_i32_array("ints", &[3, -1])
        .kv_str_array("strs", &["a", "", "ü"])
        .kv_raw("general.alignment", ty::U32, &64u32.to_le_bytes())
        .with_alignment(64)
        .tensor("token_embd.weight", &[2, 3], 0, f32_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
    let quantised = tiny_llama_gguf()
        .tensor("x.q4_0.weight", &[32, 2], 2, random_bytes(2 * 18, 1))
        .tensor("x.q4_1.weight", &[32, 2], 3, random_bytes(2 * 20, 2))
        .tensor("blk.0.attn_v.weight", &[32, 16], 8, random_bytes(16 * 34, 3))
        .tensor("x.q4_k.weight", &[256, 2], 12, random_bytes(2 * 144, 4))
        .tensor("x.q6_k.weight", &[256, 1], 14, random_bytes(210, 5))
        .tensor("x.q5_k.weight", &[256, 1], 13, random_bytes(176, 6))
        .tensor("x.f16.weight", &[8], 1, random_bytes(16, 7))
        .tensor("x.bf16.weight", &[8], 30, random_bytes(16, 8));
    vec![
        tiny_llama_model_gguf(true).build(),
        tiny_llama_model_gguf(false).kv_str("tokenizer.chat_template", SMOLLM2).build(),
        tiny_llama_model_gguf(true)
            .kv_str("llama.rope.scaling.type", "linear")
            .kv_f32("llama.rope.scaling.factor", 4.0)
            .kv_u32("llama.attention.key_length", 16)
            .kv_u32("llama.rope.dimension_count", 16)
            .kv_str("tokenizer.ggml.pre", "smollm")
            .build(),
        every_type.build(),
        quantised.build(),
    ]
}

/// The two shards the `safetensors_index` target's folder holds.
pub fn index_shards() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "s1.safetensors",
            safetensors_bytes(&[
                ("a", "F32", vec![4], f32_bytes(&[1.0, 2.0, 3.0, 4.0])),
                ("c", "F32", vec![2], f32_bytes(&[5.0, 6.0])),
            ]),
        ),
        ("s2.safetensors", safetensors_bytes(&[("b", "F32", vec![2, 2], f32_bytes(&[7.0; 4]))])),
    ]
}

fn config_seeds() -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> =
        ["tiny-llama3", "tiny-qwen2", "tiny-mistral"].iter().map(|m| golden(&format!("{m}/config.json"))).collect();
    v.push(
        serde_json::json!({
            "architectures": ["LlamaForCausalLM"], "hidden_size": 256, "intermediate_size": 688,
            "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 2, "vocab_size": 1000,
            "rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6}, "dtype": "bfloat16",
            "head_dim": 32, "tie_word_embeddings": true, "eos_token_id": [1, 2], "bos_token_id": null
        })
        .to_string()
        .into_bytes(),
    );
    v.push(br#"{"model_type":"mistral","hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":4,"vocab_size":512,"sliding_window":5,"rms_norm_eps":1e-5}"#.to_vec());
    v
}

fn safetensors_seeds() -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = ["tiny-llama3", "tiny-qwen2", "tiny-mistral"]
        .iter()
        .map(|m| golden(&format!("{m}/model.safetensors")))
        .collect();
    v.push(golden("tiny-llama3.logits.safetensors"));
    v.push(safetensors_bytes(&[
        ("w.f32", "F32", vec![2, 3], f32_bytes(&[0.5; 6])),
        ("w.bf16", "BF16", vec![2, 3], random_bytes(12, 9)),
        ("w.f16", "F16", vec![3], random_bytes(6, 10)),
        ("ids", "I64", vec![2], random_bytes(16, 11)),
        ("empty", "F32", vec![0, 4], Vec::new()),
    ]));
    v
}

fn index_seeds() -> Vec<Vec<u8>> {
    vec![
        serde_json::json!({"metadata": {"total_size": 40}, "weight_map": {"a": "s1.safetensors", "c": "s1.safetensors", "b": "s2.safetensors"}}),
        serde_json::json!({"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}}),
        serde_json::json!({"weight_map": {"a": "s2.safetensors", "c": "s1.safetensors", "b": "s2.safetensors"}}),
    ]
    .into_iter()
    .map(|j| j.to_string().into_bytes())
    .collect()
}

/// The seeds of `target` (an unknown target has none).
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    match target {
        "gguf" => gguf_seeds(),
        "safetensors" => safetensors_seeds(),
        "safetensors_index" => index_seeds(),
        "config_json" => config_seeds(),
        "tokenizer_json" => tokenizer_seeds(),
        "openai_request" => REQUESTS.iter().map(|r| r.as_bytes().to_vec()).collect(),
        "chat_template" => {
            TEMPLATES.iter().map(|t| [t.as_bytes(), b"\0", "Hello é 🙂 a".as_bytes()].concat()).collect()
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_has_seeds_and_every_seed_runs_clean() {
        for (name, f) in crate::TARGETS {
            let s = seeds(name);
            assert!(!s.is_empty(), "{name}");
            for seed in &s {
                f(seed);
            }
        }
        crate::targets::cleanup();
    }

    #[test]
    fn the_model_seeds_are_valid_models() {
        let f = encore_models::gguf::GgufFile::from_bytes(std::path::Path::new("seed.gguf"), gguf_seeds().remove(0));
        let cfg = f.as_ref().unwrap().model_config().unwrap();
        let w = encore_models::gguf::GgufWeights::new(f.unwrap()).unwrap();
        assert!(encore_models::weights::validate_weights(&cfg, &w).unwrap().is_empty());
        for c in config_seeds() {
            encore_models::config::ModelConfig::parse(std::str::from_utf8(&c).unwrap(), "seed").unwrap();
        }
    }
}
