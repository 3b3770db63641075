//! The kernel table: every `extern "C"` entry point of `kernels/*.cu`, resolved ONCE when the
//! module is loaded (`cuModuleGetFunction` per entry) into typed fields indexed by op and
//! dtype, so a launch never looks a kernel up by string. Also embeds the fatbin that
//! build.rs compiles (`OUT_DIR/encore_kernels.fatbin`).
//!
//! Index conventions: dtypes in [`DType::FLOATS`] order (f32, bf16, f16, see [`float_index`]),
//! unary ops in [`UnaryOp::ALL`] order, binary ops in [`BinaryOp::ALL`] order.

use std::ffi::CString;

use cudarc::driver::sys;
use encore_tensor::{BinaryOp, DType, UnaryOp};

use crate::error::drv;
use crate::CudaError;

/// The kernels of every `kernels/*.cu`, as one fatbin (SASS per arch plus PTX).
pub static FATBIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/encore_kernels.fatbin"));

/// One resolved entry point.
#[derive(Debug)]
pub struct Kernel {
    pub(crate) func: sys::CUfunction,
    pub name: &'static str,
}

impl Kernel {
    /// Blocks of `threads` threads with `smem` bytes of dynamic shared memory that one SM
    /// holds at once (the driver's occupancy calculator: registers, shared memory, limits).
    pub(crate) fn blocks_per_sm(&self, threads: u32, smem: usize) -> Result<usize, CudaError> {
        let mut blocks = 0;
        // SAFETY: valid out-pointer and a function of a loaded module; the caller passes a
        // block size and shared-memory size the kernel may be launched with.
        drv("cuOccupancyMaxActiveBlocksPerMultiprocessor", unsafe {
            sys::cuOccupancyMaxActiveBlocksPerMultiprocessor(&mut blocks, self.func, threads as i32, smem)
        })?;
        Ok(blocks.max(1) as usize)
    }
}

// SAFETY: a CUfunction is an immutable driver handle valid for the life of its module (the
// device keeps the module loaded as long as the table lives); the driver API may be called
// with it from any thread.
unsafe impl Send for Kernel {}
// SAFETY: as above; nothing in a Kernel is ever mutated after load.
unsafe impl Sync for Kernel {}

/// Index of a float dtype in [`DType::FLOATS`] order; `None` for the integer dtypes.
pub fn float_index(dtype: DType) -> Option<usize> {
    match dtype {
        DType::F32 => Some(0),
        DType::BF16 => Some(1),
        DType::F16 => Some(2),
        DType::U32 | DType::I32 => None,
    }
}

pub fn unary_index(op: UnaryOp) -> usize {
    UnaryOp::ALL.iter().position(|&o| o == op).expect("UnaryOp::ALL lists every op")
}

pub fn binary_index(op: BinaryOp) -> usize {
    BinaryOp::ALL.iter().position(|&o| o == op).expect("BinaryOp::ALL lists every op")
}

/// `[<op>_f32, <op>_bf16, <op>_f16]`.
macro_rules! per_dtype {
    ($op:literal) => {
        [concat!($op, "_f32"), concat!($op, "_bf16"), concat!($op, "_f16")]
    };
}

/// qmatmul.cu's GEMV tiers: kernels for at most 1, 4 and 16 rows of x.
pub const QGEMV_TIERS: [usize; 3] = [1, 4, 16];

/// gemv.cu's tiers: kernels for at most 1 and 2 rows of x (3..16 rows of logits: gemv_tc.cu).
pub const GEMV_TIERS: [usize; 2] = [1, 2];

/// gemv.cu `gemv_<in>[_f32]_m<tier>`: `[f32, bf16, f16, bf16 -> f32, f16 -> f32][tier]`.
macro_rules! gemv_tiers {
    ($p:literal) => {
        [concat!($p, "_m1"), concat!($p, "_m2")]
    };
}
const GEMV: [[&str; 2]; 5] = [
    gemv_tiers!("gemv_f32"),
    gemv_tiers!("gemv_bf16"),
    gemv_tiers!("gemv_f16"),
    gemv_tiers!("gemv_bf16_f32"),
    gemv_tiers!("gemv_f16_f32"),
];

