//! Parity of the row reductions over the last dim: RMSNorm, softmax, argmax. Rows may sit
//! at an offset or have gaps (a view narrowed out of a wider buffer); a last dim that is
//! not unit-stride is refused with `LayoutRequired`.

use super::inputs::{download, expect_err, input, input_from, output, View};
use encore_tensor::testing::{assert_close, round_to, Rng};
use encore_tensor::{Backend, DType, Error, HostTensor};

const ROW_VIEWS: [View; 3] = [View::Contiguous, View::Offset, View::Narrowed];

pub fn rms_norm_cases<B: Backend>(b: &B) {
    let mut rng = Rng::fresh("rms_norm");
    for dt in DType::FLOATS {
        for dims in [&[5usize, 48][..], &[2, 3, 40], &[1, 576]] {
            let c = dims[dims.len() - 1];
            for xv in ROW_VIEWS {
                for dv in [View::Contiguous, View::Narrowed] {
                    for (wv, eps) in [(View::Contiguous, 1e-5f32), (View::Offset, 1e-6)] {
                        let what = format!("rms_norm {dims:?} x {xv:?} dst {dv:?} w {wv:?}");
                        let x = input(b, &mut rng, dt, dims, xv, (-2.0, 2.0));
                        let w = input(b, &mut rng, dt, &[c], wv, (0.5, 1.5));
                        let out = output(b, &mut rng, dt, dims, dv);
                        b.rms_norm(&x.t, &w.t, eps, &out.t).unwrap();
                        let mut want = Vec::with_capacity(x.values.len());
                        for row in x.values.chunks(c) {
                            let ms = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / c as f64;
                            let inv = 1.0 / (ms + eps as f64).sqrt();
                            want.extend(row.iter().zip(&w.values).map(|(&v, &w)| v as f64 * inv * w as f64));
                        }
                        assert_close(&what, dt, &download(b, &out.t), &want);
                        out.check_untouched(b, &what);
                    }
                }
            }
        }
    }
    let f = |dims: &[usize]| b.zeros(DType::F32, dims).unwrap();
    let x = f(&[4, 8]);
    expect_err!("rms_norm weight", b.rms_norm(&x, &f(&[7]), 1e-5, &x), Error::ShapeMismatch { .. });
    expect_err!("rms_norm dst", b.rms_norm(&x, &f(&[8]), 1e-5, &f(&[8, 4])), Error::ShapeMismatch { .. });
    let wh = b.zeros(DType::BF16, &[8]).unwrap();
    expect_err!("rms_norm dtype", b.rms_norm(&x, &wh, 1e-5, &x), Error::DTypeMismatch { .. });
    let xt = f(&[8, 4]).transpose(0, 1).unwrap();
    expect_err!("rms_norm columns", b.rms_norm(&xt, &f(&[8]), 1e-5, &x), Error::LayoutRequired { .. });
    let wb = f(&[1]).broadcast_as(&[8]).unwrap();
    expect_err!("rms_norm weight layout", b.rms_norm(&x, &wb, 1e-5, &x), Error::LayoutRequired { .. });
}

pub fn softmax_cases<B: Backend>(b: &B) {
    let mut rng = Rng::fresh("softmax");
    for dt in DType::FLOATS {
        // the wide range needs the max subtracted: exp(100) overflows f16 and f32's
        // headroom is gone by exp(89)
        for (dims, range) in [(&[6usize, 33][..], (-4.0, 4.0)), (&[2, 3, 17], (-4.0, 4.0)), (&[3, 300], (-60.0, 100.0))]
        {
            for xv in ROW_VIEWS {
                for dv in [View::Contiguous, View::Narrowed] {
                    let what = format!("softmax {dims:?} {range:?} x {xv:?} dst {dv:?}");
                    let x = input(b, &mut rng, dt, dims, xv, range);
                    let out = output(b, &mut rng, dt, dims, dv);
                    b.softmax(&x.t, &out.t).unwrap();
                    let c = dims[dims.len() - 1];
                    let mut want = Vec::with_capacity(x.values.len());
                    for row in x.values.chunks(c) {
                        let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
                        let e: Vec<f64> = row.iter().map(|&v| (v as f64 - max).exp()).collect();
                        let sum: f64 = e.iter().sum();
                        want.extend(e.iter().map(|v| v / sum));
                    }
                    assert_close(&what, dt, &download(b, &out.t), &want);
                    out.check_untouched(b, &what);
                }
            }
        }
    }
    let x = b.zeros(DType::F32, &[4, 8]).unwrap();
    expect_err!("softmax dtype", b.softmax(&x, &b.zeros(DType::F16, &[4, 8]).unwrap()), Error::DTypeMismatch { .. });
    expect_err!("softmax shape", b.softmax(&x, &b.zeros(DType::F32, &[4, 7]).unwrap()), Error::ShapeMismatch { .. });
    let xt = x.transpose(0, 1).unwrap();
    expect_err!(
        "softmax columns",
        b.softmax(&xt, &b.zeros(DType::F32, &[8, 4]).unwrap()),
        Error::LayoutRequired { .. }
    );
}

pub fn argmax_cases<B: Backend>(b: &B) {
    let mut rng = Rng::fresh("argmax");
    for dt in DType::FLOATS {
        for dims in [&[5usize, 37][..], &[2, 3, 50], &[1, 4096]] {
            for xv in ROW_VIEWS {
                let what = format!("argmax {dt} {dims:?} {xv:?}");
                // a narrow range makes rounding ties common in bf16 / f16: first index wins
                let x = input(b, &mut rng, dt, dims, xv, (-1.0, 1.0));
                let rows = x.values.len() / dims[dims.len() - 1];
                let out = b.zeros(DType::U32, &dims[..dims.len() - 1]).unwrap();
                b.argmax(&x.t, &out).unwrap();
                assert_eq!(b.download(&out).unwrap().to_u32().unwrap(), first_max(&x.values, rows), "{what}");
            }
        }
        // planted ties, in storage order
        let v = round_to(dt, &[0.5, 2.0, -1.0, 2.0, 1.0, 3.0, 3.0, 3.0]);
        let x = input_from(b, dt, &[2, 4], &v, &[2, 4], View::Contiguous);
        let out = b.zeros(DType::U32, &[2]).unwrap();
        b.argmax(&x.t, &out).unwrap();
        assert_eq!(b.download(&out).unwrap().to_u32().unwrap(), vec![1, 1], "argmax ties {dt}");
    }
    let x = b.zeros(DType::F32, &[4, 8]).unwrap();
    expect_err!("argmax dst dtype", b.argmax(&x, &b.zeros(DType::I32, &[4]).unwrap()), Error::DTypeMismatch { .. });
    expect_err!("argmax dst size", b.argmax(&x, &b.zeros(DType::U32, &[3]).unwrap()), Error::ShapeMismatch { .. });
    let ids = b.tensor(&HostTensor::from_u32(&[4, 8], &[1; 32])).unwrap();
    expect_err!("argmax u32", b.argmax(&ids, &b.zeros(DType::U32, &[4]).unwrap()), Error::UnsupportedDType { .. });
}

fn first_max(values: &[f32], rows: usize) -> Vec<u32> {
    values
        .chunks(values.len() / rows)
        .map(|row| {
            let mut at = 0;
            for (i, &v) in row.iter().enumerate() {
                if v > row[at] {
                    at = i;
                }
            }
            at as u32
        })
        .collect()
}
