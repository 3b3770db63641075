//! The backend contract: the ops a Llama-family forward pass and sampling need, over
//! storage + layout. Every op writes into a destination the caller allocated, so a forward
//! pass over preallocated buffers allocates nothing (the property graph capture needs).
//!
//! Argument checks shared by all backends live in [`crate::check`]; a backend calls them
//! first, so bad arguments give the same structured error everywhere.

use crate::{DType, HostQTensor, HostTensor, Layout, QTensor, Result};
use std::sync::Arc;

/// A decoder projection with the ops around it fused in ([`Backend::matmul_fused`]):
/// `dst (+)= rms_norm(x) W^T`, or for a gated MLP `dst = act(rms_norm(x) W_gate^T) *
/// (rms_norm(x) W_up^T)`.
pub struct FusedMatmul<'a, B: Backend> {
    /// `[M, K]` rows: the residual stream.
    pub x: &'a Tensor<B>,
    /// The norm weight `[K]` (x's dtype) and epsilon.
    pub norm: (&'a Tensor<B>, f32),
    /// `[K, N]`: the transposed weight (of the gate, with `glu`).
    pub w_t: &'a Tensor<B>,
    /// The gated MLP: its activation and the transposed up weight `[K, N]`.
    pub glu: Option<(GluActivation, &'a Tensor<B>)>,
    /// `[M, N]` in x's dtype; it must not overlap x, the weights or the norm weight (the
    /// kernel reads them while it writes dst).
    pub dst: &'a Tensor<B>,
    /// `dst +=` (not with `glu`).
    pub accumulate: bool,
}

/// The input of a fused quantized projection ([`Backend::qmatmul_fused`]): what the
/// decoder computes before it, done where the backend turns x into its matmul input.
pub enum QInput<'a, B: Backend> {
    /// `rms_norm(x, norm, eps)` of `x: [M, K]`, rounded to x's dtype as
    /// [`Backend::rms_norm`] stores it.
    Normed { x: &'a Tensor<B>, norm: &'a Tensor<B>, eps: f32 },
    /// `act(gate) * up` of `gate_up: [M, 2K]` rows `[gate | up]`, rounded as
    /// [`Backend::silu_mul`] / [`Backend::gelu_mul`] store it.
    Gated { gate_up: &'a Tensor<B>, act: GluActivation },
}

/// The activation of a gated MLP: SwiGLU (Llama, Qwen, Mistral) or GeGLU (Gemma).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum GluActivation {
    /// SwiGLU (Llama, Mistral, Qwen).
    #[default]
    Silu,
    /// GELU, tanh approximation (`gelu_pytorch_tanh`, Gemma): [`UnaryOp::Gelu`].
    GeluTanh,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    Neg,
    Exp,
    Silu,
    /// tanh approximation, as in GPT-2 / `gelu_pytorch_tanh`.
    Gelu,
    Sqrt,
    Recip,
    Square,
    Abs,
    Tanh,
}

impl UnaryOp {
    pub const ALL: [UnaryOp; 9] = [
        UnaryOp::Neg,
        UnaryOp::Exp,
        UnaryOp::Silu,
        UnaryOp::Gelu,
        UnaryOp::Sqrt,
        UnaryOp::Recip,
        UnaryOp::Square,
        UnaryOp::Abs,
        UnaryOp::Tanh,
    ];

