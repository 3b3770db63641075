//! Offline generation on the engine API: every prompt is added as a request (prompt `i`
//! samples with seed `seed + i`), then the engine steps until all are done. The same
//! continuous-batching loop as the server; no second decode loop.

use crate::llm_engine::LlmEngine;
use crate::sampler::SamplingParams;
use crate::sequence::FinishReason;
use crate::EngineError;
use encore_tensor::Backend;
use std::time::Instant;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct GenStats {
    pub prompt_tokens: usize,
    /// Time in steps that ran prompt tokens (prefill, and decodes mixed with it).
    pub prefill_secs: f64,
    pub decode_steps: usize,
    pub generated_tokens: usize,
    /// Time in pure decode steps.
    pub decode_secs: f64,
    /// Pure decode steps that replayed a graph.
    pub graphed_steps: usize,
    pub host_sampled_rows: u64,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Generation {
    /// Generated ids per prompt (EOS excluded).
    pub tokens: Vec<Vec<u32>>,
    pub finish: Vec<Option<FinishReason>>,
    pub stats: GenStats,
}

/// What the caller says after each token of prompt `i`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// End this sequence now (e.g. a stop string was seen).
    Stop,
}

pub fn generate<B: Backend>(
    engine: &mut LlmEngine<B>,
    prompts: &[Vec<u32>],
    params: &SamplingParams,
    mut on_token: impl FnMut(usize, u32) -> Flow,
) -> Result<Generation, EngineError> {
    let mut ids = Vec::with_capacity(prompts.len());
    for (i, p) in prompts.iter().enumerate() {
        let pi = SamplingParams { seed: params.seed.wrapping_add(i as u64), ..params.clone() };
        ids.push(engine.add_request(p.clone(), pi).map_err(|e| match e {
            EngineError::Config(m) if prompts.len() > 1 => EngineError::Config(format!("prompt {i}: {m}")),
            e => e,
        })?);
    }
    let index = |id| ids.iter().position(|&x| x == id).expect("outputs name our requests");
    let mut out =
        Generation { tokens: vec![Vec::new(); prompts.len()], finish: vec![None; prompts.len()], ..Default::default() };
    out.stats.prompt_tokens = prompts.iter().map(Vec::len).sum();
    let before = engine.counters();
    while engine.has_unfinished() {
        let t0 = Instant::now();
        let decode_before = engine.counters().decode_steps;
        let outs = engine.step()?;
        let secs = t0.elapsed().as_secs_f64();
        if engine.counters().decode_steps > decode_before {
            out.stats.decode_secs += secs;
        } else {
            out.stats.prefill_secs += secs;
        }
        for o in outs {
            let i = index(o.id);
            if let Some(tok) = o.token {
                out.tokens[i].push(tok);
                if o.finished.is_none() && on_token(i, tok) == Flow::Stop {
                    engine.finish(o.id, FinishReason::Stop);
                    out.finish[i] = Some(FinishReason::Stop);
                    continue;
                }
                if o.finished.is_some() {
                    on_token(i, tok);
                }
            }
            if o.finished.is_some() {
                out.finish[i] = o.finished;
            }
        }
    }
    let c = engine.counters();
    out.stats.decode_steps = (c.decode_steps - before.decode_steps) as usize;
    out.stats.graphed_steps = (c.graphed_steps - before.graphed_steps) as usize;
    out.stats.generated_tokens = (c.generated_tokens - before.generated_tokens) as usize;
    out.stats.host_sampled_rows = c.host_sampled_rows - before.host_sampled_rows;
    Ok(out)
}
