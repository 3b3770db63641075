//! The `Cpu` backend: the `Backend` impl, memory ops (alloc, upload, write, download) and
//! dispatch to the op families in `ops/`. Every op validates its arguments with
//! `encore_tensor::check` first, so bad arguments give the same error as on CUDA.

use crate::ops;
use crate::storage::{with_reads, with_write, CpuStorage, Data};
use crate::strided::{gather, scatter};
use encore_tensor::{
    check, AttentionParams, Backend, BinaryOp, DType, Error, HostQTensor, HostTensor, QTensor, Result, Tensor, UnaryOp,
};

/// The CPU backend. Stateless, so cloning is free; rayon's global pool runs the parallel
/// loops and `gemm`'s threads.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu;

impl Backend for Cpu {
    type Storage = CpuStorage;

    fn name(&self) -> String {
        "cpu".into()
    }

    fn alloc(&self, dtype: DType, numel: usize) -> Result<CpuStorage> {
        let data = Data::try_resident_zeros(dtype, numel).ok_or_else(|| Error::Backend {
            backend: "cpu",
            msg: format!(
                "cannot allocate {:.1} MiB for {numel} {dtype} elements",
                numel.saturating_mul(dtype.size_in_bytes()) as f64 / (1u64 << 20) as f64
            ),
        })?;
        Ok(CpuStorage::new(data))
    }

    fn upload(&self, host: &HostTensor) -> Result<CpuStorage> {
        let numel = host.numel();
        if numel * host.dtype.size_in_bytes() != host.data.len() {
            return Err(Error::ElementCount {
                op: "upload",
                numel: host.data.len() / host.dtype.size_in_bytes(),
                shape: host.dims.clone(),
            });
        }
        Ok(CpuStorage::with_f32_copy(Data::from_bytes(host.dtype, &host.data)))
    }

    fn write(&self, host: &HostTensor, dst: &Tensor<Cpu>) -> Result<()> {
        const OP: &str = "write";
        if host.dtype != dst.dtype() {
            return Err(Error::DTypeMismatch { op: OP, lhs: host.dtype, rhs: dst.dtype() });
        }
        if host.numel() != dst.numel() || host.data.len() != host.numel() * host.dtype.size_in_bytes() {
            return Err(Error::ShapeMismatch { op: OP, lhs: host.dims.clone(), rhs: dst.dims().to_vec() });
        }
        check::contiguous(OP, dst)?;
        let values = Data::from_bytes(host.dtype, &host.data);
        with_write(OP, dst, |d| scatter(OP, d, dst.layout(), &values))
    }

    fn download(&self, src: &Tensor<Cpu>) -> Result<HostTensor> {
        let data = with_reads("download", &[src], |d| Ok(gather(d[0], src.layout())))?;
        HostTensor::new(src.dtype(), src.dims().to_vec(), data.to_bytes())
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    /// On a worker of rayon's global pool: the ops' parallel loops then start in place.
    fn scoped<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        if rayon::current_thread_index().is_some() {
            return f();
        }
        let mut out = None;
        rayon::scope(|_| out = Some(f()));
        out.expect("the scope ran its body")
    }

    fn copy(&self, src: &Tensor<Cpu>, dst: &Tensor<Cpu>) -> Result<()> {
        ops::elementwise::copy(src, dst)
    }

    fn unary(&self, op: UnaryOp, src: &Tensor<Cpu>, dst: &Tensor<Cpu>) -> Result<()> {
        ops::elementwise::unary(op, src, dst)
    }

    fn binary(&self, op: BinaryOp, lhs: &Tensor<Cpu>, rhs: &Tensor<Cpu>, dst: &Tensor<Cpu>) -> Result<()> {
        ops::elementwise::binary(op, lhs, rhs, dst)
    }

    fn matmul(&self, lhs: &Tensor<Cpu>, rhs: &Tensor<Cpu>, dst: &Tensor<Cpu>) -> Result<()> {
        ops::matmul::matmul(lhs, rhs, dst, false)
    }

    fn matmul_add(&self, lhs: &Tensor<Cpu>, rhs: &Tensor<Cpu>, dst: &Tensor<Cpu>) -> Result<()> {
        ops::matmul::matmul(lhs, rhs, dst, true)
    }

    fn qmatmul(&self, x: &Tensor<Cpu>, w: &QTensor<Cpu>, dst: &Tensor<Cpu>, accumulate: bool) -> Result<()> {
        ops::qmatmul::qmatmul(x, w, dst, accumulate)
    }

    /// Blocks of 32 are kept interleaved in groups of 8 rows (`ops/qmatmul/repack.rs`).
    fn upload_quant(&self, host: &HostQTensor) -> Result<QTensor<Cpu>> {
        ops::qmatmul::upload_quant(host)
    }

    fn qembedding(&self, ids: &Tensor<Cpu>, table: &QTensor<Cpu>, dst: &Tensor<Cpu>) -> Result<()> {
        ops::qmatmul::qembedding(ids, table, dst)
    }

    fn rms_norm(&self, x: &Tensor<Cpu>, weight: &Tensor<Cpu>, eps: f32, dst: &Tensor<Cpu>) -> Result<()> {
        ops::rows::rms_norm(x, weight, eps, dst)
    }

    fn softmax(&self, x: &Tensor<Cpu>, dst: &Tensor<Cpu>) -> Result<()> {
        ops::rows::softmax(x, dst)
    }

