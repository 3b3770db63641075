// The GPU tests of the `ops` test target, included by main.rs with the `cuda` feature (see
// main.rs for what they cover). An included file cannot carry `//!` docs or inner attributes.

use encore_cpu::parity::Paging;
use encore_cpu::{parity, Cpu};
use encore_cuda::{capture, Cuda, LaunchParamMode};
use encore_tensor::testing::{assert_close, round_to, Rng};
use encore_tensor::{AttentionParams, Backend, DType, HostTensor, Tensor};

fn cuda(mode: LaunchParamMode) -> Cuda {
    let c = Cuda::new(0).expect("CUDA device 0 (these tests run on a GPU host)");
    c.device().set_launch_mode(mode);
    c
}

/// Run `cases` on the GPU in `mode`; when `strided`, the op's launches must have used the
/// mode for their non-contiguous metadata.
fn run_in_mode(mode: LaunchParamMode, strided: bool, cases: impl FnOnce(&Cuda)) {
    let b = cuda(mode);
    let before = b.device().launch_stats();
    cases(&b);
    b.synchronize().expect("synchronize after the cases");
    let used = b.device().launch_stats().since(&before);
    if strided {
        let n = match mode {
            LaunchParamMode::Inline => used.inline,
            LaunchParamMode::Cached => used.cached,
            LaunchParamMode::Upload => used.upload,
        };
        assert!(n > 0, "{mode}: no strided launch used the mode ({used:?})");
    }
}

/// One test per (op, mode): `parity!(name, cases_fn, strided)`.
macro_rules! parity {
    ($name:ident, $cases:path, $strided:expr) => {
        mod $name {
            use super::*;
            #[test]
            fn inline() {
                run_in_mode(LaunchParamMode::Inline, $strided, |b| $cases(b));
            }
            #[test]
            fn cached() {
                run_in_mode(LaunchParamMode::Cached, $strided, |b| $cases(b));
            }
            #[test]
            fn upload() {
                run_in_mode(LaunchParamMode::Upload, $strided, |b| $cases(b));
            }
        }
    };
}

parity!(memory, parity::memory_cases, true); // strided downloads gather with copy
parity!(copy, parity::copy_cases, true);
parity!(unary, parity::unary_cases, true);
parity!(binary, parity::binary_cases, true);
parity!(silu_mul, parity::silu_mul_cases, true);
parity!(gelu_mul, parity::gelu_mul_cases, true);
parity!(rope, parity::rope_cases, true);
parity!(kv_write, parity::kv_write_cases, true);
parity!(rope_kv_write, parity::rope_kv_write_cases, false);
parity!(embedding, parity::embedding_cases, false);
parity!(rms_norm, parity::rms_norm_cases, false);
parity!(softmax, parity::softmax_cases, false);
parity!(argmax, parity::argmax_cases, false);
parity!(sample, parity::sample_cases, false);
parity!(matmul, parity::matmul_cases, false);
parity!(attention, parity::attention_cases, false);
parity!(decode_attention, parity::decode_attention_cases, false);
parity!(qmatmul, parity::run_quant_cases, false);

/// The fused decode attention at other fewest-keys-a-split settings than the default: one
/// tile a split (the most splits, so the in-kernel merge of many), 64, and one split for
/// every row of the cases (no merge).
#[test]
fn decode_attention_at_every_split_size() {
    for keys in [1, 64, 4096] {
        let b = cuda(LaunchParamMode::Inline);
        b.set_decode_min_chunk(keys);
        parity::decode_attention_cases(&b);
        parity::attention_cases(&b);
    }
}

#[test]
fn name_names_the_device() {
    assert_eq!(cuda(LaunchParamMode::Inline).name(), "cuda:0");
}

// ---- direct CUDA-vs-CPU comparisons ---------------------------------------------------------

/// The same host tensor on both backends.
fn both(gpu: &Cuda, host: &HostTensor) -> (Tensor<Cuda>, Tensor<Cpu>) {
    (gpu.tensor(host).expect("upload to the GPU"), Cpu.tensor(host).expect("upload to the CPU"))
}

