//! Test support shared by the backends' test suites: the per-dtype tolerance table, a
//! fresh-seeded random source (never zeros), and the comparison that reports the worst
//! element. Not used outside tests.

use crate::DType;

/// `(absolute, relative)` tolerance per dtype, for ops whose reference is computed in f64
/// from the same (rounded) inputs. One table for every backend and op.
pub fn tolerance(dtype: DType) -> (f64, f64) {
    match dtype {
        DType::F32 => (1e-5, 1e-4),
        DType::F16 => (2e-3, 2e-3),
        DType::BF16 => (1.6e-2, 1.6e-2),
        DType::U32 | DType::I32 => (0.0, 0.0),
    }
}

/// A small splitmix64 generator: tests seed it from the clock (fresh data every run) and
/// print the seed so a failure can be replayed with `ENCORE_TEST_SEED`.
pub struct Rng(u64);

impl Rng {
    pub fn fresh(test: &str) -> Self {
        let seed = std::env::var("ENCORE_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
        });
        eprintln!("{test}: ENCORE_TEST_SEED={seed}");
        Rng(seed)
    }

    pub fn seeded(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `n` values uniform in `[lo, hi)`, none exactly zero.
    pub fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let v = lo + (hi - lo) * self.uniform() as f32;
                if v == 0.0 {
                    hi * 0.5
                } else {
                    v
                }
            })
            .collect()
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Compare against a reference; on failure name the worst element.
pub fn assert_close(what: &str, dtype: DType, got: &[f32], want: &[f64]) {
    let (atol, rtol) = tolerance(dtype);
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst: Option<(usize, f64)> = None;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        let allowed = atol + rtol * w.abs();
        let bad = err.is_nan() || err > allowed; // NaN never passes
        if bad && worst.is_none_or(|(_, e)| err > e) {
            worst = Some((i, err));
        }
    }
    if let Some((i, err)) = worst {
        panic!("{what} ({dtype}): element {i} is {} but the reference is {} (|err| {err:.3e}, atol {atol:e}, rtol {rtol:e})", got[i], want[i]);
    }
}

/// Round f32 values through `dtype` (what a backend sees after storing them as `dtype`).
pub fn round_to(dtype: DType, v: &[f32]) -> Vec<f32> {
    crate::HostTensor::from_f32_as(&[v.len()], v, dtype).to_f32()
}
