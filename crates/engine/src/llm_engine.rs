//! LlmEngine: requests in, tokens out. `add_request` queues a prompt with its sampling
//! parameters, `step` runs one schedule -> run -> postprocess round over every live request
//! (continuous batching: requests join and leave between steps), `abort` ends one early.
//! Single-threaded by design (one device, one thread); `worker` puts it on its own thread
//! behind channels, and `generate` drives it in place.
//!
//! Sampling: every row carries its own settings to the device (greedy, or temperature /
//! top-k / top-p / min-p with its uniform), so one step, and one captured graph, serves any
//! mix of requests. Only a repetition penalty needs the history: such a row's logits are
//! read back and the host applies the penalty, then the same rule with the same uniform
//! (`Sampler::sample`). Every host-sampled row is counted in [`EngineCounters`]. Logprobs
//! also read the logits back (no sampling on the host).

use crate::block_manager::BlockManager;
use crate::model_runner::{ModelRunner, SeqChunk, StepRunner};
use crate::sampler::{logprobs, SamplingParams};
use crate::scheduler::{ScheduledBatch, Scheduler, SchedulerConfig};
use crate::sequence::{FinishReason, RequestId, SeqStatus, Sequence};
use crate::EngineError;
use encore_tensor::{Backend, SampleParams};
use std::collections::HashMap;
use std::time::Instant;

/// Log-probability of a generated token and of the most likely alternatives.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// What one step did to one request.
#[derive(Clone, Debug, PartialEq)]
pub struct StepOutput {
    pub id: RequestId,
    /// The token generated this step (None when it ended on an EOS token or was aborted).
    pub token: Option<u32>,
    pub logprob: Option<TokenLogprob>,
    pub finished: Option<FinishReason>,
    /// Prompt tokens, and of those found in the prefix cache (set on the first output).
    pub num_prompt_tokens: usize,
    pub num_cached_tokens: usize,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineCounters {
    pub steps: u64,
    /// Steps whose rows were all decode tokens, and of those how many replayed a graph.
    pub decode_steps: u64,
    pub graphed_steps: u64,
    /// Steps with prefill rows that replayed a captured graph (the others ran eagerly).
    pub mixed_graphed_steps: u64,
    pub prompt_tokens: u64,
    /// Prompt tokens whose K/V came from the prefix cache.
    pub cached_prompt_tokens: u64,
    pub generated_tokens: u64,
    pub preemptions: u64,
    /// Rows sampled on the host (repetition, presence or frequency penalty).
    pub host_sampled_rows: u64,
    pub finished: u64,
    pub aborted: u64,
    /// Where the steps' wall time went, microseconds: scheduling and laying out the step on
    /// the host; packing, the input copy and the launch (or graph replay); waiting for the
    /// device and copying the next tokens (and logits) back; bookkeeping after the step.
    pub schedule_us: u64,
    pub launch_us: u64,
    pub device_us: u64,
    pub postprocess_us: u64,
}

/// Gauges for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EngineGauges {
    pub waiting: usize,
    pub running: usize,
    pub kv_blocks: usize,
    pub kv_blocks_free: usize,
    pub prefix_queries: u64,
    pub prefix_hits: u64,
}

pub struct LlmEngine<B: Backend> {
    pub runner: ModelRunner<B>,
    exec: Box<dyn StepRunner<B>>,
    scheduler: Scheduler,
    bm: BlockManager,
    seqs: HashMap<RequestId, Sequence>,
    next_id: RequestId,
    eos: Vec<u32>,
    counters: EngineCounters,
}

/// A row that the host samples (its logits need the sequence's history).
fn needs_host(p: &SamplingParams) -> bool {
    p.has_penalties()
}

