//! Quantized tensors: ggml's block types ([`QuantType`]), a host tensor of raw blocks
//! ([`HostQTensor`]) and the backend tensor beside [`Tensor`] ([`QTensor`]), plus the
//! reference dequantization of every block type (each function mirrors the matching
//! `dequantize_row_*` of ggml-quants.c; the byte layout of each block is spelled out above it).
//!
//! A quantized tensor is a matrix `[rows, cols]` (a Hugging Face Linear weight `[N, K]`)
//! stored row after row, each row a whole number of blocks along `cols`, in the exact byte
//! layout of a GGUF file, so loading is a copy and permuting or concatenating rows moves
//! whole rows of bytes. On a backend the bytes live in a `u32` storage (zero-padded to whole
//! words), so no backend needs a byte dtype. What this is not: quantizers (the host
//! quantizers of `--quantize` are in `encore_models::quantize`) or kernels.

use crate::{Backend, DType, Error, HostTensor, Result, Tensor};
use half::f16;

/// Elements per super-block of the k-quants.
pub const QK_K: usize = 256;

/// The ggml block types a [`QTensor`] may hold.
#[allow(non_camel_case_types)] // ggml's own names
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuantType {
    Q8_0,
    Q4_0,
    Q4_1,
    Q4_K,
    Q5_K,
    Q6_K,
}

impl QuantType {
    pub const ALL: [QuantType; 6] =
        [QuantType::Q8_0, QuantType::Q4_0, QuantType::Q4_1, QuantType::Q4_K, QuantType::Q5_K, QuantType::Q6_K];

    /// Elements per block.
    pub fn block_len(self) -> usize {
        match self {
            QuantType::Q8_0 | QuantType::Q4_0 | QuantType::Q4_1 => 32,
            QuantType::Q4_K | QuantType::Q5_K | QuantType::Q6_K => QK_K,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            QuantType::Q8_0 => 34,
            QuantType::Q4_0 => 18,
            QuantType::Q4_1 => 20,
            QuantType::Q4_K => 144,
            QuantType::Q5_K => 176,
            QuantType::Q6_K => 210,
        }
    }

    /// Bytes of one row of `cols` elements (`cols` a multiple of the block length).
    pub fn row_bytes(self, cols: usize) -> usize {
        cols / self.block_len() * self.block_bytes()
    }

    /// ggml's name ("Q4_K").
    pub fn name(self) -> &'static str {
        match self {
            QuantType::Q8_0 => "Q8_0",
            QuantType::Q4_0 => "Q4_0",
            QuantType::Q4_1 => "Q4_1",
            QuantType::Q4_K => "Q4_K",
            QuantType::Q5_K => "Q5_K",
            QuantType::Q6_K => "Q6_K",
        }
    }

    /// The type named `s`, case-insensitively ("q8_0", "Q4_K").
    pub fn parse(s: &str) -> Option<QuantType> {
        QuantType::ALL.into_iter().find(|t| t.name().eq_ignore_ascii_case(s))
    }
}

impl std::fmt::Display for QuantType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A quantized matrix in host memory: `rows` rows of `cols` elements as raw ggml blocks.
#[derive(Clone, Debug, PartialEq)]
pub struct HostQTensor {
    pub qtype: QuantType,
    pub rows: usize,
    pub cols: usize,
    /// `rows * qtype.row_bytes(cols)` bytes.
    pub data: Vec<u8>,
}

impl HostQTensor {
    /// Checks that `cols` is a whole number of blocks and that `data` holds exactly
    /// `rows` rows of them; `what` (the tensor's name) goes into the error.
    pub fn new(what: &str, qtype: QuantType, rows: usize, cols: usize, data: Vec<u8>) -> Result<Self> {
        const OP: &str = "HostQTensor::new";
        if cols % qtype.block_len() != 0 {
            return Err(Error::InvalidArgument {
                op: OP,
                msg: format!(
                    "`{what}`: a row of {cols} is not a whole number of {qtype} blocks of {}",
                    qtype.block_len()
                ),
            });
        }
        let want = rows.checked_mul(qtype.row_bytes(cols));
        if want != Some(data.len()) {
            return Err(Error::InvalidArgument {
                op: OP,
                msg: format!(
                    "`{what}`: {} bytes are {} {qtype} blocks, but [{rows}, {cols}] needs {} blocks",
                    data.len(),
                    data.len() as f64 / qtype.block_bytes() as f64,
                    rows * (cols / qtype.block_len())
                ),
            });
        }
        Ok(HostQTensor { qtype, rows, cols, data })
    }

    pub fn row_bytes(&self) -> usize {
        self.qtype.row_bytes(self.cols)
    }

