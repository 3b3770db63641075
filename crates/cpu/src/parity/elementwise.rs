//! Parity of the elementwise ops: memory round trips, copy / cast, unary, binary with
//! broadcasting and in-place destinations, and the gated activations: SwiGLU's `silu_mul`,
//! GeGLU's `gelu_mul`.

use super::inputs::{broadcast, download, expect_err, input, ints, output, rank_9, View, RANK_9};
use encore_tensor::testing::{assert_close, round_to, Rng};
use encore_tensor::{Backend, BinaryOp, DType, Error, HostTensor, Tensor, UnaryOp};

const ALL_DTYPES: [DType; 5] = [DType::F32, DType::BF16, DType::F16, DType::U32, DType::I32];

/// upload / download / write / zeros, bit for bit, for every dtype.
pub fn memory_cases<B: Backend>(b: &B) {
    let mut rng = Rng::fresh("memory");
    for dt in ALL_DTYPES {
        let bits: Vec<u32> = (0..24).map(|_| rng.next_u64() as u32).collect();
        let host = match dt {
            DType::U32 | DType::I32 => HostTensor { dtype: dt, ..HostTensor::from_u32(&[4, 6], &bits) },
            _ => HostTensor::from_f32_as(&[4, 6], &rng.vec(24, -5.0, 5.0), dt),
        };
        let t = b.tensor(&host).unwrap();
        assert_eq!(b.download(&t).unwrap(), host, "upload/download {dt}");
        let z = b.zeros(dt, &[3, 5]).unwrap();
        assert!(b.download(&z).unwrap().data.iter().all(|&x| x == 0), "zeros {dt}");
        // write into the contiguous rows 1..3 of t
        let rows = t.narrow(0, 1, 2).unwrap();
        let new = HostTensor { dtype: dt, dims: vec![2, 6], data: host.data[..12 * dt.size_in_bytes()].to_vec() };
        b.write(&new, &rows).unwrap();
        let after = b.download(&t).unwrap().data;
        let s = 6 * dt.size_in_bytes();
        assert_eq!(&after[s..3 * s], &host.data[..2 * s], "write {dt}");
        assert_eq!(&after[..s], &host.data[..s], "write {dt} touched row 0");
        assert_eq!(&after[3 * s..], &host.data[3 * s..], "write {dt} touched row 3");
        // a transposed download is the transposed values
        let tt = b.download(&t.transpose(0, 1).unwrap()).unwrap();
        assert_eq!(tt.dims, vec![6, 4]);
        let w = dt.size_in_bytes();
        assert_eq!(&tt.data[w..2 * w], &after[s..s + w], "transposed download {dt}");
    }
    // u32 <-> i32 views of one storage (`Tensor::bitcast`) read and write the same bits
    let bits: Vec<u32> = (0..8).map(|_| rng.next_u64() as u32 | 1 << 31).collect();
    let t = ints(b, DType::I32, &[8], &bits);
    let u = t.bitcast(DType::U32).unwrap();
    assert_eq!(b.download(&u).unwrap(), HostTensor::from_u32(&[8], &bits), "bitcast download");
    let fresh: Vec<u32> = bits.iter().map(|x| x.rotate_left(7)).collect();
    b.write(&HostTensor::from_u32(&[8], &fresh), &u).unwrap();
    assert_eq!(b.download(&t).unwrap().to_u32().unwrap(), fresh, "bitcast write");
    let dst = b.zeros(DType::U32, &[8]).unwrap();
    b.copy(&u, &dst).unwrap();
    assert_eq!(b.download(&dst).unwrap().to_u32().unwrap(), fresh, "bitcast copy");
    b.synchronize().unwrap();
}

