//! Size checks for allocations sized by numbers that come from a file or a flag (layer
//! counts, array lengths, `--max-ctx`): checked byte counts, fallible `Vec` allocation, and
//! [`check_fits`], the one-line "needs X; Y are available: <hint>" error, with the host's
//! available memory read from `/proc/meminfo`. Pure functions, so the engine can call them
//! with device memory too. What it is not: an allocator or a memory tracker.

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use encore_tensor::DType;

/// The most decoder layers a config may declare (published models have up to ~130); a
/// number above it is a corrupt file, not a model.
pub const MAX_LAYERS: usize = 4096;
/// The most elements of any one model dimension (hidden, intermediate, heads x head dim,
/// vocabulary, positions).
pub const MAX_DIM: usize = 1 << 26;
/// The most RoPE table entries (`max_ctx * D/2`) built on the host: 1 GiB of f32 per table.
pub const MAX_ROPE_ENTRIES: usize = 1 << 28;

/// `Ok` when `needed_bytes <= available_bytes`; else `DoesNotFit`, printed as
/// "{what} needs 93.8 GiB; 21.3 GiB are available: {hint}".
pub fn check_fits(what: &str, needed_bytes: u64, available_bytes: u64, hint: &str) -> Result<()> {
    if needed_bytes <= available_bytes {
        return Ok(());
    }
    Err(ModelError::DoesNotFit { what: what.to_string(), needed_bytes, available_bytes, hint: hint.to_string() })
}

/// [`check_fits`] against [`available_host_memory`]; `Ok` when that is unknown (not Linux).
pub fn check_host_fits(what: &str, needed_bytes: u64, hint: &str) -> Result<()> {
    match available_host_memory() {
        Some(avail) => check_fits(what, needed_bytes, avail, hint),
        None => Ok(()),
    }
}

/// `MemAvailable` of `/proc/meminfo`, in bytes (`None` where there is no such file).
pub fn available_host_memory() -> Option<u64> {
    parse_mem_available(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

/// The `MemAvailable:  123456 kB` line of a `/proc/meminfo` text, in bytes.
pub fn parse_mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let mut words = line["MemAvailable:".len()..].split_whitespace();
    let n: u64 = words.next()?.parse().ok()?;
    let unit = match words.next() {
        None => 1,
        Some("kB") => 1024,
        Some(_) => return None,
    };
    n.checked_mul(unit)
}

/// "512 bytes", "1.5 KiB", "93.8 GiB".
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} byte{}", if bytes == 1 { "" } else { "s" });
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// The KV cache of `cfg` for `num_seqs` sequences of `max_ctx` positions stored as `dtype`
/// fits in `available_bytes` (device memory, say): its byte count, or the one-line error
/// "the KV cache for 1000 sequences x 4096 positions needs 93.8 GiB; 21.3 GiB are
/// available: lower --max-ctx or the batch" (`TooLarge` when the count overflows).
pub fn check_kv_cache_fits(
    cfg: &ModelConfig,
    num_seqs: usize,
    max_ctx: usize,
    dtype: DType,
    available_bytes: u64,
) -> Result<u64> {
    let what = format!("the KV cache for {num_seqs} sequences x {max_ctx} positions");
    let needed = cfg.kv_cache_bytes(num_seqs, max_ctx, dtype).ok_or_else(|| ModelError::TooLarge {
        what: what.clone(),
        msg: "the byte count overflows 64 bits: lower --max-ctx or the batch".to_string(),
    })?;
    check_fits(&what, needed, available_bytes, "lower --max-ctx or the batch")?;
    Ok(needed)
}

/// The weights of `cfg` stored as `dtype` fit in `available_bytes`: their byte count, or
/// "storing the weights (N parameters as bf16) needs ...; ... available: <hint>".
pub fn check_weights_fit(cfg: &ModelConfig, dtype: DType, available_bytes: u64, hint: &str) -> Result<u64> {
    let params = cfg.param_count().unwrap_or(u64::MAX);
    let what = format!("storing the weights ({params} parameters as {dtype})");
    let needed = cfg.weight_bytes(dtype).ok_or_else(|| ModelError::TooLarge {
        what: what.clone(),
        msg: "the byte count overflows 64 bits".to_string(),
    })?;
    check_fits(&what, needed, available_bytes, hint)?;
    Ok(needed)
}