fn random(rng: &mut Rng, dtype: DType, dims: &[usize], lo: f32, hi: f32) -> HostTensor {
    let n = dims.iter().product();
    HostTensor::from_f32_as(dims, &round_to(dtype, &rng.vec(n, lo, hi)), dtype)
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// A contiguous `[dims]` view starting one element into its storage: its address is not
/// 16-byte aligned, which sends attention to its scalar path.
fn misaligned(gpu: &Cuda, host: &HostTensor) -> Tensor<Cuda> {
    let es = host.dtype.size_in_bytes();
    let mut data = vec![0u8; es];
    data.extend_from_slice(&host.data);
    let n = host.numel();
    let padded = HostTensor::new(host.dtype, vec![n + 1], data).expect("padded host tensor");
    let t = gpu.tensor(&padded).expect("upload");
    t.narrow(0, 1, n).and_then(|t| t.reshape(&host.dims)).expect("misaligned view")
}

/// Attention rows: `(sequence, position)`, over a random paged layout (scattered blocks,
/// sequence 1 sharing sequence 0's first block) with `block_size` slots a block.
fn attention_vs_cpu(
    what: &str,
    dtype: DType,
    rows: &[(usize, i32)],
    (h, hkv, d, block_size): (usize, usize, usize, usize),
    window: u32,
    misalign_q: bool,
) {
    let mut rng = Rng::fresh(what);
    let gpu = cuda(LaunchParamMode::Inline);
    let t = rows.len();
    let seqs = rows.iter().map(|r| r.0).max().unwrap() + 1;
    let last: Vec<usize> =
        (0..seqs).map(|s| rows.iter().filter(|r| r.0 == s).map(|r| r.1.max(0) as usize).max().unwrap_or(0)).collect();
    let paging = Paging::random(&mut rng, block_size, &last);
    let slots = paging.blocks * block_size;
    let q = random(&mut rng, dtype, &[t, h, d], -1.0, 1.0);
    let kc = random(&mut rng, dtype, &[slots, hkv, d], -1.0, 1.0);
    let vc = random(&mut rng, dtype, &[slots, hkv, d], -2.0, 2.0);
    let row_seq = HostTensor::from_i32(&[t], &rows.iter().map(|r| r.0 as i32).collect::<Vec<_>>());
    let pos = HostTensor::from_i32(&[t], &rows.iter().map(|r| r.1).collect::<Vec<_>>());
    let flat: Vec<i32> = paging.tables.iter().flatten().copied().collect();
    let tables = HostTensor::from_i32(&[seqs, paging.mb], &flat);
    let params =
        AttentionParams { scale: 1.0 / (d as f32).sqrt(), sliding_window: window, block_size: block_size as u32 };

    let (gq, cq) = both(&gpu, &q);
    let gq = if misalign_q { misaligned(&gpu, &q) } else { gq };
    let (gk, ck) = both(&gpu, &kc);
    let (gv, cv) = both(&gpu, &vc);
    let (gt, ct) = both(&gpu, &tables);
    let (gs, cs) = both(&gpu, &row_seq);
    let (gp, cp) = both(&gpu, &pos);
    // Random destinations: padded rows must come back as zeros.
    let out0 = random(&mut rng, dtype, &[t, h, d], -9.0, 9.0);
    let (go, co) = both(&gpu, &out0);
    gpu.attention(&gq, &gk, &gv, &gt, &gs, &gp, params, &go).expect("cuda attention");
    Cpu.attention(&cq, &ck, &cv, &ct, &cs, &cp, params, &co).expect("cpu attention");
    let want = Cpu.download(&co).unwrap().to_f32();
    let eager = gpu.download(&go).unwrap();
    let got = eager.to_f32();
    assert_close(what, dtype, &got, &f64s(&want));
    for (i, r) in rows.iter().enumerate() {
        if r.1 < 0 {
            assert!(got[i * h * d..(i + 1) * h * d].iter().all(|&x| x == 0.0), "{what}: padded row {i} is not zero");
        }
    }
    // The same launch captured and replayed over a fresh random destination: kernel nodes
    // only, and the eager launch's bits.
    gpu.write(&random(&mut rng, dtype, &[t, h, d], -9.0, 9.0), &go).unwrap();
    let dev = gpu.device();
    let g = capture(dev, || {
        gpu.attention(&gq, &gk, &gv, &gt, &gs, &gp, params, &go).expect("captured attention");
        Ok(())
    })
    .expect("capture attention");
    let audit = g.audit();
    assert!(audit.kernels_only() && audit.kernel >= 1, "{what}: graph {audit}");
    g.instantiate().unwrap().replay().unwrap();
    assert!(gpu.download(&go).unwrap() == eager, "{what}: graph replay differs from the eager launch");
}

/// Decode: 3 sequences at different positions (up to 700), H=8, Hkv=2, D=64, blocks of 16.
/// bf16 / f16 take the tensor-core decode kernel, split (T * Hkv is far below the SM count)
/// and merged; f32 the CUDA-core kernel, split too.
const DECODE_ROWS: [(usize, i32); 3] = [(0, 700), (1, 1), (2, 345)];
const DECODE_SHAPE: (usize, usize, usize, usize) = (8, 2, 64, 16);

#[test]
fn attention_decode_matches_cpu() {
    for dt in DType::FLOATS {
        attention_vs_cpu(&format!("attention decode {dt}"), dt, &DECODE_ROWS, DECODE_SHAPE, 0, false);
    }
    // GQA 8:1 and 1:1, block sizes 1 (every key its own block) and 32
    attention_vs_cpu("attention decode GQA 8 bf16", DType::BF16, &DECODE_ROWS, (32, 4, 64, 32), 0, false);
    attention_vs_cpu("attention decode MHA bs=1 bf16", DType::BF16, &DECODE_ROWS, (4, 4, 64, 1), 0, false);
}

#[test]
fn attention_decode_with_a_window_and_a_padded_row_matches_cpu() {
    let rows = [(0, 700), (1, -1), (2, 345), (1, 130)];
    for dt in DType::FLOATS {
        attention_vs_cpu(&format!("attention decode window {dt}"), dt, &rows, DECODE_SHAPE, 128, false);
    }
}

#[test]
fn attention_decode_scalar_path_and_odd_head_dims_match_cpu() {
    // q one element off 16-byte alignment: the element-load kernel.
    attention_vs_cpu("attention decode scalar bf16", DType::BF16, &DECODE_ROWS, DECODE_SHAPE, 0, true);
    // D = 36 bf16 is not a whole number of 16-byte vectors: the element-load kernel too.
    attention_vs_cpu("attention decode D=36 bf16", DType::BF16, &DECODE_ROWS, (8, 2, 36, 16), 0, false);
    // D = 72 bf16 is 9 vectors: the vector kernel with idle lanes in each 16-lane group.
    attention_vs_cpu("attention decode D=72 bf16", DType::BF16, &DECODE_ROWS, (8, 2, 72, 16), 0, false);
}

#[test]
fn attention_decode_large_heads_matches_cpu() {
    // D = 128 and 256 (Gemma-style), GQA 4:1, the shapes of real models.
    for d in [128, 256] {
        attention_vs_cpu(&format!("attention decode D={d} bf16"), DType::BF16, &DECODE_ROWS, (16, 4, d, 16), 0, false);
    }
}

/// A short prefill: T = 37 rows (30 tokens of a new sequence, 7 continuing one at position
/// 500): at most 64 rows, so the decode kernel (one CTA per row).
#[test]
fn attention_prefill_matches_cpu() {
    let mut rows: Vec<(usize, i32)> = (0..30).map(|p| (0, p)).collect();
    rows.extend((500..507).map(|p| (1, p)));
    for dt in DType::FLOATS {
        attention_vs_cpu(&format!("attention prefill {dt}"), dt, &rows, DECODE_SHAPE, 0, false);
    }
    attention_vs_cpu("attention prefill window bf16", DType::BF16, &rows, DECODE_SHAPE, 16, false);
}

/// Long decode: 64 sequences at positions up to 8191 (the decode kernel's split-K over its
/// widest grid), GQA 8, D = 128, blocks of 16; 8 sequences at 8k with Llama's H=32 Hkv=8;
/// MQA (G = 32: two CTAs of 16 heads a KV head); a 4096 window at 8k.
#[test]
fn attention_decode_long_contexts_match_cpu() {
    let rows: Vec<(usize, i32)> = (0..64).map(|s| (s, 8191 - s as i32 * 113)).collect();
    attention_vs_cpu("attention decode 64 x 8k GQA 8 D=128 bf16", DType::BF16, &rows, (8, 1, 128, 16), 0, false);
    let rows: Vec<(usize, i32)> = (0..8).map(|s| (s, 8191 - s as i32 * 1000)).collect();
    attention_vs_cpu("attention decode 8 x 8k H=32 Hkv=8 D=64 f16", DType::F16, &rows, (32, 8, 64, 16), 0, false);
    attention_vs_cpu("attention decode 8 x 8k MQA G=32 bf16", DType::BF16, &rows, (32, 1, 64, 16), 0, false);
    attention_vs_cpu("attention decode 8 x 8k window bf16", DType::BF16, &rows, (32, 8, 64, 16), 4096, false);
}

/// Prefill rows of one step (T > 64: attention_plan + the prefill kernel): a 100-token chunk
/// at depth 3000 (its earlier context already in the cache), a fresh 300-token prompt, a
/// 64-token chunk at 700, three decode rows, two padded rows.
fn prefill_rows() -> Vec<(usize, i32)> {
    let mut rows: Vec<(usize, i32)> = (3000..3100).map(|p| (0, p)).collect();
    rows.extend((0..300).map(|p| (1, p)));
    rows.extend((700..764).map(|p| (2, p)));
    rows.extend([(3, 1500), (4, 0), (5, 2047), (0, -1), (0, -1)]);
    rows
}

#[test]
fn attention_prefill_chunks_at_depth_match_cpu() {
    let rows = prefill_rows();
    for dt in DType::FLOATS {
        attention_vs_cpu(&format!("attention prefill chunks {dt}"), dt, &rows, (32, 8, 64, 16), 0, false);
    }
    attention_vs_cpu("attention prefill chunks window 256 bf16", DType::BF16, &rows, (32, 8, 64, 16), 256, false);
    attention_vs_cpu("attention prefill chunks GQA 8 D=128 bf16", DType::BF16, &rows, (16, 2, 128, 16), 0, false);
    attention_vs_cpu("attention prefill chunks bs=1 bf16", DType::BF16, &rows, (8, 2, 64, 1), 0, false);
    // G = 3 (21 tokens an item, 63 of 64 rows), D = 32, blocks of 32
    attention_vs_cpu("attention prefill chunks G=3 D=32 bs=32 f16", DType::F16, &rows, (6, 2, 32, 32), 0, false);
    attention_vs_cpu("attention prefill chunks D=96 f16", DType::F16, &rows, (8, 2, 96, 16), 0, false);
    attention_vs_cpu("attention prefill chunks D=256 bf16", DType::BF16, &rows, (8, 4, 256, 16), 0, false);
    attention_vs_cpu("attention prefill chunks D=36 scalar bf16", DType::BF16, &rows, (8, 2, 36, 16), 0, false);
    attention_vs_cpu("attention prefill chunks misaligned q bf16", DType::BF16, &rows, (8, 2, 64, 16), 0, true);
}

#[test]
fn attention_prefill_wide_groups_and_rows_out_of_order_match_cpu() {
    // G = 128 > 64 rows a CTA: one token an item, two CTAs a KV head.
    let mut rows: Vec<(usize, i32)> = (400..480).map(|p| (0, p)).collect();
    rows.push((1, 90));
    attention_vs_cpu("attention prefill MQA G=128 bf16", DType::BF16, &rows, (128, 1, 64, 16), 0, false);
    // G = 16 (4 tokens an item)
    attention_vs_cpu("attention prefill G=16 D=128 bf16", DType::BF16, &rows, (32, 2, 128, 16), 0, false);
    // Rows of a sequence split into runs (against the packing contract: slower, still right):
    // more items than the grid's bound, so CTAs take several.
    let mut rows: Vec<(usize, i32)> = Vec::new();
    for k in 0..40 {
        rows.push((0, 200 + k));
        rows.push((1, 50 + k));
    }
    attention_vs_cpu("attention prefill interleaved rows bf16", DType::BF16, &rows, (8, 2, 64, 16), 0, false);
}

/// Attention reads positions and block tables from device memory: the same tensors with new
/// values (what a replayed decode graph does) give the new result.
#[test]
fn attention_follows_positions_written_in_place() {
    let mut rng = Rng::fresh("attention positions in place");
    let gpu = cuda(LaunchParamMode::Inline);
    let (h, hkv, d, bs) = DECODE_SHAPE;
    let slots = 64 * bs;
    let dt = DType::BF16;
    let q = gpu.tensor(&random(&mut rng, dt, &[1, h, d], -1.0, 1.0)).unwrap();
    let kc = gpu.tensor(&random(&mut rng, dt, &[slots, hkv, d], -1.0, 1.0)).unwrap();
    let vc = gpu.tensor(&random(&mut rng, dt, &[slots, hkv, d], -2.0, 2.0)).unwrap();
    let table: Vec<i32> = (0..64).rev().collect();
    let tables = gpu.tensor(&HostTensor::from_i32(&[1, 64], &table)).unwrap();
    let row = gpu.tensor(&HostTensor::from_i32(&[1], &[0])).unwrap();
    let pos = gpu.tensor(&HostTensor::from_i32(&[1], &[10])).unwrap();
    let out = gpu.zeros(dt, &[1, h, d]).unwrap();
    let params = AttentionParams { scale: 0.125, sliding_window: 0, block_size: bs as u32 };
    gpu.attention(&q, &kc, &vc, &tables, &row, &pos, params, &out).unwrap();
    let short = gpu.download(&out).unwrap();
    gpu.write(&HostTensor::from_i32(&[1], &[900]), &pos).unwrap();
    gpu.attention(&q, &kc, &vc, &tables, &row, &pos, params, &out).unwrap();
    let long = gpu.download(&out).unwrap();
    assert_ne!(short, long, "the second launch must see position 900");
    gpu.write(&HostTensor::from_i32(&[1, 64], &(0..64).collect::<Vec<_>>()), &tables).unwrap();
    gpu.attention(&q, &kc, &vc, &tables, &row, &pos, params, &out).unwrap();
    assert_ne!(long, gpu.download(&out).unwrap(), "the third launch must see the new block table");
}

#[test]
fn wide_rows_match_cpu() {
    let mut rng = Rng::fresh("wide rows");
    let gpu = cuda(LaunchParamMode::Inline);
    for dt in DType::FLOATS {
        // rms_norm over a hidden size of 8192 (1024 threads per row), 3 rows.
        let x = random(&mut rng, dt, &[3, 8192], -2.0, 2.0);
        let w = random(&mut rng, dt, &[8192], 0.5, 1.5);
        let (gx, cx) = both(&gpu, &x);
        let (gw, cw) = both(&gpu, &w);
        let (go, co) = (gpu.zeros(dt, &[3, 8192]).unwrap(), Cpu.zeros(dt, &[3, 8192]).unwrap());
        gpu.rms_norm(&gx, &gw, 1e-5, &go).unwrap();
        Cpu.rms_norm(&cx, &cw, 1e-5, &co).unwrap();
        let want = f64s(&Cpu.download(&co).unwrap().to_f32());
        assert_close(&format!("rms_norm 8192 {dt}"), dt, &gpu.download(&go).unwrap().to_f32(), &want);

        // softmax over 32000 columns.
        let x = random(&mut rng, dt, &[2, 32000], -8.0, 8.0);
        let (gx, cx) = both(&gpu, &x);
        let (go, co) = (gpu.zeros(dt, &[2, 32000]).unwrap(), Cpu.zeros(dt, &[2, 32000]).unwrap());
        gpu.softmax(&gx, &go).unwrap();
        Cpu.softmax(&cx, &co).unwrap();
        let want = f64s(&Cpu.download(&co).unwrap().to_f32());
        assert_close(&format!("softmax 32000 {dt}"), dt, &gpu.download(&go).unwrap().to_f32(), &want);

        // argmax over a Llama-3 vocabulary, the max planted twice: the first index wins.
        let v = 128_256;
        let mut vals = round_to(dt, &rng.vec(2 * v, -4.0, 4.0));
        for (row, at) in [(0, 77_777), (1, 5)] {
            vals[row * v + at] = 10.0;
            vals[row * v + at + 40_000] = 10.0;
        }
        let x = HostTensor::from_f32_as(&[2, v], &vals, dt);
        let (gx, cx) = both(&gpu, &x);
        let (go, co) = (gpu.zeros(DType::U32, &[2]).unwrap(), Cpu.zeros(DType::U32, &[2]).unwrap());
        gpu.argmax(&gx, &go).unwrap();
        Cpu.argmax(&cx, &co).unwrap();
        let got = gpu.download(&go).unwrap().to_u32().unwrap();
        assert_eq!(got, vec![77_777, 5], "argmax {dt}");
        assert_eq!(got, Cpu.download(&co).unwrap().to_u32().unwrap(), "argmax {dt} vs cpu");
    }
}

#[test]
fn embedding_rows_that_are_not_whole_vectors_match_cpu() {
    let mut rng = Rng::fresh("embedding element path");
    let gpu = cuda(LaunchParamMode::Inline);
    for dt in DType::FLOATS {
        // C = 20: not a multiple of 16 bytes for bf16/f16 (element copies); f32 rows are.
        let table = random(&mut rng, dt, &[50, 20], -1.0, 1.0);
        let ids = HostTensor::from_u32(&[6], &[3, 49, 0, 3, 17, 25]);
        let (gt, ct) = both(&gpu, &table);
        let (gi, ci) = both(&gpu, &ids);
        let (go, co) = (gpu.zeros(dt, &[6, 20]).unwrap(), Cpu.zeros(dt, &[6, 20]).unwrap());
        gpu.embedding(&gi, &gt, &go).unwrap();
        Cpu.embedding(&ci, &ct, &co).unwrap();
        assert_eq!(gpu.download(&go).unwrap(), Cpu.download(&co).unwrap(), "embedding {dt}");
    }
}

#[test]
fn fill_uniform_on_the_device_is_uniform_in_range_and_seeded() {
    let gpu = cuda(LaunchParamMode::Inline);
    for dt in DType::FLOATS {
        let n = 1 << 20;
        let a = gpu.zeros(dt, &[n]).unwrap();
        let b = gpu.zeros(dt, &[n]).unwrap();
        gpu.fill_uniform(&a, 42, 0.5).unwrap();
        gpu.fill_uniform(&b, 42, 0.5).unwrap();
        let va = gpu.download(&a).unwrap();
        assert_eq!(va, gpu.download(&b).unwrap(), "{dt}: same seed, same values");
        let v = va.to_f32();
        assert!(v.iter().all(|x| (-0.5..=0.5).contains(x)), "{dt}: out of range");
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 2e-3, "{dt}: mean {mean}");
        assert!((var - 1.0 / 12.0).abs() < 2e-3, "{dt}: variance {var}, uniform(-0.5, 0.5) has 1/12");
        gpu.fill_uniform(&b, 43, 0.5).unwrap();
        assert_ne!(va, gpu.download(&b).unwrap(), "{dt}: another seed, other values");
    }
}