/// gemv_tc.cu `gemv_tc_<in>_f32_n<1|2>`: `[bf16 -> f32, f16 -> f32][M <= 8, 16]`.
const GEMV_TC: [[&str; 2]; 2] =
    [["gemv_tc_bf16_f32_n1", "gemv_tc_bf16_f32_n2"], ["gemv_tc_f16_f32_n1", "gemv_tc_f16_f32_n2"]];

/// gemv.cu `gemv_<fusion>_<dtype>_m<1|2>`: the fused decoder projections,
/// `[rms, rms_silu, rms_gelu][dtype][M <= 1, 2]` (backend.rs `gemv_fused`).
macro_rules! gemv_fused_names {
    ($p:literal) => {
        [
            [concat!("gemv_", $p, "_f32_m1"), concat!("gemv_", $p, "_f32_m2")],
            [concat!("gemv_", $p, "_bf16_m1"), concat!("gemv_", $p, "_bf16_m2")],
            [concat!("gemv_", $p, "_f16_m1"), concat!("gemv_", $p, "_f16_m2")],
        ]
    };
}
const GEMV_FUSED: [[[&str; 2]; 3]; 3] =
    [gemv_fused_names!("rms"), gemv_fused_names!("rms_silu"), gemv_fused_names!("rms_gelu")];

/// `[dtype][tier]` names of one block type's GEMV kernels.
macro_rules! qgemv_names {
    ($ty:literal) => {
        [
            [concat!("qgemv_", $ty, "_f32_m1"), concat!("qgemv_", $ty, "_f32_m4"), concat!("qgemv_", $ty, "_f32_m16")],
            [
                concat!("qgemv_", $ty, "_bf16_m1"),
                concat!("qgemv_", $ty, "_bf16_m4"),
                concat!("qgemv_", $ty, "_bf16_m16"),
            ],
            [concat!("qgemv_", $ty, "_f16_m1"), concat!("qgemv_", $ty, "_f16_m4"), concat!("qgemv_", $ty, "_f16_m16")],
        ]
    };
}

/// Block types in `QuantType::ALL` order, as qmatmul.cu names them.
const QGEMV: [[[&str; 3]; 3]; 6] = [
    qgemv_names!("q8_0"),
    qgemv_names!("q4_0"),
    qgemv_names!("q4_1"),
    qgemv_names!("q4_k"),
    qgemv_names!("q5_k"),
    qgemv_names!("q6_k"),
];
const QDEQUANT: [[&str; 3]; 6] = [
    per_dtype!("qdequant_q8_0"),
    per_dtype!("qdequant_q4_0"),
    per_dtype!("qdequant_q4_1"),
    per_dtype!("qdequant_q4_k"),
    per_dtype!("qdequant_q5_k"),
    per_dtype!("qdequant_q6_k"),
];

/// qmatmul.cu's fused activation quantizers, `[rms, silu, gelu][dtype]`.
const QQUANT_X_FUSED: [[&str; 3]; 3] =
    [per_dtype!("qquant_x_rms"), per_dtype!("qquant_x_silu"), per_dtype!("qquant_x_gelu")];

/// Entry names, in the index order of the table fields.
const COPY: [[&str; 3]; 3] = [per_dtype!("copy_f32"), per_dtype!("copy_bf16"), per_dtype!("copy_f16")];
const UNARY: [[&str; 3]; 9] = [
    per_dtype!("unary_neg"),
    per_dtype!("unary_exp"),
    per_dtype!("unary_silu"),
    per_dtype!("unary_gelu"),
    per_dtype!("unary_sqrt"),
    per_dtype!("unary_recip"),
    per_dtype!("unary_square"),
    per_dtype!("unary_abs"),
    per_dtype!("unary_tanh"),
];
const BINARY: [[&str; 3]; 6] = [
    per_dtype!("binary_add"),
    per_dtype!("binary_sub"),
    per_dtype!("binary_mul"),
    per_dtype!("binary_div"),
    per_dtype!("binary_max"),
    per_dtype!("binary_min"),
];

/// attention_decode.cu's fused-prologue entries (rope + KV write, `Backend::decode_attention`),
/// `[D class 64, 128][bf16, f16]`.
const ATTENTION_DECODE_ROPE: [[&str; 2]; 2] = [
    ["attention_decode_rope_d64_bf16", "attention_decode_rope_d64_f16"],
    ["attention_decode_rope_d128_bf16", "attention_decode_rope_d128_f16"],
];

