//! The decoder's weights as the backend holds them: a projection [`Linear`] (`[N, K]`, a
//! Hugging Face Linear weight) that is dense or quantized, and the token [`Embedding`]
//! table, so that `llama.rs` stays one decoder whatever the file stores.
//!
//! Loading goes through [`HostWeight`]: the raw blocks of a tensor stored quantized (GGUF),
//! floats in the compute dtype otherwise, quantized on the host when `--quantize` asks.
//! [`fuse`] joins the q/k/v (and gate/up) weights into one matmul: floats and blocks of one
//! type by concatenating their rows, other mixes (Q4_K_M keeps some `v_proj` in Q6_K) as a
//! [`Linear::Stacked`] whose parts each write their columns of the one output.

use crate::error::Result;
use crate::quantize::{quantize, type_for};
use crate::weights::{expect_shape, WeightSource};
use encore_tensor::{
    Backend, DType, FusedMatmul, HostQTensor, HostTensor, QInput, QTensor, QuantType, Result as TResult, Tensor,
};

/// A projection weight `[N, K]`: `forward` computes `x W^T` for `x: [T, K]`.
pub enum Linear<B: Backend> {
    Dense(Tensor<B>),
    Quant(QTensor<B>),
    /// Weights whose rows follow one another but whose storage could not be joined; part
    /// `i` writes output columns `sum(rows of parts before i)..` of the output.
    Stacked(Vec<Linear<B>>),
}

impl<B: Backend> Clone for Linear<B> {
    fn clone(&self) -> Self {
        match self {
            Linear::Dense(w) => Linear::Dense(w.clone()),
            Linear::Quant(w) => Linear::Quant(w.clone()),
            Linear::Stacked(p) => Linear::Stacked(p.clone()),
        }
    }
}

impl<B: Backend> Linear<B> {
    /// N, the output features.
    pub fn rows(&self) -> usize {
        match self {
            Linear::Dense(w) => w.dims()[0],
            Linear::Quant(w) => w.rows(),
            Linear::Stacked(p) => p.iter().map(Linear::rows).sum(),
        }
    }

    /// K, the input features.
    pub fn cols(&self) -> usize {
        match self {
            Linear::Dense(w) => w.dims()[1],
            Linear::Quant(w) => w.cols(),
            Linear::Stacked(p) => p.first().map_or(0, Linear::cols),
        }
    }

    /// Bytes a matmul reads.
    pub fn bytes(&self) -> usize {
        match self {
            Linear::Dense(w) => w.numel() * w.dtype().size_in_bytes(),
            Linear::Quant(w) => w.bytes(),
            Linear::Stacked(p) => p.iter().map(Linear::bytes).sum(),
        }
    }

    /// "bf16", "Q4_K", "Q4_K+Q6_K".
    pub fn kind(&self) -> String {
        match self {
            Linear::Dense(w) => w.dtype().to_string(),
            Linear::Quant(w) => w.qtype().to_string(),
            Linear::Stacked(p) => p.iter().map(Linear::kind).collect::<Vec<_>>().join("+"),
        }
    }

    /// `dst = x W^T`; `x: [T, K]`, `dst: [T, N]` (rows of the compute dtype, or f32).
    pub fn forward(&self, b: &B, x: &Tensor<B>, dst: &Tensor<B>) -> TResult<()> {
        self.run(b, x, dst, false)
    }

    /// `dst = rms_norm(x, norm) W^T`, the norm fused into the projection where the backend
    /// can (CUDA: into the GEMV of dense decode rows, into the activation quantizer of
    /// quantized ones); where it cannot, the norm into `xn` (`[T, K]`, like x; written only
    /// then) and the projection. A stacked weight decides part by part.
    pub fn forward_normed(
        &self,
        b: &B,
        x: &Tensor<B>,
        norm: (&Tensor<B>, f32),
        xn: &Tensor<B>,
        dst: &Tensor<B>,
    ) -> TResult<()> {
        self.normed_parts(b, x, norm, xn, dst, &mut false)
    }

