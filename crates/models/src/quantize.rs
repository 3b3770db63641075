//! In-situ quantization (`--quantize q8_0|q4_k`): float weights (bf16 / f16 / f32
//! safetensors) quantized on the host at load, into the same ggml blocks a GGUF file holds.
//! Each quantizer follows llama.cpp's reference (`quantize_row_*_ref` in ggml-quants.c), so
//! the result matches what `llama-quantize` would write up to float rounding order.
//! What it is not: an importance-matrix quantizer, or the mixed-type recipes (Q4_K_M).

use crate::error::{ModelError, Result};
use encore_tensor::quant::{HostQTensor, QuantType, QK_K};
use half::f16;

/// The block types `--quantize` offers.
pub const QUANTIZE_TYPES: [QuantType; 2] = [QuantType::Q8_0, QuantType::Q4_K];

/// The type a `[rows, cols]` weight is quantized to when `want` was asked for: `want` when
/// `cols` is a whole number of its blocks, else Q8_0 (blocks of 32) if that fits, else
/// `None` (the weight stays in float). llama.cpp falls back the same way for rows that are
/// not a multiple of 256.
pub fn type_for(want: QuantType, cols: usize) -> Option<QuantType> {
    [want, QuantType::Q8_0].into_iter().find(|t| cols % t.block_len() == 0 && cols > 0)
}

