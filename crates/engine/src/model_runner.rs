//! ModelRunner: one model on one backend with its paged KV cache, activation buffers and step
//! inputs, all allocated at construction. A step is a list of [`SeqChunk`]s (some tokens of
//! some sequences, with their block tables); the runner lays them out as the packed step
//! inputs (one host-to-device copy) and runs the forward pass, eagerly or, for a pure decode
//! step, by replaying a captured graph (see [`StepRunner`] and `graph_runner`).

use crate::buckets::{batch_buckets, bucket_for};
use crate::EngineError;
use encore_models::{HostInputs, InputDims, KvCache, Llama, LogitRow, RunState, StepInputs, StepKind, TokenRow};
use encore_tensor::{Backend, HostTensor, SampleParams};

#[derive(Clone, Debug, PartialEq)]
pub struct RunnerConfig {
    /// Slots per KV block.
    pub block_size: usize,
    /// KV blocks in the cache.
    pub num_blocks: usize,
    /// Sequences per step (rows of the largest decode step, logit rows).
    pub max_num_seqs: usize,
    /// Token rows per step (prefill chunks + decode rows).
    pub max_num_batched_tokens: usize,
    /// Positions per sequence (prompt + generated).
    pub max_model_len: usize,
}

impl RunnerConfig {
    /// Block-table columns: blocks of the longest sequence.
    pub fn max_blocks_per_seq(&self) -> usize {
        self.max_model_len.div_ceil(self.block_size)
    }

    pub fn validate(&self) -> Result<(), EngineError> {
        let err = |m: String| Err(EngineError::Config(m));
        if self.block_size == 0 || self.max_model_len == 0 || self.max_num_seqs == 0 {
            return err("the block size, context length and sequence limit must be at least 1".into());
        }
        if self.max_num_batched_tokens < self.max_num_seqs {
            return err(format!(
                "the step token budget ({}) must hold one decode token of each of the {} sequences",
                self.max_num_batched_tokens, self.max_num_seqs
            ));
        }
        if self.num_blocks < self.max_blocks_per_seq() {
            return err(format!(
                "{} KV blocks of {} tokens cannot hold one sequence of {} tokens (lower --max-ctx or give the cache more memory)",
                self.num_blocks, self.block_size, self.max_model_len
            ));
        }
        Ok(())
    }
}

/// Some tokens of one sequence in a step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SeqChunk<'a> {
    pub tokens: &'a [u32],
    /// Position of `tokens[0]`.
    pub start: usize,
    /// The sequence's blocks (covering at least `start + tokens.len()` positions).
    pub block_table: &'a [u32],
    /// Compute the next token after the last of `tokens`.
    pub sample: bool,
    /// Its sampling uniform in `[0, 2^24)` (unused by greedy rows).
    pub uniform: i32,
    /// How the device picks it.
    pub params: SampleParams,
}

/// The padded shape of a step a captured graph can run: token rows and logit rows. A pure
/// decode step of bucket `b` is `b x b`; a step with prefill rows is a token bucket x
/// `max_num_seqs` (see [`crate::buckets::token_buckets`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StepShape {
    pub tokens: usize,
    pub logits: usize,
    /// Decode shapes run the fused decode attention; a mixed shape of the same size is a
    /// different graph.
    pub kind: StepKind,
}

impl StepShape {
    pub fn decode(bucket: usize) -> Self {
        StepShape { tokens: bucket, logits: bucket, kind: StepKind::Decode }
    }

    pub fn mixed(tokens: usize, logits: usize) -> Self {
        StepShape { tokens, logits, kind: StepKind::Mixed }
    }
}

/// What a step is, for the runner that runs it and for the counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepPlan {
    /// Token rows uploaded (padded rows included).
    pub tokens: usize,
    /// Logit rows uploaded (padded rows included).
    pub logits: usize,
    /// Padded to a shape a graph may serve (then `tokens`/`logits` are that shape).
    pub shape: Option<StepShape>,
    /// Every real row is one decode token.
    pub decode: bool,
}

impl StepPlan {
    pub fn kind(&self) -> StepKind {
        if self.decode {
            StepKind::Decode
        } else {
            StepKind::Mixed
        }
    }
}

/// How a step whose inputs are uploaded runs: eagerly, or by replaying a captured graph.
pub trait StepRunner<B: Backend> {
    /// Run the step `plan` describes. Returns true when a graph ran it.
    fn run(&mut self, runner: &ModelRunner<B>, plan: StepPlan) -> Result<bool, EngineError>;
}

