//! The decoder against Hugging Face transformers, on the CPU backend in f32: logits of the
//! tiny random-weight Llama-3 / Qwen2 / Mistral / Qwen3 / Gemma 3 models (prefill rows and 8 decode steps),
//! and the real SmolLM2's and Gemma 3 270M's greedy tokens. Golden files: tests/golden, written by
//! tools/golden.py (the failing assertion names it).

use encore_cpu::Cpu;
use encore_engine::{generate, Eager, Flow, LlmEngine, ModelRunner, RunnerConfig, SamplingParams};
use encore_models::gguf::{GgufFile, GgufWeights};
use encore_models::golden::{golden_dir, GreedyGolden, IdsGolden, LogitsGolden};
use encore_models::hub::{default_model_path, gemma3_270m_path, open_model};
use encore_models::weights::validate_weights;
use encore_models::{HostInputs, InputDims, Llama, LogitRow, StepInputs, StepKind, TokenRow};
use encore_tensor::{Backend, DType};

/// Max |ours - HF| over the row, against a bound scaled by the row's magnitude.
fn check_row(what: &str, got: &[f32], want: &[f32]) {
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1.0);
    let diff = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(diff <= 2e-4 * scale, "{what}: max |logit diff| {diff:e} (row scale {scale})");
}

#[test]
fn tiny_models_match_transformers_logits() {
    for name in ["tiny-llama3", "tiny-qwen2", "tiny-mistral", "tiny-qwen3", "tiny-gemma3"] {
        let g = LogitsGolden::load(&golden_dir().join(format!("{name}.logits.safetensors"))).unwrap();
        let why = format!("{name} (golden by {})", g.generator);
        let files = open_model(&g.model_dir).unwrap();
        let b = Cpu;
        let model = Llama::load(&b, files.config.clone(), files.weights.as_ref(), DType::F32, 64).unwrap();
        let v = files.config.vocab_size;
        let t = g.prompt_ids.len();
        let state = model.new_state(&b, t, t).unwrap();
        // one sequence over 8 blocks of 8 slots, laid out in reverse (paged, not contiguous)
        let inputs = StepInputs::new(&b, InputDims { max_tokens: t, max_seqs: t, max_blocks: 8 }).unwrap();
        let cache = model.new_cache(&b, 8, 8).unwrap();
        let table: Vec<i32> = (0..8).rev().collect();
        let row =
            |id: u32, p: usize| TokenRow { id, position: p as i32, seq: 0, slot: table[p / 8] * 8 + (p % 8) as i32 };
        let mut host = HostInputs { block_tables: vec![table.clone()], ..Default::default() };
        for (p, &id) in g.prompt_ids.iter().enumerate() {
            host.tokens.push(row(id, p));
            host.logits.push(LogitRow::greedy(p as i32));
        }
        inputs.upload(&b, &host).unwrap();
        model.forward(&b, &state, &inputs, &cache, t, t, StepKind::Mixed).unwrap();
        let got = b.download(&state.logits).unwrap().to_f32();
        let want = g.prefill_logits.to_f32();
        for r in 0..t {
            check_row(&format!("{why} prefill row {r}"), &got[r * v..(r + 1) * v], &want[r * v..(r + 1) * v]);
        }
        let want = g.decode_logits.to_f32();
        for (k, &id) in g.decode_ids.iter().enumerate() {
            let host = HostInputs {
                tokens: vec![row(id, t + k)],
                logits: vec![LogitRow::greedy(0)],
                block_tables: vec![table.clone()],
            };
            inputs.upload(&b, &host).unwrap();
            model.forward(&b, &state, &inputs, &cache, 1, 1, StepKind::Decode).unwrap();
            let got = b.download(&state.logits.narrow(0, 0, 1).unwrap()).unwrap().to_f32();
            check_row(&format!("{why} decode step {k}"), &got, &want[k * v..(k + 1) * v]);
        }
    }
}