    /// The reference definition, in f64.
    pub fn eval(self, x: f64) -> f64 {
        match self {
            UnaryOp::Neg => -x,
            UnaryOp::Exp => x.exp(),
            UnaryOp::Silu => x / (1.0 + (-x).exp()),
            UnaryOp::Gelu => {
                0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())
            }
            UnaryOp::Sqrt => x.sqrt(),
            UnaryOp::Recip => 1.0 / x,
            UnaryOp::Square => x * x,
            UnaryOp::Abs => x.abs(),
            UnaryOp::Tanh => x.tanh(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Max,
    Min,
}

impl BinaryOp {
    pub const ALL: [BinaryOp; 6] =
        [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div, BinaryOp::Max, BinaryOp::Min];

    pub fn eval(self, a: f64, b: f64) -> f64 {
        match self {
            BinaryOp::Add => a + b,
            BinaryOp::Sub => a - b,
            BinaryOp::Mul => a * b,
            BinaryOp::Div => a / b,
            BinaryOp::Max => a.max(b),
            BinaryOp::Min => a.min(b),
        }
    }
}

/// Attention over a paged KV cache, for prefill and decode alike.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionParams {
    /// Multiplies q·k (usually `1/sqrt(D)`).
    pub scale: f32,
    /// Keys older than `pos - sliding_window + 1` are masked; 0 means no window.
    pub sliding_window: u32,
    /// Slots per KV block: the caches are `[N * block_size, Hkv, D]` (N blocks).
    pub block_size: u32,
}

/// The operands of [`Backend::decode_attention`]: those of [`Backend::rope_kv_write`]
/// (`q_rot` its `q_dst`), then of [`Backend::attention`] over the rotated q.
pub struct DecodeAttention<'a, B: Backend> {
    /// `[T, H, D]`, unrotated (may be a strided view of a fused qkv, as `k` and `v`).
    pub q: &'a Tensor<B>,
    /// `[T, Hkv, D]`, unrotated.
    pub k: &'a Tensor<B>,
    /// `[T, Hkv, D]`.
    pub v: &'a Tensor<B>,
    /// `[P, D/2]` f32.
    pub cos: &'a Tensor<B>,
    pub sin: &'a Tensor<B>,
    /// `[T]` i32.
    pub positions: &'a Tensor<B>,
    /// `[T]` i32: where each row's k and v go (negative: nowhere).
    pub slot_mapping: &'a Tensor<B>,
    /// Scratch `[T, H, D]` for the rotated q; its contents afterwards are unspecified.
    pub q_rot: &'a Tensor<B>,
    /// `[N * bs, Hkv, D]`.
    pub k_cache: &'a Tensor<B>,
    pub v_cache: &'a Tensor<B>,
    /// `[R, MB]` i32.
    pub block_tables: &'a Tensor<B>,
    /// `[T]` i32.
    pub row_seq: &'a Tensor<B>,
    pub params: AttentionParams,
    /// The per-head RMSNorm of q and k before RoPE (Qwen3, Gemma 3), or `None`.
    pub qk_norm: Option<QkNorm<'a, B>>,
}

/// The per-head RMSNorm of q and k before RoPE ([`DecodeAttention::qk_norm`]): each head's
/// D values as [`Backend::rms_norm`] over rows of D computes and rounds them.
pub struct QkNorm<'a, B: Backend> {
    /// `[D]` weights of q's and k's norm, in q's dtype.
    pub q: &'a Tensor<B>,
    pub k: &'a Tensor<B>,
    pub eps: f32,
    /// Scratch `[T, Hkv, D]` for the normed k of the composed ops (its contents afterwards
    /// are unspecified).
    pub k_normed: &'a Tensor<B>,
}

impl<B: Backend> Clone for QkNorm<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B: Backend> Copy for QkNorm<'_, B> {}

