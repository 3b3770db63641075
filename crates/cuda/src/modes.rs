//! Launch-parameter modes: how the `[dims, strides]` of a strided launch reach the kernel
//! (DESIGN.md, "Kernel launch metadata"), and the per-device counters of launches per mode.
//! No cudarc here: this compiles (and is tested) without the `cuda` feature.
//!
//! | mode     | per strided launch                                   | graph nodes per op |
//! |----------|------------------------------------------------------|--------------------|
//! | `inline` | dims/strides by value in the parameter block         | 1                  |
//! | `cached` | ParamCache lookup, the kernel reads the cached words | 1 (after warm-up)  |
//! | `upload` | alloc + HtoD copy + launch + free (candle's way)     | 4                  |
//!
//! Contiguous metas are passed inline in every mode (kernels take the flat fast path).

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use encore_tensor::{StridedMeta, MAX_OPERANDS, MAX_RANK};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum LaunchParamMode {
    /// By value in the kernel parameter block; no device memory touched.
    #[default]
    Inline,
    /// Served from the device's ParamCache (warm it with one eager step before capturing).
    Cached,
    /// A fresh device buffer per launch: alloc, HtoD copy, launch, free. The baseline.
    Upload,
}

impl LaunchParamMode {
    pub const ALL: [LaunchParamMode; 3] = [LaunchParamMode::Inline, LaunchParamMode::Cached, LaunchParamMode::Upload];

    pub fn as_str(self) -> &'static str {
        match self {
            LaunchParamMode::Inline => "inline",
            LaunchParamMode::Cached => "cached",
            LaunchParamMode::Upload => "upload",
        }
    }

    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn to_u8(self) -> u8 {
        self as u8
    }

    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn from_u8(v: u8) -> Self {
        match v {
            1 => LaunchParamMode::Cached,
            2 => LaunchParamMode::Upload,
            _ => LaunchParamMode::Inline,
        }
    }
}

impl fmt::Display for LaunchParamMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LaunchParamMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "inline" => Ok(LaunchParamMode::Inline),
            "cached" => Ok(LaunchParamMode::Cached),
            "upload" => Ok(LaunchParamMode::Upload),
            _ => Err(format!("unknown launch-parameter mode `{s}` (expected inline, cached or upload)")),
        }
    }
}

/// A snapshot of one device's launch counters since creation (or the last reset).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LaunchStats {
    /// Every `CudaDevice::launch`, strided or not.
    pub kernels: u64,
    /// Strided metas prepared inline: inline mode, and contiguous metas in every mode.
    pub inline: u64,
    /// Strided metas served by the ParamCache (hits and misses; see `ParamCache::stats`).
    pub cached: u64,
    /// Strided metas uploaded per launch.
    pub upload: u64,
    /// Bytes of metadata copied host-to-device by upload mode (cache-miss uploads are
    /// counted by the ParamCache as `bytes_used`).
    pub bytes_uploaded: u64,
}

impl LaunchStats {
    /// Counters accumulated between `earlier` and `self`.
    pub fn since(&self, earlier: &LaunchStats) -> LaunchStats {
        LaunchStats {
            kernels: self.kernels - earlier.kernels,
            inline: self.inline - earlier.inline,
            cached: self.cached - earlier.cached,
            upload: self.upload - earlier.upload,
            bytes_uploaded: self.bytes_uploaded - earlier.bytes_uploaded,
        }
    }
}

/// The live counters behind [`LaunchStats`]; relaxed atomics, one increment per launch.
#[derive(Debug, Default)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) struct LaunchCounters {
    kernels: AtomicU64,
    inline: AtomicU64,
    cached: AtomicU64,
    upload: AtomicU64,
    bytes_uploaded: AtomicU64,
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
impl LaunchCounters {
    pub(crate) fn kernel(&self) {
        self.kernels.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn prepared(&self, mode: LaunchParamMode, bytes: usize) {
        let c = match mode {
            LaunchParamMode::Inline => &self.inline,
            LaunchParamMode::Cached => &self.cached,
            LaunchParamMode::Upload => &self.upload,
        };
        c.fetch_add(1, Ordering::Relaxed);
        if bytes > 0 {
            self.bytes_uploaded.fetch_add(bytes as u64, Ordering::Relaxed);
        }
    }

    pub(crate) fn snapshot(&self) -> LaunchStats {
        LaunchStats {
            kernels: self.kernels.load(Ordering::Relaxed),
            inline: self.inline.load(Ordering::Relaxed),
            cached: self.cached.load(Ordering::Relaxed),
            upload: self.upload.load(Ordering::Relaxed),
            bytes_uploaded: self.bytes_uploaded.load(Ordering::Relaxed),
        }
    }
}

/// Most `u32` words one meta's `[dims, strides...]` can take.
pub const MAX_INFO_WORDS: usize = MAX_RANK * (1 + MAX_OPERANDS);

/// `meta.info_words()` written into a stack buffer (the cached-mode hot path allocates
/// nothing); returns how many words were written.
pub fn info_words_into(meta: &StridedMeta, out: &mut [u32; MAX_INFO_WORDS]) -> usize {
    let r = (meta.rank as usize).min(MAX_RANK);
    let ops = (meta.num_operands as usize).min(MAX_OPERANDS);
    out[..r].copy_from_slice(&meta.dims[..r]);
    for k in 0..ops {
        out[r * (1 + k)..r * (2 + k)].copy_from_slice(&meta.strides[k][..r]);
    }
    r * (1 + ops)
}

#[cfg(test)]
mod tests {
    use super::*;
    use encore_tensor::Layout;

    #[test]
    fn modes_parse_and_print_round_trip() {
        for m in LaunchParamMode::ALL {
            assert_eq!(m.as_str().parse::<LaunchParamMode>().unwrap(), m);
            assert_eq!(LaunchParamMode::from_u8(m.to_u8()), m);
        }
        assert!("graph".parse::<LaunchParamMode>().unwrap_err().contains("inline, cached or upload"));
    }

    #[test]
    fn info_words_into_matches_info_words() {
        let a = Layout::contiguous(&[5, 3, 7]);
        let b = Layout::contiguous(&[7, 3, 5]).permute(&[2, 1, 0]).unwrap();
        let c = Layout::contiguous(&[3, 11]).narrow(1, 2, 7).unwrap().broadcast_as(&[5, 3, 7]).unwrap();
        for layouts in [vec![&a, &b], vec![&a, &b, &c], vec![&b]] {
            let m = StridedMeta::exact("t", &layouts).unwrap();
            let mut buf = [0u32; MAX_INFO_WORDS];
            let n = info_words_into(&m, &mut buf);
            assert_eq!(&buf[..n], m.info_words().as_slice());
        }
    }

    #[test]
    fn counters_count_per_mode() {
        let c = LaunchCounters::default();
        c.prepared(LaunchParamMode::Upload, 48);
        c.prepared(LaunchParamMode::Upload, 24);
        c.prepared(LaunchParamMode::Cached, 0);
        c.kernel();
        let s = c.snapshot();
        assert_eq!((s.upload, s.cached, s.inline, s.kernels, s.bytes_uploaded), (2, 1, 0, 1, 72));
        c.prepared(LaunchParamMode::Inline, 0);
        assert_eq!(c.snapshot().since(&s), LaunchStats { inline: 1, ..Default::default() });
    }
}
