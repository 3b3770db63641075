//! Self-consistency of the decoder over the KV cache, on the CPU backend with random
//! weights: decoding a token after a prefill must give the logits a longer prefill gives,
//! and a padded batch must give each sequence the logits it gets alone.

use encore_cpu::Cpu;
use encore_engine::{
    generate, Eager, EngineError, Flow, LlmEngine, ModelRunner, RunnerConfig, SamplingParams, SeqChunk,
};
use encore_models::config::{Arch, ArchFlags, GluActivation, ModelConfig};
use encore_models::Llama;
use encore_tensor::rope::RopeScaling;
use encore_tensor::testing::Rng;
use encore_tensor::{DType, SampleParams};

const GREEDY: SampleParams = SampleParams::GREEDY;

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
        flags: Default::default(),
    }
}

const BS: usize = 4;

fn runner(cfg: ModelConfig, max_num_seqs: usize) -> ModelRunner<Cpu> {
    let b = Cpu;
    let model = Llama::random(&b, cfg, DType::F32, 64, 11).unwrap();
    let rc =
        RunnerConfig { block_size: BS, num_blocks: 64, max_num_seqs, max_num_batched_tokens: 8, max_model_len: 64 };
    ModelRunner::new(b, model, rc).unwrap()
}

/// Run `tokens` from position `start` in chunks of the step budget; logits of the last are
/// left in logit row 0.
fn prefill(r: &ModelRunner<Cpu>, table: &[u32], tokens: &[u32], start: usize) {
    let chunk = r.cfg.max_num_batched_tokens;
    for (c, part) in tokens.chunks(chunk).enumerate() {
        let s = start + c * chunk;
        let last = s + part.len() == start + tokens.len();
        let step = SeqChunk { tokens: part, start: s, block_table: table, sample: last, uniform: 0, params: GREEDY };
        r.step(&mut Eager, &[step]).unwrap();
    }
}

/// A block table of distinct, scattered blocks: `[first, first + stride, ...]` mod 64.
fn table(first: u32, stride: u32) -> Vec<u32> {
    (0..16).map(|i| (first + i * stride) % 64).collect()
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
        let toks = tokens(13); // 13 > the step budget of 8: the prefill runs in two chunks
        let r = runner(tiny(arch, bias, window), 1);
        prefill(&r, &table(0, 1), &toks, 0);
        let want = r.read_logits(1).unwrap().remove(0);
        // a different, scattered block layout; decode the last token on its own
        let r = runner(tiny(arch, bias, window), 1);
        let t = table(5, 7);
        prefill(&r, &t, &toks[..12], 0);
        let step =
            SeqChunk { tokens: &toks[12..], start: 12, block_table: &t, sample: true, uniform: 0, params: GREEDY };
        r.step(&mut Eager, &[step]).unwrap();
        close(&r.read_logits(1).unwrap()[0], &want, &format!("{arch:?}"));
    }
}

/// Qwen3 (q/k norms) and Gemma 3 (every Gemma switch; layers sliding at window 5, full,
/// sliding) keep the prefill/decode consistency of the others.
#[test]
fn qwen3_and_gemma3_decode_after_prefill_matches_longer_prefill() {
    let qwen3 =
        ModelConfig { flags: ArchFlags { qk_norm: true, ..Default::default() }, ..tiny(Arch::Qwen3, false, None) };
    let gemma3 = ModelConfig {
        num_hidden_layers: 3,
        flags: ArchFlags {
            qk_norm: true,
            norm_plus_one: true,
            scale_embeddings: true,
            sandwich_norms: true,
            activation: GluActivation::GeluTanh,
            query_pre_attn_scalar: Some(12.0),
            sliding_layers: vec![true, false, true],
            rope_local_theta: Some(100.0),
            final_logit_softcapping: Some(5.0),
        },
        ..tiny(Arch::Gemma3, false, Some(5))
    };
    for cfg in [qwen3, gemma3] {
        let toks = tokens(13);
        let r = runner(cfg.clone(), 1);
        prefill(&r, &table(0, 1), &toks, 0);
        let want = r.read_logits(1).unwrap().remove(0);
        let r = runner(cfg.clone(), 1);
        let t = table(5, 7);
        prefill(&r, &t, &toks[..12], 0);
        let step =
            SeqChunk { tokens: &toks[12..], start: 12, block_table: &t, sample: true, uniform: 0, params: GREEDY };
        r.step(&mut Eager, &[step]).unwrap();
        close(&r.read_logits(1).unwrap()[0], &want, &format!("{:?}", cfg.arch));
    }
}