impl<B: Backend> DecodeAttention<'_, B> {
    /// [`Backend::norm_rope_kv_write`] as the ops it stands for: [`Backend::copy`] and
    /// [`Backend::rms_norm`] of q into `q_rot` and of k into `k_normed`, then
    /// [`Backend::rope_kv_write`] of those.
    pub fn norm_rope_kv_write_ops(&self, b: &B) -> Result<()> {
        let a = self;
        crate::check::norm_rope_kv_write(a)?;
        let Some(n) = a.qk_norm else { unreachable!("checked") };
        b.copy(a.q, a.q_rot)?;
        b.rms_norm(a.q_rot, n.q, n.eps, a.q_rot)?;
        b.copy(a.k, n.k_normed)?;
        b.rms_norm(n.k_normed, n.k, n.eps, n.k_normed)?;
        self.rope_kv_write_of(b, a.q_rot, n.k_normed)
    }

    /// [`Backend::rope_kv_write`] of the given q and k (`[T, H, D]`, `[T, Hkv, D]`) with this
    /// op's v, tables, positions, slots, rotated-q scratch and caches.
    fn rope_kv_write_of(&self, b: &B, q: &Tensor<B>, k: &Tensor<B>) -> Result<()> {
        let a = self;
        b.rope_kv_write(q, k, a.v, a.cos, a.sin, a.positions, a.slot_mapping, a.q_rot, a.k_cache, a.v_cache)
    }

    /// The ops this one stands for, in turn: [`Backend::rope_kv_write`] (with `qk_norm`,
    /// [`Backend::norm_rope_kv_write`]), then [`Backend::attention`] of the rotated q into
    /// `dst`.
    pub fn unfused(&self, b: &B, dst: &Tensor<B>) -> Result<()> {
        let a = self;
        match a.qk_norm {
            None => a.rope_kv_write_of(b, a.q, a.k)?,
            Some(_) => b.norm_rope_kv_write(a)?,
        }
        b.attention(a.q_rot, a.k_cache, a.v_cache, a.block_tables, a.row_seq, a.positions, a.params, dst)
    }
}

/// Filters and temperature of one row of [`Backend::sample`]. The kept set of a row is every
/// token whose probability `p = softmax(logits / temperature)` is at least the largest of:
/// the k-th largest p (top-k), `min_p * max p` (min-p), and the smallest p of the highest-p
/// tokens whose mass reaches `top_p` of what is left (top-p); ties at a threshold are all
/// kept. A temperature <= 0 is greedy: the argmax (first on ties).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SampleParams {
    /// > 0 samples; <= 0 is greedy.
    pub temperature: f32,
    /// 0 keeps every token.
    pub top_k: u32,
    /// In (0, 1]; 1 keeps every token.
    pub top_p: f32,
    /// In [0, 1); 0 keeps every token.
    pub min_p: f32,
}

impl SampleParams {
    pub const GREEDY: SampleParams = SampleParams { temperature: 0.0, top_k: 0, top_p: 1.0, min_p: 0.0 };

    pub fn is_greedy(&self) -> bool {
        // NaN is greedy too
        self.temperature.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater)
    }

    /// The row's 4 words in a `[R, 4]` i32 params tensor: temperature bits, top_k, top_p
    /// bits, min_p bits.
    pub fn to_words(self) -> [i32; 4] {
        [self.temperature.to_bits() as i32, self.top_k as i32, self.top_p.to_bits() as i32, self.min_p.to_bits() as i32]
    }

    pub fn from_words(w: [i32; 4]) -> Self {
        let f = |x: i32| f32::from_bits(x as u32);
        SampleParams { temperature: f(w[0]), top_k: w[1] as u32, top_p: f(w[2]), min_p: f(w[3]) }
    }

    /// Values a sampling row accepts (greedy rows ignore the filters).
    pub fn is_valid(&self) -> bool {
        self.is_greedy()
            || (self.temperature.is_finite()
                && self.top_p > 0.0
                && self.top_p <= 1.0
                && (0.0..1.0).contains(&self.min_p))
    }
}

/// `uniform` values of [`Backend::sample`] are integers in `[0, 2^24)`: `u = x / 2^24`.
pub const SAMPLE_UNIFORM_SCALE: u32 = 1 << 24;

/// A view of backend storage: shared storage, a strided layout and a dtype. Cloning and
/// view operations never copy data.
pub struct Tensor<B: Backend> {
    storage: Arc<B::Storage>,
    layout: Layout,
    dtype: DType,
}