pub fn copy_cases<B: Backend>(b: &B) {
    let mut rng = Rng::fresh("copy");
    let dims = [3, 5, 7];
    let src_views = [View::Contiguous, View::Transposed, View::Narrowed, View::SwapLeading, View::Broadcast];
    let dst_views = [View::Contiguous, View::Transposed, View::Narrowed];
    for src_dt in DType::FLOATS {
        for dst_dt in DType::FLOATS {
            for sv in src_views {
                for dv in dst_views {
                    let what = format!("copy {src_dt}->{dst_dt} {sv:?}->{dv:?}");
                    let x = input(b, &mut rng, src_dt, &dims, sv, (-3.0, 3.0));
                    let out = output(b, &mut rng, dst_dt, &dims, dv);
                    b.copy(&x.t, &out.t).unwrap();
                    // a cast rounds to nearest even, exactly
                    assert_eq!(download(b, &out.t), round_to(dst_dt, &x.values), "{what}");
                    out.check_untouched(b, &what);
                }
            }
        }
    }
    // integers: same-dtype copies keep every bit (values far above 2^24)
    for dt in [DType::U32, DType::I32] {
        for sv in [View::Contiguous, View::Transposed, View::Broadcast] {
            let bits: Vec<u32> = (0..3 * 5 * 7).map(|_| rng.next_u64() as u32 | 1 << 30).collect();
            let sd = match sv {
                View::Transposed => [3, 7, 5],
                View::Broadcast => [1, 5, 7],
                _ => dims,
            };
            let n: usize = sd.iter().product();
            let base = ints(b, dt, &sd, &bits[..n]);
            let x = super::inputs::apply(&base, &dims, sv);
            let want: Vec<u32> = x.layout().indices().map(|i| bits[i]).collect();
            let out = b.zeros(dt, &dims).unwrap();
            b.copy(&x, &out).unwrap();
            assert_eq!(b.download(&out).unwrap().to_u32().unwrap(), want, "copy {dt} {sv:?}");
        }
    }
    let f = b.zeros(DType::F32, &[3, 5]).unwrap();
    expect_err!("copy shape", b.copy(&f, &b.zeros(DType::F32, &[5, 3]).unwrap()), Error::ShapeMismatch { .. });
    expect_err!("copy int->float", b.copy(&b.zeros(DType::U32, &[3, 5]).unwrap(), &f), Error::DTypeMismatch { .. });
    expect_err!("copy float->int", b.copy(&f, &b.zeros(DType::I32, &[3, 5]).unwrap()), Error::DTypeMismatch { .. });
    let big = b.zeros(DType::F32, &RANK_9).unwrap();
    expect_err!("copy rank 9", b.copy(&rank_9(b, DType::F32), &big), Error::RankTooLarge { rank: 9, .. });
}

pub fn unary_cases<B: Backend>(b: &B) {
    let mut rng = Rng::fresh("unary");
    let dims = [4, 6, 5];
    for dt in DType::FLOATS {
        for op in UnaryOp::ALL {
            let range = if matches!(op, UnaryOp::Sqrt | UnaryOp::Recip) { (0.1, 3.0) } else { (-3.0, 3.0) };
            for sv in [View::Contiguous, View::Transposed, View::Narrowed, View::Broadcast] {
                for dv in [View::Contiguous, View::Narrowed] {
                    let what = format!("unary {op:?} {sv:?}->{dv:?}");
                    let x = input(b, &mut rng, dt, &dims, sv, range);
                    let out = output(b, &mut rng, dt, &dims, dv);
                    b.unary(op, &x.t, &out.t).unwrap();
                    let want: Vec<f64> = x.values.iter().map(|&v| op.eval(v as f64)).collect();
                    assert_close(&what, dt, &download(b, &out.t), &want);
                    out.check_untouched(b, &what);
                }
            }
        }
    }
    let f = b.zeros(DType::F32, &[4, 6]).unwrap();
    let u = b.zeros(DType::U32, &[4, 6]).unwrap();
    expect_err!("unary u32", b.unary(UnaryOp::Exp, &u, &u), Error::UnsupportedDType { .. });
    let h = b.zeros(DType::BF16, &[4, 6]).unwrap();
    expect_err!("unary dtype", b.unary(UnaryOp::Exp, &f, &h), Error::DTypeMismatch { .. });
    let g = b.zeros(DType::F32, &[6, 4]).unwrap();
    expect_err!("unary shape", b.unary(UnaryOp::Exp, &f, &g), Error::ShapeMismatch { .. });
    let big = b.zeros(DType::F32, &RANK_9).unwrap();
    expect_err!(
        "unary rank 9",
        b.unary(UnaryOp::Neg, &rank_9(b, DType::F32), &big),
        Error::RankTooLarge { rank: 9, .. }
    );
}

