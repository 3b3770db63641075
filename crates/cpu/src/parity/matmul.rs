//! Parity of matmul: `[(Bt), M, K] x [(Bt), K, N]` over row-major, transposed (the HF
//! `[N, K]` weight seen as `[K, N]`), narrowed and offset operands, batched operands with a
//! shared rank-2 or broadcast (batch stride 0) partner, and strided destinations.
//! Inputs are scaled by `K^-1/4` so outputs stay O(1) for every K: the tolerance then
//! bounds the accumulation error without a K-dependent factor.

use super::inputs::{download, expect_err, input, output, View};
use encore_tensor::testing::{assert_close, Rng};
use encore_tensor::{Backend, DType, Error};

/// `[(Bt), M, N]` f64 product of row-major `a: [(Bt), M, K]` and `b: [(Bt), K, N]`; an
/// operand without a batch dim is shared.
fn reference(
    a: &[f32],
    a_batched: bool,
    b: &[f32],
    b_batched: bool,
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
) -> Vec<f64> {
    let mut out = vec![0.0; batch * m * n];
    for bt in 0..batch {
        let a = &a[if a_batched { bt * m * k } else { 0 }..];
        let b = &b[if b_batched { bt * k * n } else { 0 }..];
        for i in 0..m {
            for j in 0..n {
                out[(bt * m + i) * n + j] = (0..k).map(|p| a[i * k + p] as f64 * b[p * n + j] as f64).sum();
            }
        }
    }
    out
}

pub fn matmul_cases<B: Backend>(b: &B) {
    let mut rng = Rng::fresh("matmul");
    let shapes = [(1, 64, 48), (7, 33, 19), (16, 40, 24), (3, 512, 10)];
    let lhs_views = [View::Contiguous, View::Transposed, View::Narrowed, View::Offset];
    let rhs_views = [View::Contiguous, View::Transposed, View::Narrowed];
    for dt in DType::FLOATS {
        for (m, k, n) in shapes {
            let s = (k as f32).powf(-0.25);
            for lv in lhs_views {
                for rv in rhs_views {
                    for dv in [View::Contiguous, View::Narrowed] {
                        let what = format!("matmul {m}x{k}x{n} lhs {lv:?} rhs {rv:?} dst {dv:?}");
                        let x = input(b, &mut rng, dt, &[m, k], lv, (-s, s));
                        let w = input(b, &mut rng, dt, &[k, n], rv, (-s, s));
                        let out = output(b, &mut rng, dt, &[m, n], dv);
                        b.matmul(&x.t, &w.t, &out.t).unwrap();
                        let want = reference(&x.values, false, &w.values, false, 1, m, k, n);
                        assert_close(&what, dt, &download(b, &out.t), &want);
                        out.check_untouched(b, &what);
                    }
                }
            }
        }
        batched_cases(b, &mut rng, dt);
        accumulate_and_mixed_cases(b, &mut rng, dt);
    }
    let f = |dims: &[usize]| b.zeros(DType::F32, dims).unwrap();
    expect_err!("matmul K", b.matmul(&f(&[3, 4]), &f(&[5, 6]), &f(&[3, 6])), Error::ShapeMismatch { .. });
    expect_err!("matmul dst", b.matmul(&f(&[3, 4]), &f(&[4, 6]), &f(&[3, 5])), Error::ShapeMismatch { .. });
    expect_err!("matmul batch", b.matmul(&f(&[2, 3, 4]), &f(&[3, 4, 6]), &f(&[2, 3, 6])), Error::ShapeMismatch { .. });
    let h = b.zeros(DType::BF16, &[4, 6]).unwrap();
    expect_err!("matmul dtype", b.matmul(&f(&[3, 4]), &h, &f(&[3, 6])), Error::DTypeMismatch { .. });
    let col_major = f(&[6, 3]).transpose(0, 1).unwrap();
    expect_err!("matmul dst layout", b.matmul(&f(&[3, 4]), &f(&[4, 6]), &col_major), Error::LayoutRequired { .. });
    expect_err!("matmul rank 4", b.matmul(&f(&[1, 2, 3, 4]), &f(&[4, 6]), &f(&[3, 6])), Error::InvalidArgument { .. });
    let u = b.zeros(DType::U32, &[3, 4]).unwrap();
    expect_err!("matmul u32", b.matmul(&u, &u, &u), Error::UnsupportedDType { .. });
}

