//! The gated MLP of a decoder layer, `down(act(gate) * up)` of `gate_up(rms_norm(x))`, run
//! with the fusions the backend offers around its two projections:
//!
//! - dense weights at decode rows (CUDA): the norm and the activation in the gate_up
//!   kernel itself ([`encore_tensor::FusedMatmul`]), then down;
//! - quantized weights at decode rows (CUDA): the norm in gate_up's activation quantizer,
//!   the activation in down's ([`encore_tensor::QInput`]);
//! - elsewhere (the CPU, prefill rows) the ops apart: norm, gate_up, activation, down.

use crate::linear::Linear;
use encore_tensor::{Backend, FusedMatmul, GluActivation, QInput, Result as TResult, Tensor};

/// One layer's MLP weights and settings.
pub struct GatedMlp<'a, B: Backend> {
    /// `[2I, C]`: the gate rows, then the up rows.
    pub gate_up: &'a Linear<B>,
    /// `[C, I]`.
    pub down: &'a Linear<B>,
    /// The RMSNorm before it: weight `[C]` and epsilon.
    pub norm: (&'a Tensor<B>, f32),
    pub act: GluActivation,
}

/// The scratch an unfused MLP step writes: `xn [T, C]` (the normed x), `gate_up [T, 2I]`,
/// `act [T, I]`.
pub struct MlpScratch<'a, B: Backend> {
    pub xn: &'a Tensor<B>,
    pub gate_up: &'a Tensor<B>,
    pub act: &'a Tensor<B>,
}

impl<B: Backend> GatedMlp<'_, B> {
    /// `dst = mlp(x)` (`dst += mlp(x)` when `accumulate`: the residual add in down's
    /// epilogue). `dst` may be `s.xn` (it is written last).
    pub fn forward(
        &self,
        b: &B,
        x: &Tensor<B>,
        s: &MlpScratch<'_, B>,
        dst: &Tensor<B>,
        accumulate: bool,
    ) -> TResult<()> {
        let i = self.gate_up.rows() / 2;
        if let Linear::Dense(w) = self.gate_up {
            let (gate, up) = (w.narrow(0, 0, i)?.transpose(0, 1)?, w.narrow(0, i, i)?.transpose(0, 1)?);
            let op = FusedMatmul {
                x,
                norm: self.norm,
                w_t: &gate,
                glu: Some((self.act, &up)),
                dst: s.act,
                accumulate: false,
            };
            if b.matmul_fused(&op)? {
                return self.down.run(b, s.act, dst, accumulate);
            }
        }
        self.gate_up.forward_normed(b, x, self.norm, s.xn, s.gate_up)?;
        if let Linear::Quant(w) = self.down {
            if b.qmatmul_fused(&QInput::Gated { gate_up: s.gate_up, act: self.act }, w, dst, accumulate)? {
                return Ok(());
            }
        }
        let (gate, up) = (s.gate_up.narrow(1, 0, i)?, s.gate_up.narrow(1, i, i)?);
        match self.act {
            GluActivation::Silu => b.silu_mul(&gate, &up, s.act)?,
            GluActivation::GeluTanh => b.gelu_mul(&gate, &up, s.act)?,
        }
        self.down.run(b, s.act, dst, accumulate)
    }
}
