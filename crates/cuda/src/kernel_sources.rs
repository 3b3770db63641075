//! The kernel sources (`kernels/*.cu`), embedded for the tests that check them: here, that
//! every entry point starts with the PDL wait; in `kernels.rs` (with the `cuda` feature),
//! that the kernel table names exactly their entry points. Embedded at compile time, so the
//! packed GPU suite checks them on a host that has only the executable.

/// Every `kernels/*.cu`: a new file must be added here (kernels.rs checks this list
/// against the files build.rs compiled).
pub(crate) const SOURCES: &[(&str, &str)] = &[
    ("argmax.cu", include_str!("../kernels/argmax.cu")),
    ("attention.cu", include_str!("../kernels/attention.cu")),
    ("attention_decode.cu", include_str!("../kernels/attention_decode.cu")),
    ("attention_prefill.cu", include_str!("../kernels/attention_prefill.cu")),
    ("binary.cu", include_str!("../kernels/binary.cu")),
    ("copy.cu", include_str!("../kernels/copy.cu")),
    ("embedding.cu", include_str!("../kernels/embedding.cu")),
    ("fill.cu", include_str!("../kernels/fill.cu")),
    ("gelu_mul.cu", include_str!("../kernels/gelu_mul.cu")),
    ("gemv.cu", include_str!("../kernels/gemv.cu")),
    ("gemv_tc.cu", include_str!("../kernels/gemv_tc.cu")),
    ("kv_write.cu", include_str!("../kernels/kv_write.cu")),
    ("qmatmul.cu", include_str!("../kernels/qmatmul.cu")),
    ("rms_norm.cu", include_str!("../kernels/rms_norm.cu")),
    ("rope.cu", include_str!("../kernels/rope.cu")),
    ("sample.cu", include_str!("../kernels/sample.cu")),
    ("silu_mul.cu", include_str!("../kernels/silu_mul.cu")),
    ("softmax.cu", include_str!("../kernels/softmax.cu")),
    ("unary.cu", include_str!("../kernels/unary.cu")),
];

#[cfg(test)]
mod tests {
    use super::SOURCES;

    /// Every entry point waits for its predecessor first (ENCORE_PDL_ENTRY, common.cuh):
    /// under programmatic dependent launch an entry without it could read or overwrite
    /// memory the previous kernel is still using.
    #[test]
    fn every_entry_point_starts_with_the_pdl_wait() {
        let mut entries = 0;
        for (file, text) in SOURCES {
            for (at, _) in text.match_indices("extern \"C\" __global__") {
                let body = &text[at..][text[at..].find('{').expect("a body") + 1..];
                let first = body.trim_start_matches([' ', '\\', '\n']).split(';').next().unwrap_or("");
                assert_eq!(
                    first.trim(),
                    "ENCORE_PDL_ENTRY()",
                    "{file}: an entry point at byte {at} does not start with it"
                );
                entries += 1;
            }
        }
        assert!(entries >= 27, "{entries} entry definitions found");
    }
}
