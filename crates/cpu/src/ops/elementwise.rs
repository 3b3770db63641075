//! Elementwise ops over arbitrary strides: copy / cast, unary, binary with broadcasting,
//! and SwiGLU's `silu(gate) * up`. Inputs are gathered into f32, computed, and stored with
//! one rounding. The rank limit is checked with `StridedMeta::new`, as the CUDA launcher
//! does, so both backends refuse the same layouts.

use crate::storage::{with_reads, with_write};
use crate::strided::{gather, gather_f32, scatter, scatter_f32};
use encore_tensor::{check, BinaryOp, Result, StridedMeta, Tensor, UnaryOp};
use rayon::prelude::*;

use crate::Cpu;

/// Below this many elements a parallel loop costs more than it saves.
const PAR_MIN: usize = 1 << 14;

pub(crate) fn copy(src: &Tensor<Cpu>, dst: &Tensor<Cpu>) -> Result<()> {
    const OP: &str = "copy";
    check::copy(src, dst)?;
    StridedMeta::new(OP, &[dst.layout(), src.layout()])?;
    let values = with_reads(OP, &[src], |d| Ok(gather(d[0], src.layout())))?;
    with_write(OP, dst, |d| scatter(OP, d, dst.layout(), &values))
}

pub(crate) fn unary(op: UnaryOp, src: &Tensor<Cpu>, dst: &Tensor<Cpu>) -> Result<()> {
    const OP: &str = "unary";
    check::unary(src, dst)?;
    StridedMeta::new(OP, &[dst.layout(), src.layout()])?;
    let mut v = with_reads(OP, &[src], |d| gather_f32(OP, d[0], src.layout()))?;
    v.par_iter_mut().with_min_len(PAR_MIN).for_each(|x| *x = unary_f32(op, *x));
    with_write(OP, dst, |d| scatter_f32(OP, d, dst.layout(), &v))
}

pub(crate) fn binary(op: BinaryOp, lhs: &Tensor<Cpu>, rhs: &Tensor<Cpu>, dst: &Tensor<Cpu>) -> Result<()> {
    const OP: &str = "binary";
    let (ll, rl) = check::binary(lhs, rhs, dst)?;
    StridedMeta::new(OP, &[dst.layout(), &ll, &rl])?;
    let (mut a, b) = with_reads(OP, &[lhs, rhs], |d| Ok((gather_f32(OP, d[0], &ll)?, gather_f32(OP, d[1], &rl)?)))?;
    a.par_iter_mut().zip(&b).with_min_len(PAR_MIN).for_each(|(x, &y)| *x = binary_f32(op, *x, y));
    with_write(OP, dst, |d| scatter_f32(OP, d, dst.layout(), &a))
}

pub(crate) fn silu_mul(gate: &Tensor<Cpu>, up: &Tensor<Cpu>, dst: &Tensor<Cpu>) -> Result<()> {
    const OP: &str = "silu_mul";
    check::silu_mul(gate, up, dst)?;
    StridedMeta::new(OP, &[dst.layout(), gate.layout(), up.layout()])?;
    let (mut g, u) = with_reads(OP, &[gate, up], |d| {
        Ok((gather_f32(OP, d[0], gate.layout())?, gather_f32(OP, d[1], up.layout())?))
    })?;
    g.par_iter_mut().zip(&u).with_min_len(PAR_MIN).for_each(|(x, &y)| *x = silu(*x) * y);
    with_write(OP, dst, |d| scatter_f32(OP, d, dst.layout(), &g))
}

pub(crate) fn gelu_mul(gate: &Tensor<Cpu>, up: &Tensor<Cpu>, dst: &Tensor<Cpu>) -> Result<()> {
    const OP: &str = "gelu_mul";
    check::gelu_mul(gate, up, dst)?;
    StridedMeta::new(OP, &[dst.layout(), gate.layout(), up.layout()])?;
    let (mut g, u) = with_reads(OP, &[gate, up], |d| {
        Ok((gather_f32(OP, d[0], gate.layout())?, gather_f32(OP, d[1], up.layout())?))
    })?;
    g.par_iter_mut().zip(&u).with_min_len(PAR_MIN).for_each(|(x, &y)| *x = unary_f32(UnaryOp::Gelu, *x) * y);
    with_write(OP, dst, |d| scatter_f32(OP, d, dst.layout(), &g))
}

fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// `UnaryOp::eval` in f32, the precision the kernels compute in.
pub(crate) fn unary_f32(op: UnaryOp, x: f32) -> f32 {
    match op {
        UnaryOp::Neg => -x,
        UnaryOp::Exp => x.exp(),
        UnaryOp::Silu => silu(x),
        UnaryOp::Gelu => {
            const SQRT_2_OVER_PI: f32 = 0.797_884_6;
            0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)).tanh())
        }
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Recip => 1.0 / x,
        UnaryOp::Square => x * x,
        UnaryOp::Abs => x.abs(),
        UnaryOp::Tanh => x.tanh(),
    }
}

pub(crate) fn binary_f32(op: BinaryOp, a: f32, b: f32) -> f32 {
    match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
        BinaryOp::Max => a.max(b),
        BinaryOp::Min => a.min(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_definitions_agree_with_the_f64_reference() {
        for x in [-3.5f32, -0.7, 0.25, 1.3, 2.9] {
            for op in UnaryOp::ALL {
                let x = if matches!(op, UnaryOp::Sqrt) { x.abs() } else { x };
                let (got, want) = (unary_f32(op, x) as f64, op.eval(x as f64));
                assert!((got - want).abs() <= 1e-6 * (1.0 + want.abs()), "{op:?}({x}): {got} vs {want}");
            }
            for op in BinaryOp::ALL {
                let (got, want) = (binary_f32(op, x, 0.6) as f64, op.eval(x as f64, 0.6f32 as f64));
                assert!((got - want).abs() <= 1e-6 * (1.0 + want.abs()), "{op:?}({x}): {got} vs {want}");
            }
        }
    }

    #[test]
    fn silu_saturates_without_nan() {
        assert_eq!(silu(-200.0), 0.0);
        assert_eq!(silu(200.0), 200.0);
    }
}