/// `matmul_add` (dst += x w, the residual add fused into the projection) into a narrowed
/// destination holding random values, and bf16/f16 inputs with an f32 destination.
fn accumulate_and_mixed_cases<B: Backend>(b: &B, rng: &mut Rng, dt: DType) {
    for (m, k, n) in [(1, 64, 48), (5, 96, 24), (16, 40, 33)] {
        let s = (k as f32).powf(-0.25);
        let x = input(b, rng, dt, &[m, k], View::Contiguous, (-s, s));
        let w = input(b, rng, dt, &[k, n], View::Transposed, (-s, s));
        let out = output(b, rng, dt, &[m, n], View::Narrowed);
        let before = download(b, &out.t);
        b.matmul_add(&x.t, &w.t, &out.t).unwrap();
        let prod = reference(&x.values, false, &w.values, false, 1, m, k, n);
        let want: Vec<f64> = prod.iter().zip(&before).map(|(p, d)| p + *d as f64).collect();
        let what = format!("matmul_add {m}x{k}x{n} ({dt})");
        assert_close(&what, dt, &download(b, &out.t), &want);
        out.check_untouched(b, &what);
        if dt != DType::F32 {
            let out = output(b, rng, DType::F32, &[m, n], View::Contiguous);
            b.matmul(&x.t, &w.t, &out.t).unwrap();
            // f32 accumulate and store: the f32 tolerance, from the dtype-rounded inputs
            assert_close(&format!("matmul {m}x{k}x{n} {dt} -> f32"), DType::F32, &download(b, &out.t), &prod);
        }
    }
    let x = b.zeros(dt, &[2, 8]).unwrap();
    expect_err!(
        "matmul_add aliasing",
        b.matmul_add(
            &x.narrow(1, 0, 4).unwrap(),
            &x.narrow(0, 0, 1).unwrap().reshape(&[4, 2]).unwrap(),
            &x.narrow(1, 0, 2).unwrap()
        ),
        Error::InvalidArgument { .. }
    );
}

fn batched_cases<B: Backend>(b: &B, rng: &mut Rng, dt: DType) {
    let (bt, m, k, n) = (3, 5, 24, 7);
    let s = (k as f32).powf(-0.25);
    // (lhs batched, lhs view, rhs batched, rhs view); Broadcast on a batched operand is a
    // batch stride of 0, SwapLeading puts the batch stride below the row stride.
    let cases = [
        (true, View::Contiguous, false, View::Contiguous),
        (true, View::Transposed, false, View::Transposed),
        (true, View::SwapLeading, false, View::Narrowed),
        (true, View::Contiguous, true, View::Contiguous),
        (true, View::Narrowed, true, View::Transposed),
        (true, View::Transposed, true, View::SwapLeading),
        (true, View::Broadcast, true, View::Contiguous),
        (true, View::Contiguous, true, View::Broadcast),
        (false, View::Transposed, true, View::Contiguous),
        (false, View::Contiguous, false, View::Transposed),
    ];
    for (lb, lv, rb, rv) in cases {
        for dv in [View::Contiguous, View::Narrowed] {
            let what = format!("matmul batched {bt}x{m}x{k}x{n} lhs {lb} {lv:?} rhs {rb} {rv:?} dst {dv:?}");
            let ld: Vec<usize> = if lb { vec![bt, m, k] } else { vec![m, k] };
            let rd: Vec<usize> = if rb { vec![bt, k, n] } else { vec![k, n] };
            let x = input(b, rng, dt, &ld, lv, (-s, s));
            let w = input(b, rng, dt, &rd, rv, (-s, s));
            let out = output(b, rng, dt, &[bt, m, n], dv);
            b.matmul(&x.t, &w.t, &out.t).unwrap();
            let want = reference(&x.values, lb, &w.values, rb, bt, m, k, n);
            assert_close(&what, dt, &download(b, &out.t), &want);
            out.check_untouched(b, &what);
        }
    }
}
