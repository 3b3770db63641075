//! The block manager: which KV-cache blocks are free, who holds each block (reference
//! counts), and prefix caching. Pure Rust, no device: the cache tensors are addressed through
//! the block tables this hands out.
//!
//! Prefix caching: every FULL block of computed tokens gets a chained hash
//! `h_i = hash(h_{i-1}, tokens of block i)`, registered once its K/V are in the cache. A new
//! sequence whose leading blocks hash (and compare) equal reuses them (reference count + 1)
//! and starts its prefill at the first uncached token. Only full blocks are ever shared and
//! a shared block is never written again (the block holding a sequence's last prompt token is
//! never taken from the cache: that token is always computed), so no copy-on-write is needed.
//!
//! A block whose count drops to 0 is free. Free blocks that still hold a registered prefix
//! stay findable until reused: allocation takes the least recently freed block first (LRU),
//! and blocks that hold no prefix are handed out before any that do.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

pub type BlockId = u32;

#[derive(Clone, Debug, Default)]
struct Block {
    ref_count: u32,
    /// The prefix hash registered for this block, with the tokens it covers.
    cached: Option<(u64, Vec<u32>)>,
    /// Key in the free map while free.
    free_key: Option<u64>,
}

/// Not enough free blocks: the caller preempts or waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoFreeBlocks {
    pub needed: usize,
    pub free: usize,
}

/// A new sequence's blocks: the leading `num_cached_tokens` come from the prefix cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocation {
    pub block_table: Vec<BlockId>,
    pub num_cached_tokens: usize,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefixStats {
    /// Full prompt blocks looked up, and found.
    pub queries: u64,
    pub hits: u64,
}

pub struct BlockManager {
    block_size: usize,
    blocks: Vec<Block>,
    /// Free blocks in allocation order: key = (class << 62) | tick. Class 0 (no prefix)
    /// before class 1 (a findable prefix); within a class, least recently freed first.
    free: BTreeMap<u64, BlockId>,
    tick: u64,
    by_hash: HashMap<u64, BlockId>,
    stats: PrefixStats,
}

