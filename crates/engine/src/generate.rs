//! The generation loop: prefill each prompt, then decode all live sequences as one batch
//! (in the smallest bucket that holds them) until each hits EOS, a stop condition or its
//! token budget. The next token is chosen on the device (argmax, or temperature / top-k /
//! top-p / min-p sampling with a uniform per row drawn from the seeded host RNG), so a step
//! reads back only the token ids; only a repetition penalty, which needs each sequence's
//! history, reads the logits back and samples on the host.

use crate::buckets::{batch_buckets, bucket_for};
use crate::runner::{DecodeRow, ModelRunner};
use crate::sampler::{Sampler, SamplingParams};
use crate::EngineError;
use encore_tensor::{Backend, SampleParams};
use std::time::Instant;

/// How a decode step runs: eagerly, or by replaying a captured graph.
pub trait DecodeStep<B: Backend> {
    fn decode(&mut self, runner: &mut ModelRunner<B>, rows: &[DecodeRow], bucket: usize) -> Result<(), EngineError>;
}

pub struct Eager;

impl<B: Backend> DecodeStep<B> for Eager {
    fn decode(&mut self, runner: &mut ModelRunner<B>, rows: &[DecodeRow], bucket: usize) -> Result<(), EngineError> {
        runner.decode_eager(rows, bucket)
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct GenStats {
    pub prompt_tokens: usize,
    pub prefill_secs: f64,
    pub decode_steps: usize,
    pub generated_tokens: usize,
    pub decode_secs: f64,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Generation {
    /// Generated ids per prompt (EOS excluded).
    pub tokens: Vec<Vec<u32>>,
    pub stats: GenStats,
}

/// What the caller says after each token of sequence `seq`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// The device-side choice for `params`: None (argmax) when greedy, Some when everything but
/// a repetition penalty is asked for (that one needs the history: host sampling).
pub fn device_sampling(params: &SamplingParams) -> Option<SampleParams> {
    (params.temperature > 0.0 && params.repetition_penalty == 1.0).then_some(SampleParams {
        temperature: params.temperature,
        top_k: params.top_k.min(u32::MAX as usize) as u32,
        top_p: params.top_p,
        min_p: params.min_p,
    })
}

pub fn generate<B: Backend>(
    runner: &mut ModelRunner<B>,
    step: &mut dyn DecodeStep<B>,
    prompts: &[Vec<u32>],
    params: &SamplingParams,
    eos: &[u32],
    mut on_token: impl FnMut(usize, u32) -> Flow,
) -> Result<Generation, EngineError> {
    if prompts.len() > runner.cfg.max_batch {
        return Err(EngineError::Config(format!(
            "{} prompts exceed the batch of {}",
            prompts.len(),
            runner.cfg.max_batch
        )));
    }
    if let Some(i) = prompts.iter().position(|p| p.is_empty()) {
        return Err(EngineError::Config(format!("prompt {i} is empty after tokenisation")));
    }
    let buckets = batch_buckets(runner.cfg.max_batch);
    let mut samplers: Vec<Sampler> = (0..prompts.len())
        .map(|i| Sampler::new(SamplingParams { seed: params.seed.wrapping_add(i as u64), ..params.clone() }))
        .collect();
    runner.sampling = device_sampling(params);
    let on_host = !params.is_greedy() && runner.sampling.is_none();
    let mut out = Generation { tokens: vec![Vec::new(); prompts.len()], ..Default::default() };
    let mut history: Vec<Vec<u32>> = prompts.to_vec();
    let mut live: Vec<bool> = vec![true; prompts.len()];
    let mut next: Vec<u32> = vec![0; prompts.len()];

    // prefill each prompt and pick its first token
    let t0 = Instant::now();
    for (s, p) in prompts.iter().enumerate() {
        if p.len() + 1 > runner.cfg.max_ctx {
            return Err(EngineError::ContextFull { needed: p.len() + 1, max_ctx: runner.cfg.max_ctx });
        }
        let u = samplers[s].uniform24();
        runner.prefill_sampled(s, p, 0, u)?;
        next[s] =
            if on_host { samplers[s].sample(&runner.read_logits(1)?[0], &history[s]) } else { runner.read_next(1)?[0] };
        out.stats.prompt_tokens += p.len();
    }
    out.stats.prefill_secs = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    loop {
        // accept the pending tokens; finish sequences that are done
        let mut rows = Vec::new();
        for s in 0..prompts.len() {
            if !live[s] {
                continue;
            }
            let tok = next[s];
            if eos.contains(&tok) {
                live[s] = false;
                continue;
            }
            out.tokens[s].push(tok);
            history[s].push(tok);
            out.stats.generated_tokens += 1;
            let pos = history[s].len() - 1;
            if on_token(s, tok) == Flow::Stop
                || out.tokens[s].len() >= params.max_tokens
                || pos + 1 >= runner.cfg.max_ctx
            {
                live[s] = false;
                continue;
            }
            rows.push(DecodeRow { seq: s, token: tok, pos, uniform: samplers[s].uniform24() });
        }
        if rows.is_empty() {
            break;
        }
        let bucket = bucket_for(rows.len(), &buckets).expect("rows never exceed max_batch");
        step.decode(runner, &rows, bucket)?;
        out.stats.decode_steps += 1;
        if on_host {
            let logits = runner.read_logits(rows.len())?;
            for (r, l) in rows.iter().zip(logits) {
                next[r.seq] = samplers[r.seq].sample(&l, &history[r.seq]);
            }
        } else {
            let ids = runner.read_next(rows.len())?;
            for (r, id) in rows.iter().zip(ids) {
                next[r.seq] = id;
            }
        }
    }
    out.stats.decode_secs = t1.elapsed().as_secs_f64();
    Ok(out)
}