    /// The blocks of row `r`.
    pub fn row(&self, r: usize) -> &[u8] {
        let rb = self.row_bytes();
        &self.data[r * rb..(r + 1) * rb]
    }

    /// Every element as f32, row-major `[rows, cols]`.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.rows * self.cols];
        if self.cols > 0 {
            for (r, o) in out.chunks_exact_mut(self.cols).enumerate() {
                dequantize_row(self.qtype, self.row(r), o);
            }
        }
        out
    }

    /// The rows of `parts` one after the other (the fused q/k/v or gate/up weight); every
    /// part must have the same block type and columns.
    pub fn concat_rows(parts: &[HostQTensor]) -> Result<HostQTensor> {
        let first = parts.first().ok_or(Error::InvalidArgument { op: "concat_rows", msg: "no parts".into() })?;
        if let Some(p) = parts.iter().find(|p| p.qtype != first.qtype || p.cols != first.cols) {
            return Err(Error::InvalidArgument {
                op: "concat_rows",
                msg: format!("{} x {} rows cannot follow {} x {}", p.qtype, p.cols, first.qtype, first.cols),
            });
        }
        let rows = parts.iter().map(|p| p.rows).sum();
        let data = parts.iter().flat_map(|p| p.data.iter().copied()).collect();
        Ok(HostQTensor { qtype: first.qtype, rows, cols: first.cols, data })
    }

    /// The bytes as a `u32` host tensor of whole words (zero-padded), what backends upload.
    pub fn to_words(&self) -> HostTensor {
        let words = self.data.len().div_ceil(4);
        let mut data = self.data.clone();
        data.resize(words * 4, 0);
        HostTensor { dtype: DType::U32, dims: vec![words], data }
    }
}

/// A quantized matrix `[rows, cols]` on a backend: the raw blocks of a [`HostQTensor`] in a
/// `u32` storage. Cloning shares the storage (a tied LM head is the embedding itself).
pub struct QTensor<B: Backend> {
    data: Tensor<B>,
    qtype: QuantType,
    rows: usize,
    cols: usize,
}

impl<B: Backend> Clone for QTensor<B> {
    fn clone(&self) -> Self {
        QTensor { data: self.data.clone(), qtype: self.qtype, rows: self.rows, cols: self.cols }
    }
}

impl<B: Backend> std::fmt::Debug for QTensor<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QTensor({}, [{}, {}])", self.qtype, self.rows, self.cols)
    }
}

impl<B: Backend> QTensor<B> {
    /// `data`: a contiguous `u32` tensor holding at least `rows * qtype.row_bytes(cols)` bytes.
    pub fn new(data: Tensor<B>, qtype: QuantType, rows: usize, cols: usize) -> Result<Self> {
        const OP: &str = "QTensor::new";
        crate::check::dtype_is(OP, &data, DType::U32)?;
        crate::check::contiguous(OP, &data)?;
        if cols % qtype.block_len() != 0 {
            return Err(Error::InvalidArgument {
                op: OP,
                msg: format!("a row of {cols} is not a whole number of {qtype} blocks"),
            });
        }
        if data.numel() * 4 < rows * qtype.row_bytes(cols) {
            return Err(Error::InvalidArgument {
                op: OP,
                msg: format!("{} words cannot hold [{rows}, {cols}] {qtype}", data.numel()),
            });
        }
        Ok(QTensor { data, qtype, rows, cols })
    }

    /// Upload `host` as words (what [`Backend::upload_quant`] does by default).
    pub fn upload(b: &B, host: &HostQTensor) -> Result<Self> {
        QTensor::new(b.tensor(&host.to_words())?, host.qtype, host.rows, host.cols)
    }

    /// The `u32` words holding the blocks.
    pub fn data(&self) -> &Tensor<B> {
        &self.data
    }
    pub fn qtype(&self) -> QuantType {
        self.qtype
    }
    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// `[rows, cols]`, the HF shape.
    pub fn dims(&self) -> [usize; 2] {
        [self.rows, self.cols]
    }
    pub fn row_bytes(&self) -> usize {
        self.qtype.row_bytes(self.cols)
    }
    /// Bytes of blocks (what a matmul reads).
    pub fn bytes(&self) -> usize {
        self.rows * self.row_bytes()
    }
    /// Byte offset of the first block in the storage.
    pub fn byte_offset(&self) -> usize {
        self.data.layout().offset() * 4
    }
}

// ---------------------------------------------------------------------------------------
// Reference dequantization, one block at a time.