/// `dims.product() * elem_bytes` in u64, or `TooLarge` naming `what` when it overflows.
pub fn bytes_of(what: &str, dims: &[usize], elem_bytes: usize) -> Result<u64> {
    dims.iter().try_fold(elem_bytes as u64, |acc, &d| acc.checked_mul(d as u64)).ok_or_else(|| ModelError::TooLarge {
        what: what.to_string(),
        msg: format!("{dims:?} x {elem_bytes} bytes overflows 64 bits"),
    })
}

/// Sum of byte counts, or `TooLarge` when it overflows.
pub fn sum_bytes(what: &str, parts: impl IntoIterator<Item = u64>) -> Result<u64> {
    parts
        .into_iter()
        .try_fold(0u64, |acc, b| acc.checked_add(b))
        .ok_or_else(|| ModelError::TooLarge { what: what.to_string(), msg: "the total overflows 64 bits".into() })
}

/// An empty `Vec` with room for `n` items, allocated fallibly: a count read from a file
/// becomes an error naming `what` instead of an abort.
pub fn try_vec<T>(what: &str, n: usize) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| ModelError::TooLarge {
        what: what.to_string(),
        msg: format!("cannot allocate {n} items of {} bytes", std::mem::size_of::<T>()),
    })?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_fits_prints_both_sizes_and_the_hint_on_one_line() {
        let gib = 1u64 << 30;
        let e = check_fits(
            "the KV cache for 1000 sequences x 4096 positions",
            (93.8 * gib as f64) as u64,
            (21.3 * gib as f64) as u64,
            "lower --max-ctx or the batch",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "the KV cache for 1000 sequences x 4096 positions needs 93.8 GiB; 21.3 GiB are available: lower --max-ctx or the batch"
        );
        assert!(check_fits("x", 10, 10, "h").is_ok());
        assert!(check_fits("x", 11, 10, "h").is_err());
    }

    #[test]
    fn kv_cache_and_weights_checks_name_the_sizes_and_the_flag() {
        let cfg = crate::presets::preset("llama-3.1-8b").unwrap();
        let e = check_kv_cache_fits(&cfg, 1000, 4096, DType::BF16, 21 << 30).unwrap_err().to_string();
        assert_eq!(
            e,
            "the KV cache for 1000 sequences x 4096 positions needs 500.0 GiB; 21.0 GiB are available: lower --max-ctx or the batch"
        );
        assert_eq!(check_kv_cache_fits(&cfg, 1, 16, DType::BF16, u64::MAX).unwrap(), 2 * 32 * 16 * 8 * 128 * 2);
        let e = check_kv_cache_fits(&cfg, usize::MAX, usize::MAX, DType::F32, u64::MAX).unwrap_err().to_string();
        assert!(e.contains("overflows") && e.contains("--max-ctx"), "{e}");
        let e = check_weights_fit(&cfg, DType::BF16, 1 << 30, "use a smaller model").unwrap_err().to_string();
        assert!(e.starts_with("storing the weights (") && e.contains("as bf16) needs 15.0 GiB"), "{e}");
        assert!(e.ends_with("1.0 GiB are available: use a smaller model"), "{e}");
    }

    #[test]
    fn human_bytes_picks_the_unit() {
        assert_eq!(human_bytes(0), "0 bytes");
        assert_eq!(human_bytes(1), "1 byte");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn mem_available_is_read_from_meminfo() {
        let text = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   22000000 kB\n";
        assert_eq!(parse_mem_available(text), Some(22_000_000 * 1024));
        assert_eq!(parse_mem_available("MemTotal: 5 kB\n"), None);
        assert_eq!(parse_mem_available("MemAvailable: lots kB\n"), None);
        if cfg!(target_os = "linux") {
            assert!(available_host_memory().is_some_and(|b| b > 0));
        }
    }

    #[test]
    fn byte_counts_from_untrusted_dims_overflow_into_errors() {
        assert_eq!(bytes_of("t", &[2, 3], 4).unwrap(), 24);
        let e = bytes_of("tensor `x`", &[usize::MAX, 2], 4).unwrap_err().to_string();
        assert!(e.starts_with("tensor `x`:") && e.contains("overflows"), "{e}");
        assert!(sum_bytes("w", [u64::MAX, 1]).is_err());
    }

    #[test]
    fn try_vec_turns_a_huge_count_into_an_error() {
        let e = try_vec::<u64>("metadata array `a`", usize::MAX / 4).unwrap_err().to_string();
        assert!(e.contains("metadata array `a`") && e.contains("cannot allocate"), "{e}");
        assert_eq!(try_vec::<u8>("x", 16).unwrap().capacity(), 16);
    }
}