impl<B: Backend> LlmEngine<B> {
    /// `exec` runs the steps (eagerly, or with decode graphs); `eos` ends a sequence.
    pub fn new(runner: ModelRunner<B>, exec: Box<dyn StepRunner<B>>, eos: Vec<u32>) -> Self {
        let c = &runner.cfg;
        let scheduler = Scheduler::new(SchedulerConfig {
            max_num_seqs: c.max_num_seqs,
            max_num_batched_tokens: c.max_num_batched_tokens,
        });
        let bm = BlockManager::new(c.num_blocks, c.block_size);
        LlmEngine {
            runner,
            exec,
            scheduler,
            bm,
            seqs: HashMap::new(),
            next_id: 0,
            eos,
            counters: EngineCounters::default(),
        }
    }

    pub fn max_model_len(&self) -> usize {
        self.runner.cfg.max_model_len
    }

    /// Queue a request; the error says why it can never run.
    pub fn add_request(&mut self, prompt: Vec<u32>, params: SamplingParams) -> Result<RequestId, EngineError> {
        // the same checks the worker makes before queueing (one rule, one place)
        crate::worker::check_request(&prompt, &params, self.runner.model.cfg.vocab_size, self.max_model_len())?;
        let id = self.next_id;
        self.next_id += 1;
        let eos = if params.ignore_eos { Vec::new() } else { self.eos.clone() };
        self.seqs.insert(id, Sequence::new(id, prompt, params, eos, id));
        self.scheduler.add(id);
        Ok(id)
    }

    /// End a request now; its blocks are free for the next step. False if unknown.
    pub fn abort(&mut self, id: RequestId) -> bool {
        self.finish(id, FinishReason::Abort)
    }

    /// End a request with `reason` (e.g. the caller saw a stop string).
    pub fn finish(&mut self, id: RequestId, reason: FinishReason) -> bool {
        let Some(seq) = self.seqs.remove(&id) else { return false };
        self.bm.free(&seq.block_table);
        self.scheduler.remove(id);
        if reason == FinishReason::Abort {
            self.counters.aborted += 1;
        } else {
            self.counters.finished += 1;
        }
        true
    }

    pub fn has_unfinished(&self) -> bool {
        !self.scheduler.is_idle()
    }
    pub fn counters(&self) -> EngineCounters {
        self.counters
    }
    pub fn gauges(&self) -> EngineGauges {
        let p = self.bm.prefix_stats();
        EngineGauges {
            waiting: self.scheduler.num_waiting(),
            running: self.scheduler.num_running(),
            kv_blocks: self.bm.num_blocks(),
            kv_blocks_free: self.bm.num_free(),
            prefix_queries: p.queries,
            prefix_hits: p.hits,
        }
    }
    /// Tokens of a live request (prompt + generated).
    pub fn tokens(&self, id: RequestId) -> Option<&[u32]> {
        self.seqs.get(&id).map(|s| &s.tokens[..])
    }

