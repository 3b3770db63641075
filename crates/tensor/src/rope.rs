//! Rotary-embedding frequency tables, computed once on the host (so the kernels stay the
//! same for plain and scaled RoPE). Llama-3.1 scaling follows `transformers`'
//! `_compute_llama3_parameters`.

/// How `inv_freq` is adjusted for long contexts.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor`.
    Linear {
        factor: f32,
    },
    /// Llama-3.1: low frequencies divided by `factor`, high kept, smooth in between.
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_position_embeddings: usize,
    },
    /// `inv_freq[i]` divided by `divisors[i]` (`D/2` of them): GGUF's `rope_freqs.weight`, the
    /// per-frequency factors llama.cpp's converter bakes out of Llama-3 scaling.
    Factors {
        divisors: Vec<f32>,
    },
}

/// `inv_freq[i] = theta^(-2i/D)` for `i < D/2`, after scaling ([`try_tables`] checks that
/// `Factors` has `D/2` divisors).
pub fn inv_freq(head_dim: usize, theta: f32, scaling: &RopeScaling) -> Vec<f64> {
    let half = head_dim / 2;
    let base: Vec<f64> = (0..half).map(|i| 1.0 / (theta as f64).powf(2.0 * i as f64 / head_dim as f64)).collect();
    match *scaling {
        RopeScaling::None => base,
        RopeScaling::Factors { ref divisors } => base.iter().zip(divisors).map(|(f, &d)| f / d as f64).collect(),
        RopeScaling::Linear { factor } => base.iter().map(|f| f / factor as f64).collect(),
        RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
            let (factor, lo, hi) = (factor as f64, low_freq_factor as f64, high_freq_factor as f64);
            let old = original_max_position_embeddings as f64;
            let low_wavelen = old / lo;
            let high_wavelen = old / hi;
            base.iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    if wavelen < high_wavelen {
                        f
                    } else if wavelen > low_wavelen {
                        f / factor
                    } else {
                        let smooth = (old / wavelen - lo) / (hi - lo);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
    }
}

/// `(cos, sin)`, each `[max_pos, D/2]` row-major f32.
pub fn tables(head_dim: usize, max_pos: usize, theta: f32, scaling: &RopeScaling) -> (Vec<f32>, Vec<f32>) {
    let inv = inv_freq(head_dim, theta, scaling);
    let mut cos = Vec::with_capacity(max_pos * inv.len());
    let mut sin = Vec::with_capacity(max_pos * inv.len());
    for p in 0..max_pos {
        for &f in &inv {
            // transformers computes the angle in f32: (inv_freq.float() @ position.float())
            let angle = (f as f32) * (p as f32);
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    (cos, sin)
}

/// The most entries (`max_pos * D/2`) one table built by [`try_tables`] may have: 1 GiB of f32.
pub const MAX_TABLE_ENTRIES: usize = 1 << 28;

/// [`tables`] for a `max_pos` that comes from a flag or a file: `max_pos * D/2` must not
/// overflow nor pass [`MAX_TABLE_ENTRIES`], the tables are allocated fallibly, and scaling
/// that makes a frequency NaN, infinite or zero is refused (it would give NaN logits).
pub fn try_tables(
    head_dim: usize,
    max_pos: usize,
    theta: f32,
    scaling: &RopeScaling,
) -> crate::Result<(Vec<f32>, Vec<f32>)> {
    let op = "rope tables";
    let half = head_dim / 2;
    let entries = max_pos.checked_mul(half).filter(|&n| n <= MAX_TABLE_ENTRIES).ok_or_else(|| {
        crate::Error::InvalidArgument {
            op,
            msg: format!(
                "{max_pos} positions x {half} frequencies is over the limit of {MAX_TABLE_ENTRIES} entries (lower --max-ctx)"
            ),
        }
    })?;
    if let RopeScaling::Factors { divisors } = scaling {
        if divisors.len() != half {
            return Err(crate::Error::InvalidArgument {
                op,
                msg: format!("{} rope frequency factors for head dim {head_dim} (needs {half})", divisors.len()),
            });
        }
    }
    let inv = inv_freq(head_dim, theta, scaling);
    if let Some(bad) = inv.iter().find(|f| !(f.is_finite() && **f > 0.0)) {
        return Err(crate::Error::InvalidArgument {
            op,
            msg: format!("theta {theta} with {scaling:?} gives the frequency {bad} (not a positive number)"),
        });
    }
    let alloc = || -> crate::Result<Vec<f32>> {
        let mut v = Vec::new();
        v.try_reserve_exact(entries)
            .map_err(|_| crate::Error::InvalidArgument { op, msg: format!("cannot allocate {entries} f32 entries") })?;
        Ok(v)
    };
    let (mut cos, mut sin) = (alloc()?, alloc()?);
    for p in 0..max_pos {
        for &f in &inv {
            let angle = (f as f32) * (p as f32);
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    Ok((cos, sin))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_table_capacity_overflow_at_huge_max_ctx_is_an_error() {
        let e = try_tables(128, usize::MAX / 2, 10000.0, &RopeScaling::None).unwrap_err().to_string();
        assert!(e.contains("rope tables") && e.contains("--max-ctx"), "{e}");
        let e = try_tables(128, MAX_TABLE_ENTRIES / 64 + 1, 10000.0, &RopeScaling::None).unwrap_err();
        assert!(e.to_string().contains("over the limit"), "{e}");
        let (cos, sin) = try_tables(16, 5, 10000.0, &RopeScaling::None).unwrap();
        assert_eq!((cos.clone(), sin.clone()), tables(16, 5, 10000.0, &RopeScaling::None));
    }

    #[test]
    fn rope_scaling_factor_of_zero_is_refused_not_nan() {
        for factor in [0.0, -2.0, f32::NAN] {
            let e = try_tables(16, 4, 10000.0, &RopeScaling::Linear { factor }).unwrap_err().to_string();
            assert!(e.contains("not a positive number"), "{factor}: {e}");
        }
    }

    #[test]
    fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
        let s = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        };
        let plain = inv_freq(128, 500000.0, &RopeScaling::None);
        let scaled = inv_freq(128, 500000.0, &s);
        assert_eq!(scaled[0], plain[0]);
        assert!((scaled[63] - plain[63] / 8.0).abs() < 1e-15);
        assert!(scaled.iter().zip(&plain).all(|(s, p)| s <= p));
    }

    /// What llama.cpp's converter writes as `rope_freqs.weight` for Llama-3 scaling
    /// (`LlamaModel.generate_extra_tensors`): the divisor of each base frequency.
    pub(crate) fn llama3_divisors(head_dim: usize, theta: f32, s: &RopeScaling) -> Vec<f32> {
        let RopeScaling::Llama3 { factor, low_freq_factor: lo, high_freq_factor: hi, original_max_position_embeddings } =
            *s
        else {
            panic!("llama3 scaling expected")
        };
        let old = original_max_position_embeddings as f64;
        let (low_wavelen, high_wavelen) = (old / lo as f64, old / hi as f64);
        inv_freq(head_dim, theta, &RopeScaling::None)
            .iter()
            .map(|&f| {
                let wavelen = 2.0 * std::f64::consts::PI / f;
                if wavelen < high_wavelen {
                    1.0
                } else if wavelen > low_wavelen {
                    factor
                } else {
                    let smooth = (old / wavelen - lo as f64) / (hi as f64 - lo as f64);
                    (1.0 / ((1.0 - smooth) / factor as f64 + smooth)) as f32
                }
            })
            .collect()
    }

    #[test]
    fn gguf_rope_freqs_factors_give_the_hf_llama3_tables() {
        for (d, theta, factor) in [(128, 500000.0, 8.0), (64, 500000.0, 32.0)] {
            let s = RopeScaling::Llama3 {
                factor,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192,
            };
            let f = RopeScaling::Factors { divisors: llama3_divisors(d, theta, &s) };
            let (hf_cos, hf_sin) = try_tables(d, 4096, theta, &s).unwrap();
            let (cos, sin) = try_tables(d, 4096, theta, &f).unwrap();
            let plain = try_tables(d, 4096, theta, &RopeScaling::None).unwrap();
            let diff = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
            // the divisors are f32: angles agree to f32 rounding of `pos * inv_freq`
            assert!(diff(&cos, &hf_cos) < 2e-3 && diff(&sin, &hf_sin) < 2e-3, "{d}");
            assert!(diff(&cos, &plain.0) > 0.5, "the factors must change the table");
        }
        let e = try_tables(16, 4, 10000.0, &RopeScaling::Factors { divisors: vec![1.0; 7] }).unwrap_err();
        assert!(e.to_string().contains("7 rope frequency factors for head dim 16 (needs 8)"), "{e}");
        let bad = RopeScaling::Factors { divisors: vec![0.0; 8] };
        assert!(try_tables(16, 4, 10000.0, &bad).unwrap_err().to_string().contains("not a positive number"));
    }
}
