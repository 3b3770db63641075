//! A request as the engine tracks it: its tokens (prompt, then generated), how many of them
//! have K/V in the cache, its blocks, its sampling parameters and stop conditions.

use crate::block_manager::BlockId;
use crate::sampler::{Sampler, SamplingParams};

pub type RequestId = u64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeqStatus {
    Waiting,
    Running,
    Finished(FinishReason),
}

/// Why a sequence ended (OpenAI's `finish_reason`: `stop` or `length`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence token or a stop string.
    Stop,
    /// `max_tokens` generated, or the context is full.
    Length,
    /// Aborted by the caller (e.g. the client went away).
    Abort,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Abort => "abort",
        }
    }
}

pub struct Sequence {
    pub id: RequestId,
    pub status: SeqStatus,
    /// Prompt then generated tokens.
    pub tokens: Vec<u32>,
    pub num_prompt_tokens: usize,
    /// Leading tokens whose K/V are in the cache.
    pub num_computed_tokens: usize,
    /// Of those, how many came from the prefix cache (at the last admission).
    pub num_cached_tokens: usize,
    pub block_table: Vec<BlockId>,
    /// Leading blocks whose prefix hash is registered.
    pub num_registered_blocks: usize,
    pub params: SamplingParams,
    pub sampler: Sampler,
    /// Times it was preempted (its blocks given back, recomputed later).
    pub num_preemptions: usize,
    /// Token ids that end it (EOS), besides `params.stop` strings (handled by the caller).
    pub eos: Vec<u32>,
    /// Admission order, for FCFS.
    pub arrival: u64,
}

impl Sequence {
    pub fn new(id: RequestId, prompt: Vec<u32>, params: SamplingParams, eos: Vec<u32>, arrival: u64) -> Self {
        let sampler = Sampler::new(params.clone());
        Sequence {
            id,
            status: SeqStatus::Waiting,
            num_prompt_tokens: prompt.len(),
            tokens: prompt,
            num_computed_tokens: 0,
            num_cached_tokens: 0,
            block_table: Vec::new(),
            num_registered_blocks: 0,
            params,
            sampler,
            num_preemptions: 0,
            eos,
            arrival,
        }
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
    pub fn num_generated(&self) -> usize {
        self.tokens.len() - self.num_prompt_tokens
    }
    pub fn generated(&self) -> &[u32] {
        &self.tokens[self.num_prompt_tokens..]
    }
    /// Tokens still to run through the model before the next token can be sampled.
    pub fn num_uncomputed(&self) -> usize {
        self.tokens.len() - self.num_computed_tokens
    }
    pub fn is_finished(&self) -> bool {
        matches!(self.status, SeqStatus::Finished(_))
    }
}