/// Every step eagerly.
pub struct Eager;

impl<B: Backend> StepRunner<B> for Eager {
    fn run(&mut self, runner: &ModelRunner<B>, plan: StepPlan) -> Result<bool, EngineError> {
        runner.forward(plan.tokens, plan.logits, plan.kind())?;
        Ok(false)
    }
}

pub struct ModelRunner<B: Backend> {
    pub backend: B,
    pub model: Llama<B>,
    pub cache: KvCache<B>,
    pub state: RunState<B>,
    pub inputs: StepInputs<B>,
    pub cfg: RunnerConfig,
    /// Decode buckets (1, 2, 4, 8, 16, 24, ... max_num_seqs).
    pub buckets: Vec<usize>,
    /// Token buckets of steps with prefill rows that have a graph (ascending; empty unless
    /// graphs were captured for them): such a step is padded to the smallest that holds it
    /// and `max_num_seqs` logit rows.
    pub mixed_buckets: Vec<usize>,
}

impl<B: Backend> ModelRunner<B> {
    pub fn new(backend: B, model: Llama<B>, cfg: RunnerConfig) -> Result<Self, EngineError> {
        cfg.validate()?;
        let rows = cfg.max_num_batched_tokens;
        let cache = model.new_cache(&backend, cfg.num_blocks, cfg.block_size)?;
        let state = model.new_state(&backend, rows, cfg.max_num_seqs)?;
        let dims = InputDims { max_tokens: rows, max_seqs: cfg.max_num_seqs, max_blocks: cfg.max_blocks_per_seq() };
        let inputs = StepInputs::new(&backend, dims)?;
        let buckets = batch_buckets(cfg.max_num_seqs);
        Ok(ModelRunner { backend, model, cache, state, inputs, cfg, buckets, mixed_buckets: Vec::new() })
    }

    /// The packed rows of a step, and its plan. A pure decode step is padded to its bucket
    /// (`bucket`, or the smallest that holds it); a step with prefill rows to the smallest
    /// of `mixed_buckets` that holds it, if any.
    pub fn layout(&self, chunks: &[SeqChunk], bucket: Option<usize>) -> Result<(HostInputs, StepPlan), EngineError> {
        let bs = self.cfg.block_size;
        let mut host = HostInputs::default();
        for (s, c) in chunks.iter().enumerate() {
            let end = c.start + c.tokens.len();
            if end > self.cfg.max_model_len {
                return Err(EngineError::ContextFull { needed: end, max_ctx: self.cfg.max_model_len });
            }
            if c.block_table.len() * bs < end {
                return Err(EngineError::Config(format!(
                    "{} blocks hold {} positions, not {end}",
                    c.block_table.len(),
                    c.block_table.len() * bs
                )));
            }
            for (j, &id) in c.tokens.iter().enumerate() {
                let p = c.start + j;
                let slot = c.block_table[p / bs] as usize * bs + p % bs;
                host.tokens.push(TokenRow { id, position: p as i32, seq: s as i32, slot: slot as i32 });
            }
            if c.sample {
                host.logits.push(LogitRow { row: host.tokens.len() as i32 - 1, uniform: c.uniform, params: c.params });
            }
            host.block_tables.push(c.block_table.iter().map(|&b| b as i32).collect());
        }
        let decode = !chunks.is_empty() && chunks.iter().all(|c| c.tokens.len() == 1 && c.sample);
        let shape = match bucket {
            Some(b) if decode && b >= chunks.len() && self.buckets.contains(&b) => Some(StepShape::decode(b)),
            Some(b) => return Err(EngineError::Config(format!("{} rows cannot run in bucket {b}", chunks.len()))),
            None if decode => bucket_for(chunks.len(), &self.buckets).map(StepShape::decode),
            None => bucket_for(host.tokens.len(), &self.mixed_buckets)
                .map(|tokens| StepShape::mixed(tokens, self.cfg.max_num_seqs)),
        };
        if let Some(s) = shape {
            host.pad_to(s.tokens, s.logits);
            if decode {
                host.block_tables.resize(s.logits, Vec::new());
            }
        }
        let plan = StepPlan { tokens: host.tokens.len(), logits: host.logits.len(), shape, decode };
        Ok((host, plan))
    }