pub(crate) fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Every element of `row` (whole blocks of `qtype`) into `out` (`out.len()` elements).
pub fn dequantize_row(qtype: QuantType, row: &[u8], out: &mut [f32]) {
    let (bl, bb) = (qtype.block_len(), qtype.block_bytes());
    debug_assert_eq!(row.len() / bb * bl, out.len());
    for (b, o) in row.chunks_exact(bb).zip(out.chunks_exact_mut(bl)) {
        match qtype {
            QuantType::Q8_0 => q8_0(b, o),
            QuantType::Q4_0 => q4_0(b, o),
            QuantType::Q4_1 => q4_1(b, o),
            QuantType::Q4_K => q4_k(b, o),
            QuantType::Q5_K => q5_k(b, o),
            QuantType::Q6_K => q6_k(b, o),
        }
    }
}

/// `{ f16 d; i8 qs[32] }`: x[j] = qs[j] * d.
fn q8_0(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    for (o, &q) in out.iter_mut().zip(&b[2..34]) {
        *o = q as i8 as f32 * d;
    }
}

/// `{ f16 d; u8 qs[16] }`: x[j] = (lo nibble of qs[j] - 8) * d, x[j + 16] = (hi nibble - 8) * d.
fn q4_0(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    for (j, &q) in b[2..18].iter().enumerate() {
        out[j] = ((q & 0xF) as i32 - 8) as f32 * d;
        out[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
    }
}

/// `{ f16 d; f16 m; u8 qs[16] }`: x[j] = lo nibble * d + m, x[j + 16] = hi nibble * d + m.
fn q4_1(b: &[u8], out: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    for (j, &q) in b[4..20].iter().enumerate() {
        out[j] = (q & 0xF) as f32 * d + m;
        out[j + 16] = (q >> 4) as f32 * d + m;
    }
}

/// The 6-bit scale and min of sub-block `j` (0..8) packed in the 12 `scales` bytes of
/// Q4_K / Q5_K.
pub fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// `{ f16 d; f16 dmin; u8 scales[12]; u8 qs[128] }`, 8 sub-blocks of 32: sub-block `s` is
/// `d * scale[s] * q - dmin * min[s]`; each 64 elements take 32 bytes of `qs`, low nibbles
/// first, then high nibbles.
fn q4_k(b: &[u8], out: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    for (chunk, q) in b[16..144].chunks_exact(32).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * chunk, scales);
        let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
        let (d1, min1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, min2) = (d * sc2 as f32, dmin * m2 as f32);
        let o = &mut out[64 * chunk..64 * chunk + 64];
        for (l, &v) in q.iter().enumerate() {
            o[l] = d1 * (v & 0xF) as f32 - min1;
            o[l + 32] = d2 * (v >> 4) as f32 - min2;
        }
    }
}

/// `{ f16 d; f16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128] }`: Q4_K with a fifth bit per
/// element: element `l` of the 64-element chunk `c` takes bit `2c` (low half) or `2c + 1`
/// (high half) of `qh[l]` as its 16.
fn q5_k(b: &[u8], out: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    let qh = &b[16..48];
    for (chunk, q) in b[48..176].chunks_exact(32).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * chunk, scales);
        let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
        let (d1, min1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, min2) = (d * sc2 as f32, dmin * m2 as f32);
        let (u1, u2) = (1u8 << (2 * chunk), 2u8 << (2 * chunk));
        let o = &mut out[64 * chunk..64 * chunk + 64];
        for (l, &v) in q.iter().enumerate() {
            let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            o[l] = d1 * ((v & 0xF) + h1) as f32 - min1;
            o[l + 32] = d2 * ((v >> 4) + h2) as f32 - min2;
        }
    }
}

