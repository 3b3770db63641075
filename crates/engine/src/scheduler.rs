//! The scheduler: which sequences run in the next step, and how many of their tokens.
//!
//! One rule covers prefill and decode (as vLLM v1): every running sequence wants its
//! uncomputed tokens (a whole prompt, the rest of a chunked prompt, or the one token sampled
//! last step), and gets as many as the step's token budget leaves. Running sequences go
//! first, in arrival order, so decodes are never starved by prefills; then waiting
//! sequences are admitted in arrival order (FCFS, no skipping ahead) while the budget, the
//! running limit and the free KV blocks allow. A prompt longer than the budget is prefilled
//! in chunks across steps, mixed with the decodes of the others.
//!
//! When a running sequence needs a block and none is free, the most recently admitted
//! running sequence is preempted by recompute: its blocks go back (full blocks stay in the
//! prefix cache), and it returns to the front of the waiting queue; when re-admitted, its
//! prompt + generated tokens find their blocks in the prefix cache where they survived.

use crate::block_manager::BlockManager;
use crate::sequence::{RequestId, SeqStatus, Sequence};
use std::collections::{HashMap, VecDeque};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Sequences running at once (rows of the largest decode step).
    pub max_num_seqs: usize,
    /// Tokens per step (prefill chunks + decodes).
    pub max_num_batched_tokens: usize,
}

/// One sequence's share of a step: tokens `start..start + num_tokens` of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScheduledSeq {
    pub id: RequestId,
    pub start: usize,
    pub num_tokens: usize,
    /// The chunk reaches the sequence's end: its next token is sampled.
    pub sample: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScheduledBatch {
    pub seqs: Vec<ScheduledSeq>,
    /// Sequences preempted while scheduling this step.
    pub preempted: Vec<RequestId>,
}

impl ScheduledBatch {
    pub fn num_tokens(&self) -> usize {
        self.seqs.iter().map(|s| s.num_tokens).sum()
    }
    /// Every row is one decode token (a decode graph can run it).
    pub fn is_decode_only(&self) -> bool {
        !self.seqs.is_empty() && self.seqs.iter().all(|s| s.num_tokens == 1 && s.sample)
    }
    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }
}

pub struct Scheduler {
    pub cfg: SchedulerConfig,
    waiting: VecDeque<RequestId>,
    /// In admission order.
    running: Vec<RequestId>,
}

impl Scheduler {
    pub fn new(cfg: SchedulerConfig) -> Self {
        Scheduler { cfg, waiting: VecDeque::new(), running: Vec::new() }
    }

    pub fn add(&mut self, id: RequestId) {
        self.waiting.push_back(id);
    }
    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }
    pub fn num_running(&self) -> usize {
        self.running.len()
    }
    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    /// Forget a sequence (finished or aborted); the caller frees its blocks.
    pub fn remove(&mut self, id: RequestId) {
        self.waiting.retain(|&w| w != id);
        self.running.retain(|&r| r != id);
    }

    pub fn schedule(&mut self, seqs: &mut HashMap<RequestId, Sequence>, bm: &mut BlockManager) -> ScheduledBatch {
        let mut out = ScheduledBatch::default();
        let mut budget = self.cfg.max_num_batched_tokens;
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let id = self.running[i];
            let n = seqs[&id].num_uncomputed().min(budget);
            let mut scheduled = true;
            loop {
                let seq = seqs.get_mut(&id).expect("running ids are live");
                let want = seq.num_computed_tokens + n;
                if bm.ensure(&mut seq.block_table, want).is_ok() {
                    break;
                }
                let victim = self.running.pop().expect("running holds at least the current id");
                preempt(seqs.get_mut(&victim).expect("running ids are live"), bm);
                self.waiting.push_front(victim);
                out.preempted.push(victim);
                if victim == id {
                    scheduled = false;
                    break;
                }
            }
            if !scheduled {
                break;
            }
            let seq = &seqs[&id];
            let start = seq.num_computed_tokens;
            out.seqs.push(ScheduledSeq { id, start, num_tokens: n, sample: start + n == seq.len() });
            budget -= n;
            i += 1;
        }
        // admit waiting sequences, unless this step had to preempt (no room to grow)
        while out.preempted.is_empty() && budget > 0 && self.running.len() < self.cfg.max_num_seqs {
            let Some(&id) = self.waiting.front() else { break };
            let seq = seqs.get_mut(&id).expect("waiting ids are live");
            let Ok(a) = bm.allocate(&seq.tokens) else { break };
            self.waiting.pop_front();
            seq.num_cached_tokens = a.num_cached_tokens;
            seq.num_computed_tokens = a.num_cached_tokens;
            seq.num_registered_blocks = a.num_cached_tokens / bm.block_size();
            seq.block_table = a.block_table;
            seq.status = SeqStatus::Running;
            let n = seq.num_uncomputed().min(budget);
            let start = seq.num_computed_tokens;
            out.seqs.push(ScheduledSeq { id, start, num_tokens: n, sample: start + n == seq.len() });
            self.running.push(id);
            budget -= n;
        }
        out
    }
}