    fn silu_mul(&self, gate: &Tensor<Cpu>, up: &Tensor<Cpu>, dst: &Tensor<Cpu>) -> Result<()> {
        ops::elementwise::silu_mul(gate, up, dst)
    }

    fn gelu_mul(&self, gate: &Tensor<Cpu>, up: &Tensor<Cpu>, dst: &Tensor<Cpu>) -> Result<()> {
        ops::elementwise::gelu_mul(gate, up, dst)
    }

    fn rope(
        &self,
        x: &Tensor<Cpu>,
        cos: &Tensor<Cpu>,
        sin: &Tensor<Cpu>,
        positions: &Tensor<Cpu>,
        dst: &Tensor<Cpu>,
    ) -> Result<()> {
        ops::rope::rope(x, cos, sin, positions, dst)
    }

    fn embedding(&self, ids: &Tensor<Cpu>, table: &Tensor<Cpu>, dst: &Tensor<Cpu>) -> Result<()> {
        ops::index::embedding(ids, table, dst)
    }

    fn kv_write(
        &self,
        k: &Tensor<Cpu>,
        v: &Tensor<Cpu>,
        k_cache: &Tensor<Cpu>,
        v_cache: &Tensor<Cpu>,
        slot_mapping: &Tensor<Cpu>,
    ) -> Result<()> {
        ops::index::kv_write(k, v, k_cache, v_cache, slot_mapping)
    }

    /// The reference composition: rope of q, rope of k into a temporary, kv_write.
    fn rope_kv_write(
        &self,
        q: &Tensor<Cpu>,
        k: &Tensor<Cpu>,
        v: &Tensor<Cpu>,
        cos: &Tensor<Cpu>,
        sin: &Tensor<Cpu>,
        positions: &Tensor<Cpu>,
        slot_mapping: &Tensor<Cpu>,
        q_dst: &Tensor<Cpu>,
        k_cache: &Tensor<Cpu>,
        v_cache: &Tensor<Cpu>,
    ) -> Result<()> {
        check::rope_kv_write(q, k, v, cos, sin, positions, slot_mapping, q_dst, k_cache, v_cache)?;
        ops::rope::rope(q, cos, sin, positions, q_dst)?;
        let k_rot = self.zeros(k.dtype(), k.dims())?; // [T, Hkv, D]
        ops::rope::rope(k, cos, sin, positions, &k_rot)?;
        ops::index::kv_write(&k_rot, v, k_cache, v_cache, slot_mapping)
    }

    fn attention(
        &self,
        q: &Tensor<Cpu>,
        k_cache: &Tensor<Cpu>,
        v_cache: &Tensor<Cpu>,
        block_tables: &Tensor<Cpu>,
        row_seq: &Tensor<Cpu>,
        positions: &Tensor<Cpu>,
        params: AttentionParams,
        dst: &Tensor<Cpu>,
    ) -> Result<()> {
        ops::attention::attention(q, k_cache, v_cache, block_tables, row_seq, positions, params, dst)
    }

    fn sample(
        &self,
        logits: &Tensor<Cpu>,
        uniform: &Tensor<Cpu>,
        params: &Tensor<Cpu>,
        dst: &Tensor<Cpu>,
    ) -> Result<()> {
        ops::sample::sample(logits, uniform, params, dst)
    }

    fn argmax(&self, x: &Tensor<Cpu>, dst: &Tensor<Cpu>) -> Result<()> {
        ops::rows::argmax(x, dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_download_round_trip_and_write() {
        let h = HostTensor::from_i32(&[2, 2], &[1, -2, 3, -4]);
        let t = Cpu.tensor(&h).unwrap();
        assert_eq!(Cpu.download(&t).unwrap(), h);
        let col = t.narrow(1, 1, 1).unwrap();
        assert_eq!(Cpu.download(&col).unwrap().data, HostTensor::from_i32(&[2, 1], &[-2, -4]).data);
        Cpu.write(&HostTensor::from_i32(&[2], &[7, 8]), &t.narrow(0, 1, 1).unwrap()).unwrap();
        assert_eq!(Cpu.download(&t).unwrap(), HostTensor::from_i32(&[2, 2], &[1, -2, 7, 8]));
    }

    #[test]
    fn write_refuses_bad_hosts() {
        let t = Cpu.zeros(DType::F32, &[2, 2]).unwrap();
        let bad_dtype = HostTensor::from_u32(&[4], &[1, 2, 3, 4]);
        assert!(matches!(Cpu.write(&bad_dtype, &t), Err(Error::DTypeMismatch { .. })));
        let bad_len = HostTensor::from_f32(&[3], &[1.0, 2.0, 3.0]);
        assert!(matches!(Cpu.write(&bad_len, &t), Err(Error::ShapeMismatch { .. })));
        let strided = t.transpose(0, 1).unwrap();
        let ok = HostTensor::from_f32(&[2, 2], &[1.0, 2.0, 3.0, 4.0]);
        assert!(matches!(Cpu.write(&ok, &strided), Err(Error::LayoutRequired { .. })));
        let torn = HostTensor { dtype: DType::F32, dims: vec![2], data: vec![0; 7] };
        assert!(matches!(Cpu.upload(&torn), Err(Error::ElementCount { .. })));
    }
}
