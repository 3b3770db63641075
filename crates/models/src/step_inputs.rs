//! Everything one forward step reads from the host, packed in ONE i32 device buffer so a
//! step is fed by one host-to-device copy (and a captured graph reads the same addresses on
//! every replay). Regions, for `T` token rows, `R` logit rows / sequences and `MB` blocks per
//! sequence:
//!
//! | region         | dims      | meaning                                                        |
//! |----------------|-----------|----------------------------------------------------------------|
//! | `ids`          | `[T]`     | token ids (as u32)                                             |
//! | `positions`    | `[T]`     | position of the token in its sequence; -1 marks a padded row   |
//! | `row_seq`      | `[T]`     | which block-table row (sequence of the step) the token is from |
//! | `slots`        | `[T]`     | cache slot its K/V is written to; -1 for padding (skipped)     |
//! | `logit_rows`   | `[R]`     | token rows whose logits (and next token) are computed          |
//! | `uniform`      | `[R]`     | sampling uniform of each logit row, in `[0, 2^24)`             |
//! | `sampling`     | `[R, 4]`  | each logit row's settings (`SampleParams::to_words`)           |
//! | `block_tables` | `[R, MB]` | the cache blocks of each sequence, in order                    |
//!
//! The model crate knows nothing of requests: the engine fills a [`HostInputs`] from its
//! schedule; this file only lays the rows out.

use encore_tensor::{Backend, DType, Error, HostTensor, Result, SampleParams, Tensor};

/// What a step's token rows are, for the ops whose fastest form depends on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StepKind {
    /// Every real row is the one new token of a different sequence (a pure decode step), so
    /// no row attends another row's new key: attention fuses RoPE and the KV write
    /// ([`encore_tensor::Backend::decode_attention`]).
    Decode,
    /// Anything else (prefill chunks, mixed steps): rows of one sequence attend each other's
    /// new keys, which are written before attention runs.
    Mixed,
}

/// Capacities of a [`StepInputs`] buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InputDims {
    /// Token rows per step (T).
    pub max_tokens: usize,
    /// Sequences (block-table rows, logit rows) per step (R).
    pub max_seqs: usize,
    /// Blocks per sequence (MB).
    pub max_blocks: usize,
}

impl InputDims {
    fn words(&self) -> usize {
        4 * self.max_tokens + 6 * self.max_seqs + self.max_seqs * self.max_blocks
    }
    // region offsets, in words
    fn ids(&self) -> usize {
        0
    }
    fn positions(&self) -> usize {
        self.max_tokens
    }
    fn row_seq(&self) -> usize {
        2 * self.max_tokens
    }
    fn slots(&self) -> usize {
        3 * self.max_tokens
    }
    fn logit_rows(&self) -> usize {
        4 * self.max_tokens
    }
    fn uniform(&self) -> usize {
        4 * self.max_tokens + self.max_seqs
    }
    fn sampling(&self) -> usize {
        4 * self.max_tokens + 2 * self.max_seqs
    }
    fn block_tables(&self) -> usize {
        4 * self.max_tokens + 6 * self.max_seqs
    }
}

/// The device side: one packed i32 buffer and views of its regions.
pub struct StepInputs<B: Backend> {
    pub dims: InputDims,
    pub packed: Tensor<B>, // [words] i32
}

/// One token row of a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenRow {
    pub id: u32,
    /// Position in its sequence; -1 for a padded row.
    pub position: i32,
    /// Block-table row of its sequence.
    pub seq: i32,
    /// Cache slot its K/V goes to; -1 to skip.
    pub slot: i32,
}

impl TokenRow {
    pub const PAD: TokenRow = TokenRow { id: 0, position: -1, seq: 0, slot: -1 };
}

/// A token row whose logits (and next token) are wanted, and how that token is chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LogitRow {
    pub row: i32,
    /// Sampling uniform in `[0, 2^24)`.
    pub uniform: i32,
    pub params: SampleParams,
}

impl LogitRow {
    pub fn greedy(row: i32) -> Self {
        LogitRow { row, uniform: 0, params: SampleParams::GREEDY }
    }
}

/// Host side of [`StepInputs`] for one step.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HostInputs {
    pub tokens: Vec<TokenRow>,
    pub logits: Vec<LogitRow>,
    /// Blocks of each sequence of the step (row `r` is what `TokenRow::seq == r` reads).
    pub block_tables: Vec<Vec<i32>>,
}

impl HostInputs {
    /// Pad the token rows to `rows` with sentinel rows, and the logit rows to `logits` (a
    /// padded logit row reads token row 0; its result is ignored).
    pub fn pad_to(&mut self, rows: usize, logits: usize) {
        self.tokens.resize(rows.max(self.tokens.len()), TokenRow::PAD);
        self.logits.resize(logits.max(self.logits.len()), LogitRow::greedy(0));
    }