impl<B: Backend> Clone for Tensor<B> {
    fn clone(&self) -> Self {
        Tensor { storage: self.storage.clone(), layout: self.layout.clone(), dtype: self.dtype }
    }
}

impl<B: Backend> std::fmt::Debug for Tensor<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({}, {:?})", self.dtype, self.layout)
    }
}

impl<B: Backend> Tensor<B> {
    /// A tensor over a whole storage of `dims.product()` elements.
    pub fn from_storage(storage: B::Storage, dtype: DType, dims: &[usize]) -> Self {
        Tensor { storage: Arc::new(storage), layout: Layout::contiguous(dims), dtype }
    }

    pub fn storage(&self) -> &B::Storage {
        &self.storage
    }
    pub fn storage_arc(&self) -> &Arc<B::Storage> {
        &self.storage
    }
    pub fn layout(&self) -> &Layout {
        &self.layout
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn dims(&self) -> &[usize] {
        self.layout.dims()
    }
    pub fn rank(&self) -> usize {
        self.layout.rank()
    }
    pub fn numel(&self) -> usize {
        self.layout.numel()
    }
    pub fn is_contiguous(&self) -> bool {
        self.layout.is_contiguous()
    }
    /// True when both views share one storage.
    pub fn same_storage(&self, other: &Tensor<B>) -> bool {
        Arc::ptr_eq(&self.storage, &other.storage)
    }

    fn with_layout(&self, layout: Layout) -> Self {
        Tensor { storage: self.storage.clone(), layout, dtype: self.dtype }
    }
    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Self> {
        Ok(self.with_layout(self.layout.narrow(dim, start, len)?))
    }
    pub fn transpose(&self, d0: usize, d1: usize) -> Result<Self> {
        Ok(self.with_layout(self.layout.transpose(d0, d1)?))
    }
    pub fn permute(&self, perm: &[usize]) -> Result<Self> {
        Ok(self.with_layout(self.layout.permute(perm)?))
    }
    pub fn broadcast_as(&self, dims: &[usize]) -> Result<Self> {
        Ok(self.with_layout(self.layout.broadcast_as(dims)?))
    }
    pub fn reshape(&self, dims: &[usize]) -> Result<Self> {
        Ok(self.with_layout(self.layout.reshape(dims)?))
    }
    /// The same bits seen as another dtype of the same size (u32 <-> i32), e.g. one packed
    /// input buffer holding token ids and positions.
    pub fn bitcast(&self, dtype: DType) -> Result<Self> {
        if dtype.size_in_bytes() != self.dtype.size_in_bytes() {
            return Err(crate::Error::DTypeMismatch { op: "bitcast", lhs: self.dtype, rhs: dtype });
        }
        Ok(Tensor { storage: self.storage.clone(), layout: self.layout.clone(), dtype })
    }
}

/// What a backend provides. Every op validates its arguments with [`crate::check`] and
/// writes its result into `dst`, which may not overlap an input unless stated.
pub trait Backend: Clone + Send + Sync + Sized + 'static {
    type Storage: Send + Sync + 'static;

    /// "cpu", "cuda:0", ...
    fn name(&self) -> String;

    /// A zero-filled storage of `numel` elements.
    fn alloc(&self, dtype: DType, numel: usize) -> Result<Self::Storage>;
    /// A new storage holding `host`.
    fn upload(&self, host: &HostTensor) -> Result<Self::Storage>;
    /// Overwrite the contiguous `dst` with `host` (same dtype and element count).
    fn write(&self, host: &HostTensor, dst: &Tensor<Self>) -> Result<()>;
    /// The values of `src` in row-major order, as a contiguous host tensor.
    fn download(&self, src: &Tensor<Self>) -> Result<HostTensor>;
    /// Wait until all queued work is done.
    fn synchronize(&self) -> Result<()>;

