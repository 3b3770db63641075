//! Parity of RoPE (rotate-half convention) with plain and Llama-3.1-scaled tables, over
//! contiguous and strided `x: [T, H, D]` (a head slice of a fused QKV buffer, a
//! `[H, T, D]` buffer seen as `[T, H, D]`), strided destinations and a padded row.

use super::inputs::{download, expect_err, i32s, input, output, View};
use encore_tensor::rope::{tables, RopeScaling};
use encore_tensor::testing::{assert_close, Rng};
use encore_tensor::{Backend, DType, Error, HostTensor, Tensor};

pub fn rope_cases<B: Backend>(b: &B) {
    let mut rng = Rng::fresh("rope");
    let (t, h, max_pos) = (5, 3, 40);
    let llama3 = RopeScaling::Llama3 {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 64,
    };
    for dt in DType::FLOATS {
        for d in [8, 64] {
            for (theta, scaling) in [(10000.0, RopeScaling::None), (500000.0, llama3.clone())] {
                let (cos, sin) = tables(d, max_pos, theta, &scaling);
                let cos_t = b.tensor(&HostTensor::from_f32(&[max_pos, d / 2], &cos)).unwrap();
                let sin_t = b.tensor(&HostTensor::from_f32(&[max_pos, d / 2], &sin)).unwrap();
                let mut pos: Vec<i32> = (0..t).map(|_| rng.below(max_pos) as i32).collect();
                pos[2] = -1; // a padded row is copied unchanged
                let pos_t = i32s(b, &pos);
                for xv in [View::Contiguous, View::Offset, View::Narrowed, View::SwapLeading, View::Transposed] {
                    for dv in [View::Contiguous, View::Narrowed] {
                        let what = format!("rope D={d} {scaling:?} x {xv:?} dst {dv:?}");
                        let x = input(b, &mut rng, dt, &[t, h, d], xv, (-2.0, 2.0));
                        let out = output(b, &mut rng, dt, &[t, h, d], dv);
                        b.rope(&x.t, &cos_t, &sin_t, &pos_t, &out.t).unwrap();
                        let want = reference(&x.values, &cos, &sin, &pos, h, d);
                        assert_close(&what, dt, &download(b, &out.t), &want);
                        out.check_untouched(b, &what);
                    }
                }
            }
        }
    }
    let f = |dims: &[usize]| b.zeros(DType::F32, dims).unwrap();
    let (x, table, pos) = (f(&[2, 3, 8]), f(&[16, 4]), i32s::<B>(b, &[0, 1]));
    expect_err!(
        "rope odd D",
        b.rope(&f(&[2, 3, 7]), &f(&[16, 3]), &f(&[16, 3]), &pos, &f(&[2, 3, 7])),
        Error::InvalidArgument { .. }
    );
    expect_err!("rope rank", b.rope(&f(&[2, 8]), &table, &table, &pos, &f(&[2, 8])), Error::InvalidArgument { .. });
    expect_err!("rope table", b.rope(&x, &f(&[16, 3]), &f(&[16, 3]), &pos, &x), Error::ShapeMismatch { .. });
    let bf_table = b.zeros(DType::BF16, &[16, 4]).unwrap();
    expect_err!("rope table dtype", b.rope(&x, &bf_table, &bf_table, &pos, &x), Error::DTypeMismatch { .. });
    let upos: Tensor<B> = b.tensor(&HostTensor::from_u32(&[2], &[0, 1])).unwrap();
    expect_err!("rope positions dtype", b.rope(&x, &table, &table, &upos, &x), Error::DTypeMismatch { .. });
    expect_err!(
        "rope positions len",
        b.rope(&x, &table, &table, &i32s(b, &[0, 1, 2]), &x),
        Error::ShapeMismatch { .. }
    );
    let h = b.zeros(DType::F16, &[2, 3, 8]).unwrap();
    expect_err!("rope dst dtype", b.rope(&x, &table, &table, &pos, &h), Error::DTypeMismatch { .. });
    let table_t = f(&[4, 16]).transpose(0, 1).unwrap();
    expect_err!("rope table layout", b.rope(&x, &table_t, &table_t, &pos, &x), Error::LayoutRequired { .. });
}

/// Rotate-half on row-major `[T, H, D]` values, angles from the tables.
fn reference(x: &[f32], cos: &[f32], sin: &[f32], pos: &[i32], h: usize, d: usize) -> Vec<f64> {
    let half = d / 2;
    let mut out: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    for (t, &p) in pos.iter().enumerate() {
        if p < 0 {
            continue;
        }
        for head in 0..h {
            let row = (t * h + head) * d;
            for i in 0..half {
                let (c, s) = (cos[p as usize * half + i] as f64, sin[p as usize * half + i] as f64);
                let (x0, x1) = (x[row + i] as f64, x[row + half + i] as f64);
                out[row + i] = x0 * c - x1 * s;
                out[row + half + i] = x1 * c + x0 * s;
            }
        }
    }
    out
}