/// Tensor-core attention entries, `[decode, prefill][D class 64, 128, 256][bf16, f16]`
/// (attention_decode.cu, attention_prefill.cu): `attention_<kind>_d<DMAX>_<dtype>`.
const ATTENTION_TC: [[[&str; 2]; 3]; 2] = [
    [
        ["attention_decode_d64_bf16", "attention_decode_d64_f16"],
        ["attention_decode_d128_bf16", "attention_decode_d128_f16"],
        ["attention_decode_d256_bf16", "attention_decode_d256_f16"],
    ],
    [
        ["attention_prefill_d64_bf16", "attention_prefill_d64_f16"],
        ["attention_prefill_d128_bf16", "attention_prefill_d128_f16"],
        ["attention_prefill_d256_bf16", "attention_prefill_d256_f16"],
    ],
];

/// Every kernel of the module. Field comments name the `.cu` file and the entry pattern.
#[derive(Debug)]
pub struct Kernels {
    /// copy.cu `copy_<src>_<dst>`: `[src][dst]` float dtypes.
    pub copy: [[Kernel; 3]; 3],
    /// copy.cu `copy_u32_u32`, `copy_i32_i32`: bit copies.
    pub copy_u32: Kernel,
    pub copy_i32: Kernel,
    /// unary.cu `unary_<op>_<dtype>`: `[op][dtype]`.
    pub unary: [[Kernel; 3]; 9],
    /// binary.cu `binary_<op>_<dtype>`: `[op][dtype]`.
    pub binary: [[Kernel; 3]; 6],
    pub silu_mul: [Kernel; 3],
    pub gelu_mul: [Kernel; 3],
    pub rms_norm: [Kernel; 3],
    pub softmax: [Kernel; 3],
    pub argmax: [Kernel; 3],
    pub rope: [Kernel; 3],
    /// rope.cu `rope_kv_write_<dtype>`: rope of q and k, k and v into the cache, one launch.
    pub rope_kv_write: [Kernel; 3],
    /// rope.cu `norm_rope_kv_write_<dtype>`: the same with the per-head RMSNorm of q and k.
    pub norm_rope_kv_write: [Kernel; 3],
    pub embedding: [Kernel; 3],
    /// gemv.cu `gemv_<dtype>_m<tier>`: decode-shaped x @ W^T (M <= 2), `[dtype][tier]`
    /// (tiers in [`GEMV_TIERS`]), and `gemv_<bf16|f16>_f32_m<tier>` at dtype index 3, 4: f32
    /// outputs (logits) from bf16/f16 inputs.
    pub gemv: [[Kernel; 2]; 5],
    /// gemv_tc.cu `gemv_tc_<in>_f32_n<1|2>`: the tensor-core LM head of 3..16 rows,
    /// `[bf16 -> f32, f16 -> f32][M <= 8, 16]`.
    pub gemv_tc: [[Kernel; 2]; 2],
    /// gemv.cu `gemv_<rms|rms_silu|rms_gelu>_<dtype>_m<1|2>`: `[fusion][dtype][tier]`, the
    /// projection with the RMSNorm before it (and the gated activation after it) fused in,
    /// M <= 2.
    pub gemv_fused: [[[Kernel; 2]; 3]; 3],
    /// sample.cu `sample_f32`: top-k / top-p / min-p sampling of f32 logits.
    pub sample: Kernel,
    /// fill.cu `fill_uniform_<dtype>`: random benchmark weights made on the device.
    pub fill_uniform: [Kernel; 3],
    pub kv_write: [Kernel; 3],
    /// attention.cu `attention_<dtype>`: 16-byte vector loads (D a multiple of 16 bytes,
    /// aligned operands).
    pub attention: [Kernel; 3],
    /// attention.cu `attention_scalar_<dtype>`: element loads, any D up to 256.
    pub attention_scalar: [Kernel; 3],
    /// attention.cu `attention_merge_<dtype>`: combines the splits of a split-K launch.
    pub attention_merge: [Kernel; 3],
    /// attention_decode.cu: `[D class (64, 128, 256)][bf16, f16]`, tensor cores, one CTA per
    /// (query row, KV head, split).
    pub attention_decode: [[Kernel; 2]; 3],
    /// attention_decode.cu `attention_decode_rope_d<64|128>_<dtype>`: `[D class][bf16, f16]`,
    /// the same kernel with the fused rope + KV-write prologue.
    pub attention_decode_rope: [[Kernel; 2]; 2],
    /// attention_prefill.cu: `[D class][bf16, f16]`, tensor cores over the plan's items.
    pub attention_prefill: [[Kernel; 2]; 3],
    /// attention_prefill.cu `attention_plan`: cuts the step's rows into prefill items.
    pub attention_plan: Kernel,
    /// qmatmul.cu `qgemv_<type>_<dtype>_m<1|4|16>`: `[type][dtype][tier]` (types in
    /// `QuantType::ALL` order, tiers in [`QGEMV_TIERS`]): decode matmuls on quantized weights.
    pub qgemv: [[[Kernel; 3]; 3]; 6],
    /// qmatmul.cu `qdequant_<type>_<dtype>`: `[type][dtype]`, quantized rows to floats.
    pub qdequant: [[Kernel; 3]; 6],
    /// qmatmul.cu `qquant_x_<dtype>`: GEMV activations to q8_1 (int8 + per-32 scales).
    pub qquant_x: [Kernel; 3],
    /// qmatmul.cu `qquant_x_<rms|silu|gelu>_<dtype>`: `[prologue][dtype]`, the RMSNorm or
    /// the gated activation before the quantization fused in.
    pub qquant_x_fused: [[Kernel; 3]; 3],
    /// qmatmul.cu `qcvt_bf16_f16` / `qepi_bf16`: the bf16 prefill path's f16 GEMM in and out.
    pub qcvt_bf16_f16: Kernel,
    pub qepi_bf16: Kernel,
}