    /// Strided copy, converting between dtypes (floats to floats, or same dtype).
    fn copy(&self, src: &Tensor<Self>, dst: &Tensor<Self>) -> Result<()>;
    fn unary(&self, op: UnaryOp, src: &Tensor<Self>, dst: &Tensor<Self>) -> Result<()>;
    /// `lhs` and `rhs` broadcast to `dst`'s dims. `dst` may alias an input exactly.
    fn binary(&self, op: BinaryOp, lhs: &Tensor<Self>, rhs: &Tensor<Self>, dst: &Tensor<Self>) -> Result<()>;
    /// `[(Bt), M, K] x [(Bt), K, N] -> [(Bt), M, N]`; operands may be transposed views.
    /// `dst` has the inputs' dtype, or f32 (mixed precision: f32 accumulate, f32 store).
    fn matmul(&self, lhs: &Tensor<Self>, rhs: &Tensor<Self>, dst: &Tensor<Self>) -> Result<()>;
    /// `dst += lhs x rhs` (the residual add fused into the projection: one kernel, one
    /// rounding). Same shapes and dtypes as [`Backend::matmul`]; `dst` may not overlap an input.
    fn matmul_add(&self, lhs: &Tensor<Self>, rhs: &Tensor<Self>, dst: &Tensor<Self>) -> Result<()>;
    /// [`FusedMatmul`] in one kernel where this backend has one for the shape (`Ok(true)`);
    /// `Ok(false)` where it has not, and the caller runs the ops apart ([`Backend::rms_norm`],
    /// [`Backend::matmul`], [`Backend::silu_mul`] / [`Backend::gelu_mul`]). The fused result
    /// is the ops' up to rounding: the normed x is not rounded to the dtype on the way.
    fn matmul_fused(&self, op: &FusedMatmul<'_, Self>) -> Result<bool> {
        let _ = op;
        Ok(false)
    }
    /// Quantized matmul: `dst = x w^T`, or `dst += x w^T` when `accumulate` (the residual
    /// add fused into the projection). `x: [M, K]` float rows, `w` quantized `[N, K]` (a HF
    /// Linear weight), `dst: [M, N]` rows in x's dtype or f32. Backends read the blocks as
    /// they are stored (activations may be quantized to 8 bits on the way, as llama.cpp
    /// does); `dst` may not overlap `x`.
    fn qmatmul(&self, x: &Tensor<Self>, w: &QTensor<Self>, dst: &Tensor<Self>, accumulate: bool) -> Result<()>;
    /// `dst[t] = dequantize(table[ids[t]])`: the embedding lookup of a quantized table.
    /// `ids: [T]` u32, `table` `[V, C]`, contiguous float `dst: [T, C]`.
    fn qembedding(&self, ids: &Tensor<Self>, table: &QTensor<Self>, dst: &Tensor<Self>) -> Result<()>;
    /// [`Backend::qmatmul`] of `input` (`dst = input w^T`, `+=` when `accumulate`) with the
    /// input's op fused in, where this backend has a kernel for the shape (`Ok(true)`);
    /// `Ok(false)` where it has not, and the caller runs the op, then `qmatmul`.
    fn qmatmul_fused(
        &self,
        input: &QInput<'_, Self>,
        w: &QTensor<Self>,
        dst: &Tensor<Self>,
        accumulate: bool,
    ) -> Result<bool> {
        let _ = (input, w, dst, accumulate);
        Ok(false)
    }
    /// A quantized tensor on this backend, its blocks as they are. Backends that keep
    /// per-weight scratch (CUDA: the dequantize buffer of its prefill path) size it here, at
    /// load, so that no forward pass allocates.
    fn upload_quant(&self, host: &HostQTensor) -> Result<QTensor<Self>> {
        QTensor::upload(self, host)
    }
    /// `dst = x / rms(x) * weight` over the last dim (stats in f32).
    fn rms_norm(&self, x: &Tensor<Self>, weight: &Tensor<Self>, eps: f32, dst: &Tensor<Self>) -> Result<()>;
    /// Softmax over the last dim (in f32).
    fn softmax(&self, x: &Tensor<Self>, dst: &Tensor<Self>) -> Result<()>;
    /// SwiGLU: `dst = silu(gate) * up`.
    fn silu_mul(&self, gate: &Tensor<Self>, up: &Tensor<Self>, dst: &Tensor<Self>) -> Result<()>;
    /// GeGLU (Gemma's MLP): `dst = gelu_tanh(gate) * up`, in f32 ([`UnaryOp::Gelu`]).
    fn gelu_mul(&self, gate: &Tensor<Self>, up: &Tensor<Self>, dst: &Tensor<Self>) -> Result<()>;
    /// Rotary embedding, rotate-half (HF) convention. `x, dst: [T, H, D]` (x may be
    /// strided), `cos, sin: [P, D/2]` f32 tables, `positions: [T]` i32.
    fn rope(
        &self,
        x: &Tensor<Self>,
        cos: &Tensor<Self>,
        sin: &Tensor<Self>,
        positions: &Tensor<Self>,
        dst: &Tensor<Self>,
    ) -> Result<()>;
    /// `dst[t] = table[ids[t]]`; `ids: [T]` u32, `table: [V, C]`, `dst: [T, C]`.
    fn embedding(&self, ids: &Tensor<Self>, table: &Tensor<Self>, dst: &Tensor<Self>) -> Result<()>;
    /// Write `k, v: [T, Hkv, D]` into caches `[S, Hkv, D]` at `slot_mapping: [T]` i32;
    /// rows with a negative slot (padding) are skipped.
    fn kv_write(
        &self,
        k: &Tensor<Self>,
        v: &Tensor<Self>,
        k_cache: &Tensor<Self>,
        v_cache: &Tensor<Self>,
        slot_mapping: &Tensor<Self>,
    ) -> Result<()>;
    /// The attention prologue of a layer in one op: `q_dst = rope(q)`, and for each row `t`
    /// with `slot_mapping[t] >= 0`, `k_cache[slot] = rope(k[t])`, `v_cache[slot] = v[t]`;
    /// exactly [`Backend::rope`] of q and of k followed by [`Backend::kv_write`] (same
    /// padding rules: a negative position leaves its row unrotated, a negative slot writes
    /// nothing). `q, q_dst: [T, H, D]`, `k, v: [T, Hkv, D]` (q, k, v may be strided views
    /// of a fused qkv), caches `[S, Hkv, D]`, `cos, sin: [P, D/2]` f32, `positions`,
    /// `slot_mapping: [T]` i32.
    #[allow(clippy::too_many_arguments)]
    fn rope_kv_write(
        &self,
        q: &Tensor<Self>,
        k: &Tensor<Self>,
        v: &Tensor<Self>,
        cos: &Tensor<Self>,
        sin: &Tensor<Self>,
        positions: &Tensor<Self>,
        slot_mapping: &Tensor<Self>,
        q_dst: &Tensor<Self>,
        k_cache: &Tensor<Self>,
        v_cache: &Tensor<Self>,
    ) -> Result<()>;
    /// [`Backend::rope_kv_write`] of `a` (into `a.q_rot` and the caches) with q's and k's
    /// heads RMS-normed first (`a.qk_norm`, which must be set): exactly the ops the default
    /// runs, [`Backend::copy`] and [`Backend::rms_norm`] of q into `q_rot` and of k into
    /// `k_normed`, then `rope_kv_write` of those. Backends fuse it into one launch.
    fn norm_rope_kv_write(&self, a: &DecodeAttention<'_, Self>) -> Result<()> {
        a.norm_rope_kv_write_ops(self)
    }
    /// Causal attention over a paged cache. `q, dst: [T, H, D]`; caches `[N * bs, Hkv, D]`
    /// (`bs = params.block_size`); `block_tables: [R, MB]` i32, row `r` the blocks of one
    /// sequence in order; `row_seq: [T]` i32, the block-table row of each query;
    /// `positions: [T]` i32. Query `t` at position `p >= 0` attends the positions
    /// `j in max(0, p - window + 1)..=p` of its sequence, key `j` at slot
    /// `block_tables[row_seq[t], j / bs] * bs + j % bs`. `p < 0` marks a padded row, whose
    /// output is zero (its `row_seq` is not read).
    fn attention(
        &self,
        q: &Tensor<Self>,
        k_cache: &Tensor<Self>,
        v_cache: &Tensor<Self>,
        block_tables: &Tensor<Self>,
        row_seq: &Tensor<Self>,
        positions: &Tensor<Self>,
        params: AttentionParams,
        dst: &Tensor<Self>,
    ) -> Result<()>;
    /// The attention of a pure decode step in one op: [`Backend::rope_kv_write`] of
    /// `a.q, a.k, a.v`, then [`Backend::attention`] of the rotated q into `dst` (`[T, H, D]`).
    /// Only for steps in which no row attends another row's new key (every row a different
    /// sequence, or padding) and each real row's slot is its position's slot in its block
    /// table, which lets a backend fuse the two: the result is that of the two ops. The
    /// default runs them in turn.
    fn decode_attention(&self, a: &DecodeAttention<'_, Self>, dst: &Tensor<Self>) -> Result<()> {
        a.unfused(self, dst)
    }
    /// Index of the largest value of each row over the last dim (first on ties), u32.
    fn argmax(&self, x: &Tensor<Self>, dst: &Tensor<Self>) -> Result<()>;
    /// One token per row of f32 `logits: [R, V]`, each row with its own settings
    /// (`params: [R, 4]` i32, [`SampleParams::to_words`]): a greedy row takes the argmax; a
    /// sampling row, with `u = uniform[r] / 2^24` (`uniform: [R]` i32), the first token in id
    /// order whose running kept mass exceeds `u` times the kept total (see [`SampleParams`]).
    /// u32 `dst: [R]`. One captured graph thus serves any mix of requests' settings.
    fn sample(
        &self,
        logits: &Tensor<Self>,
        uniform: &Tensor<Self>,
        params: &Tensor<Self>,
        dst: &Tensor<Self>,
    ) -> Result<()>;

