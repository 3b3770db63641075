//! `encore bench --device cpu`: what a CPU user can measure: a real model file (safetensors
//! or GGUF, the default model when none is given) loaded as `generate` loads it, then the
//! prefill of one prompt and eager decode steps at each batch size, all through the
//! engine's `ModelRunner` (the same step as generation). Wall-clock medians.

use crate::model_runner::{DecodeRow, Eager, ModelRunner, RunnerConfig};
use crate::EngineError;
use encore_models::hub::ModelFiles;
use encore_models::Llama;
use encore_tensor::testing::Rng;
use encore_tensor::DType;
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct CpuBenchConfig {
    pub dtype: DType,
    pub batches: Vec<usize>,
    pub prefill_tokens: usize,
    /// Decode steps timed per batch size.
    pub steps: usize,
    /// Position the decode rows start at.
    pub pos: usize,
}

#[derive(Clone, Debug, Default)]
pub struct CpuBenchReport {
    pub threads: usize,
    pub weight_bytes: usize,
    pub prefill_tok_s: f64,
    /// (batch, ms per step, tokens/s)
    pub decode: Vec<(usize, f64, f64)>,
}

pub fn run_cpu_bench(files: &ModelFiles, cfg: &CpuBenchConfig) -> Result<CpuBenchReport, EngineError> {
    let max_batch = cfg.batches.iter().copied().max().unwrap_or(1);
    let ctx = (cfg.pos + cfg.steps + 2).max(cfg.prefill_tokens + 1);
    let b = encore_cpu::Cpu;
    let model = Llama::load(&b, files.config.clone(), files.weights.as_ref(), cfg.dtype, ctx)?;
    let weight_bytes = model.weight_bytes();
    let bs = 16;
    let rc = RunnerConfig {
        block_size: bs,
        num_blocks: max_batch * ctx.div_ceil(bs),
        max_num_seqs: max_batch,
        max_num_batched_tokens: cfg.prefill_tokens.max(max_batch),
        max_model_len: ctx,
    };
    let runner = ModelRunner::new(b, model, rc)?;
    let mut rng = Rng::seeded(5);
    let vocab = files.config.vocab_size;
    let prompt: Vec<u32> = (0..cfg.prefill_tokens).map(|_| rng.below(vocab) as u32).collect();
    runner.prefill_static(0, &prompt, 0)?; // warm-up
    let mut times = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        runner.prefill_static(0, &prompt, 0)?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let mut report = CpuBenchReport {
        threads: rayon::current_num_threads(),
        weight_bytes,
        prefill_tok_s: cfg.prefill_tokens as f64 / times[1],
        decode: Vec::new(),
    };
    for &batch in &cfg.batches {
        let mut rows: Vec<DecodeRow> =
            (0..batch).map(|s| DecodeRow::greedy(s, rng.below(vocab) as u32, cfg.pos)).collect();
        let mut steps = Vec::with_capacity(cfg.steps);
        for _ in 0..cfg.steps {
            let t = Instant::now();
            runner.decode_static(&mut Eager, &rows, None)?;
            let next = runner.read_next(batch)?;
            steps.push(t.elapsed().as_secs_f64());
            for (r, tok) in rows.iter_mut().zip(next) {
                r.token = tok;
                r.pos += 1;
            }
        }
        steps.sort_by(f64::total_cmp);
        let ms = steps[steps.len() / 2] * 1e3;
        report.decode.push((batch, ms, batch as f64 * 1e3 / ms));
    }
    Ok(report)
}

impl CpuBenchReport {
    pub fn to_table(&self, model: &str, dtype: DType) -> String {
        let mut s = format!(
            "{model} on cpu ({dtype}, {} threads): weights {:.1} MB, prefill {:.1} tok/s\n",
            self.threads,
            self.weight_bytes as f64 / 1e6,
            self.prefill_tok_s
        );
        s += &format!("{:>5} {:>10} {:>10}\n", "batch", "ms/step", "tok/s");
        for (b, ms, tps) in &self.decode {
            s += &format!("{b:>5} {ms:>10.2} {tps:>10.1}\n");
        }
        s
    }

    pub fn to_json(&self, model: &str, dtype: DType) -> serde_json::Value {
        serde_json::json!({"model": model, "device": "cpu", "dtype": dtype.to_string(), "threads": self.threads,
            "weight_bytes": self.weight_bytes, "prefill_tok_s": self.prefill_tok_s,
            "decode": self.decode.iter().map(|(b, ms, t)| serde_json::json!({"batch": b, "ms_per_step": ms, "tokens_per_s": t})).collect::<Vec<_>>()})
    }
}