    /// The packed words, or an error naming the region that does not fit.
    pub fn pack(&self, d: &InputDims) -> Result<Vec<i32>> {
        let over = |what: &str, n: usize, max: usize| Error::InvalidArgument {
            op: "StepInputs::pack",
            msg: format!("{n} {what} exceed the {max} the step inputs were sized for"),
        };
        if self.tokens.len() > d.max_tokens {
            return Err(over("token rows", self.tokens.len(), d.max_tokens));
        }
        if self.logits.len() > d.max_seqs {
            return Err(over("logit rows", self.logits.len(), d.max_seqs));
        }
        if self.block_tables.len() > d.max_seqs {
            return Err(over("sequences", self.block_tables.len(), d.max_seqs));
        }
        if let Some(t) = self.block_tables.iter().find(|t| t.len() > d.max_blocks) {
            return Err(over("blocks of one sequence", t.len(), d.max_blocks));
        }
        let mut w = vec![0i32; d.words()];
        for c in self.tokens.len()..d.max_tokens {
            w[d.positions() + c] = -1;
            w[d.slots() + c] = -1;
        }
        for (i, r) in self.tokens.iter().enumerate() {
            w[d.ids() + i] = r.id as i32;
            w[d.positions() + i] = r.position;
            w[d.row_seq() + i] = r.seq;
            w[d.slots() + i] = r.slot;
        }
        for (i, l) in self.logits.iter().enumerate() {
            w[d.logit_rows() + i] = l.row;
            w[d.uniform() + i] = l.uniform;
            w[d.sampling() + 4 * i..][..4].copy_from_slice(&l.params.to_words());
        }
        for (s, table) in self.block_tables.iter().enumerate() {
            let at = d.block_tables() + s * d.max_blocks;
            w[at..at + table.len()].copy_from_slice(table);
        }
        Ok(w)
    }
}

impl<B: Backend> StepInputs<B> {
    pub fn new(b: &B, dims: InputDims) -> Result<Self> {
        Ok(StepInputs { dims, packed: b.zeros(DType::I32, &[dims.words()])? })
    }
    fn region(&self, at: usize, n: usize) -> Result<Tensor<B>> {
        self.packed.narrow(0, at, n)
    }
    /// Token ids of the first `t` rows, as u32.
    pub fn ids(&self, t: usize) -> Result<Tensor<B>> {
        self.region(self.dims.ids(), t)?.bitcast(DType::U32)
    }
    pub fn positions(&self, t: usize) -> Result<Tensor<B>> {
        self.region(self.dims.positions(), t)
    }
    pub fn row_seq(&self, t: usize) -> Result<Tensor<B>> {
        self.region(self.dims.row_seq(), t)
    }
    pub fn slot_mapping(&self, t: usize) -> Result<Tensor<B>> {
        self.region(self.dims.slots(), t)
    }
    /// Token rows of the first `n` logit rows, as u32 (a row gather's ids).
    pub fn logit_rows(&self, n: usize) -> Result<Tensor<B>> {
        self.region(self.dims.logit_rows(), n)?.bitcast(DType::U32)
    }
    /// Sampling uniforms of the first `n` logit rows.
    pub fn uniform(&self, n: usize) -> Result<Tensor<B>> {
        self.region(self.dims.uniform(), n)
    }
    /// Sampling settings of the first `n` logit rows: `[n, 4]`.
    pub fn sampling(&self, n: usize) -> Result<Tensor<B>> {
        self.region(self.dims.sampling(), 4 * n)?.reshape(&[n, 4])
    }
    /// Every block table: `[R, MB]`.
    pub fn block_tables(&self) -> Result<Tensor<B>> {
        let d = self.dims;
        self.region(d.block_tables(), d.max_seqs * d.max_blocks)?.reshape(&[d.max_seqs, d.max_blocks])
    }
    /// The one host-to-device copy of a step.
    pub fn upload(&self, b: &B, host: &HostInputs) -> Result<()> {
        let words = host.pack(&self.dims)?;
        b.write(&HostTensor::from_i32(&[words.len()], &words), &self.packed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: InputDims = InputDims { max_tokens: 4, max_seqs: 2, max_blocks: 3 };

    #[test]
    fn pack_lays_out_every_region_and_pads() {
        let mut h = HostInputs::default();
        h.tokens.push(TokenRow { id: 7, position: 5, seq: 1, slot: 37 });
        let sp = SampleParams { temperature: 0.5, top_k: 3, top_p: 0.9, min_p: 0.0 };
        h.logits.push(LogitRow { row: 0, uniform: 99, params: sp });
        h.block_tables = vec![vec![4], vec![2, 6]];
        let w = h.pack(&D).unwrap();
        assert_eq!(w.len(), 4 * 4 + 6 * 2 + 2 * 3);
        assert_eq!(&w[0..4], &[7, 0, 0, 0]); // ids
        assert_eq!(&w[4..8], &[5, -1, -1, -1]); // positions
        assert_eq!(&w[8..12], &[1, 0, 0, 0]); // row_seq
        assert_eq!(&w[12..16], &[37, -1, -1, -1]); // slots
        assert_eq!(&w[16..18], &[0, 0]); // logit rows
        assert_eq!(&w[18..20], &[99, 0]); // uniforms
        assert_eq!(&w[20..24], &sp.to_words()); // sampling, row 0
        assert_eq!(&w[24..28], &[0; 4]); // row 1 unused
        assert_eq!(&w[28..34], &[4, 0, 0, 2, 6, 0]); // block tables
    }

    #[test]
    fn pack_refuses_what_does_not_fit_instead_of_indexing_past_the_buffer() {
        let mut h = HostInputs::default();
        h.pad_to(5, 0);
        assert!(h.pack(&D).is_err(), "5 token rows");
        let h = HostInputs { logits: vec![LogitRow::greedy(0); 3], ..Default::default() };
        assert!(h.pack(&D).is_err(), "3 logit rows");
        let h = HostInputs { block_tables: vec![vec![0; 4]], ..Default::default() };
        assert!(h.pack(&D).is_err(), "4 blocks");
        let h = HostInputs { block_tables: vec![vec![]; 3], ..Default::default() };
        assert!(h.pack(&D).is_err(), "3 tables");
    }
}