/// `n` greedy tokens of each prompt, batched through the engine on the CPU (EOS is not
/// special in the golden runs: exactly `n` tokens each).
fn greedy_on_cpu(model: Llama<Cpu>, prompts: &[Vec<u32>], n: usize, max_len: usize) -> Vec<Vec<u32>> {
    let rc = RunnerConfig {
        block_size: 16,
        num_blocks: max_len.div_ceil(16) * prompts.len(),
        max_num_seqs: prompts.len(),
        max_num_batched_tokens: 64,
        max_model_len: max_len,
    };
    let runner = ModelRunner::new(Cpu, model, rc).unwrap();
    let mut engine = LlmEngine::new(runner, Box::new(Eager), vec![]);
    let params = SamplingParams { max_tokens: n, ..Default::default() };
    generate(&mut engine, prompts, &params, |_, _| Flow::Continue).unwrap().tokens
}

#[test]
fn smollm2_greedy_tokens_match_transformers() {
    let golden = GreedyGolden::load(&golden_dir().join("smollm2.json")).unwrap();
    let files = open_model(&default_model_path().expect("fetching the default model")).unwrap();
    let prompts: Vec<Vec<u32>> = golden.cases.iter().map(|c| c.prompt_ids.clone()).collect();
    let n = golden.cases[0].generated_ids.len();
    let model = Llama::load(&Cpu, files.config.clone(), files.weights.as_ref(), DType::F32, 256).unwrap();
    let out = greedy_on_cpu(model, &prompts, n, 256);
    for (c, got) in golden.cases.iter().zip(&out) {
        assert_eq!(
            got,
            &c.generated_ids,
            "SmolLM2 greedy for {:?} (golden {} by {})",
            c.prompt,
            golden.path.display(),
            golden.generator
        );
    }
}

/// Gemma 3 270M (the Q4_K_M GGUF: its Q4_K, Q6_K and Q8_0 blocks kept, Q5_0 expanded to f32)
/// on the CPU against transformers' f32 run of the dequantised file, by token ids (the
/// golden records HF's prompt ids, so encore's GGUF tokenizer is not involved): the same
/// 16 greedy tokens, as SmolLM2's test asks.
#[test]
fn gemma3_270m_greedy_tokens_match_transformers() {
    let golden = IdsGolden::load(&golden_dir().join("gemma3-270m.json")).unwrap();
    let file = GgufFile::open(&gemma3_270m_path().expect("fetching Gemma 3 270M")).unwrap();
    let cfg = file.model_config().unwrap();
    let src = GgufWeights::new(file).unwrap();
    let warnings = validate_weights(&cfg, &src).unwrap();
    assert!(matches!(&warnings[..], [w] if w.contains("Q5_0 tensors are expanded")), "{warnings:?}");
    let prompts: Vec<Vec<u32>> = golden.cases.iter().map(|c| c.prompt_ids.clone()).collect();
    let n = golden.cases[0].generated_ids.len();
    let model = Llama::load(&Cpu, cfg, &src, DType::F32, 64).unwrap();
    let kinds = model.weight_kinds();
    eprintln!("Gemma 3 270M weights: {kinds}");
    assert!(["Q4_K", "Q6_K", "Q8_0"].iter().all(|k| kinds.contains(k)), "blocks kept as stored: {kinds}");
    let out = greedy_on_cpu(model, &prompts, n, 64);
    for (c, got) in golden.cases.iter().zip(&out) {
        assert_eq!(
            got,
            &c.generated_ids,
            "Gemma 3 270M greedy for {:?} (golden {} by {})",
            c.prompt,
            golden.path.display(),
            golden.generator
        );
    }
}

/// The same golden through text: encore's SentencePiece tokenizer built from the GGUF
/// (`tokenizer.ggml.model = llama`, Gemma's normalizer) encodes each prompt to transformers'
/// ids (BOS included) and decodes the golden continuation to transformers' text.
#[test]
fn gemma3_270m_text_round_trips_through_the_gguf_tokenizer() {
    let golden = IdsGolden::load(&golden_dir().join("gemma3-270m.json")).unwrap();
    let file = GgufFile::open(&gemma3_270m_path().expect("fetching Gemma 3 270M")).unwrap();
    let tok = encore_models::tokenizer::Tokenizer::from_gguf(&file).unwrap();
    for c in &golden.cases {
        assert_eq!(tok.encode(&c.prompt, true).unwrap(), c.prompt_ids, "encoding {:?}", c.prompt);
        assert_eq!(tok.decode(&c.generated_ids, true).unwrap(), c.generated_text, "decoding for {:?}", c.prompt);
    }
}