pub fn binary_cases<B: Backend>(b: &B) {
    let mut rng = Rng::fresh("binary");
    let dims = [3, 4, 6];
    // (lhs dims, lhs view, rhs dims, rhs view), all broadcast to `dims`
    let cases: [(&[usize], View, &[usize], View); 8] = [
        (&dims, View::Contiguous, &dims, View::Contiguous),
        (&dims, View::Transposed, &dims, View::Narrowed),
        (&dims, View::Narrowed, &dims, View::Broadcast),
        (&dims, View::SwapLeading, &dims, View::Transposed),
        (&dims, View::Contiguous, &[6], View::Contiguous),
        (&dims, View::Transposed, &[4, 1], View::Contiguous),
        (&dims, View::Contiguous, &[1], View::Contiguous),
        (&[4, 6], View::Narrowed, &[3, 1, 6], View::Contiguous),
    ];
    for dt in DType::FLOATS {
        for op in BinaryOp::ALL {
            for (ld, lv, rd, rv) in cases {
                for dv in [View::Contiguous, View::Transposed] {
                    let what = format!("binary {op:?} {ld:?} {lv:?} with {rd:?} {rv:?} -> {dv:?}");
                    let x = input(b, &mut rng, dt, ld, lv, (-3.0, 3.0));
                    let y = input(b, &mut rng, dt, rd, rv, (0.5, 2.0));
                    let out = output(b, &mut rng, dt, &dims, dv);
                    b.binary(op, &x.t, &y.t, &out.t).unwrap();
                    let (xs, ys) = (broadcast(&x.values, ld, &dims), broadcast(&y.values, rd, &dims));
                    let want: Vec<f64> = xs.iter().zip(&ys).map(|(&a, &c)| op.eval(a as f64, c as f64)).collect();
                    assert_close(&what, dt, &download(b, &out.t), &want);
                    out.check_untouched(b, &what);
                }
            }
        }
        // in place: dst is exactly lhs (the residual add), exactly rhs, or both inputs are one tensor
        for view in [View::Contiguous, View::Narrowed] {
            let x = input(b, &mut rng, dt, &dims, view, (-3.0, 3.0));
            let y = input(b, &mut rng, dt, &dims, View::Contiguous, (0.5, 2.0));
            b.binary(BinaryOp::Add, &x.t, &y.t, &x.t).unwrap();
            let want: Vec<f64> = x.values.iter().zip(&y.values).map(|(&a, &c)| a as f64 + c as f64).collect();
            assert_close(&format!("binary in place on lhs {view:?}"), dt, &download(b, &x.t), &want);
            let x = input(b, &mut rng, dt, &dims, View::Contiguous, (-3.0, 3.0));
            b.binary(BinaryOp::Sub, &x.t, &y.t, &y.t).unwrap();
            let want: Vec<f64> = x.values.iter().zip(&y.values).map(|(&a, &c)| a as f64 - c as f64).collect();
            assert_close("binary in place on rhs", dt, &download(b, &y.t), &want);
            b.binary(BinaryOp::Mul, &x.t, &x.t, &x.t).unwrap();
            let want: Vec<f64> = x.values.iter().map(|&a| a as f64 * a as f64).collect();
            assert_close("binary x*x in place", dt, &download(b, &x.t), &want);
        }
    }
    let f = b.zeros(DType::F32, &dims).unwrap();
    let h = b.zeros(DType::BF16, &dims).unwrap();
    expect_err!("binary dtype", b.binary(BinaryOp::Add, &f, &h, &f), Error::DTypeMismatch { .. });
    expect_err!("binary dst dtype", b.binary(BinaryOp::Add, &f, &f, &h), Error::DTypeMismatch { .. });
    let odd = b.zeros(DType::F32, &[5]).unwrap();
    expect_err!("binary shape", b.binary(BinaryOp::Add, &f, &odd, &f), Error::BroadcastMismatch { .. });
    let u = b.zeros(DType::I32, &dims).unwrap();
    expect_err!("binary i32", b.binary(BinaryOp::Add, &u, &u, &u), Error::UnsupportedDType { .. });
    let (big, strided) = (b.zeros(DType::F32, &RANK_9).unwrap(), rank_9(b, DType::F32));
    expect_err!("binary rank 9", b.binary(BinaryOp::Add, &big, &strided, &big), Error::RankTooLarge { rank: 9, .. });
}