    /// [`Linear::forward_normed`]; `xn_ready`: the unfused norm is in `xn` already.
    fn normed_parts(
        &self,
        b: &B,
        x: &Tensor<B>,
        norm: (&Tensor<B>, f32),
        xn: &Tensor<B>,
        dst: &Tensor<B>,
        xn_ready: &mut bool,
    ) -> TResult<()> {
        let fused = match self {
            Linear::Dense(w) => {
                b.matmul_fused(&FusedMatmul { x, norm, w_t: &w.transpose(0, 1)?, glu: None, dst, accumulate: false })?
            }
            Linear::Quant(w) => b.qmatmul_fused(&QInput::Normed { x, norm: norm.0, eps: norm.1 }, w, dst, false)?,
            Linear::Stacked(parts) => {
                let mut col = 0;
                for p in parts {
                    p.normed_parts(b, x, norm, xn, &dst.narrow(1, col, p.rows())?, xn_ready)?;
                    col += p.rows();
                }
                return Ok(());
            }
        };
        if !fused {
            if !*xn_ready {
                b.rms_norm(x, norm.0, norm.1, xn)?;
                *xn_ready = true;
            }
            self.run(b, xn, dst, false)?;
        }
        Ok(())
    }

    /// `dst = x W^T`, or `dst += x W^T` when `accumulate` (the residual add fused into
    /// the projection).
    pub fn run(&self, b: &B, x: &Tensor<B>, dst: &Tensor<B>, accumulate: bool) -> TResult<()> {
        match self {
            Linear::Dense(w) if accumulate => b.matmul_add(x, &w.transpose(0, 1)?, dst),
            Linear::Dense(w) => b.matmul(x, &w.transpose(0, 1)?, dst),
            Linear::Quant(w) => b.qmatmul(x, w, dst, accumulate),
            Linear::Stacked(parts) => {
                let mut col = 0;
                for p in parts {
                    p.run(b, x, &dst.narrow(1, col, p.rows())?, accumulate)?;
                    col += p.rows();
                }
                Ok(())
            }
        }
    }
}

/// The token embedding table `[V, C]`, dense or quantized (then rows are dequantized by the
/// lookup, and the table itself serves as the tied LM head without being expanded).
pub enum Embedding<B: Backend> {
    Dense(Tensor<B>),
    Quant(QTensor<B>),
}

impl<B: Backend> Embedding<B> {
    /// `dst[t] = table[ids[t]]` in the compute dtype.
    pub fn forward(&self, b: &B, ids: &Tensor<B>, dst: &Tensor<B>) -> TResult<()> {
        match self {
            Embedding::Dense(t) => b.embedding(ids, t, dst),
            Embedding::Quant(t) => b.qembedding(ids, t, dst),
        }
    }

    /// The table as a projection (the tied LM head), sharing its storage.
    pub fn as_linear(&self) -> Linear<B> {
        match self {
            Embedding::Dense(t) => Linear::Dense(t.clone()),
            Embedding::Quant(t) => Linear::Quant(t.clone()),
        }
    }

    pub fn bytes(&self) -> usize {
        self.as_linear().bytes()
    }
}

/// A 2-D weight as loaded on the host, before fusion and upload.
pub enum HostWeight {
    Dense(HostTensor),
    Quant(HostQTensor),
}

impl HostWeight {
    /// `name`, checked to be `[rows, cols]`: its raw blocks when the source stores it
    /// quantized (unless `dequantize`), else its values in `dtype`, quantized on the host
    /// to `quantize` when given (see [`type_for`] for rows that are not whole blocks).
    pub fn load(
        src: &dyn WeightSource,
        name: &str,
        dims: [usize; 2],
        dtype: DType,
        opts: &LoadOptions,
    ) -> Result<HostWeight> {
        match src.dims(name) {
            Some(actual) => expect_shape(name, &actual, &dims)?,
            None => return Err(src.missing(name)),
        }
        if !opts.dequantize {
            if let Some(q) = src.get_raw(name)? {
                return Ok(HostWeight::Quant(q));
            }
        }
        let t = src.get(name, dtype)?;
        match opts.quantize.and_then(|want| type_for(want, dims[1])) {
            Some(qt) => Ok(HostWeight::Quant(quantize(name, qt, &t.to_f32(), dims[0], dims[1])?)),
            None => Ok(HostWeight::Dense(t)),
        }
    }

