//! The golden files themselves: readable, consistent (each greedy token is the argmax of the
//! logits before it), pointing at a model that loads; a bad one names its generator.

use encore_models::config::ModelConfig;
use encore_models::golden::{golden_dir, GreedyGolden, LogitsGolden, GENERATOR};

fn argmax(row: &[f32]) -> u32 {
    row.iter().enumerate().fold((0, f32::MIN), |best, (i, &v)| if v > best.1 { (i, v) } else { best }).0 as u32
}

#[test]
fn logits_goldens_are_consistent_greedy_runs() {
    for name in ["tiny-llama3", "tiny-qwen2", "tiny-mistral", "tiny-qwen3", "tiny-gemma3"] {
        let g = LogitsGolden::load(&golden_dir().join(format!("{name}.logits.safetensors"))).unwrap();
        assert_eq!(g.generator, GENERATOR);
        let cfg = ModelConfig::from_file(&g.model_dir.join("config.json")).unwrap();
        let v = cfg.vocab_size;
        assert_eq!(g.prefill_logits.dims, vec![g.prompt_ids.len(), v], "{name}");
        assert_eq!(g.decode_logits.dims, vec![8, v], "{name}");
        assert!(g.prompt_ids.iter().chain(&g.decode_ids).all(|&i| (i as usize) < v));
        let prefill = g.prefill_logits.to_f32();
        let decode = g.decode_logits.to_f32();
        let last = &prefill[(g.prompt_ids.len() - 1) * v..];
        assert_eq!(g.decode_ids[0], argmax(last), "{name}");
        for k in 1..8 {
            assert_eq!(g.decode_ids[k], argmax(&decode[(k - 1) * v..k * v]), "{name} step {k}");
        }
        let spread = prefill.iter().fold(0f32, |m, x| m.max(x.abs()));
        assert!(spread > 1.0, "{name}: logits of O(1), not near zero ({spread})");
    }
}

#[test]
fn smollm2_golden_has_three_prompts_of_sixteen_tokens() {
    let g = GreedyGolden::load(&golden_dir().join("smollm2.json")).unwrap();
    assert_eq!((g.generator.as_str(), g.dtype.as_str(), g.cases.len()), (GENERATOR, "f32", 3));
    assert!(g.cases.iter().all(|c| c.generated_ids.len() == 16 && !c.prompt_ids.is_empty()));
    assert!(g.tokenizer_cases.len() >= 5);
}

#[test]
fn a_bad_golden_file_names_its_generator() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.logits.safetensors");
    std::fs::write(&p, b"\x08\0\0\0\0\0\0\0{}      ").unwrap();
    let e = LogitsGolden::load(&p).unwrap_err().to_string();
    assert!(e.contains("tools/golden.py") && e.contains("x.logits.safetensors"), "{e}");
}