/// Decode-shaped matmuls (x [M, K] @ W^T, W [N, K] rows) and their residual form
/// (`matmul_add`: dst += x W^T), by gemv.cu for M <= 2 in every float dtype, by gemv_tc.cu
/// for f32 logits of 3..16 rows of bf16 / f16, by cuBLAS otherwise: every
/// M, an N that is not a multiple of a block's rows, x rows with a stride and an offset, a
/// random destination to accumulate onto.
#[test]
fn decode_shaped_matmul_gemv_matches_cpu() {
    let mut rng = Rng::fresh("decode_shaped_matmul_gemv_matches_cpu");
    let gpu = cuda(LaunchParamMode::Inline);
    let n = 301;
    let cases = DType::FLOATS.map(|d| (d, d)).into_iter().chain([(DType::BF16, DType::F32), (DType::F16, DType::F32)]);
    // K = 2048 and 4096: gemv.cu splits K over 2 and 4 warps of a block (few rows, long rows);
    // K = 1000: lanes with a last step of fewer than U chunks (the masked step), some after
    // a full one
    for (dt, out, k) in cases.flat_map(|(d, o)| [(d, o, 512), (d, o, 1000), (d, o, 2048), (d, o, 4096)]) {
        // (gemv_tc.cu takes K % 32 == 0: at K = 1000 three rows go to cuBLAS)
        let ms: &[usize] = match k {
            512 => &[1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 17],
            1000 => &[1, 2],
            _ => &[1, 2, 3],
        };
        for &m in ms {
            // x is a [m, k] view at offset 2k of a [m + 3, k + 16] buffer: row stride k + 16
            let xbuf = random(&mut rng, dt, &[m + 3, k + 16], -1.0, 1.0);
            let w = random(&mut rng, dt, &[n, k], -1.0, 1.0);
            let y0 = random(&mut rng, out, &[m, n], -4.0, 4.0);
            let (gx, cx) = both(&gpu, &xbuf);
            let (gw, cw) = both(&gpu, &w);
            let view = |t: &Tensor<Cuda>| t.narrow(0, 2, m).unwrap().narrow(1, 0, k).unwrap();
            let cview = |t: &Tensor<Cpu>| t.narrow(0, 2, m).unwrap().narrow(1, 0, k).unwrap();
            for accumulate in [false, true] {
                let (go, co) = both(&gpu, &y0);
                let s0 = gpu.device().launch_stats();
                let (gwt, cwt) = (gw.transpose(0, 1).unwrap(), cw.transpose(0, 1).unwrap());
                if accumulate {
                    gpu.matmul_add(&view(&gx), &gwt, &go).unwrap();
                    Cpu.matmul_add(&cview(&cx), &cwt, &co).unwrap();
                } else {
                    gpu.matmul(&view(&gx), &gwt, &go).unwrap();
                    Cpu.matmul(&cview(&cx), &cwt, &co).unwrap();
                }
                // gemv.cu (M <= 2) or gemv_tc.cu (f32 logits of bf16 / f16, M <= 16) is one
                // launch of ours; cuBLAS none
                let ours = gpu.device().launch_stats().since(&s0).kernels;
                let max_m = if out == DType::F32 && dt != DType::F32 { 16 } else { 2 };
                assert_eq!(ours, (m <= max_m) as u64, "{dt}->{out} m={m} add={accumulate}: ours for M <= {max_m}");
                let got = gpu.download(&go).unwrap().to_f32();
                let want: Vec<f64> = Cpu.download(&co).unwrap().to_f32().iter().map(|&v| v as f64).collect();
                // sums of K products of values in [-1, 1): scale the per-dtype tolerance by sqrt(K)
                let (atol, rtol) = encore_tensor::testing::tolerance(out);
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    let tol = atol * (k as f64).sqrt() * 4.0 + 2.0 * rtol * w.abs();
                    assert!((*g as f64 - w).abs() <= tol, "{dt}->{out} m={m} add={accumulate} element {i}: {g} vs cpu {w}");
                }
            }
        }
    }
}