    pub fn rows(&self) -> usize {
        match self {
            HostWeight::Dense(t) => t.dims[0],
            HostWeight::Quant(q) => q.rows,
        }
    }

    /// Upload as one weight.
    pub fn upload<B: Backend>(self, b: &B) -> Result<Linear<B>> {
        Ok(match self {
            HostWeight::Dense(t) => Linear::Dense(b.tensor(&t)?),
            HostWeight::Quant(q) => Linear::Quant(b.upload_quant(&q)?),
        })
    }

    /// Upload as an embedding table.
    pub fn upload_embedding<B: Backend>(self, b: &B) -> Result<Embedding<B>> {
        Ok(match self {
            HostWeight::Dense(t) => Embedding::Dense(b.tensor(&t)?),
            HostWeight::Quant(q) => Embedding::Quant(b.upload_quant(&q)?),
        })
    }
}

/// How the decoder loads its weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Quantize float projection weights (and the embedding / LM head) to this type.
    pub quantize: Option<QuantType>,
    /// Expand quantized tensors to the compute dtype at load (the old behaviour; for
    /// comparisons).
    pub dequantize: bool,
}

/// `parts` as one weight, their rows one after another (q, k, v or gate, up): dense parts
/// are concatenated, consecutive quantized parts of one type too, and a mix becomes
/// [`Linear::Stacked`].
pub fn fuse<B: Backend>(b: &B, parts: Vec<HostWeight>) -> Result<Linear<B>> {
    let mut groups: Vec<Vec<HostWeight>> = Vec::new();
    for p in parts {
        let joins = match (groups.last().and_then(|g| g.last()), &p) {
            (Some(HostWeight::Dense(a)), HostWeight::Dense(c)) => a.dtype == c.dtype,
            (Some(HostWeight::Quant(a)), HostWeight::Quant(c)) => a.qtype == c.qtype && a.cols == c.cols,
            _ => false,
        };
        match groups.last_mut() {
            Some(g) if joins => g.push(p),
            _ => groups.push(vec![p]),
        }
    }
    let mut linears = Vec::with_capacity(groups.len());
    for g in groups {
        let joined = match &g[0] {
            HostWeight::Dense(_) => HostWeight::Dense(concat_rows(
                &g.iter()
                    .map(|p| match p {
                        HostWeight::Dense(t) => t.clone(),
                        HostWeight::Quant(_) => unreachable!("a group holds one kind"),
                    })
                    .collect::<Vec<_>>(),
            )),
            HostWeight::Quant(_) => HostWeight::Quant(HostQTensor::concat_rows(
                &g.iter()
                    .map(|p| match p {
                        HostWeight::Quant(q) => q.clone(),
                        HostWeight::Dense(_) => unreachable!("a group holds one kind"),
                    })
                    .collect::<Vec<_>>(),
            )?),
        };
        linears.push(joined.upload(b)?);
    }
    Ok(if linears.len() == 1 { linears.remove(0) } else { Linear::Stacked(linears) })
}