    /// Runs `f`, a whole forward pass, where this backend's ops start cheapest. The CPU
    /// backend runs it on a thread of its pool, so that every op's parallel loop starts
    /// there instead of handing its work to the pool and sleeping until it is done (two
    /// thread switches per op, a third of a small model's decode step on one thread).
    /// Backends that queue work on a device just call `f`.
    fn scoped<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        f()
    }

    // Conveniences built on the above.

    fn zeros(&self, dtype: DType, dims: &[usize]) -> Result<Tensor<Self>> {
        let numel = dims.iter().product();
        Ok(Tensor::from_storage(self.alloc(dtype, numel)?, dtype, dims))
    }
    fn tensor(&self, host: &HostTensor) -> Result<Tensor<Self>> {
        Ok(Tensor::from_storage(self.upload(host)?, host.dtype, &host.dims))
    }
    /// Fill the contiguous float `dst` with values uniform in `[-scale, scale)` from `seed`
    /// (random weights for benchmarks). Backends may override this with a device kernel;
    /// the default draws on the host and writes.
    fn fill_uniform(&self, dst: &Tensor<Self>, seed: u64, scale: f32) -> Result<()> {
        crate::check::float("fill_uniform", dst)?;
        crate::check::contiguous("fill_uniform", dst)?;
        let mut rng = crate::testing::Rng::seeded(seed);
        let values = rng.vec(dst.numel(), -scale, scale);
        self.write(&HostTensor::from_f32_as(dst.dims(), &values, dst.dtype()), dst)
    }
}
