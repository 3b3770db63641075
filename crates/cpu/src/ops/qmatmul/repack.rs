//! The CPU's own byte order for the blocks of 32 (Q8_0, Q4_0, Q4_1): rows in groups of 8,
//! each group stored block by block with the 8 rows' block `b` side by side, so that one
//! 256-bit integer dot product serves 8 rows (llama.cpp's CPU "repack" buffers do the
//! same). The bytes are the blocks' own, reordered: memory stays that of the GGUF tensor.
//! The k-quants, and the last `N % 8` rows of every type, keep ggml's row layout.
//!
//! One group-block (8 rows, block `b`):
//! - Q4_0: `f16 d[8]`, then `qs` as 4 runs `j` of 8 rows x 4 bytes (`qs[4j..4j+4]` of row
//!   r at `16 + 32 j + 4 r`): 144 bytes.
//! - Q4_1: `f16 d[8]`, `f16 m[8]`, then `qs` as for Q4_0 at 32: 160 bytes.
//! - Q8_0: `f16 d[8]`, then `qs` as 8 runs of 8 rows x 4 bytes, each byte `q ^ 0x80`
//!   (`q + 128` as u8: `vpdpbusd` multiplies unsigned by signed): 272 bytes.

use encore_tensor::{HostQTensor, QuantType};

/// Rows per group.
pub(crate) const ROWS: usize = 8;

/// Whether the CPU interleaves `qtype`'s rows.
pub(crate) fn is_interleaved(qtype: QuantType) -> bool {
    matches!(qtype, QuantType::Q8_0 | QuantType::Q4_0 | QuantType::Q4_1)
}

/// Rows in whole groups (the rest keep the row layout).
pub(crate) fn grouped_rows(qtype: QuantType, rows: usize) -> usize {
    if is_interleaved(qtype) {
        rows / ROWS * ROWS
    } else {
        0
    }
}

/// Bytes before the scales' end and the `qs` runs in a group-block.
fn header(qtype: QuantType) -> usize {
    match qtype {
        QuantType::Q4_1 => 32,
        _ => 16,
    }
}

/// Byte offsets, inside a group-block, of row `r`'s ggml block byte `i` (`i` counts the
/// plain block's bytes; the scales first, then `qs`).
fn place(qtype: QuantType, r: usize, i: usize) -> usize {
    let scales = if qtype == QuantType::Q4_1 { 4 } else { 2 };
    if i < scales {
        // d (bytes 0, 1), m (2, 3): each f16 of row r in its array of 8
        return (i / 2) * 16 + 2 * r + i % 2;
    }
    let q = i - scales;
    header(qtype) + 32 * (q / 4) + 4 * r + q % 4
}

/// `q` in the CPU layout (a no-op for the types kept in rows).
pub(crate) fn repack(q: &HostQTensor) -> HostQTensor {
    let (qt, rb, bb) = (q.qtype, q.row_bytes(), q.qtype.block_bytes());
    let grouped = grouped_rows(qt, q.rows);
    if grouped == 0 {
        return q.clone();
    }
    let nb = q.cols / qt.block_len();
    let mut out = q.data.clone();
    for g in 0..grouped / ROWS {
        let group = &mut out[g * ROWS * rb..(g + 1) * ROWS * rb];
        for r in 0..ROWS {
            let row = q.row(g * ROWS + r);
            for b in 0..nb {
                for i in 0..bb {
                    let v = row[b * bb + i];
                    let scale_bytes = if qt == QuantType::Q4_1 { 4 } else { 2 };
                    let v = if qt == QuantType::Q8_0 && i >= scale_bytes { v ^ 0x80 } else { v };
                    group[b * ROWS * bb + place(qt, r, i)] = v;
                }
            }
        }
    }
    HostQTensor { data: out, ..q.clone() }
}

/// Row `r` of a tensor in the CPU layout, as plain ggml blocks, into `out` (`row_bytes`).
pub(crate) fn plain_row(qtype: QuantType, rows: usize, cols: usize, data: &[u8], r: usize, out: &mut [u8]) {
    let rb = qtype.row_bytes(cols);
    if r >= grouped_rows(qtype, rows) {
        out.copy_from_slice(&data[r * rb..(r + 1) * rb]);
        return;
    }
    let (bb, nb) = (qtype.block_bytes(), cols / qtype.block_len());
    let group = &data[r / ROWS * ROWS * rb..][..ROWS * rb];
    let scale_bytes = if qtype == QuantType::Q4_1 { 4 } else { 2 };
    for b in 0..nb {
        for i in 0..bb {
            let v = group[b * ROWS * bb + place(qtype, r % ROWS, i)];
            out[b * bb + i] = if qtype == QuantType::Q8_0 && i >= scale_bytes { v ^ 0x80 } else { v };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use encore_tensor::quant::random_blocks;
    use encore_tensor::testing::Rng;

    #[test]
    fn repack_moves_bytes_and_plain_row_restores_them() {
        let mut rng = Rng::fresh("repack_moves_bytes_and_plain_row_restores_them");
        for qt in QuantType::ALL {
            let q = random_blocks(&mut rng, qt, 19, 64.max(qt.block_len()));
            let p = repack(&q);
            assert_eq!(p.data.len(), q.data.len(), "{qt}");
            let mut sorted = (q.data.clone(), p.data.clone());
            if qt == QuantType::Q8_0 {
                // the qs bytes are offset by 128: compare the Q4 types only
            } else {
                sorted.0.sort_unstable();
                sorted.1.sort_unstable();
                assert_eq!(sorted.0, sorted.1, "{qt}: the same bytes");
            }
            let mut row = vec![0u8; q.row_bytes()];
            for r in 0..q.rows {
                plain_row(qt, q.rows, q.cols, &p.data, r, &mut row);
                assert_eq!(row, q.row(r), "{qt} row {r}");
            }
        }
    }
}