/// The fused decoder projections (`matmul_fused`: gemv.cu's `gemv_rms*`) against the ops
/// they replace, run on the CPU: `rms_norm` then the projection (plain and residual), and
/// `rms_norm`, the `[gate; up]` projection, `silu_mul` / `gelu_mul`; every float dtype,
/// M = 1, 2 fused in one launch and M = 3 refused (the caller runs the ops), x rows with a
/// stride and an offset, N not a multiple of a block's rows, gate and up as the two halves
/// of one fused weight, fresh random inputs.
#[test]
fn fused_norm_and_gated_projections_match_the_unfused_ops_on_cpu() {
    use encore_tensor::{FusedMatmul, GluActivation};
    let mut rng = Rng::fresh("fused_norm_and_gated_projections_match_the_unfused_ops_on_cpu");
    let gpu = cuda(LaunchParamMode::Inline);
    let (n, eps) = (301, 1e-5);
    // K = 4096: the K split over a block's warps (gemv.cu), with the norm's sum of squares
    for (dt, k) in DType::FLOATS.into_iter().flat_map(|d| [(d, 512), (d, 4096)]) {
        for m in [1, 2, 3] {
            for glu in [None, Some(GluActivation::Silu), Some(GluActivation::GeluTanh)] {
                // x: [m, k] at row 2 of a [m + 3, k + 16] buffer; w: [n, k], or [2n, k] = [gate; up]
                let xbuf = random(&mut rng, dt, &[m + 3, k + 16], -2.0, 2.0);
                let rows = if glu.is_some() { 2 * n } else { n };
                let w = random(&mut rng, dt, &[rows, k], -0.2, 0.2);
                let norm = random(&mut rng, dt, &[k], 0.5, 1.5);
                let y0 = random(&mut rng, dt, &[m, n], -4.0, 4.0);
                let ((gx, cx), (gw, cw), (gn, cn)) = (both(&gpu, &xbuf), both(&gpu, &w), both(&gpu, &norm));
                let gview = gx.narrow(0, 2, m).unwrap().narrow(1, 0, k).unwrap();
                let cview = cx.narrow(0, 2, m).unwrap().narrow(1, 0, k).unwrap();
                let adds: &[bool] = if glu.is_some() { &[false] } else { &[false, true] };
                for &accumulate in adds {
                    let what = format!("{dt} m={m} glu={glu:?} add={accumulate}");
                    let (go, co) = both(&gpu, &y0);
                    let gate = gw.narrow(0, 0, n).unwrap().transpose(0, 1).unwrap();
                    let up = gw.narrow(0, rows - n, n).unwrap().transpose(0, 1).unwrap();
                    let op = FusedMatmul {
                        x: &gview,
                        norm: (&gn, eps),
                        w_t: &gate,
                        glu: glu.map(|a| (a, &up)),
                        dst: &go,
                        accumulate,
                    };
                    let s0 = gpu.device().launch_stats();
                    let fused = gpu.matmul_fused(&op).unwrap();
                    assert_eq!(fused, m <= 2, "{what}: fused for M <= 2 only");
                    if !fused {
                        continue;
                    }
                    assert_eq!(gpu.device().launch_stats().since(&s0).kernels, 1, "{what}: one launch");
                    // the CPU runs the ops apart
                    let xn = Cpu.zeros(dt, &[m, k]).unwrap();
                    Cpu.rms_norm(&cview, &cn, eps, &xn).unwrap();
                    let cwt = cw.transpose(0, 1).unwrap();
                    match glu {
                        None if accumulate => Cpu.matmul_add(&xn, &cwt, &co).unwrap(),
                        None => Cpu.matmul(&xn, &cwt, &co).unwrap(),
                        Some(act) => {
                            let gate_up = Cpu.zeros(dt, &[m, 2 * n]).unwrap();
                            Cpu.matmul(&xn, &cwt, &gate_up).unwrap();
                            let (g, u) = (gate_up.narrow(1, 0, n).unwrap(), gate_up.narrow(1, n, n).unwrap());
                            match act {
                                GluActivation::Silu => Cpu.silu_mul(&g, &u, &co).unwrap(),
                                GluActivation::GeluTanh => Cpu.gelu_mul(&g, &u, &co).unwrap(),
                            }
                        }
                    }
                    let got = gpu.download(&go).unwrap().to_f32();
                    let want = Cpu.download(&co).unwrap().to_f32();
                    // sums of K products of normed x (|x| <~ 3) and w in [-0.2, 0.2), and
                    // products of two such sums with GLU
                    let (atol, rtol) = encore_tensor::testing::tolerance(dt);
                    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                        let (g, w) = (*g as f64, *w as f64);
                        let tol = atol * (k as f64).sqrt() * 4.0 + 4.0 * rtol * w.abs();
                        assert!((g - w).abs() <= tol, "{what} element {i}: {g} vs cpu {w}");
                    }
                }
            }
        }
    }
}