    /// Run one step over `chunks` with `exec`; the next token of each sampling chunk is left
    /// in the first rows of `state.next` (and its logits in `state.logits`). Returns whether
    /// a graph ran it.
    pub fn step(&self, exec: &mut dyn StepRunner<B>, chunks: &[SeqChunk]) -> Result<bool, EngineError> {
        self.step_in(exec, chunks, None)
    }

    /// [`ModelRunner::step`] with a pure decode step padded to `bucket`.
    pub fn step_in(
        &self,
        exec: &mut dyn StepRunner<B>,
        chunks: &[SeqChunk],
        bucket: Option<usize>,
    ) -> Result<bool, EngineError> {
        let (host, plan) = self.layout(chunks, bucket)?;
        if plan.tokens == 0 {
            return Ok(false);
        }
        self.inputs.upload(&self.backend, &host)?; // the one HtoD copy of the step
        exec.run(self, plan)
    }

    /// The forward pass over the uploaded inputs, which are `kind`'s rows.
    pub fn forward(&self, t: usize, n_logits: usize, kind: StepKind) -> Result<(), EngineError> {
        let r = self;
        r.model.forward(&r.backend, &r.state, &r.inputs, &r.cache, t, n_logits, kind)?;
        Ok(())
    }

    /// The next tokens of the first `n` logit rows.
    pub fn read_next(&self, n: usize) -> Result<Vec<u32>, EngineError> {
        let t = self.backend.download(&self.state.next.narrow(0, 0, n)?)?;
        Ok(t.to_u32()?)
    }

    /// The first `n` logit rows as f32.
    pub fn read_logits(&self, n: usize) -> Result<Vec<Vec<f32>>, EngineError> {
        let t: HostTensor = self.backend.download(&self.state.logits.narrow(0, 0, n)?)?;
        let v = self.model.cfg.vocab_size;
        Ok(t.to_f32().chunks(v).map(|c| c.to_vec()).collect())
    }

    /// Blocks `s * MB .. (s + 1) * MB`: a fixed table per sequence slot, for benchmarks and
    /// tests that run without a block manager (needs `num_blocks >= seqs * MB`).
    pub fn static_table(&self, s: usize) -> Vec<u32> {
        let mb = self.cfg.max_blocks_per_seq();
        (s * mb..(s + 1) * mb).map(|b| b as u32).collect()
    }

    /// Prefill `tokens` of sequence slot `seq` (static table) from `start`, in chunks of the
    /// step budget, eagerly; the next token after the last is left in logit row 0.
    pub fn prefill_static(&self, seq: usize, tokens: &[u32], start: usize) -> Result<(), EngineError> {
        let table = self.static_table(seq);
        let chunk = self.cfg.max_num_batched_tokens;
        for (c, part) in tokens.chunks(chunk).enumerate() {
            let s = start + c * chunk;
            let sample = s + part.len() == start + tokens.len();
            let params = SampleParams::GREEDY;
            self.step(
                &mut Eager,
                &[SeqChunk { tokens: part, start: s, block_table: &table, sample, uniform: 0, params }],
            )?;
        }
        Ok(())
    }

    /// One decode step over sequence slots with static tables, padded to `bucket` (or the
    /// smallest that holds the rows). Returns whether a graph ran it.
    pub fn decode_static(
        &self,
        exec: &mut dyn StepRunner<B>,
        rows: &[DecodeRow],
        bucket: Option<usize>,
    ) -> Result<bool, EngineError> {
        let tables: Vec<Vec<u32>> = rows.iter().map(|r| self.static_table(r.seq)).collect();
        let chunks: Vec<SeqChunk> = rows
            .iter()
            .zip(&tables)
            .map(|(r, t)| SeqChunk {
                tokens: std::slice::from_ref(&r.token),
                start: r.pos,
                block_table: t,
                sample: true,
                uniform: r.uniform,
                params: r.params,
            })
            .collect();
        self.step_in(exec, &chunks, bucket)
    }
}

/// One decode row of a sequence slot with a static block table (tests, benchmarks).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DecodeRow {
    pub seq: usize,
    pub token: u32,
    pub pos: usize,
    pub uniform: i32,
    pub params: SampleParams,
}

impl DecodeRow {
    pub fn greedy(seq: usize, token: u32, pos: usize) -> Self {
        DecodeRow { seq, token, pos, uniform: 0, params: SampleParams::GREEDY }
    }
}