/// `{ u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d }`: 6-bit values (4 low bits in `ql`, 2
/// high bits in `qh`) minus 32, times `d * scales[16 elements]`; two halves of 128.
fn q6_k(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 208);
    for half in 0..2 {
        let ql = &b[64 * half..64 * half + 64];
        let qh = &b[128 + 32 * half..128 + 32 * half + 32];
        let sc = &b[192 + 8 * half..192 + 8 * half + 8];
        let y = &mut out[128 * half..128 * half + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}

/// Random blocks for tests: every byte random, except the f16 scales, which are drawn
/// (sign and magnitude) from `scale_range` so that values are finite and never all zero.
pub fn random_blocks(rng: &mut crate::testing::Rng, qtype: QuantType, rows: usize, cols: usize) -> HostQTensor {
    let n_blocks = rows * (cols / qtype.block_len());
    let bb = qtype.block_bytes();
    let mut data = vec![0u8; n_blocks * bb];
    for blk in data.chunks_exact_mut(bb) {
        for bytes in blk.chunks_mut(8) {
            bytes.copy_from_slice(&rng.next_u64().to_le_bytes()[..bytes.len()]);
        }
        // scales of magnitude ~1/64 keep a K-quant block's values O(1)
        let mut scale = |lo: f32, hi: f32, signed: bool| {
            let mut v = lo + (hi - lo) * rng.uniform() as f32;
            if signed && rng.next_u64() & 1 == 1 {
                v = -v;
            }
            f16::from_f32(v).to_le_bytes()
        };
        match qtype {
            QuantType::Q8_0 => blk[0..2].copy_from_slice(&scale(2e-3, 1e-2, true)),
            QuantType::Q4_0 => blk[0..2].copy_from_slice(&scale(2e-2, 1.2e-1, true)),
            QuantType::Q4_1 => {
                blk[0..2].copy_from_slice(&scale(2e-2, 1.2e-1, false));
                blk[2..4].copy_from_slice(&scale(1e-2, 1.0, true));
            }
            QuantType::Q4_K | QuantType::Q5_K => {
                blk[0..2].copy_from_slice(&scale(2e-3, 8e-3, false));
                blk[2..4].copy_from_slice(&scale(2e-3, 1.6e-2, false));
            }
            QuantType::Q6_K => blk[208..210].copy_from_slice(&scale(2e-4, 1e-3, false)),
        }
    }
    HostQTensor { qtype, rows, cols, data }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Rng;

    #[test]
    fn bad_block_counts_name_the_tensor() {
        let err = HostQTensor::new("blk.0.attn_q.weight", QuantType::Q4_0, 2, 64, vec![0; 18 * 3]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("blk.0.attn_q.weight") && msg.contains("needs 4 blocks"), "{msg}");
        let err = HostQTensor::new("w", QuantType::Q4_K, 1, 100, vec![]).unwrap_err();
        assert!(err.to_string().contains("`w`: a row of 100"), "{err}");
        assert!(HostQTensor::new("w", QuantType::Q6_K, 2, 512, vec![0; 4 * 210]).is_ok());
    }

    #[test]
    fn parse_accepts_ggml_names_in_any_case() {
        for t in QuantType::ALL {
            assert_eq!(QuantType::parse(&t.name().to_lowercase()), Some(t));
        }
        assert_eq!(QuantType::parse("q3_k"), None);
    }

    #[test]
    fn dequantize_reads_the_documented_layouts() {
        // Q8_0: d = 0.5, qs = -3 then 1..
        let mut b = vec![0u8; 34];
        b[0..2].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        b[2] = (-3i8) as u8;
        b[3] = 1;
        let mut out = [0f32; 32];
        dequantize_row(QuantType::Q8_0, &b, &mut out);
        assert_eq!((out[0], out[1], out[2]), (-1.5, 0.5, 0.0));
        // Q4_1: d = 2, m = -1, qs[0] = 0x3A: x[0] = 10 * 2 - 1, x[16] = 3 * 2 - 1
        let mut b = vec![0u8; 20];
        b[0..2].copy_from_slice(&f16::from_f32(2.0).to_le_bytes());
        b[2..4].copy_from_slice(&f16::from_f32(-1.0).to_le_bytes());
        b[4] = 0x3A;
        dequantize_row(QuantType::Q4_1, &b, &mut out);
        assert_eq!((out[0], out[16], out[1]), (19.0, 5.0, -1.0));
    }

    #[test]
    fn random_blocks_are_finite_and_not_zero() {
        let mut rng = Rng::fresh("random_blocks_are_finite_and_not_zero");
        for t in QuantType::ALL {
            let q = random_blocks(&mut rng, t, 3, 512);
            let v = q.dequantize();
            assert!(v.iter().all(|x| x.is_finite()), "{t}");
            assert!(v.iter().filter(|x| **x != 0.0).count() > v.len() / 2, "{t}");
            let words = q.to_words();
            assert_eq!(words.data.len() % 4, 0);
            assert!(words.data.starts_with(&q.data));
        }
    }

    #[test]
    fn concat_rows_refuses_mixed_types() {
        let mut rng = Rng::fresh("concat_rows_refuses_mixed_types");
        let a = random_blocks(&mut rng, QuantType::Q4_K, 2, 256);
        let b = random_blocks(&mut rng, QuantType::Q6_K, 1, 256);
        assert!(HostQTensor::concat_rows(&[a.clone(), b]).is_err());
        let c = HostQTensor::concat_rows(&[a.clone(), a.clone()]).unwrap();
        assert_eq!(c.rows, 4);
        assert_eq!(c.row(3), a.row(1));
    }
}