/// The fused quantized projections (`qmatmul_fused`: qmatmul.cu's `qquant_x_<rms|silu|gelu>`
/// before the GEMV) against the f64 product of the dequantized weights and the input the
/// CPU computes apart (`rms_norm`, `silu_mul` / `gelu_mul`, rounded to the dtype): every
/// block type, bf16 and f32, M = 1, 3, 16 fused (plain and residual) and M = 17 refused,
/// fresh random inputs.
#[test]
fn fused_quantized_projections_match_the_unfused_input() {
    use encore_tensor::quant::random_blocks;
    use encore_tensor::{GluActivation, QInput, QuantType};
    let gpu = cuda(LaunchParamMode::Inline);
    let mut rng = Rng::fresh("fused_quantized_projections_match_the_unfused_input");
    let (k, n, eps) = (1024, 300, 1e-5);
    for qt in QuantType::ALL {
        let host = random_blocks(&mut rng, qt, n, k);
        let wv = host.dequantize();
        let w = gpu.upload_quant(&host).unwrap();
        for dt in [DType::BF16, DType::F32] {
            for m in [1, 3, 16, 17] {
                for input in ["norm", "silu", "gelu"] {
                    // x: [m, k] (norm) or [m, 2k] rows [gate | up]
                    let width = if input == "norm" { k } else { 2 * k };
                    let x = random(&mut rng, dt, &[m, width], -2.0, 2.0);
                    let norm = random(&mut rng, dt, &[k], 0.5, 1.5);
                    let (gx, cx) = both(&gpu, &x);
                    let (gn, cn) = both(&gpu, &norm);
                    // the input the unfused ops compute, on the CPU
                    let cin = Cpu.zeros(dt, &[m, k]).unwrap();
                    let act = match input {
                        "norm" => {
                            Cpu.rms_norm(&cx, &cn, eps, &cin).unwrap();
                            None
                        }
                        a => {
                            let (g, u) = (cx.narrow(1, 0, k).unwrap(), cx.narrow(1, k, k).unwrap());
                            if a == "silu" {
                                Cpu.silu_mul(&g, &u, &cin).unwrap();
                                Some(GluActivation::Silu)
                            } else {
                                Cpu.gelu_mul(&g, &u, &cin).unwrap();
                                Some(GluActivation::GeluTanh)
                            }
                        }
                    };
                    let xv = Cpu.download(&cin).unwrap().to_f32();
                    let qin = match act {
                        None => QInput::Normed { x: &gx, norm: &gn, eps },
                        Some(act) => QInput::Gated { gate_up: &gx, act },
                    };
                    for accumulate in [false, true] {
                        let what = format!("{qt} {dt} m={m} {input} add={accumulate}");
                        let y0 = random(&mut rng, dt, &[m, n], -1.0, 1.0);
                        let dst = gpu.tensor(&y0).unwrap();
                        let fused = gpu.qmatmul_fused(&qin, &w, &dst, accumulate).unwrap();
                        assert_eq!(fused, m <= 16, "{what}: fused at M <= 16 only");
                        if !fused {
                            continue;
                        }
                        let got = gpu.download(&dst).unwrap().to_f32();
                        let before = y0.to_f32();
                        for i in 0..m {
                            let row = &xv[i * k..(i + 1) * k];
                            for j in (0..n).step_by(7) {
                                let wr = &wv[j * k..(j + 1) * k];
                                let want: f64 = row.iter().zip(wr).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>()
                                    + if accumulate { before[i * n + j] as f64 } else { 0.0 };
                                let mass: f64 = row.iter().zip(wr).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum();
                                // x to 8 bits per 32 elements (half a step of max|x| / 127 each:
                                // 6 standard deviations of their sum), the input's rounding to
                                // the dtype (the fused norm's sum order may flip a few), the output's
                                let var: f64 = row
                                    .chunks(32)
                                    .zip(wr.chunks(32))
                                    .map(|(xc, wc)| {
                                        let half = xc.iter().fold(0.0f64, |a, v| a.max(v.abs() as f64)) / 254.0;
                                        wc.iter().map(|w| (*w as f64 * half).powi(2) / 3.0).sum::<f64>()
                                    })
                                    .sum();
                                let (atol, rtol) = encore_tensor::testing::tolerance(dt);
                                let tol = atol + rtol * want.abs() + 6.0 * var.sqrt() + 3e-5 * mass;
                                let g = got[i * n + j] as f64;
                                assert!((g - want).abs() <= tol, "{what} [{i}, {j}]: {g} vs {want} (tol {tol:e})");
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Quantized GEMV and the prefill path at model shapes, against the dequantized weights in
/// f64 on the host (sampled columns): every block type, bf16 activations (the CUDA compute
/// dtype) with bf16 and f32 outputs, M from 1 to the GEMV limit and past it, K = 2048. The
/// scratch (1 MiB here: 1/32 of the uploaded blocks, at least 1 MiB) cuts the weights into
/// chunks of 127 rows, and bf16 x into chunks of 114 (bf16 out) or 128 rows (M = 300, Q8_0).
#[test]
fn qmatmul_at_model_shapes_matches_the_dequantized_weights() {
    use encore_tensor::quant::random_blocks;
    use encore_tensor::QuantType;
    let gpu = cuda(LaunchParamMode::Inline);
    let mut rng = Rng::fresh("qmatmul_at_model_shapes_matches_the_dequantized_weights");
    let k = 2048;
    for qt in QuantType::ALL {
        let n = if qt == QuantType::Q4_K { 16384 } else { 1024 };
        let host = random_blocks(&mut rng, qt, n, k);
        let wv = host.dequantize();
        let w = gpu.upload_quant(&host).unwrap();
        for (dt, out) in [(DType::BF16, DType::BF16), (DType::BF16, DType::F32), (DType::F32, DType::F32)] {
            let ms: &[usize] = if qt == QuantType::Q8_0 { &[1, 3, 16, 40, 300] } else { &[1, 3, 16, 40] };
            for &m in ms {
                let x = random(&mut rng, dt, &[m, k], -1.0, 1.0);
                let xv = x.to_f32();
                let dst = gpu.zeros(out, &[m, n]).unwrap();
                let before = gpu.download(&dst).unwrap().to_f32();
                gpu.qmatmul(&gpu.tensor(&x).unwrap(), &w, &dst, m == 3).unwrap();
                let got = gpu.download(&dst).unwrap().to_f32();
                for i in 0..m {
                    // the GEMV (m <= 16) quantizes x to 8 bits per 32 elements: half a step
                    // of max|x| / 127 per element
                    let half_step: Vec<f64> = xv[i * k..(i + 1) * k]
                        .chunks(32)
                        .flat_map(|c| {
                            let amax = c.iter().fold(0.0f64, |a, v| a.max(v.abs() as f64));
                            std::iter::repeat_n(amax / 254.0, 32)
                        })
                        .collect();
                    for j in (0..n).step_by(37) {
                        let want: f64 = (0..k).map(|p| xv[i * k + p] as f64 * wv[j * k + p] as f64).sum::<f64>()
                            + if m == 3 { before[i * n + j] as f64 } else { 0.0 };
                        let mass: f64 = (0..k).map(|p| (xv[i * k + p] as f64 * wv[j * k + p] as f64).abs()).sum();
                        // rounding errors of x (uniform within half a step): their sum stays
                        // within 6 standard deviations
                        let var: f64 = (0..k).map(|p| (wv[j * k + p] as f64 * half_step[p]).powi(2) / 3.0).sum();
                        // f32 accumulation over K, bf16 rounding of the output; on the prefill
                        // path f16 rounding of the dequantized weights (and of bf16 x: exact)
                        let (atol, rtol) = encore_tensor::testing::tolerance(out);
                        let tol = atol
                            + rtol * want.abs()
                            + if m > 16 { 4e-3 * mass / (k as f64).sqrt() } else { 6.0 * var.sqrt() + 1e-5 * mass };
                        let g = got[i * n + j] as f64;
                        assert!(
                            (g - want).abs() <= tol,
                            "{qt} {dt}->{out} m={m} [{i}, {j}]: {g} vs {want} (tol {tol:e})"
                        );
                    }
                }
            }
        }
    }
}