/// Host tensors of one dtype with their rows (dim 0) one after another.
pub fn concat_rows(parts: &[HostTensor]) -> HostTensor {
    let cols = parts[0].dims[1..].to_vec();
    let rows: usize = parts.iter().map(|p| p.dims[0]).sum();
    let mut dims = vec![rows];
    dims.extend(cols);
    HostTensor { dtype: parts[0].dtype, dims, data: parts.iter().flat_map(|p| p.data.iter().copied()).collect() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use encore_cpu::Cpu;
    use encore_tensor::quant::random_blocks;
    use encore_tensor::testing::Rng;

    /// One quantized tensor under one name, stored with `stored` dims (HF order).
    struct OneRaw {
        name: &'static str,
        stored: Vec<usize>,
        q: HostQTensor,
    }

    impl WeightSource for OneRaw {
        fn names(&self) -> Vec<String> {
            vec![self.name.to_string()]
        }
        fn dims(&self, name: &str) -> Option<Vec<usize>> {
            (name == self.name).then(|| self.stored.clone())
        }
        fn get(&self, name: &str, _: DType) -> crate::error::Result<HostTensor> {
            Err(self.missing(name))
        }
        fn missing(&self, name: &str) -> crate::error::ModelError {
            crate::error::ModelError::MissingTensor { name: name.to_string(), source_desc: "test".into() }
        }
        fn get_raw(&self, _: &str) -> crate::error::Result<Option<HostQTensor>> {
            Ok(Some(self.q.clone()))
        }
    }

    #[test]
    fn quantized_tensors_of_the_wrong_shape_name_the_tensor() {
        let mut rng = Rng::fresh("quantized_tensors_of_the_wrong_shape_name_the_tensor");
        let q = random_blocks(&mut rng, QuantType::Q4_K, 4, 256);
        let src = OneRaw { name: "model.layers.0.mlp.down_proj.weight", stored: vec![4, 256], q };
        let opts = LoadOptions::default();
        assert!(HostWeight::load(&src, src.name, [4, 256], DType::F32, &opts).is_ok());
        let err = HostWeight::load(&src, src.name, [4, 512], DType::F32, &opts).err().expect("wrong shape").to_string();
        assert!(err.contains("down_proj") && err.contains("[4, 512]"), "{err}");
        let err = HostWeight::load(&src, "model.norm.weight", [4, 256], DType::F32, &opts).err().expect("missing");
        assert!(err.to_string().contains("model.norm.weight"), "{err}");
    }

    /// A Stacked weight (Q4_K rows, then Q6_K rows, then f32 rows) gives the product of the
    /// dequantized rows, column block by column block, plain and accumulating.
    #[test]
    fn mixed_parts_write_their_own_columns() {
        let mut rng = Rng::fresh("mixed_parts_write_their_own_columns");
        let (k, t) = (256, 2);
        let a = random_blocks(&mut rng, QuantType::Q4_K, 3, k);
        let c = random_blocks(&mut rng, QuantType::Q6_K, 2, k);
        let dense = rng.vec(4 * k, -0.1, 0.1);
        let parts = vec![
            HostWeight::Quant(a.clone()),
            HostWeight::Quant(a.clone()),
            HostWeight::Quant(c.clone()),
            HostWeight::Dense(HostTensor::from_f32(&[4, k], &dense)),
        ];
        let w: Linear<Cpu> = fuse(&Cpu, parts).unwrap();
        assert_eq!((w.rows(), w.cols(), w.kind().as_str()), (12, k, "Q4_K+Q6_K+f32"));
        let mut rows = a.dequantize();
        rows.extend(a.dequantize());
        rows.extend(c.dequantize());
        rows.extend(&dense);
        let x = rng.vec(t * k, -1.0, 1.0);
        let xt = Cpu.tensor(&HostTensor::from_f32(&[t, k], &x)).unwrap();
        let out = Cpu.tensor(&HostTensor::from_f32(&[t, 12], &[1.0; 24])).unwrap();
        w.run(&Cpu, &xt, &out, true).unwrap();
        let got = Cpu.download(&out).unwrap().to_f32();
        for i in 0..t {
            for j in 0..12 {
                let want: f32 = 1.0 + (0..k).map(|p| x[i * k + p] * rows[j * k + p]).sum::<f32>();
                let g = got[i * 12 + j];
                assert!((g - want).abs() < 2e-2 * want.abs().max(1.0), "[{i}, {j}]: {g} vs {want}");
            }
        }
    }
}