/// A sequence that starts from another's cached prefix blocks (shared, not recomputed) gets
/// the logits of a cold prefill of the whole prompt.
#[test]
fn a_prefix_cache_hit_gives_the_logits_of_a_cold_prefill() {
    let cfg = tiny(Arch::Llama, false, None);
    let toks = tokens(11);
    let r = runner(cfg, 2);
    let a = table(0, 1);
    prefill(&r, &a, &toks, 0);
    let cold = r.read_logits(1).unwrap().remove(0);
    // b shares a's first two blocks (8 tokens) and computes only tokens 8..11
    let mut b = a[..2].to_vec();
    b.extend(table(40, 3).into_iter().take(14));
    prefill(&r, &b, &toks[8..], 8);
    close(&r.read_logits(1).unwrap()[0], &cold, "prefix hit");
}

#[test]
fn padded_batch_matches_each_sequence_alone() {
    let cfg = tiny(Arch::Llama, false, None);
    let prompts = [tokens(5), tokens(9), tokens(3)];
    let batch = runner(cfg.clone(), 4);
    let tables: Vec<Vec<u32>> = (0..3).map(|s| table(s * 16, 1)).collect();
    for (s, p) in prompts.iter().enumerate() {
        prefill(&batch, &tables[s], &p[..p.len() - 1], 0);
    }
    let rows: Vec<SeqChunk> = prompts
        .iter()
        .enumerate()
        .map(|(s, p)| SeqChunk {
            tokens: &p[p.len() - 1..],
            start: p.len() - 1,
            block_table: &tables[s],
            sample: true,
            uniform: 0,
            params: GREEDY,
        })
        .collect();
    batch.step(&mut Eager, &rows).unwrap(); // 3 rows in bucket 4: one padded row
    let got = batch.read_logits(3).unwrap();
    for (s, p) in prompts.iter().enumerate() {
        let alone = runner(cfg.clone(), 1);
        prefill(&alone, &table(0, 1), p, 0);
        close(&got[s], &alone.read_logits(1).unwrap()[0], &format!("sequence {s}"));
    }
}

fn engine(max_num_seqs: usize, num_blocks: usize) -> LlmEngine<Cpu> {
    let model = Llama::random(&Cpu, tiny(Arch::Llama, false, None), DType::F32, 64, 11).unwrap();
    let rc = RunnerConfig { block_size: BS, num_blocks, max_num_seqs, max_num_batched_tokens: 16, max_model_len: 64 };
    LlmEngine::new(ModelRunner::new(Cpu, model, rc).unwrap(), Box::new(Eager), vec![])
}

/// Continuous batching: prompts of different lengths arriving at different steps, chunked
/// prefills mixed with decodes, a cache small enough to force preemption, shared prompts
/// hitting the prefix cache: every request's greedy tokens equal the same request alone.
#[test]
fn concurrent_greedy_requests_equal_each_request_alone() {
    let params = SamplingParams { max_tokens: 12, ..Default::default() };
    let mut rng = Rng::fresh("concurrent requests");
    let mut prompts: Vec<Vec<u32>> =
        (0..8).map(|_| (0..20 + rng.below(13)).map(|_| 3 + rng.below(90) as u32).collect()).collect();
    prompts.push(prompts[2].clone()); // an exact repeat: prefix-cache hit
    let alone: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| {
            let mut e = engine(1, 64);
            generate(&mut e, std::slice::from_ref(p), &params, |_, _| Flow::Continue).unwrap().tokens.remove(0)
        })
        .collect();
    // 24 blocks of 4 hold 96 tokens. Every sequence grows to 32..44 tokens (8..11 blocks) and
    // a request arrives every second step, so at least three run at once: the cache must
    // preempt whatever the random lengths are.
    let mut e = engine(6, 24);
    let mut ids = Vec::new();
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); prompts.len()];
    let mut steps = 0;
    while ids.len() < prompts.len() || e.has_unfinished() {
        if ids.len() < prompts.len() && steps % 2 == 0 {
            ids.push(e.add_request(prompts[ids.len()].clone(), params.clone()).unwrap());
        }
        for o in e.step().unwrap() {
            let i = ids.iter().position(|&x| x == o.id).unwrap();
            out[i].extend(o.token);
        }
        steps += 1;
        assert!(steps < 2000, "the engine never finished");
    }
    assert_eq!(out, alone);
    let c = e.counters();
    assert!(c.preemptions > 0, "the cache was meant to be too small: {c:?}");
    assert!(c.cached_prompt_tokens > 0, "the repeated prompt was meant to hit the prefix cache: {c:?}");
    let g = e.gauges();
    assert_eq!((g.kv_blocks_free, g.running, g.waiting), (24, 0, 0), "everything returned");
}

