//! The built-in default model (SmolLM2-135M-Instruct, Q4_1 GGUF): fetched into encore's cache
//! on first use, then its config, tensor names and shapes, tokenizer and chat template are
//! checked against HF's (tests/golden/smollm2.json, written by tools/golden.py).

use encore_models::config::Arch;
use encore_models::golden::{golden_dir, GreedyGolden};
use encore_models::hub::{default_model_path, open_model};
use encore_tensor::rope::RopeScaling;
use encore_tensor::DType;

#[test]
fn default_model_matches_hf_config_tokenizer_and_chat_template() {
    let path = default_model_path().expect("fetching the default model");
    let m = open_model(&path).unwrap();
    let c = &m.config;
    assert_eq!(c.arch, Arch::Llama);
    assert_eq!((c.hidden_size, c.intermediate_size, c.num_hidden_layers), (576, 1536, 30));
    assert_eq!((c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.vocab_size), (9, 3, 64, 49152));
    assert_eq!((c.rope_theta, c.rope_scaling.clone(), c.max_position_embeddings), (100000.0, RopeScaling::None, 8192));
    assert_eq!(
        (c.rms_norm_eps, c.tie_word_embeddings, c.bos_token_id, c.eos_token_ids.clone()),
        (1e-5, true, Some(1), vec![2])
    );

    let w = &m.weights;
    assert_eq!(w.names().len(), 2 + 30 * 9);
    assert_eq!(w.dims("model.embed_tokens.weight"), Some(vec![49152, 576]));
    assert_eq!(w.dims("model.layers.29.self_attn.k_proj.weight"), Some(vec![192, 576]));
    assert_eq!(w.dims("model.layers.0.mlp.down_proj.weight"), Some(vec![576, 1536]));
    let q = w.get_shaped("model.layers.0.self_attn.q_proj.weight", &[576, 576], DType::F32).unwrap().to_f32();
    assert!(q.iter().all(|v| v.is_finite()) && q.iter().filter(|&&v| v != 0.0).count() > q.len() / 2);
    let norm = w.get("model.norm.weight", DType::BF16).unwrap();
    assert_eq!((norm.dtype, norm.dims.clone()), (DType::BF16, vec![576]));

    let golden = GreedyGolden::load(&golden_dir().join("smollm2.json")).unwrap();
    let why = format!("(golden {} from {})", golden.path.display(), golden.generator);
    let tok = m.tokenizer.as_ref().unwrap();
    assert_eq!(tok.bos(), Some((1, "<|im_start|>")));
    assert!(!tok.adds_bos(), "SmolLM2 adds no BOS");
    for case in &golden.tokenizer_cases {
        assert_eq!(tok.encode(&case.text, false).unwrap(), case.ids, "{:?} {why}", case.text);
        assert_eq!(tok.encode(&case.text, true).unwrap(), case.ids, "{:?}: nothing added {why}", case.text);
        assert_eq!(tok.decode(&case.ids, false).unwrap(), case.text);
    }
    let template = m.chat_template.as_ref().unwrap();
    for case in &golden.cases {
        let prompt = template.render(&case.messages, true).unwrap();
        assert_eq!(prompt, case.prompt, "{why}");
        assert_eq!(tok.encode(&prompt, false).unwrap(), case.prompt_ids, "{why}");
        assert_eq!(case.generated_ids.len(), 16);
        assert_eq!(tok.decode(&case.generated_ids, false).unwrap(), case.generated_text, "{why}");
        let mut stream = tok.stream_decoder(false);
        let mut text = String::new();
        for &id in &case.generated_ids {
            text.push_str(&stream.step(id).unwrap());
        }
        text.push_str(&stream.flush().unwrap());
        assert_eq!(text, case.generated_text);
    }
}
