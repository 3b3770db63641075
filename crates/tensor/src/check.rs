//! Argument checks shared by every backend. Each returns the normalised shapes the kernels
//! need, or the structured error; backends call these before touching memory.

use crate::{Backend, DType, Error, Layout, Result, Tensor};

pub fn float<B: Backend>(op: &'static str, t: &Tensor<B>) -> Result<()> {
    if !t.dtype().is_float() {
        return Err(Error::UnsupportedDType { op, dtype: t.dtype() });
    }
    Ok(())
}

pub fn dtype_is<B: Backend>(op: &'static str, t: &Tensor<B>, dtype: DType) -> Result<()> {
    if t.dtype() != dtype {
        return Err(Error::DTypeMismatch { op, lhs: t.dtype(), rhs: dtype });
    }
    Ok(())
}

pub fn same_dtype<B: Backend>(op: &'static str, a: &Tensor<B>, b: &Tensor<B>) -> Result<()> {
    dtype_is(op, b, a.dtype())
}

pub fn same_dims<B: Backend>(op: &'static str, a: &Tensor<B>, b: &Tensor<B>) -> Result<()> {
    if a.dims() != b.dims() {
        return Err(Error::ShapeMismatch { op, lhs: a.dims().to_vec(), rhs: b.dims().to_vec() });
    }
    Ok(())
}

pub fn dims_are<B: Backend>(op: &'static str, t: &Tensor<B>, dims: &[usize]) -> Result<()> {
    if t.dims() != dims {
        return Err(Error::ShapeMismatch { op, lhs: t.dims().to_vec(), rhs: dims.to_vec() });
    }
    Ok(())
}

pub fn contiguous<B: Backend>(op: &'static str, t: &Tensor<B>) -> Result<()> {
    if !t.is_contiguous() {
        return Err(Error::LayoutRequired { op, expected: "contiguous" });
    }
    Ok(())
}

fn rank_is<B: Backend>(op: &'static str, t: &Tensor<B>, rank: usize) -> Result<()> {
    if t.rank() != rank {
        return Err(Error::InvalidArgument { op, msg: format!("expected rank {rank}, got dims {:?}", t.dims()) });
    }
    Ok(())
}

/// Strided copy: same dims; a cast between float dtypes or a same-dtype copy.
pub fn copy<B: Backend>(src: &Tensor<B>, dst: &Tensor<B>) -> Result<()> {
    same_dims("copy", src, dst)?;
    if src.dtype() != dst.dtype() && !(src.dtype().is_float() && dst.dtype().is_float()) {
        return Err(Error::DTypeMismatch { op: "copy", lhs: src.dtype(), rhs: dst.dtype() });
    }
    Ok(())
}

pub fn unary<B: Backend>(src: &Tensor<B>, dst: &Tensor<B>) -> Result<()> {
    float("unary", src)?;
    same_dtype("unary", src, dst)?;
    same_dims("unary", src, dst)
}

/// Returns the input layouts broadcast to `dst`'s dims.
pub fn binary<B: Backend>(lhs: &Tensor<B>, rhs: &Tensor<B>, dst: &Tensor<B>) -> Result<(Layout, Layout)> {
    float("binary", lhs)?;
    same_dtype("binary", lhs, rhs)?;
    same_dtype("binary", lhs, dst)?;
    Ok((lhs.layout().broadcast_as(dst.dims())?, rhs.layout().broadcast_as(dst.dims())?))
}