    /// One schedule -> run -> postprocess round. Returns one output per request that
    /// produced a token or ended.
    pub fn step(&mut self) -> Result<Vec<StepOutput>, EngineError> {
        let t0 = Instant::now();
        let batch = self.scheduler.schedule(&mut self.seqs, &mut self.bm);
        self.counters.preemptions += batch.preempted.len() as u64;
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        // per sampled row: its uniform, and what the device does with it
        let rows: Vec<(i32, SampleParams)> = batch
            .seqs
            .iter()
            .map(|s| {
                let q = self.seqs.get_mut(&s.id).expect("scheduled ids are live");
                if !s.sample {
                    return (0, SampleParams::GREEDY);
                }
                let u = q.sampler.uniform24();
                (u, if needs_host(&q.params) { SampleParams::GREEDY } else { q.sampler.device_params() })
            })
            .collect();
        let t1;
        let graphed = {
            let chunks: Vec<SeqChunk> = batch
                .seqs
                .iter()
                .zip(&rows)
                .map(|(s, &(uniform, params))| {
                    let q = &self.seqs[&s.id];
                    SeqChunk {
                        tokens: &q.tokens[s.start..s.start + s.num_tokens],
                        start: s.start,
                        block_table: &q.block_table,
                        sample: s.sample,
                        uniform,
                        params,
                    }
                })
                .collect();
            t1 = Instant::now();
            self.runner.step(self.exec.as_mut(), &chunks)?
        };
        let t2 = Instant::now();
        self.counters.steps += 1;
        if batch.is_decode_only() {
            self.counters.decode_steps += 1;
            self.counters.graphed_steps += u64::from(graphed);
        } else {
            self.counters.mixed_graphed_steps += u64::from(graphed);
        }
        let n_sampled = batch.seqs.iter().filter(|s| s.sample).count();
        let next = self.runner.read_next(n_sampled)?;
        let wants_logits = batch.seqs.iter().filter(|s| s.sample).any(|s| {
            let p = &self.seqs[&s.id].params;
            needs_host(p) || p.logprobs.is_some()
        });
        let logits = if wants_logits { Some(self.runner.read_logits(n_sampled)?) } else { None };
        let t3 = Instant::now();
        let uniforms: Vec<i32> = rows.iter().map(|r| r.0).collect();
        let outs = self.postprocess(&batch, &next, &uniforms, logits.as_deref());
        let us = |a: Instant, b: Instant| (b - a).as_micros() as u64;
        let c = &mut self.counters;
        c.schedule_us += us(t0, t1);
        c.launch_us += us(t1, t2);
        c.device_us += us(t2, t3);
        c.postprocess_us += us(t3, Instant::now());
        outs
    }

    fn postprocess(
        &mut self,
        batch: &ScheduledBatch,
        next: &[u32],
        uniforms: &[i32],
        logits: Option<&[Vec<f32>]>,
    ) -> Result<Vec<StepOutput>, EngineError> {
        let max_len = self.max_model_len();
        let mut outs = Vec::new();
        let mut row = 0;
        let mut done = Vec::new();
        for (s, &u) in batch.seqs.iter().zip(uniforms) {
            let seq = self.seqs.get_mut(&s.id).expect("scheduled ids are live");
            if s.start == seq.num_cached_tokens {
                // the first chunk since admission
                self.counters.prompt_tokens += seq.num_prompt_tokens as u64;
                self.counters.cached_prompt_tokens += seq.num_cached_tokens as u64;
            }
            seq.num_computed_tokens += s.num_tokens;
            seq.num_registered_blocks = self.bm.register_full_blocks(
                &seq.block_table,
                &seq.tokens[..seq.num_computed_tokens],
                seq.num_registered_blocks,
            );
            if !s.sample {
                continue;
            }
            let tok = match logits {
                Some(l) if needs_host(&seq.params) => {
                    self.counters.host_sampled_rows += 1;
                    let history = seq.tokens.clone();
                    seq.sampler.sample(&l[row], &history, seq.num_prompt_tokens, u)
                }
                _ => next[row],
            };
            let logprob = match (seq.params.logprobs, logits) {
                (Some(n), Some(l)) => {
                    let (lp, top) = logprobs(&l[row], tok, n);
                    Some(TokenLogprob { logprob: lp, top })
                }
                _ => None,
            };
            row += 1;
            let mut out = StepOutput {
                id: s.id,
                token: None,
                logprob: None,
                finished: None,
                num_prompt_tokens: seq.num_prompt_tokens,
                num_cached_tokens: seq.num_cached_tokens,
            };
            if seq.eos.contains(&tok) {
                out.finished = Some(FinishReason::Stop);
            } else {
                seq.tokens.push(tok);
                self.counters.generated_tokens += 1;
                out.token = Some(tok);
                out.logprob = logprob;
                if seq.num_generated() >= seq.params.max_tokens || seq.len() >= max_len {
                    out.finished = Some(FinishReason::Length);
                }
            }
            if let Some(r) = out.finished {
                seq.status = SeqStatus::Finished(r);
                done.push((s.id, r));
            }
            outs.push(out);
        }
        for (id, r) in done {
            self.finish(id, r);
        }
        Ok(outs)
    }
}