/// Give a running sequence's blocks back; it will be recomputed from its tokens.
fn preempt(seq: &mut Sequence, bm: &mut BlockManager) {
    bm.free(&seq.block_table);
    seq.block_table.clear();
    seq.num_computed_tokens = 0;
    seq.num_registered_blocks = 0;
    seq.num_preemptions += 1;
    seq.status = SeqStatus::Waiting;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::SamplingParams;

    struct World {
        seqs: HashMap<RequestId, Sequence>,
        bm: BlockManager,
        sched: Scheduler,
    }

    impl World {
        fn new(blocks: usize, bs: usize, max_num_seqs: usize, budget: usize) -> Self {
            let cfg = SchedulerConfig { max_num_seqs, max_num_batched_tokens: budget };
            World { seqs: HashMap::new(), bm: BlockManager::new(blocks, bs), sched: Scheduler::new(cfg) }
        }
        fn add(&mut self, id: RequestId, prompt_len: usize) {
            let prompt = (0..prompt_len as u32).map(|t| t + 100 * id as u32).collect();
            self.seqs.insert(id, Sequence::new(id, prompt, SamplingParams::default(), vec![], id));
            self.sched.add(id);
        }
        /// Schedule, then pretend the model ran: computed tokens advance, sampled rows get a
        /// token, full blocks are registered.
        fn step(&mut self) -> ScheduledBatch {
            let b = self.sched.schedule(&mut self.seqs, &mut self.bm);
            for s in &b.seqs {
                let seq = self.seqs.get_mut(&s.id).unwrap();
                assert_eq!(s.start, seq.num_computed_tokens);
                seq.num_computed_tokens += s.num_tokens;
                seq.num_registered_blocks = self.bm.register_full_blocks(
                    &seq.block_table,
                    &seq.tokens[..seq.num_computed_tokens],
                    seq.num_registered_blocks,
                );
                if s.sample {
                    seq.tokens.push(7);
                }
            }
            b
        }
        fn finish(&mut self, id: RequestId) {
            let seq = self.seqs.remove(&id).unwrap();
            self.bm.free(&seq.block_table);
            self.sched.remove(id);
        }
    }

    #[test]
    fn a_long_prompt_is_chunked_and_decodes_run_beside_it() {
        let mut w = World::new(64, 4, 8, 16);
        w.add(1, 3);
        let b = w.step();
        assert_eq!(b.seqs, vec![ScheduledSeq { id: 1, start: 0, num_tokens: 3, sample: true }]);
        w.add(2, 40); // 40 tokens with a budget of 16: three chunks
        let b = w.step();
        assert_eq!(b.seqs[0], ScheduledSeq { id: 1, start: 3, num_tokens: 1, sample: true });
        assert_eq!(b.seqs[1], ScheduledSeq { id: 2, start: 0, num_tokens: 15, sample: false });
        assert!(!b.is_decode_only());
        let b = w.step();
        assert_eq!(b.seqs[1], ScheduledSeq { id: 2, start: 15, num_tokens: 15, sample: false });
        let b = w.step();
        assert_eq!(b.seqs[1], ScheduledSeq { id: 2, start: 30, num_tokens: 10, sample: true });
        let b = w.step();
        assert!(b.is_decode_only());
        assert_eq!(b.num_tokens(), 2);
    }

    #[test]
    fn admission_waits_for_blocks_and_the_running_limit_fcfs() {
        let mut w = World::new(6, 4, 2, 64);
        w.add(1, 8); // 2 blocks
        w.add(2, 8); // 2 blocks
        w.add(3, 4); // 1 block, but the running limit is 2
        let b = w.step();
        assert_eq!(b.seqs.iter().map(|s| s.id).collect::<Vec<_>>(), vec![1, 2]);
        w.finish(1);
        w.add(4, 40); // can never be admitted before 3 (FCFS)
        let b = w.step();
        assert_eq!(b.seqs.iter().map(|s| s.id).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(w.sched.num_waiting(), 1);
    }

    #[test]
    fn running_out_of_blocks_preempts_the_newest_and_it_resumes_from_the_prefix_cache() {
        // 4 blocks of 4: two prompts of 8 tokens fill the cache
        let mut w = World::new(4, 4, 4, 64);
        w.add(1, 8);
        w.add(2, 8);
        w.step(); // both prefilled (2 full blocks each), one token sampled each
        let b = w.step(); // each decode token needs a 3rd block: 2 is preempted
        assert_eq!(b.preempted, vec![2]);
        assert_eq!(b.seqs.iter().map(|s| s.id).collect::<Vec<_>>(), vec![1]);
        assert_eq!(w.seqs[&2].status, SeqStatus::Waiting);
        assert_eq!(w.bm.num_free(), 1);
        w.finish(1);
        // 2 comes back: its first block (full, registered) is found; the one holding its
        // last token is recomputed
        let b = w.step();
        assert_eq!(b.seqs.len(), 1);
        assert_eq!((b.seqs[0].id, b.seqs[0].start), (2, 4));
        assert_eq!(w.seqs[&2].num_cached_tokens, 4);
        assert_eq!(w.seqs[&2].num_preemptions, 1);
    }

    #[test]
    fn a_shared_prompt_prefix_is_computed_once() {
        let mut w = World::new(32, 4, 4, 64);
        w.add(1, 13);
        w.step();
        let prompt = w.seqs[&1].tokens[..13].to_vec();
        w.seqs.insert(9, Sequence::new(9, prompt, SamplingParams::default(), vec![], 9));
        w.sched.add(9);
        let b = w.step();
        let s9 = b.seqs.iter().find(|s| s.id == 9).unwrap();
        assert_eq!((s9.start, s9.num_tokens), (12, 1)); // 3 full blocks from the cache
    }

    #[test]
    fn random_traffic_keeps_blocks_and_queues_consistent() {
        let mut rng = encore_tensor::testing::Rng::fresh("scheduler traffic");
        let mut w = World::new(40, 4, 6, 32);
        let mut next = 1;
        for _ in 0..2000 {
            if rng.below(3) == 0 {
                w.add(next, 1 + rng.below(30));
                next += 1;
            }
            let b = w.step();
            assert!(b.num_tokens() <= 32 && b.seqs.len() <= 6);
            let done: Vec<RequestId> =
                w.seqs.values().filter(|s| s.num_generated() > (s.id as usize % 9)).map(|s| s.id).collect();
            for id in done {
                if w.seqs[&id].status == SeqStatus::Running {
                    w.finish(id);
                }
            }
            let held: usize = w.seqs.values().map(|s| s.block_table.len()).sum();
            assert!(held + w.bm.num_free() >= w.bm.num_blocks(), "blocks leaked");
        }
        let ids: Vec<RequestId> = w.seqs.keys().copied().collect();
        for id in ids {
            w.finish(id);
        }
        assert_eq!(w.bm.num_free(), w.bm.num_blocks());
    }
}
