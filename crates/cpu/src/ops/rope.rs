//! Rotary position embedding, rotate-half (Hugging Face) convention, over `x: [T, H, D]`
//! with any strides. The frequencies, and with them any scaling (linear, Llama-3.1), are
//! in the `cos` / `sin` tables built by `encore_tensor::rope::tables`, so this code is the
//! same for plain and scaled RoPE. A padded row (`positions[t] < 0`) is copied unchanged.

use crate::storage::{with_reads, with_write};
use crate::strided::{f32s, gather_f32, i32s, scatter_f32};
use crate::Cpu;
use encore_tensor::{check, Error, Result, StridedMeta, Tensor};
use rayon::prelude::*;

pub(crate) fn rope(
    x: &Tensor<Cpu>,
    cos: &Tensor<Cpu>,
    sin: &Tensor<Cpu>,
    positions: &Tensor<Cpu>,
    dst: &Tensor<Cpu>,
) -> Result<()> {
    const OP: &str = "rope";
    let (_t, h, d) = check::rope(x, cos, sin, positions, dst)?;
    StridedMeta::exact(OP, &[dst.layout(), x.layout()])?;
    if x.numel() == 0 {
        return Ok(());
    }
    let max_pos = cos.dims()[0];
    let out = with_reads(OP, &[x, cos, sin, positions], |data| {
        let mut v = gather_f32(OP, data[0], x.layout())?;
        let (cos, sin) = (f32s(OP, data[1], cos.layout())?, f32s(OP, data[2], sin.layout())?);
        let pos = i32s(OP, data[3], positions.layout())?;
        if let Some(&p) = pos.iter().find(|&&p| p >= 0 && p as usize >= max_pos) {
            return Err(Error::InvalidArgument {
                op: OP,
                msg: format!("position {p} is past the {max_pos} table rows"),
            });
        }
        let half = d / 2;
        v.par_chunks_mut(h * d).zip(pos).for_each(|(token, &p)| {
            if p < 0 {
                return;
            }
            let (c, s) = (&cos[p as usize * half..][..half], &sin[p as usize * half..][..half]);
            for head in token.chunks_exact_mut(d) {
                rotate_half(head, c, s);
            }
        });
        Ok(v)
    })?;
    with_write(OP, dst, |data| scatter_f32(OP, data, dst.layout(), &out))
}

/// `head = head * [c, c] + rotate_half(head) * [s, s]`, where
/// `rotate_half([a, b]) = [-b, a]` over the two halves of the head dim.
fn rotate_half(head: &mut [f32], c: &[f32], s: &[f32]) {
    let (a, b) = head.split_at_mut(c.len());
    for i in 0..c.len() {
        let (x0, x1) = (a[i], b[i]);
        a[i] = x0 * c[i] - x1 * s[i];
        b[i] = x1 * c[i] + x0 * s[i];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use encore_tensor::{Backend, DType, HostTensor};

    #[test]
    fn a_quarter_turn_maps_first_half_to_second() {
        // angle pi/2: cos 0, sin 1; [a, b] -> [-b, a]
        let mut head = [1.0f32, 2.0, 3.0, 4.0];
        rotate_half(&mut head, &[0.0, 0.0], &[1.0, 1.0]);
        assert_eq!(head, [-3.0, -4.0, 1.0, 2.0]);
    }

    #[test]
    fn a_position_past_the_table_is_an_error() {
        let x = Cpu.zeros(DType::F32, &[1, 1, 4]).unwrap();
        let table = Cpu.zeros(DType::F32, &[3, 2]).unwrap();
        let pos = Cpu.tensor(&HostTensor::from_i32(&[1], &[3])).unwrap();
        let out = Cpu.zeros(DType::F32, &[1, 1, 4]).unwrap();
        assert!(matches!(rope(&x, &table, &table, &pos, &out), Err(Error::InvalidArgument { .. })));
    }
}
