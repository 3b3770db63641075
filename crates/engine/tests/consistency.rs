//! Self-consistency of the decoder over the KV cache, on the CPU backend with random
//! weights: decoding a token after a prefill must give the logits a longer prefill gives,
//! and a padded batch must give each sequence the logits it gets alone.

use encore_cpu::Cpu;
use encore_engine::{DecodeRow, ModelRunner, RunnerConfig};
use encore_models::config::{Arch, ModelConfig};
use encore_models::Llama;
use encore_tensor::rope::RopeScaling;
use encore_tensor::testing::Rng;
use encore_tensor::DType;

fn tiny(arch: Arch, bias: bool, window: Option<usize>) -> ModelConfig {
    ModelConfig {
        arch,
        hidden_size: 64,
        intermediate_size: 96,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 16,
        vocab_size: 101,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_scaling: RopeScaling::None,
        max_position_embeddings: 256,
        tie_word_embeddings: false,
        attention_bias: bias,
        sliding_window: window,
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
        torch_dtype: None,
    }
}

fn runner(cfg: ModelConfig, max_batch: usize) -> ModelRunner<Cpu> {
    let b = Cpu;
    let model = Llama::random(&b, cfg, DType::F32, 64, 11).unwrap();
    let rc = RunnerConfig { max_seqs: 4, max_ctx: 64, prefill_chunk: 8, max_batch };
    ModelRunner::new(b, model, rc).unwrap()
}

fn close(a: &[f32], b: &[f32], what: &str) {
    let max = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(max < 1e-4, "{what}: max |diff| {max}");
}

fn tokens(n: usize) -> Vec<u32> {
    let mut rng = Rng::fresh("consistency");
    (0..n).map(|_| 3 + rng.below(90) as u32).collect()
}

#[test]
fn decode_after_prefill_matches_longer_prefill() {
    for (arch, bias, window) in [(Arch::Llama, false, None), (Arch::Qwen2, true, None), (Arch::Mistral, false, Some(5))]
    {
        let toks = tokens(13); // 13 > prefill_chunk: the prefill runs in two chunks
        let mut r = runner(tiny(arch, bias, window), 1);
        r.prefill(0, &toks, 0).unwrap();
        let want = r.read_logits(1).unwrap().remove(0);
        let mut r = runner(tiny(arch, bias, window), 1);
        r.prefill(0, &toks[..12], 0).unwrap();
        r.decode_eager(&[DecodeRow { seq: 0, token: toks[12], pos: 12, uniform: 0 }], 1).unwrap();
        close(&r.read_logits(1).unwrap()[0], &want, &format!("{arch:?}"));
    }
}

#[test]
fn padded_batch_matches_each_sequence_alone() {
    let cfg = tiny(Arch::Llama, false, None);
    let prompts = [tokens(5), tokens(9), tokens(3)];
    let mut batch = runner(cfg.clone(), 4);
    for (s, p) in prompts.iter().enumerate() {
        batch.prefill(s, &p[..p.len() - 1], 0).unwrap();
    }
    let rows: Vec<DecodeRow> = prompts
        .iter()
        .enumerate()
        .map(|(s, p)| DecodeRow { seq: s, token: p[p.len() - 1], pos: p.len() - 1, uniform: 0 })
        .collect();
    batch.decode_eager(&rows, 4).unwrap();
    let got = batch.read_logits(3).unwrap();
    for (s, p) in prompts.iter().enumerate() {
        let mut alone = runner(cfg.clone(), 1);
        alone.prefill(0, p, 0).unwrap();
        close(&got[s], &alone.read_logits(1).unwrap()[0], &format!("sequence {s}"));
    }
}

#[test]
fn sampled_generation_is_reproducible_from_its_seed() {
    use encore_engine::{generate, Eager, Flow, SamplingParams};
    let prompts = vec![tokens(6), tokens(4)];
    let run = |seed: u64, rep: f32| {
        let mut r = runner(tiny(Arch::Llama, false, None), 2);
        let params = SamplingParams {
            temperature: 1.5,
            top_k: 40,
            top_p: 0.95,
            repetition_penalty: rep,
            max_tokens: 24,
            seed,
            ..Default::default()
        };
        generate(&mut r, &mut Eager, &prompts, &params, &[], |_, _| Flow::Continue).unwrap().tokens
    };
    // on the device (the CPU backend's `sample`), and on the host (repetition penalty)
    for rep in [1.0, 1.3] {
        assert_eq!(run(7, rep), run(7, rep), "repetition penalty {rep}: same seed, same tokens");
        assert_ne!(run(7, rep), run(8, rep), "repetition penalty {rep}: the seed matters");
    }
}