impl Kernels {
    /// Resolve every entry point of `module` (the module loaded from [`FATBIN`]).
    ///
    /// # Safety
    /// `module` is a module loaded in the current context (from [`FATBIN`], or an image with
    /// the same entry points), and it stays loaded for as long as the returned table or any
    /// `Kernel` of it is used: a `CUfunction` of an unloaded module is a dangling handle
    /// that a launch would pass to the driver.
    pub unsafe fn load(module: sys::CUmodule) -> Result<Self, CudaError> {
        let one = |name: &'static str| get(module, name);
        let three = |names: [&'static str; 3]| -> Result<[Kernel; 3], CudaError> {
            let [a, b, c] = names;
            Ok([get(module, a)?, get(module, b)?, get(module, c)?])
        };
        let table = |names: &[[&'static str; 3]]| -> Result<Vec<[Kernel; 3]>, CudaError> {
            names.iter().map(|n| three(*n)).collect()
        };
        Ok(Kernels {
            copy: vec_to_array(table(&COPY)?),
            copy_u32: one("copy_u32_u32")?,
            copy_i32: one("copy_i32_i32")?,
            unary: vec_to_array(table(&UNARY)?),
            binary: vec_to_array(table(&BINARY)?),
            silu_mul: three(per_dtype!("silu_mul"))?,
            gelu_mul: three(per_dtype!("gelu_mul"))?,
            rms_norm: three(per_dtype!("rms_norm"))?,
            softmax: three(per_dtype!("softmax"))?,
            argmax: three(per_dtype!("argmax"))?,
            rope: three(per_dtype!("rope"))?,
            rope_kv_write: three(per_dtype!("rope_kv_write"))?,
            norm_rope_kv_write: three(per_dtype!("norm_rope_kv_write"))?,
            embedding: three(per_dtype!("embedding"))?,
            fill_uniform: three(per_dtype!("fill_uniform"))?,
            gemv: pair_rows(module, &GEMV)?,
            gemv_tc: pair_rows(module, &GEMV_TC)?,
            gemv_fused: [
                pair_rows(module, &GEMV_FUSED[0])?,
                pair_rows(module, &GEMV_FUSED[1])?,
                pair_rows(module, &GEMV_FUSED[2])?,
            ],
            sample: one("sample_f32")?,
            kv_write: three(per_dtype!("kv_write"))?,
            attention: three(per_dtype!("attention"))?,
            attention_scalar: three(per_dtype!("attention_scalar"))?,
            attention_merge: three(per_dtype!("attention_merge"))?,
            attention_decode: pair_rows(module, &ATTENTION_TC[0])?,
            attention_decode_rope: pair_rows(module, &ATTENTION_DECODE_ROPE)?,
            attention_prefill: pair_rows(module, &ATTENTION_TC[1])?,
            attention_plan: one("attention_plan")?,
            qgemv: QGEMV
                .iter()
                .map(|t| table(t).map(vec_to_array))
                .collect::<Result<Vec<_>, _>>()?
                .try_into()
                .unwrap_or_else(|_| panic!("six block types")),
            qdequant: vec_to_array(table(&QDEQUANT)?),
            qquant_x: three(per_dtype!("qquant_x"))?,
            qquant_x_fused: vec_to_array(table(&QQUANT_X_FUSED)?),
            qcvt_bf16_f16: one("qcvt_bf16_f16")?,
            qepi_bf16: one("qepi_bf16")?,
        })
    }

    /// Every kernel in the table (for checks and diagnostics).
    pub fn all(&self) -> Vec<&Kernel> {
        let mut v: Vec<&Kernel> = self.copy.iter().flatten().collect();
        v.extend([&self.copy_u32, &self.copy_i32]);
        v.extend(self.gemv.iter().flatten());
        v.extend(self.gemv_tc.iter().flatten());
        v.extend(self.gemv_fused.iter().flatten().flatten());
        v.push(&self.sample);
        v.push(&self.attention_plan);
        v.extend(self.attention_decode.iter().chain(&self.attention_prefill).flatten());
        v.extend(self.attention_decode_rope.iter().flatten());
        v.extend(self.unary.iter().flatten());
        v.extend(self.binary.iter().flatten());
        for k in [
            &self.silu_mul,
            &self.gelu_mul,
            &self.rms_norm,
            &self.softmax,
            &self.argmax,
            &self.rope,
            &self.rope_kv_write,
            &self.norm_rope_kv_write,
            &self.embedding,
            &self.fill_uniform,
            &self.kv_write,
            &self.attention,
            &self.attention_scalar,
            &self.attention_merge,
        ] {
            v.extend(k.iter());
        }
        v.extend(self.qgemv.iter().flatten().flatten());
        v.extend(self.qdequant.iter().flatten());
        v.extend(self.qquant_x.iter());
        v.extend(self.qquant_x_fused.iter().flatten());
        v.extend([&self.qcvt_bf16_f16, &self.qepi_bf16]);
        v
    }
}

/// N rows of two kernels (the two dtypes or tiers of a table), row i from `names[i]`.
fn pair_rows<const N: usize>(
    module: sys::CUmodule,
    names: &[[&'static str; 2]; N],
) -> Result<[[Kernel; 2]; N], CudaError> {
    let rows =
        names.iter().map(|&[a, b]| Ok([get(module, a)?, get(module, b)?])).collect::<Result<Vec<_>, CudaError>>()?;
    Ok(rows.try_into().unwrap_or_else(|_| unreachable!("one row per row of names")))
}

fn vec_to_array<const N: usize>(v: Vec<[Kernel; 3]>) -> [[Kernel; 3]; N] {
    v.try_into().unwrap_or_else(|v: Vec<_>| panic!("kernel table has {} rows, expected {N}", v.len()))
}

fn get(module: sys::CUmodule, name: &'static str) -> Result<Kernel, CudaError> {
    let cname = CString::new(name).expect("kernel names have no NUL");
    let mut func: sys::CUfunction = std::ptr::null_mut();
    // SAFETY: `module` is a loaded module (caller contract of `load`), `func` is a valid
    // out-pointer and `cname` a NUL-terminated string that outlives the call.
    let r = unsafe { sys::cuModuleGetFunction(&mut func, module, cname.as_ptr()) };
    drv("cuModuleGetFunction", r).map_err(|e| match e {
        CudaError::Driver { call, msg } => CudaError::Driver { call, msg: format!("{name}: {msg}") },
        other => other,
    })?;
    Ok(Kernel { func, name })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_tables_follow_the_enum_orders() {
        for (i, op) in UnaryOp::ALL.iter().enumerate() {
            assert_eq!(unary_index(*op), i);
            let name = format!("unary_{}_bf16", format!("{op:?}").to_lowercase());
            assert_eq!(UNARY[i][1], name);
        }
        for (i, op) in BinaryOp::ALL.iter().enumerate() {
            assert_eq!(binary_index(*op), i);
            assert_eq!(BINARY[i][2], format!("binary_{}_f16", format!("{op:?}").to_lowercase()));
        }
        for (i, dt) in DType::FLOATS.iter().enumerate() {
            assert_eq!(float_index(*dt), Some(i));
            assert_eq!(COPY[i][i], format!("copy_{dt}_{dt}"));
        }
    }

    use crate::kernel_sources::SOURCES;

    /// The `.cu` files build.rs compiled into the fatbin (its generated translation unit
    /// `#include`s each one), embedded at compile time too.
    const COMPILED_UNIT: &str = include_str!(concat!(env!("OUT_DIR"), "/encore_kernels_all.cu"));

    #[test]
    fn the_embedded_sources_are_exactly_the_files_build_rs_compiled() {
        let mut compiled: Vec<&str> = COMPILED_UNIT
            .lines()
            .filter_map(|l| l.strip_prefix("#include \""))
            .map(|p| p.trim_end_matches('"').rsplit(['/', '\\']).next().unwrap_or(p))
            .collect();
        compiled.sort_unstable();
        let embedded: Vec<&str> = SOURCES.iter().map(|(name, _)| *name).collect();
        assert_eq!(embedded, compiled, "a .cu file was added or removed: update SOURCES in this test");
    }

    /// Every entry point defined in the kernel sources (an instantiation line `OP(name, ...)`
    /// or an `extern "C" __global__ void name(` definition).
    fn entries_in_sources() -> Vec<String> {
        let mut names = Vec::new();
        for (_, text) in SOURCES {
            for line in text.lines() {
                let line = line.trim();
                let is_inst =
                    line.starts_with(|c: char| c.is_ascii_uppercase()) && line.ends_with(')') && !line.starts_with("#");
                if line.ends_with('\\') {
                    continue; // a macro body
                }
                if let Some(rest) = line.strip_prefix("extern \"C\" __global__ void ") {
                    names.push(rest.split('(').next().unwrap().to_string());
                } else if is_inst {
                    names.push(line.split(['(', ',']).nth(1).unwrap().trim().to_string());
                }
            }
        }
        names.sort();
        names
    }

    #[test]
    fn the_table_names_exactly_the_entries_of_the_sources() {
        let mut table: Vec<String> = COPY
            .iter()
            .chain(&UNARY)
            .chain(&BINARY)
            .chain(&QDEQUANT)
            .chain(&QQUANT_X_FUSED)
            .flatten()
            .map(|s| s.to_string())
            .collect();
        table.extend(QGEMV.iter().flatten().flatten().map(|s| s.to_string()));
        table.extend(GEMV.iter().flatten().map(|s| s.to_string()));
        table.extend(GEMV_TC.iter().flatten().map(|s| s.to_string()));
        table.extend(GEMV_FUSED.iter().flatten().flatten().map(|s| s.to_string()));
        table.extend(["copy_u32_u32", "copy_i32_i32", "sample_f32", "qcvt_bf16_f16", "qepi_bf16"].map(String::from));
        table.extend(ATTENTION_TC.iter().flatten().flatten().map(|s| s.to_string()).chain(["attention_plan".into()]));
        table.extend(ATTENTION_DECODE_ROPE.iter().flatten().map(|s| s.to_string()));
        for op in [
            "silu_mul",
            "gelu_mul",
            "rms_norm",
            "softmax",
            "argmax",
            "rope",
            "rope_kv_write",
            "norm_rope_kv_write",
            "embedding",
            "fill_uniform",
            "kv_write",
            "attention",
            "attention_scalar",
            "attention_merge",
            "qquant_x",
        ] {
            table.extend(DType::FLOATS.map(|dt| format!("{op}_{dt}")));
        }
        table.sort();
        assert_eq!(table, entries_in_sources());
    }
}
