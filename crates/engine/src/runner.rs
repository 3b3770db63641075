//! ModelRunner: one model on one backend with its KV cache, activation buffers and step
//! inputs, all allocated at construction. `prefill` and `decode` fill the packed step inputs
//! with one host-to-device copy and run the forward pass; the decode step can be swapped
//! for a captured graph (see `graph_runner`).

use crate::EngineError;
use encore_models::llama::HostInputs;
use encore_models::{KvCache, Llama, RunState, StepInputs};
use encore_tensor::{Backend, HostTensor, SampleParams};

#[derive(Clone, Debug, PartialEq)]
pub struct RunnerConfig {
    /// Sequences that can be in flight at once (KV cache rows).
    pub max_seqs: usize,
    /// Positions per sequence (prompt + generated).
    pub max_ctx: usize,
    /// Prompt tokens per prefill step.
    pub prefill_chunk: usize,
    /// Rows of the largest decode step.
    pub max_batch: usize,
}

pub struct ModelRunner<B: Backend> {
    pub backend: B,
    pub model: Llama<B>,
    pub cache: KvCache<B>,
    pub state: RunState<B>,
    pub inputs: StepInputs<B>,
    pub cfg: RunnerConfig,
    /// How steps pick the next token on the device: None is argmax, Some samples with each
    /// row's uniform (`DecodeRow::uniform`). A captured graph bakes this in.
    pub sampling: Option<SampleParams>,
}

/// One decode row: which sequence, the token to feed, its position, and the uniform in
/// `[0, 2^24)` that samples its next token (unused by argmax).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeRow {
    pub seq: usize,
    pub token: u32,
    pub pos: usize,
    pub uniform: i32,
}

impl<B: Backend> ModelRunner<B> {
    pub fn new(backend: B, model: Llama<B>, cfg: RunnerConfig) -> Result<Self, EngineError> {
        if cfg.max_batch > cfg.max_seqs {
            return Err(EngineError::Config(format!(
                "max batch {} exceeds max sequences {}",
                cfg.max_batch, cfg.max_seqs
            )));
        }
        let rows = cfg.prefill_chunk.max(cfg.max_batch);
        let cache = model.new_cache(&backend, cfg.max_seqs, cfg.max_ctx)?;
        let state = model.new_state(&backend, rows, cfg.max_batch.max(1))?;
        let inputs = StepInputs::new(&backend, rows)?;
        Ok(ModelRunner { backend, model, cache, state, inputs, cfg, sampling: None })
    }

    fn check_pos(&self, seq: usize, end: usize) -> Result<(), EngineError> {
        if seq >= self.cfg.max_seqs {
            return Err(EngineError::Config(format!(
                "sequence {seq} is beyond the {} sequence slots",
                self.cfg.max_seqs
            )));
        }
        if end > self.cfg.max_ctx {
            return Err(EngineError::ContextFull { needed: end, max_ctx: self.cfg.max_ctx });
        }
        Ok(())
    }

    /// Run the prompt `tokens` of sequence `seq` from position `start`, in chunks. The
    /// logits of the last token are left in row 0 of the state's logits.
    pub fn prefill(&mut self, seq: usize, tokens: &[u32], start: usize) -> Result<(), EngineError> {
        self.prefill_sampled(seq, tokens, start, 0)
    }

    /// [`ModelRunner::prefill`], sampling the last token's successor with `uniform`.
    pub fn prefill_sampled(
        &mut self,
        seq: usize,
        tokens: &[u32],
        start: usize,
        uniform: i32,
    ) -> Result<(), EngineError> {
        self.check_pos(seq, start + tokens.len())?;
        let seq_start = self.cache.seq_start(seq);
        for (c, chunk) in tokens.chunks(self.cfg.prefill_chunk).enumerate() {
            let mut host = HostInputs::default();
            let first = start + c * self.cfg.prefill_chunk;
            for (j, &id) in chunk.iter().enumerate() {
                host.push_sampled(id, (first + j) as i32, seq_start, uniform);
            }
            let t = chunk.len();
            self.inputs.upload(&self.backend, &host)?;
            self.model.forward(&self.backend, &self.state, &self.inputs, &self.cache, t, (t - 1, 1), self.sampling)?;
        }
        Ok(())
    }

    /// Host inputs of one decode step over `rows`, padded to `bucket` rows.
    pub fn decode_inputs(&self, rows: &[DecodeRow], bucket: usize) -> Result<HostInputs, EngineError> {
        let mut host = HostInputs::default();
        for r in rows {
            self.check_pos(r.seq, r.pos + 1)?;
            host.push_sampled(r.token, r.pos as i32, self.cache.seq_start(r.seq), r.uniform);
        }
        host.pad_to(bucket);
        Ok(host)
    }

    /// One eager decode step over `rows` (padded to `bucket` rows with sentinels).
    pub fn decode_eager(&mut self, rows: &[DecodeRow], bucket: usize) -> Result<(), EngineError> {
        let host = self.decode_inputs(rows, bucket)?;
        self.inputs.upload(&self.backend, &host)?;
        self.model.forward(
            &self.backend,
            &self.state,
            &self.inputs,
            &self.cache,
            bucket,
            (0, bucket),
            self.sampling,
        )?;
        Ok(())
    }

    /// Argmax of the first `n` logit rows.
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
}