/// `values: [rows, cols]` row-major into blocks of `qtype` (a [`QUANTIZE_TYPES`] type;
/// `cols` a multiple of its block). `name` goes into errors.
pub fn quantize(name: &str, qtype: QuantType, values: &[f32], rows: usize, cols: usize) -> Result<HostQTensor> {
    let unsupported = || ModelError::UnsupportedTensorType {
        name: name.to_string(),
        dtype: format!("{qtype} (in-situ quantization offers {QUANTIZE_TYPES:?})"),
    };
    if values.len() != rows * cols || cols % qtype.block_len() != 0 {
        return Err(ModelError::TensorShape {
            name: name.to_string(),
            expected: vec![rows, cols.next_multiple_of(qtype.block_len())],
            found: vec![values.len() / cols.max(1), cols],
        });
    }
    let block: fn(&[f32], &mut Vec<u8>) = match qtype {
        QuantType::Q8_0 => q8_0,
        QuantType::Q4_K => q4_k,
        _ => return Err(unsupported()),
    };
    // rows split over the host's threads (a 1B model's Q4_K search is minutes on one)
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(rows.max(1));
    let rows_per = rows.div_ceil(threads.max(1)).max(1);
    let parts: Vec<Vec<u8>> = std::thread::scope(|s| {
        let handles: Vec<_> = values
            .chunks(rows_per * cols.max(1))
            .map(|chunk| {
                s.spawn(move || {
                    let mut out = Vec::with_capacity(chunk.len() / qtype.block_len() * qtype.block_bytes());
                    chunk.chunks_exact(qtype.block_len()).for_each(|x| block(x, &mut out));
                    out
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("a quantizer thread panicked")).collect()
    });
    Ok(HostQTensor::new(name, qtype, rows, cols, parts.concat())?)
}

fn nearest_int(v: f32) -> i32 {
    v.round() as i32
}

/// `{ f16 d; i8 qs[32] }` with `d = max|x| / 127`.
fn q8_0(x: &[f32], out: &mut Vec<u8>) {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
    out.extend(f16::from_f32(d).to_le_bytes());
    out.extend(x.iter().map(|&v| nearest_int(v * id) as i8 as u8));
}

/// llama.cpp's `make_qkx2_quants`: the scale and (non-positive) min of `x` on `0..=nmax`
/// levels minimising the weighted squared error, searched over `nstep` trial scales;
/// writes the levels into `l` and returns `(scale, -min)`.
fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> (f32, f32) {
    let n = x.len();
    let mut min = x.iter().copied().fold(f32::INFINITY, f32::min);
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum_w: f32 = weights.iter().sum();
    let sum_x: f32 = weights.iter().zip(x).map(|(w, x)| w * x).sum();
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l.fill(0);
        return (0.0, -min);
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l[i] = q as u8;
        let diff = scale * q as f32 + min - x[i];
        best_error += weights[i] * diff * diff;
    }
    let mut aux = vec![0u8; n];
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            aux[i] = q as u8;
            let (w, q) = (weights[i], q as f32);
            sum_l += w * q;
            sum_l2 += w * q * q;
            sum_xl += w * q * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let cur_error: f32 = (0..n)
                .map(|i| {
                    let diff = this_scale * aux[i] as f32 + this_min - x[i];
                    weights[i] * diff * diff
                })
                .sum();
            if cur_error < best_error {
                l.copy_from_slice(&aux);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// `{ f16 d; f16 dmin; u8 scales[12]; u8 qs[128] }`: 8 sub-blocks of 32, each with its own
/// 6-bit scale and min (relative to `d`, `dmin`), values on 0..=15.
fn q4_k(x: &[f32], out: &mut Vec<u8>) {
    let mut levels = [0u8; QK_K];
    let (mut scales, mut mins) = ([0.0f32; 8], [0.0f32; 8]);
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let av_x = (xs.iter().map(|v| v * v).sum::<f32>() / 32.0).sqrt();
        let weights: Vec<f32> = xs.iter().map(|v| av_x + v.abs()).collect();
        (scales[j], mins[j]) = make_qkx2_quants(15, xs, &weights, &mut levels[32 * j..32 * j + 32], -1.0, 0.1, 20);
    }
    let max_scale = scales.iter().copied().fold(0.0f32, f32::max);
    let max_min = mins.iter().copied().fold(0.0f32, f32::max);
    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut packed = [0u8; 12];
    for j in 0..8 {
        let ls = nearest_int(inv_scale * scales[j]).min(63) as u8;
        let lm = nearest_int(inv_min * mins[j]).min(63) as u8;
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    let d = f16::from_f32(max_scale / 63.0);
    let dmin = f16::from_f32(max_min / 63.0);
    for j in 0..8 {
        let (sc, m) = encore_tensor::quant::scale_min_k4(j, &packed);
        let dj = d.to_f32() * sc as f32;
        if dj == 0.0 {
            continue;
        }
        let dm = dmin.to_f32() * m as f32;
        for i in 0..32 {
            levels[32 * j + i] = nearest_int((x[32 * j + i] + dm) / dj).clamp(0, 15) as u8;
        }
    }
    out.extend(d.to_le_bytes());
    out.extend(dmin.to_le_bytes());
    out.extend(packed);
    for chunk in levels.chunks_exact(64) {
        out.extend((0..32).map(|l| chunk[l] | (chunk[l + 32] << 4)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use encore_tensor::testing::Rng;

    /// Round trip: Q8_0 stays within half its step (max|x| / 127, and the f16 scale) of the
    /// input; Q4_K's least-squares fit (which may clip a sub-block's ends) keeps a small rms
    /// error, and every value is the level of its sub-block's grid nearest to the input.
    #[test]
    fn quantized_rows_dequantize_close_to_the_input() {
        let mut rng = Rng::fresh("quantized_rows_dequantize_close_to_the_input");
        let (rows, cols) = (3, 512);
        let x = rng.vec(rows * cols, -1.0, 1.0);
        for (qt, rms_err) in [(QuantType::Q8_0, 3e-3), (QuantType::Q4_K, 0.04)] {
            let q = quantize("w", qt, &x, rows, cols).unwrap();
            assert_eq!(q.data.len(), rows * qt.row_bytes(cols));
            let y = q.dequantize();
            let rms = (x.iter().zip(&y).map(|(a, b)| (a - b) * (a - b)).sum::<f32>() / x.len() as f32).sqrt();
            assert!(rms <= rms_err, "{qt}: rms error {rms}");
            if qt == QuantType::Q8_0 {
                let worst = x.iter().zip(&y).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
                assert!(worst <= 1.0 / 254.0 + 1e-3, "{qt}: max |err| {worst}");
                continue;
            }
            // Q4_K blocks: { f16 d; f16 dmin; u8 scales[12]; u8 qs[128] } for 256 values
            for (b, block) in q.data.chunks_exact(144).enumerate() {
                let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
                let dmin = f16::from_le_bytes([block[2], block[3]]).to_f32();
                for j in 0..8 {
                    let (sc, m) = encore_tensor::quant::scale_min_k4(j, &block[4..16]);
                    let grid: Vec<f32> = (0..16).map(|l| d * sc as f32 * l as f32 - dmin * m as f32).collect();
                    for i in 0..32 {
                        let at = b * 256 + 32 * j + i;
                        let best = grid.iter().map(|g| (g - x[at]).abs()).fold(f32::INFINITY, f32::min);
                        let err = (y[at] - x[at]).abs();
                        assert!(err <= best + 1e-5, "{qt} value {at}: error {err}, nearest level {best}");
                    }
                }
            }
        }
    }

    #[test]
    fn rows_that_are_not_whole_blocks_fall_back() {
        assert_eq!(type_for(QuantType::Q4_K, 576), Some(QuantType::Q8_0));
        assert_eq!(type_for(QuantType::Q4_K, 512), Some(QuantType::Q4_K));
        assert_eq!(type_for(QuantType::Q8_0, 40), None);
        let err = quantize("model.x.weight", QuantType::Q4_K, &[0.0; 576], 1, 576).unwrap_err();
        assert!(err.to_string().contains("model.x.weight"), "{err}");
    }
}