/// The chained hash of one full block after the block hashed `prev`.
pub fn block_hash(prev: u64, tokens: &[u32]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    prev.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

impl BlockManager {
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        assert!(block_size > 0, "block size 0");
        let mut me = BlockManager {
            block_size,
            blocks: vec![Block::default(); num_blocks],
            free: BTreeMap::new(),
            tick: 0,
            by_hash: HashMap::new(),
            stats: PrefixStats::default(),
        };
        for id in 0..num_blocks as BlockId {
            me.push_free(id);
        }
        me
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }
    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }
    pub fn num_free(&self) -> usize {
        self.free.len()
    }
    pub fn prefix_stats(&self) -> PrefixStats {
        self.stats
    }
    /// Blocks that hold `tokens` tokens.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_size)
    }

    fn push_free(&mut self, id: BlockId) {
        self.tick += 1;
        let class = u64::from(self.blocks[id as usize].cached.is_some());
        let key = (class << 62) | self.tick;
        self.blocks[id as usize].free_key = Some(key);
        self.free.insert(key, id);
    }

    fn take(&mut self, id: BlockId) {
        let b = &mut self.blocks[id as usize];
        if let Some(key) = b.free_key.take() {
            self.free.remove(&key);
        }
        b.ref_count += 1;
    }

    /// A free block for new data: its old prefix (if any) is forgotten.
    fn take_fresh(&mut self) -> BlockId {
        let (_, id) = self.free.pop_first().expect("callers check num_free first");
        let b = &mut self.blocks[id as usize];
        b.free_key = None;
        b.ref_count = 1;
        if let Some((h, _)) = b.cached.take() {
            self.by_hash.remove(&h);
        }
        id
    }

    /// The cached blocks a sequence of `tokens` can start from (never the block holding
    /// its last token), found by chained hash and confirmed token by token.
    fn cached_prefix(&self, tokens: &[u32]) -> Vec<BlockId> {
        let bs = self.block_size;
        let lookups = tokens.len().saturating_sub(1) / bs;
        let mut out = Vec::new();
        let mut h = 0u64;
        for i in 0..lookups {
            let part = &tokens[i * bs..(i + 1) * bs];
            h = block_hash(h, part);
            match self.by_hash.get(&h) {
                Some(&id) if self.blocks[id as usize].cached.as_ref().is_some_and(|(_, t)| t == part) => out.push(id),
                _ => break,
            }
        }
        out
    }

    /// Free blocks the allocation of a `tokens` sequence would consume.
    pub fn blocks_needed(&self, tokens: &[u32]) -> usize {
        let hits = self.cached_prefix(tokens);
        let reused_free = hits.iter().filter(|&&id| self.blocks[id as usize].ref_count == 0).count();
        self.blocks_for(tokens.len()) - hits.len() + reused_free
    }

    /// Blocks for a new sequence of `tokens`, its leading full blocks from the prefix cache.
    pub fn allocate(&mut self, tokens: &[u32]) -> Result<Allocation, NoFreeBlocks> {
        let needed = self.blocks_needed(tokens);
        if needed > self.num_free() {
            return Err(NoFreeBlocks { needed, free: self.num_free() });
        }
        let hits = self.cached_prefix(tokens);
        self.stats.queries += (tokens.len().saturating_sub(1) / self.block_size) as u64;
        self.stats.hits += hits.len() as u64;
        for &id in &hits {
            self.take(id);
        }
        let mut table = hits;
        let num_cached_tokens = table.len() * self.block_size;
        while table.len() < self.blocks_for(tokens.len()) {
            let id = self.take_fresh();
            table.push(id);
        }
        Ok(Allocation { block_table: table, num_cached_tokens })
    }

    /// Grow `table` so it holds `tokens` tokens.
    pub fn ensure(&mut self, table: &mut Vec<BlockId>, tokens: usize) -> Result<(), NoFreeBlocks> {
        let want = self.blocks_for(tokens);
        if want > table.len() {
            let needed = want - table.len();
            if needed > self.num_free() {
                return Err(NoFreeBlocks { needed, free: self.num_free() });
            }
            while table.len() < want {
                let id = self.take_fresh();
                table.push(id);
            }
        }
        Ok(())
    }

    /// Register the prefix hashes of blocks `from..` of `table` that `computed` (the
    /// sequence's tokens whose K/V are in the cache) fills completely; returns how many
    /// leading blocks are registered now. A prefix already registered by another block keeps
    /// its first owner.
    pub fn register_full_blocks(&mut self, table: &[BlockId], computed: &[u32], from: usize) -> usize {
        let bs = self.block_size;
        let full = (computed.len() / bs).min(table.len());
        let mut h = if from == 0 { 0 } else { self.prefix_hash(computed, from) };
        for i in from..full {
            let part = &computed[i * bs..(i + 1) * bs];
            h = block_hash(h, part);
            let id = table[i];
            if self.blocks[id as usize].cached.is_none() && !self.by_hash.contains_key(&h) {
                self.blocks[id as usize].cached = Some((h, part.to_vec()));
                self.by_hash.insert(h, id);
            }
        }
        full.max(from)
    }

    fn prefix_hash(&self, tokens: &[u32], blocks: usize) -> u64 {
        let bs = self.block_size;
        (0..blocks).fold(0u64, |h, i| block_hash(h, &tokens[i * bs..(i + 1) * bs]))
    }

    /// Release a sequence's blocks (in reverse, so its tail is reused before its head).
    pub fn free(&mut self, table: &[BlockId]) {
        for &id in table.iter().rev() {
            let b = &mut self.blocks[id as usize];
            assert!(b.ref_count > 0, "block {id} freed twice");
            b.ref_count -= 1;
            if b.ref_count == 0 {
                self.push_free(id);
            }
        }
    }

    /// Reference count of a block (tests, metrics).
    pub fn ref_count(&self, id: BlockId) -> u32 {
        self.blocks[id as usize].ref_count
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use encore_tensor::testing::Rng;

    fn toks(n: usize, salt: u32) -> Vec<u32> {
        (0..n as u32).map(|i| i * 7 + salt).collect()
    }

    #[test]
    fn allocate_grow_and_free_return_every_block() {
        let mut bm = BlockManager::new(8, 4);
        let a = bm.allocate(&toks(9, 0)).unwrap();
        assert_eq!((a.block_table.len(), a.num_cached_tokens), (3, 0));
        let mut t = a.block_table;
        bm.ensure(&mut t, 12).unwrap();
        assert_eq!(t.len(), 3);
        bm.ensure(&mut t, 13).unwrap();
        assert_eq!((t.len(), bm.num_free()), (4, 4));
        assert_eq!(bm.ensure(&mut t, 40), Err(NoFreeBlocks { needed: 6, free: 4 }));
        bm.free(&t);
        assert_eq!(bm.num_free(), 8);
    }

    #[test]
    fn a_registered_prefix_is_reused_but_never_the_last_tokens_block() {
        let mut bm = BlockManager::new(16, 4);
        let prompt = toks(10, 1); // blocks [0..4), [4..8), [8..10)
        let a = bm.allocate(&prompt).unwrap();
        assert_eq!(bm.register_full_blocks(&a.block_table, &prompt, 0), 2);
        // same prompt: the two full blocks are shared, the partial one is new
        let b = bm.allocate(&prompt).unwrap();
        assert_eq!(b.num_cached_tokens, 8);
        assert_eq!(&b.block_table[..2], &a.block_table[..2]);
        assert_ne!(b.block_table[2], a.block_table[2]);
        assert_eq!(bm.ref_count(a.block_table[0]), 2);
        // a prompt of exactly 8 tokens may reuse only block 0: its last token is in block 1
        let c = bm.allocate(&prompt[..8]).unwrap();
        assert_eq!(c.num_cached_tokens, 4);
        // a different second block stops the chain
        let mut other = prompt.clone();
        other[5] = 999;
        assert_eq!(bm.allocate(&other).unwrap().num_cached_tokens, 4);
        assert_eq!(bm.prefix_stats(), PrefixStats { queries: 2 + 2 + 1 + 2, hits: 2 + 1 + 1 });
    }

    #[test]
    fn freed_prefixes_stay_findable_until_reused_lru() {
        let mut bm = BlockManager::new(4, 2);
        let p = toks(5, 3);
        let a = bm.allocate(&p).unwrap(); // 3 blocks
        bm.register_full_blocks(&a.block_table, &p, 0);
        bm.free(&a.block_table);
        assert_eq!(bm.num_free(), 4);
        // needs 2 of the cached blocks back (free) + 1 fresh
        assert_eq!(bm.blocks_needed(&p), 3);
        let b = bm.allocate(&p).unwrap();
        assert_eq!(b.num_cached_tokens, 4);
        bm.free(&b.block_table);
        // a new unrelated sequence of 4 blocks evicts everything; the prefix is gone
        let c = bm.allocate(&toks(8, 50)).unwrap();
        bm.free(&c.block_table);
        assert_eq!(bm.allocate(&p).unwrap().num_cached_tokens, 0);
    }

    #[test]
    fn unhashed_free_blocks_are_used_before_cached_ones() {
        let mut bm = BlockManager::new(4, 2);
        let p = toks(3, 9); // 2 blocks, block 0 full
        let a = bm.allocate(&p).unwrap();
        bm.register_full_blocks(&a.block_table, &p, 0);
        bm.free(&a.block_table);
        // 2 fresh blocks: taken from the 3 without a prefix, the cached one survives
        let b = bm.allocate(&toks(4, 77)).unwrap();
        assert!(!b.block_table.contains(&a.block_table[0]));
        assert_eq!(bm.allocate(&p).unwrap().num_cached_tokens, 2);
    }

    /// Random allocate / grow / register / free traffic: counts always add up, no block is
    /// held by two live sequences unless it is a registered full block, nothing leaks.
    #[test]
    fn random_traffic_never_leaks_or_double_frees() {
        let mut rng = Rng::fresh("block manager traffic");
        let (n, bs) = (64, 4);
        let mut bm = BlockManager::new(n, bs);
        let mut live: Vec<(Vec<u32>, Vec<BlockId>)> = Vec::new();
        let prompts: Vec<Vec<u32>> = (0..6).map(|s| toks(4 + rng.below(30), s % 3)).collect();
        for _ in 0..3000 {
            match rng.below(4) {
                0 | 1 => {
                    let p = prompts[rng.below(prompts.len())].clone();
                    if let Ok(a) = bm.allocate(&p) {
                        bm.register_full_blocks(&a.block_table, &p, 0);
                        live.push((p, a.block_table));
                    }
                }
                2 if !live.is_empty() => {
                    let i = rng.below(live.len());
                    let (toks, table) = &mut live[i];
                    toks.push(rng.below(100) as u32);
                    if bm.ensure(table, toks.len()).is_ok() {
                        bm.register_full_blocks(table, toks, 0);
                    } else {
                        toks.pop();
                    }
                }
                _ if !live.is_empty() => {
                    let (_, table) = live.swap_remove(rng.below(live.len()));
                    bm.free(&table);
                }
                _ => {}
            }
            let mut held = vec![0u32; n];
            for (_, t) in &live {
                for &id in t {
                    held[id as usize] += 1;
                }
            }
            for id in 0..n {
                assert_eq!(bm.ref_count(id as BlockId), held[id], "block {id}");
                if held[id] > 1 {
                    assert!(bm.blocks[id].cached.is_some(), "block {id} shared without a prefix");
                }
            }
            assert_eq!(bm.num_free(), held.iter().filter(|&&c| c == 0).count());
        }
        for (_, t) in live.drain(..) {
            bm.free(&t);
        }
        assert_eq!(bm.num_free(), n);
    }
}