pub fn silu_mul_cases<B: Backend>(b: &B) {
    gated_cases(b, "silu_mul", UnaryOp::Silu, |b, g, u, d| b.silu_mul(g, u, d));
}

/// GeGLU, Gemma's MLP: the same cases as `silu_mul`, with the tanh GELU.
pub fn gelu_mul_cases<B: Backend>(b: &B) {
    gated_cases(b, "gelu_mul", UnaryOp::Gelu, |b, g, u, d| b.gelu_mul(g, u, d));
}

type GatedOp<B> = fn(&B, &Tensor<B>, &Tensor<B>, &Tensor<B>) -> encore_tensor::Result<()>;

/// `dst = act(gate) * up` against `act`'s f64 definition, in every float dtype and layout.
fn gated_cases<B: Backend>(b: &B, name: &str, act: UnaryOp, op: GatedOp<B>) {
    let mut rng = Rng::fresh(name);
    for dt in DType::FLOATS {
        for dims in [&[5usize, 12][..], &[2, 3, 8]] {
            for (gv, uv) in [
                (View::Contiguous, View::Contiguous),
                (View::Transposed, View::Narrowed),
                (View::Narrowed, View::Broadcast),
                (View::SwapLeading, View::Transposed),
            ] {
                for dv in [View::Contiguous, View::Narrowed] {
                    let what = format!("{name} {dims:?} {gv:?} {uv:?} -> {dv:?}");
                    let g = input(b, &mut rng, dt, dims, gv, (-6.0, 6.0));
                    let u = input(b, &mut rng, dt, dims, uv, (-3.0, 3.0));
                    let out = output(b, &mut rng, dt, dims, dv);
                    op(b, &g.t, &u.t, &out.t).unwrap();
                    let want: Vec<f64> =
                        g.values.iter().zip(&u.values).map(|(&g, &u)| act.eval(g as f64) * u as f64).collect();
                    assert_close(&what, dt, &download(b, &out.t), &want);
                    out.check_untouched(b, &what);
                }
            }
        }
    }
    let f = b.zeros(DType::F32, &[4, 6]).unwrap();
    expect_err!(
        &format!("{name} shape"),
        op(b, &f, &b.zeros(DType::F32, &[4, 5]).unwrap(), &f),
        Error::ShapeMismatch { .. }
    );
    let h = b.zeros(DType::F16, &[4, 6]).unwrap();
    expect_err!(&format!("{name} dtype"), op(b, &f, &h, &f), Error::DTypeMismatch { .. });
    let (big, strided) = (b.zeros(DType::BF16, &RANK_9).unwrap(), rank_9(b, DType::BF16));
    expect_err!(&format!("{name} rank 9"), op(b, &strided, &big, &big), Error::RankTooLarge { rank: 9, .. });
}