/// One operand of a (batched) matmul: element strides of batch, row and column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatOperand {
    pub offset: usize,
    pub batch_stride: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl MatOperand {
    /// Row-major (col stride 1) or column-major (row stride 1): what BLAS accepts.
    pub fn is_blas_compatible(&self, rows: usize, cols: usize) -> bool {
        self.col_stride == 1 || self.row_stride == 1 || rows == 1 || cols == 1
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatmulDims {
    pub batch: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub lhs: MatOperand,
    pub rhs: MatOperand,
    pub dst: MatOperand,
}

fn mat_operand(l: &Layout) -> MatOperand {
    let r = l.rank();
    MatOperand {
        offset: l.offset(),
        batch_stride: if r == 3 { l.strides()[0] } else { 0 },
        row_stride: l.strides()[r - 2],
        col_stride: l.strides()[r - 1],
    }
}

/// `[(Bt), M, K] x [(Bt), K, N] -> [(Bt), M, N]` with rank 2 or 3; a rank-2 operand is
/// shared by every batch. `dst` must be row-major.
pub fn matmul<B: Backend>(lhs: &Tensor<B>, rhs: &Tensor<B>, dst: &Tensor<B>) -> Result<MatmulDims> {
    const OP: &str = "matmul";
    float(OP, lhs)?;
    same_dtype(OP, lhs, rhs)?;
    // dst in the inputs' dtype, or f32 from bf16/f16 inputs (f32 logits from a bf16 LM head)
    if dst.dtype() != DType::F32 {
        same_dtype(OP, lhs, dst)?;
    }
    for t in [lhs, rhs, dst] {
        if !(2..=3).contains(&t.rank()) {
            return Err(Error::InvalidArgument {
                op: OP,
                msg: format!("operands must have rank 2 or 3, got {:?}", t.dims()),
            });
        }
    }
    let (ld, rd, dd) = (lhs.dims(), rhs.dims(), dst.dims());
    let (m, k) = (ld[ld.len() - 2], ld[ld.len() - 1]);
    let (k2, n) = (rd[rd.len() - 2], rd[rd.len() - 1]);
    let batch = if dd.len() == 3 { dd[0] } else { 1 };
    let mismatch = || Error::ShapeMismatch { op: OP, lhs: ld.to_vec(), rhs: rd.to_vec() };
    if k != k2 || dd[dd.len() - 2] != m || dd[dd.len() - 1] != n {
        return Err(mismatch());
    }
    for t in [lhs, rhs] {
        if t.rank() == 3 && (dd.len() != 3 || t.dims()[0] != batch) {
            return Err(mismatch());
        }
    }
    let (lo, ro, dso) = (mat_operand(lhs.layout()), mat_operand(rhs.layout()), mat_operand(dst.layout()));
    if dso.col_stride != 1 && n > 1 {
        return Err(Error::LayoutRequired { op: OP, expected: "row-major destination" });
    }
    Ok(MatmulDims { batch, m, n, k, lhs: lo, rhs: ro, dst: dso })
}

/// [`matmul`]'s checks, and `dst` (which is read and written) sharing no storage with an input.
pub fn matmul_add<B: Backend>(lhs: &Tensor<B>, rhs: &Tensor<B>, dst: &Tensor<B>) -> Result<MatmulDims> {
    let dims = matmul(lhs, rhs, dst)?;
    if dst.same_storage(lhs) || dst.same_storage(rhs) {
        return Err(Error::InvalidArgument {
            op: "matmul",
            msg: "matmul_add: dst shares storage with an input".into(),
        });
    }
    Ok(dims)
}

/// A tensor seen as `[rows, cols]` rows over its last dim, which must have stride 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rows {
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub offset: usize,
}

pub fn rows<B: Backend>(op: &'static str, t: &Tensor<B>) -> Result<Rows> {
    let cols = *t.dims().last().ok_or(Error::InvalidArgument { op, msg: "rank 0".into() })?;
    let rows = t.numel().checked_div(cols).unwrap_or(0);
    let l = t
        .layout()
        .reshape(&[rows, cols])
        .map_err(|_| Error::LayoutRequired { op, expected: "rows with a unit-stride last dim" })?;
    if cols > 1 && l.strides()[1] != 1 {
        return Err(Error::LayoutRequired { op, expected: "rows with a unit-stride last dim" });
    }
    Ok(Rows { rows, cols, row_stride: l.strides()[0], offset: l.offset() })
}

/// Returns (x rows, dst rows).
pub fn rms_norm<B: Backend>(x: &Tensor<B>, w: &Tensor<B>, dst: &Tensor<B>) -> Result<(Rows, Rows)> {
    const OP: &str = "rms_norm";
    float(OP, x)?;
    same_dtype(OP, x, w)?;
    same_dtype(OP, x, dst)?;
    same_dims(OP, x, dst)?;
    let c = *x.dims().last().unwrap_or(&0);
    dims_are(OP, w, &[c])?;
    contiguous(OP, w)?;
    Ok((rows(OP, x)?, rows(OP, dst)?))
}

pub fn softmax<B: Backend>(x: &Tensor<B>, dst: &Tensor<B>) -> Result<(Rows, Rows)> {
    const OP: &str = "softmax";
    float(OP, x)?;
    same_dims(OP, x, dst)?;
    dtype_is(OP, dst, x.dtype())?;
    Ok((rows(OP, x)?, rows(OP, dst)?))
}

pub fn silu_mul<B: Backend>(gate: &Tensor<B>, up: &Tensor<B>, dst: &Tensor<B>) -> Result<()> {
    gated("silu_mul", gate, up, dst)
}

pub fn gelu_mul<B: Backend>(gate: &Tensor<B>, up: &Tensor<B>, dst: &Tensor<B>) -> Result<()> {
    gated("gelu_mul", gate, up, dst)
}

/// A gated activation `dst = act(gate) * up`: one float dtype, one shape.
fn gated<B: Backend>(op: &'static str, gate: &Tensor<B>, up: &Tensor<B>, dst: &Tensor<B>) -> Result<()> {
    float(op, gate)?;
    same_dtype(op, gate, up)?;
    same_dtype(op, gate, dst)?;
    same_dims(op, gate, up)?;
    same_dims(op, gate, dst)
}

/// Returns (T, H, D).
pub fn rope<B: Backend>(
    x: &Tensor<B>,
    cos: &Tensor<B>,
    sin: &Tensor<B>,
    positions: &Tensor<B>,
    dst: &Tensor<B>,
) -> Result<(usize, usize, usize)> {
    const OP: &str = "rope";
    float(OP, x)?;
    same_dtype(OP, x, dst)?;
    same_dims(OP, x, dst)?;
    rank_is(OP, x, 3)?;
    let (t, h, d) = (x.dims()[0], x.dims()[1], x.dims()[2]);
    if d % 2 != 0 {
        return Err(Error::InvalidArgument { op: OP, msg: format!("head dim {d} must be even") });
    }
    for table in [cos, sin] {
        dtype_is(OP, table, DType::F32)?;
        contiguous(OP, table)?;
        rank_is(OP, table, 2)?;
        if table.dims()[1] != d / 2 {
            return Err(Error::ShapeMismatch { op: OP, lhs: table.dims().to_vec(), rhs: vec![table.dims()[0], d / 2] });
        }
    }
    same_dims(OP, cos, sin)?;
    dtype_is(OP, positions, DType::I32)?;
    dims_are(OP, positions, &[t])?;
    contiguous(OP, positions)?;
    Ok((t, h, d))
}

/// Returns (T, C, V).
pub fn embedding<B: Backend>(ids: &Tensor<B>, table: &Tensor<B>, dst: &Tensor<B>) -> Result<(usize, usize, usize)> {
    const OP: &str = "embedding";
    dtype_is(OP, ids, DType::U32)?;
    float(OP, table)?;
    same_dtype(OP, table, dst)?;
    rank_is(OP, ids, 1)?;
    rank_is(OP, table, 2)?;
    contiguous(OP, ids)?;
    contiguous(OP, table)?;
    contiguous(OP, dst)?;
    let (t, v, c) = (ids.dims()[0], table.dims()[0], table.dims()[1]);
    dims_are(OP, dst, &[t, c])?;
    Ok((t, c, v))
}

/// Returns (T, Hkv, D, S).
pub fn kv_write<B: Backend>(
    k: &Tensor<B>,
    v: &Tensor<B>,
    kc: &Tensor<B>,
    vc: &Tensor<B>,
    slots: &Tensor<B>,
) -> Result<(usize, usize, usize, usize)> {
    const OP: &str = "kv_write";
    float(OP, k)?;
    for t in [v, kc, vc] {
        same_dtype(OP, k, t)?;
    }
    rank_is(OP, k, 3)?;
    same_dims(OP, k, v)?;
    let (t, hkv, d) = (k.dims()[0], k.dims()[1], k.dims()[2]);
    rank_is(OP, kc, 3)?;
    same_dims(OP, kc, vc)?;
    contiguous(OP, kc)?;
    contiguous(OP, vc)?;
    if kc.dims()[1..] != [hkv, d] {
        return Err(Error::ShapeMismatch { op: OP, lhs: k.dims().to_vec(), rhs: kc.dims().to_vec() });
    }
    dtype_is(OP, slots, DType::I32)?;
    dims_are(OP, slots, &[t])?;
    contiguous(OP, slots)?;
    Ok((t, hkv, d, kc.dims()[0]))
}

/// [`Backend::rope_kv_write`]: the checks of rope (q and k) and kv_write. Returns
/// (T, H, Hkv, D, S).
#[allow(clippy::too_many_arguments)]
pub fn rope_kv_write<B: Backend>(
    q: &Tensor<B>,
    k: &Tensor<B>,
    v: &Tensor<B>,
    cos: &Tensor<B>,
    sin: &Tensor<B>,
    positions: &Tensor<B>,
    slots: &Tensor<B>,
    q_dst: &Tensor<B>,
    kc: &Tensor<B>,
    vc: &Tensor<B>,
) -> Result<(usize, usize, usize, usize, usize)> {
    let (t, h, d) = rope(q, cos, sin, positions, q_dst)?;
    same_dtype("rope_kv_write", q, k)?;
    rope(k, cos, sin, positions, k)?;
    let (_, hkv, _, s) = kv_write(k, v, kc, vc, slots)?;
    Ok((t, h, hkv, d, s))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionDims {
    /// query rows
    pub t: usize,
    pub h: usize,
    pub hkv: usize,
    pub d: usize,
    /// cache slots (`N * block_size`)
    pub s: usize,
    /// block-table rows and columns
    pub r: usize,
    pub mb: usize,
    pub block_size: usize,
}

pub fn attention<B: Backend>(
    q: &Tensor<B>,
    kc: &Tensor<B>,
    vc: &Tensor<B>,
    block_tables: &Tensor<B>,
    row_seq: &Tensor<B>,
    positions: &Tensor<B>,
    block_size: u32,
    dst: &Tensor<B>,
) -> Result<AttentionDims> {
    const OP: &str = "attention";
    float(OP, q)?;
    for t in [kc, vc, dst] {
        same_dtype(OP, q, t)?;
    }
    rank_is(OP, q, 3)?;
    rank_is(OP, kc, 3)?;
    same_dims(OP, kc, vc)?;
    same_dims(OP, q, dst)?;
    for t in [q, kc, vc, dst, block_tables, row_seq, positions] {
        contiguous(OP, t)?;
    }
    let (t, h, d) = (q.dims()[0], q.dims()[1], q.dims()[2]);
    let (s, hkv) = (kc.dims()[0], kc.dims()[1]);
    if kc.dims()[2] != d || hkv == 0 || h % hkv != 0 {
        return Err(Error::ShapeMismatch { op: OP, lhs: q.dims().to_vec(), rhs: kc.dims().to_vec() });
    }
    let bs = block_size as usize;
    if bs == 0 || s % bs != 0 {
        return Err(Error::InvalidArgument {
            op: OP,
            msg: format!("{s} cache slots are not a whole number of blocks of {block_size}"),
        });
    }
    for ix in [row_seq, positions] {
        dtype_is(OP, ix, DType::I32)?;
        dims_are(OP, ix, &[t])?;
    }
    dtype_is(OP, block_tables, DType::I32)?;
    rank_is(OP, block_tables, 2)?;
    let (r, mb) = (block_tables.dims()[0], block_tables.dims()[1]);
    Ok(AttentionDims { t, h, hkv, d, s, r, mb, block_size: bs })
}

/// [`crate::Backend::decode_attention`]'s operands: those of `rope_kv_write` and of
/// `attention` over the rotated q. Returns the attention dims and the cache slots.
pub fn decode_attention<B: Backend>(
    a: &crate::DecodeAttention<'_, B>,
    dst: &Tensor<B>,
) -> Result<(AttentionDims, usize)> {
    let (.., slots) = match a.qk_norm {
        None => rope_kv_write(a.q, a.k, a.v, a.cos, a.sin, a.positions, a.slot_mapping, a.q_rot, a.k_cache, a.v_cache)?,
        Some(_) => norm_rope_kv_write(a)?,
    };
    let dims =
        attention(a.q_rot, a.k_cache, a.v_cache, a.block_tables, a.row_seq, a.positions, a.params.block_size, dst)?;
    Ok((dims, slots))
}

/// `Backend::norm_rope_kv_write`: `rope_kv_write`'s operands, and norm weights `[D]` of q's
/// dtype and a k scratch of k's dims and dtype; returns `rope_kv_write`'s (T, H, Hkv, D, S).
pub fn norm_rope_kv_write<B: Backend>(
    a: &crate::DecodeAttention<'_, B>,
) -> Result<(usize, usize, usize, usize, usize)> {
    const OP: &str = "norm_rope_kv_write";
    let Some(n) = a.qk_norm else {
        return Err(Error::InvalidArgument { op: OP, msg: "no qk_norm weights".into() });
    };
    let dims = rope_kv_write(a.q, a.k, a.v, a.cos, a.sin, a.positions, a.slot_mapping, a.q_rot, a.k_cache, a.v_cache)?;
    let d = dims.3;
    for w in [n.q, n.k] {
        same_dtype(OP, a.q, w)?;
        if w.dims() != [d] {
            return Err(Error::ShapeMismatch { op: OP, lhs: w.dims().to_vec(), rhs: vec![d] });
        }
    }
    same_dtype(OP, a.k, n.k_normed)?;
    if n.k_normed.dims() != a.k.dims() {
        return Err(Error::ShapeMismatch { op: OP, lhs: n.k_normed.dims().to_vec(), rhs: a.k.dims().to_vec() });
    }
    Ok(dims)
}

pub fn argmax<B: Backend>(x: &Tensor<B>, dst: &Tensor<B>) -> Result<Rows> {
    const OP: &str = "argmax";
    float(OP, x)?;
    dtype_is(OP, dst, DType::U32)?;
    contiguous(OP, dst)?;
    let r = rows(OP, x)?;
    if dst.numel() != r.rows || r.cols == 0 {
        return Err(Error::ShapeMismatch { op: OP, lhs: x.dims().to_vec(), rhs: dst.dims().to_vec() });
    }
    Ok(r)
}

/// Returns the logits rows.
pub fn sample<B: Backend>(
    logits: &Tensor<B>,
    uniform: &Tensor<B>,
    params: &Tensor<B>,
    dst: &Tensor<B>,
) -> Result<Rows> {
    const OP: &str = "sample";
    dtype_is(OP, logits, DType::F32)?;
    dtype_is(OP, uniform, DType::I32)?;
    dtype_is(OP, params, DType::I32)?;
    dtype_is(OP, dst, DType::U32)?;
    for t in [dst, uniform, params] {
        contiguous(OP, t)?;
    }
    let r = rows(OP, logits)?;
    if dst.numel() != r.rows || uniform.numel() != r.rows || r.cols == 0 {
        return Err(Error::ShapeMismatch { op: OP, lhs: logits.dims().to_vec(), rhs: dst.dims().to_vec() });
    }
    dims_are(OP, params, &[r.rows, 4])?;
    Ok(r)
}

/// The shapes of a [`crate::Backend::qmatmul`]: `x [M, K]` rows, `w [N, K]`, `dst [M, N]` rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QMatmulDims {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub x: Rows,
    pub dst: Rows,
}

/// `x [M, K]` float rows (unit column stride), `w` quantized `[N, K]`, `dst [M, N]` rows in
/// x's dtype or f32; with `accumulate` (`dst +=`) dst may share no storage with x.
pub fn qmatmul<B: Backend>(
    x: &Tensor<B>,
    w: &crate::QTensor<B>,
    dst: &Tensor<B>,
    accumulate: bool,
) -> Result<QMatmulDims> {
    const OP: &str = "qmatmul";
    float(OP, x)?;
    float(OP, dst)?;
    if dst.dtype() != DType::F32 {
        same_dtype(OP, x, dst)?;
    }
    rank_is(OP, x, 2)?;
    rank_is(OP, dst, 2)?;
    let (m, k) = (x.dims()[0], x.dims()[1]);
    let n = w.rows();
    if k != w.cols() || dst.dims() != [m, n] {
        return Err(Error::ShapeMismatch { op: OP, lhs: x.dims().to_vec(), rhs: vec![n, w.cols()] });
    }
    qtensor(OP, w)?;
    let (xr, dr) = (rows(OP, x)?, rows(OP, dst)?);
    if accumulate && dst.same_storage(x) {
        return Err(Error::InvalidArgument { op: OP, msg: "accumulating: dst shares storage with x".into() });
    }
    Ok(QMatmulDims { m, n, k, x: xr, dst: dr })
}

/// `w`'s words hold its blocks (a `QTensor` built from a storage too small is caught here).
pub fn qtensor<B: Backend>(op: &'static str, w: &crate::QTensor<B>) -> Result<()> {
    dtype_is(op, w.data(), DType::U32)?;
    contiguous(op, w.data())?;
    if w.cols() % w.qtype().block_len() != 0 || w.data().numel() * 4 < w.bytes() {
        return Err(Error::InvalidArgument {
            op,
            msg: format!("{:?}: {} words do not hold its blocks", w, w.data().numel()),
        });
    }
    Ok(())
}

/// `dst[t] = dequantize(table[ids[t]])`: `ids: [T]` u32, `table` quantized `[V, C]`,
/// contiguous float `dst: [T, C]`. Returns (T, C, V).
pub fn qembedding<B: Backend>(
    ids: &Tensor<B>,
    table: &crate::QTensor<B>,
    dst: &Tensor<B>,
) -> Result<(usize, usize, usize)> {
    const OP: &str = "qembedding";
    dtype_is(OP, ids, DType::U32)?;
    float(OP, dst)?;
    rank_is(OP, ids, 1)?;
    contiguous(OP, ids)?;
    contiguous(OP, dst)?;
    qtensor(OP, table)?;
    let (t, v, c) = (ids.dims()[0], table.rows(), table.cols());
    dims_are(OP, dst, &[t, c])?;
    Ok((t, c, v))
}