#[test]
fn abort_frees_the_blocks_at_once() {
    let mut e = engine(4, 32);
    let id = e.add_request(tokens(20), SamplingParams { max_tokens: 50, ..Default::default() }).unwrap();
    e.step().unwrap();
    assert!(e.gauges().kv_blocks_free < 32);
    assert!(e.abort(id));
    assert_eq!(e.gauges().kv_blocks_free, 32);
    assert!(!e.has_unfinished());
    assert!(!e.abort(id), "a second abort finds nothing");
}

#[test]
fn requests_that_can_never_run_are_refused() {
    let mut e = engine(4, 32);
    let p = SamplingParams::default();
    assert!(matches!(e.add_request(vec![], p.clone()), Err(EngineError::Config(_))));
    assert!(matches!(e.add_request(vec![5; 64], p.clone()), Err(EngineError::ContextFull { .. })));
    assert!(matches!(e.add_request(vec![5, 500], p.clone()), Err(EngineError::Config(_))), "token past the vocab");
    let bad = SamplingParams { top_p: 0.0, ..p };
    assert!(matches!(e.add_request(vec![5], bad), Err(EngineError::Config(_))));
}

#[test]
fn sampled_generation_is_reproducible_from_its_seed() {
    let prompts = vec![tokens(6), tokens(4)];
    let run = |seed: u64, rep: f32| {
        let mut e = engine(2, 64);
        let params = SamplingParams {
            temperature: 1.5,
            top_k: 40,
            top_p: 0.95,
            repetition_penalty: rep,
            max_tokens: 24,
            seed,
            ..Default::default()
        };
        generate(&mut e, &prompts, &params, |_, _| Flow::Continue).unwrap().tokens
    };
    // on the device (the CPU backend's `sample`), and on the host (repetition penalty)
    for rep in [1.0, 1.3] {
        assert_eq!(run(7, rep), run(7, rep), "repetition penalty {rep}: same seed, same tokens");
        assert_ne!(run(7, rep), run(8, rep), "repetition penalty {rep}: the seed matters");
    }
}

/// Per-row sampling: requests with different settings (greedy, sampled, filtered, a host-side
/// repetition penalty) in one batch each give the tokens they give alone with the same seed.
#[test]
fn mixed_sampling_settings_in_one_batch_equal_each_alone() {
    let base = SamplingParams { max_tokens: 10, ..Default::default() };
    let settings = [
        base.clone(),
        SamplingParams { temperature: 1.0, seed: 5, ..base.clone() },
        SamplingParams { temperature: 0.7, top_k: 20, top_p: 0.9, seed: 9, ..base.clone() },
        SamplingParams { temperature: 1.2, min_p: 0.05, repetition_penalty: 1.3, seed: 3, ..base.clone() },
    ];
    let prompts = [tokens(7), tokens(3), tokens(12), tokens(5)];
    let run_alone = |p: &Vec<u32>, s: &SamplingParams| {
        let mut e = engine(1, 64);
        let id = e.add_request(p.clone(), s.clone()).unwrap();
        let mut out = Vec::new();
        while e.has_unfinished() {
            out.extend(e.step().unwrap().into_iter().filter(|o| o.id == id).filter_map(|o| o.token));
        }
        out
    };
    let alone: Vec<Vec<u32>> = prompts.iter().zip(&settings).map(|(p, s)| run_alone(p, s)).collect();
    let mut e = engine(4, 64);
    let ids: Vec<_> =
        prompts.iter().zip(&settings).map(|(p, s)| e.add_request(p.clone(), s.clone()).unwrap()).collect();
    let mut out = vec![Vec::new(); 4];
    while e.has_unfinished() {
        for o in e.step().unwrap() {
            out[ids.iter().position(|&i| i == o.id).unwrap()].extend(o.token);
        }
    }
    assert_eq!(out, alone);
    assert!(e.counters().host_sampled_rows > 0, "the penalised request samples on the host");
}
