//! The one decoder for Llama (2, 3, 3.1, 3.2), Mistral, Qwen2/2.5, Qwen3 and Gemma 3, switched
//! by config flags: q/k/v bias (Qwen2), tied embeddings, RoPE scaling (in the tables), sliding
//! window, and [`ArchFlags`]: per-head q/k RMSNorm (Qwen3, Gemma 3), Gemma's `1 + w` norms,
//! scaled embeddings, sandwich norms around attention and MLP, GeGLU, per-layer window and RoPE
//! table (Gemma 3's local/global layers), attention scale and final logit soft-capping.
//!
//! Written once against the `Backend` contract. The forward pass writes into the buffers of
//! a [`RunState`] and reads its per-step inputs from a [`StepInputs`], both allocated before
//! the first step, so a decode step allocates nothing and can be captured as is.
//!
//! q/k/v and gate/up are fused into one matmul each at load; the halves are strided views
//! of the fused output (rope_kv_write and silu_mul read them in place).
//! Projections are [`Linear`]s: dense, or quantized blocks as the file stores them (GGUF)
//! or as `--quantize` made them; the forward pass is the same either way.

use crate::config::{ArchFlags, ModelConfig};
use crate::kv_cache::KvCache;
use crate::linear::{concat_rows, fuse, Embedding, HostWeight, Linear, LoadOptions};
use crate::mlp::{GatedMlp, MlpScratch};
use crate::step_inputs::{StepInputs, StepKind};
use crate::weights::WeightSource;
use crate::ModelError;
use encore_tensor::rope;
use encore_tensor::{
    AttentionParams, Backend, BinaryOp, DType, DecodeAttention, HostTensor, QkNorm, QuantType, Result as TResult,
    Tensor, UnaryOp,
};

struct Layer<B: Backend> {
    attn_norm: Tensor<B>,        // [C]
    qkv: Linear<B>,              // [(H + 2 Hkv) D, C]
    qkv_bias: Option<Tensor<B>>, // [(H + 2 Hkv) D]
    qk_norm: Option<QkNormWeights<B>>,
    o_proj: Linear<B>,                 // [C, H D]
    post_attn_norm: Option<Tensor<B>>, // [C] (Gemma: on the attention output)
    mlp_norm: Tensor<B>,               // [C]
    gate_up: Linear<B>,                // [2 I, C]
    down: Linear<B>,                   // [C, I]
    post_mlp_norm: Option<Tensor<B>>,  // [C] (Gemma: on the MLP output)
    /// This layer's attention window (0: none) and RoPE tables (shared storage).
    window: u32,
    rope: Rope<B>,
}

/// Per-head RMSNorm weights of q and k (Qwen3, Gemma 3).
struct QkNormWeights<B: Backend> {
    q: Tensor<B>, // [D]
    k: Tensor<B>, // [D]
}

/// RoPE tables; layers with the same base share one storage.
struct Rope<B: Backend> {
    cos: Tensor<B>, // [P, D/2] f32
    sin: Tensor<B>, // [P, D/2] f32
}

impl<B: Backend> Clone for Rope<B> {
    fn clone(&self) -> Self {
        Rope { cos: self.cos.clone(), sin: self.sin.clone() }
    }
}

pub struct Llama<B: Backend> {
    pub cfg: ModelConfig,
    pub dtype: DType,
    embed: Embedding<B>, // [V, C]
    /// sqrt(C) in the compute dtype, multiplied into the embedded rows (Gemma).
    embed_scale: Option<Tensor<B>>, // [1]
    layers: Vec<Layer<B>>,
    norm: Tensor<B>,    // [C]
    lm_head: Linear<B>, // [V, C]; the embedding itself when tied
    /// `(1 / cap, cap)` of the final logit soft-capping.
    softcap: Option<(Tensor<B>, Tensor<B>)>, // [1] f32 each
}

/// Activation buffers for up to `max_tokens` rows per step, and logits for up to
/// `max_logit_rows` rows. Steps with fewer rows use leading views.
pub struct RunState<B: Backend> {
    pub max_tokens: usize,
    pub max_logit_rows: usize,
    x: Tensor<B>,          // [T, C] residual stream
    xn: Tensor<B>,         // [T, C] normed input of a block
    qkv: Tensor<B>,        // [T, (H + 2 Hkv) D]
    q: Tensor<B>,          // [T, H, D] after rope (k goes from qkv into the cache, rotated)
    k: Tensor<B>,          // [T, Hkv, D] k after its norm and rope (q/k-norm models only)
    attn: Tensor<B>,       // [T, H, D]
    gate_up: Tensor<B>,    // [T, 2 I]
    act: Tensor<B>,        // [T, I]
    head: Tensor<B>,       // [R, C] final-normed rows whose logits are wanted
    pub logits: Tensor<B>, // [R, V] f32 (the LM head accumulates and stores in f32)
    pub next: Tensor<B>,   // [R] u32, argmax (or sample) of logits
}

impl<B: Backend> Llama<B> {
    /// Load from a weight source (safetensors or GGUF) under Hugging Face tensor names,
    /// quantized tensors kept in their blocks. `max_ctx` bounds the RoPE tables.
    pub fn load(
        b: &B,
        cfg: ModelConfig,
        src: &dyn WeightSource,
        dtype: DType,
        max_ctx: usize,
    ) -> Result<Self, ModelError> {
        Self::load_with(b, cfg, src, dtype, max_ctx, &LoadOptions::default())
    }

    /// [`Llama::load`] with options: in-situ quantization of float weights, or expanding
    /// quantized ones.
    pub fn load_with(
        b: &B,
        cfg: ModelConfig,
        src: &dyn WeightSource,
        dtype: DType,
        max_ctx: usize,
        opts: &LoadOptions,
    ) -> Result<Self, ModelError> {
        let (c, h, hkv, d, i) = dims(&cfg);
        let flags = &cfg.flags;
        let get = |name: &str, dims: &[usize]| -> Result<HostTensor, ModelError> {
            let t = src.get(name, dtype)?;
            if t.dims != dims {
                return Err(ModelError::TensorShape {
                    name: name.to_string(),
                    expected: dims.to_vec(),
                    found: t.dims.clone(),
                });
            }
            Ok(t)
        };
        let weight = |name: &str, rows: usize, cols: usize| HostWeight::load(src, name, [rows, cols], dtype, opts);
        let up = |t: HostTensor| b.tensor(&t).map_err(ModelError::from);
        let norm = |name: &str, n: usize| up(norm_weight(src, name, n, dtype, flags.norm_plus_one)?);
        let shared = Shared::new(b, &cfg, dtype, max_ctx)?;
        let embed = weight("model.embed_tokens.weight", cfg.vocab_size, c)?.upload_embedding(b)?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let qkv = fuse(
                b,
                vec![
                    weight(&format!("{p}.self_attn.q_proj.weight"), h * d, c)?,
                    weight(&format!("{p}.self_attn.k_proj.weight"), hkv * d, c)?,
                    weight(&format!("{p}.self_attn.v_proj.weight"), hkv * d, c)?,
                ],
            )?;
            let qkv_bias = if cfg.attention_bias {
                Some(up(concat_rows(&[
                    get(&format!("{p}.self_attn.q_proj.bias"), &[h * d])?,
                    get(&format!("{p}.self_attn.k_proj.bias"), &[hkv * d])?,
                    get(&format!("{p}.self_attn.v_proj.bias"), &[hkv * d])?,
                ]))?)
            } else {
                None
            };
            let qk_norm = match flags.qk_norm {
                true => Some(QkNormWeights {
                    q: norm(&format!("{p}.self_attn.q_norm.weight"), d)?,
                    k: norm(&format!("{p}.self_attn.k_norm.weight"), d)?,
                }),
                false => None,
            };
            let gate_up = fuse(
                b,
                vec![
                    weight(&format!("{p}.mlp.gate_proj.weight"), i, c)?,
                    weight(&format!("{p}.mlp.up_proj.weight"), i, c)?,
                ],
            )?;
            // Gemma's post_attention_layernorm is on the attention output; Llama's is the
            // MLP's input norm
            let (post_attn_norm, mlp_norm, post_mlp_norm) = match flags.sandwich_norms {
                true => (
                    Some(norm(&format!("{p}.post_attention_layernorm.weight"), c)?),
                    norm(&format!("{p}.pre_feedforward_layernorm.weight"), c)?,
                    Some(norm(&format!("{p}.post_feedforward_layernorm.weight"), c)?),
                ),
                false => (None, norm(&format!("{p}.post_attention_layernorm.weight"), c)?, None),
            };
            layers.push(Layer {
                attn_norm: norm(&format!("{p}.input_layernorm.weight"), c)?,
                qkv,
                qkv_bias,
                qk_norm,
                o_proj: weight(&format!("{p}.self_attn.o_proj.weight"), c, h * d)?.upload(b)?,
                post_attn_norm,
                mlp_norm,
                gate_up,
                down: weight(&format!("{p}.mlp.down_proj.weight"), c, i)?.upload(b)?,
                post_mlp_norm,
                window: shared.window(&cfg, l),
                rope: shared.rope(&cfg, l),
            });
        }
        let norm = norm("model.norm.weight", c)?;
        // validate_weights (run by hub::open_model) refuses untied weights without lm_head
        let lm_head = if cfg.tie_word_embeddings {
            embed.as_linear()
        } else {
            weight("lm_head.weight", cfg.vocab_size, c)?.upload(b)?
        };
        Ok(shared.finish(cfg, dtype, embed, layers, norm, lm_head))
    }

    /// Random weights created on the backend (no files): uniform, scaled like an
    /// initialised model so activations stay finite; norms are ones.
    pub fn random(b: &B, cfg: ModelConfig, dtype: DType, max_ctx: usize, seed: u64) -> Result<Self, ModelError> {
        let (c, h, hkv, d, i) = dims(&cfg);
        let mut seed = seed;
        let mut rand = |dims: &[usize], scale: f32| -> TResult<Tensor<B>> {
            let t = b.zeros(dtype, dims)?;
            seed = seed.wrapping_add(0x9E37_79B9);
            b.fill_uniform(&t, seed, scale)?;
            Ok(t)
        };
        let w = |fan_in: usize| 1.0 / (fan_in as f32).sqrt();
        let shared = Shared::new(b, &cfg, dtype, max_ctx)?;
        let embed = rand(&[cfg.vocab_size, c], 1.0)?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let norms = LayerNorms::ones(b, &cfg.flags, dtype, c, d)?;
            layers.push(Layer {
                attn_norm: norms.attn,
                qkv: Linear::Dense(rand(&[(h + 2 * hkv) * d, c], w(c))?),
                qkv_bias: if cfg.attention_bias { Some(rand(&[(h + 2 * hkv) * d], 0.1)?) } else { None },
                qk_norm: norms.qk,
                o_proj: Linear::Dense(rand(&[c, h * d], w(h * d))?),
                post_attn_norm: norms.post_attn,
                mlp_norm: norms.mlp,
                gate_up: Linear::Dense(rand(&[2 * i, c], w(c))?),
                down: Linear::Dense(rand(&[c, i], w(i))?),
                post_mlp_norm: norms.post_mlp,
                window: shared.window(&cfg, l),
                rope: shared.rope(&cfg, l),
            });
        }
        let norm = ones(b, dtype, c)?;
        let lm_head = if cfg.tie_word_embeddings {
            Linear::Dense(embed.clone())
        } else {
            Linear::Dense(rand(&[cfg.vocab_size, c], w(c))?)
        };
        Ok(shared.finish(cfg, dtype, Embedding::Dense(embed), layers, norm, lm_head))
    }

    /// Random weights quantized on the host to `qtype` (rows that are not whole blocks fall
    /// back as `--quantize` does): a quantized model without files, for tests and benches.
    pub fn random_quantized(
        b: &B,
        cfg: ModelConfig,
        dtype: DType,
        max_ctx: usize,
        seed: u64,
        qtype: QuantType,
    ) -> Result<Self, ModelError> {
        let mut rng = encore_tensor::testing::Rng::seeded(seed);
        let weight = move |name: &str, rows: usize, cols: usize, scale: f32| -> Result<HostWeight, ModelError> {
            let values = rng.vec(rows * cols, -scale, scale);
            Ok(match crate::quantize::type_for(qtype, cols) {
                Some(t) => HostWeight::Quant(crate::quantize::quantize(name, t, &values, rows, cols)?),
                None => HostWeight::Dense(HostTensor::from_f32_as(&[rows, cols], &values, dtype)),
            })
        };
        Self::random_from(b, cfg, dtype, max_ctx, weight)
    }

    /// Random blocks of `qtype` for every weight whose rows are whole blocks (random bytes,
    /// drawn scales: `encore_tensor::quant::random_blocks`; the rest in float): no host
    /// quantization, so an 8B shape takes seconds, for benches of the quantized kernels.
    pub fn random_blocks(
        b: &B,
        cfg: ModelConfig,
        dtype: DType,
        max_ctx: usize,
        seed: u64,
        qtype: QuantType,
    ) -> Result<Self, ModelError> {
        let mut rng = encore_tensor::testing::Rng::seeded(seed);
        let weight = move |_: &str, rows: usize, cols: usize, scale: f32| -> Result<HostWeight, ModelError> {
            Ok(if cols % qtype.block_len() == 0 {
                HostWeight::Quant(encore_tensor::quant::random_blocks(&mut rng, qtype, rows, cols))
            } else {
                HostWeight::Dense(HostTensor::from_f32_as(&[rows, cols], &rng.vec(rows * cols, -scale, scale), dtype))
            })
        };
        Self::random_from(b, cfg, dtype, max_ctx, weight)
    }

    /// The random models' layout: `weight(name, rows, cols, scale)` makes each projection
    /// (and the embedding) of values within +-scale.
    fn random_from(
        b: &B,
        cfg: ModelConfig,
        dtype: DType,
        max_ctx: usize,
        mut weight: impl FnMut(&str, usize, usize, f32) -> Result<HostWeight, ModelError>,
    ) -> Result<Self, ModelError> {
        let (c, h, hkv, d, i) = dims(&cfg);
        let w = |fan_in: usize| 1.0 / (fan_in as f32).sqrt();
        let shared = Shared::new(b, &cfg, dtype, max_ctx)?;
        let embed = weight("embed", cfg.vocab_size, c, 1.0)?.upload_embedding(b)?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let bias = match cfg.attention_bias {
                true => Some(match weight("bias", 1, (h + 2 * hkv) * d, 0.1)? {
                    HostWeight::Dense(t) => b.tensor(&HostTensor { dims: vec![(h + 2 * hkv) * d], ..t })?,
                    HostWeight::Quant(q) => b.tensor(&HostTensor::from_f32_as(&[q.cols], &q.dequantize(), dtype))?,
                }),
                false => None,
            };
            let norms = LayerNorms::ones(b, &cfg.flags, dtype, c, d)?;
            layers.push(Layer {
                attn_norm: norms.attn,
                qkv: weight("qkv", (h + 2 * hkv) * d, c, w(c))?.upload(b)?,
                qkv_bias: bias,
                qk_norm: norms.qk,
                o_proj: weight("o_proj", c, h * d, w(h * d))?.upload(b)?,
                post_attn_norm: norms.post_attn,
                mlp_norm: norms.mlp,
                gate_up: weight("gate_up", 2 * i, c, w(c))?.upload(b)?,
                down: weight("down", c, i, w(i))?.upload(b)?,
                post_mlp_norm: norms.post_mlp,
                window: shared.window(&cfg, l),
                rope: shared.rope(&cfg, l),
            });
        }
        let norm = ones(b, dtype, c)?;
        let lm_head = if cfg.tie_word_embeddings {
            embed.as_linear()
        } else {
            weight("lm_head", cfg.vocab_size, c, w(c))?.upload(b)?
        };
        Ok(shared.finish(cfg, dtype, embed, layers, norm, lm_head))
    }

    /// Bytes of weights one decode step reads (the HBM floor's numerator).
    pub fn weight_bytes(&self) -> usize {
        let bytes = |t: &Tensor<B>| t.numel() * t.dtype().size_in_bytes();
        let mut n = bytes(&self.norm) + self.lm_head.bytes();
        for l in &self.layers {
            n += bytes(&l.attn_norm) + l.qkv.bytes() + l.o_proj.bytes() + bytes(&l.mlp_norm);
            n += l.gate_up.bytes() + l.down.bytes() + l.qkv_bias.as_ref().map_or(0, bytes);
            n += l.qk_norm.as_ref().map_or(0, |qk| bytes(&qk.q) + bytes(&qk.k));
            n += l.post_attn_norm.as_ref().map_or(0, bytes) + l.post_mlp_norm.as_ref().map_or(0, bytes);
        }
        n
    }

    /// Bytes of every weight held (the embedding once more when it is not the LM head).
    pub fn resident_weight_bytes(&self) -> usize {
        let tied = matches!((&self.embed, &self.lm_head),
            (Embedding::Dense(e), Linear::Dense(h)) if e.same_storage(h))
            || matches!((&self.embed, &self.lm_head),
            (Embedding::Quant(e), Linear::Quant(h)) if e.data().same_storage(h.data()));
        self.weight_bytes() + if tied { 0 } else { self.embed.bytes() }
    }

    /// The storage of the projection weights, e.g. "Q4_1 (lm_head Q8_0)" or "bf16".
    pub fn weight_kinds(&self) -> String {
        let mut kinds: Vec<String> = Vec::new();
        for l in &self.layers {
            for k in [l.qkv.kind(), l.o_proj.kind(), l.gate_up.kind(), l.down.kind()] {
                for k in k.split('+') {
                    if !kinds.iter().any(|x| x == k) {
                        kinds.push(k.to_string());
                    }
                }
            }
        }
        format!("{} (lm_head {})", kinds.join("/"), self.lm_head.kind())
    }

    /// Bytes [`Llama::new_state`] allocates.
    pub fn state_bytes(&self, max_tokens: usize, max_logit_rows: usize) -> usize {
        let (c, h, hkv, d, i) = dims(&self.cfg);
        let per_token = 2 * c + (h + 2 * hkv) * d + h * d + hkv * d + h * d + 2 * i + i;
        let e = self.dtype.size_in_bytes();
        max_tokens * per_token * e + max_logit_rows * (c * e + self.cfg.vocab_size * 4 + 4)
    }

    pub fn new_state(&self, b: &B, max_tokens: usize, max_logit_rows: usize) -> TResult<RunState<B>> {
        let (c, h, hkv, d, i) = dims(&self.cfg);
        let (t, dt) = (max_tokens, self.dtype);
        Ok(RunState {
            max_tokens,
            max_logit_rows,
            x: b.zeros(dt, &[t, c])?,
            xn: b.zeros(dt, &[t, c])?,
            qkv: b.zeros(dt, &[t, (h + 2 * hkv) * d])?,
            q: b.zeros(dt, &[t, h, d])?,
            k: b.zeros(dt, &[t, hkv, d])?,
            attn: b.zeros(dt, &[t, h, d])?,
            gate_up: b.zeros(dt, &[t, 2 * i])?,
            act: b.zeros(dt, &[t, i])?,
            head: b.zeros(dt, &[max_logit_rows, c])?,
            logits: b.zeros(DType::F32, &[max_logit_rows, self.cfg.vocab_size])?,
            next: b.zeros(DType::U32, &[max_logit_rows])?,
        })
    }

    pub fn new_cache(&self, b: &B, num_blocks: usize, block_size: usize) -> TResult<KvCache<B>> {
        let (_, _, hkv, d, _) = dims(&self.cfg);
        KvCache::new(b, self.dtype, self.cfg.num_hidden_layers, num_blocks, block_size, hkv, d)
    }

    /// Bytes of KV cache one token takes (all layers, K and V).
    pub fn kv_bytes_per_token(&self) -> usize {
        let (_, _, hkv, d, _) = dims(&self.cfg);
        KvCache::<B>::bytes_per_token(self.cfg.num_hidden_layers, hkv, d, self.dtype)
    }

    /// One forward pass over the first `t` token rows of `inp`, which are `kind`'s rows.
    /// Logits are computed for the token rows named by the first `n_logits` logit rows into
    /// the first rows of `st.logits`, and the next token of each into `st.next`, chosen by
    /// each row's own sampling settings (greedy or sampled with its uniform). Allocates
    /// nothing. Runs in the backend's [`Backend::scoped`] context.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        b: &B,
        st: &RunState<B>,
        inp: &StepInputs<B>,
        cache: &KvCache<B>,
        t: usize,
        n_logits: usize,
        kind: StepKind,
    ) -> TResult<()> {
        b.scoped(|| self.forward_in_place(b, st, inp, cache, t, n_logits, kind))
    }

    #[allow(clippy::too_many_arguments)]
    fn forward_in_place(
        &self,
        b: &B,
        st: &RunState<B>,
        inp: &StepInputs<B>,
        cache: &KvCache<B>,
        t: usize,
        n_logits: usize,
        kind: StepKind,
    ) -> TResult<()> {
        let (_, h, hkv, d, _) = dims(&self.cfg);
        let rows = |x: &Tensor<B>| x.narrow(0, 0, t);
        let (x, xn) = (rows(&st.x)?, rows(&st.xn)?);
        let (qkv, q, k, attn) = (rows(&st.qkv)?, rows(&st.q)?, rows(&st.k)?, rows(&st.attn)?);
        let (gate_up, act) = (rows(&st.gate_up)?, rows(&st.act)?);
        let eps = self.cfg.rms_norm_eps;
        let step = AttnStep {
            positions: inp.positions(t)?,
            row_seq: inp.row_seq(t)?,
            slots: inp.slot_mapping(t)?,
            tables: inp.block_tables()?,
            heads: (h, hkv, d),
            scale: self.cfg.attention_scale(),
            block_size: cache.block_size as u32,
            eps,
            kind,
        };

        // embed (Gemma: times sqrt(C), rounded to the compute dtype as transformers does)
        self.embed.forward(b, &inp.ids(t)?, &x)?;
        if let Some(factor) = &self.embed_scale {
            b.binary(BinaryOp::Mul, &x, &factor.broadcast_as(x.dims())?, &x)?;
        }
        for (l, layer) in self.layers.iter().enumerate() {
            // attention block: x += o_proj(attn(rope(q), rope(k), v)), the add fused into the
            // GEMM (Gemma: x += norm(o_proj(...)))
            layer.qkv.forward_normed(b, &x, (&layer.attn_norm, eps), &xn, &qkv)?;
            if let Some(bias) = &layer.qkv_bias {
                b.binary(BinaryOp::Add, &qkv, bias, &qkv)?;
            }
            layer.attend(b, &step, &qkv, (&q, &k), (&cache.k[l], &cache.v[l]), &attn)?;
            let attn = attn.reshape(&[t, h * d])?;
            residual_add(b, layer.post_attn_norm.as_ref(), eps, &xn, &x, |dst, add| {
                layer.o_proj.run(b, &attn, dst, add)
            })?;
            // MLP block: x += down(act(gate) * up) (Gemma: x += norm(down(...))), fused where
            // the backend can (mlp.rs); with Gemma's post-norm its output goes to xn, which
            // the MLP writes last
            let mlp = GatedMlp {
                gate_up: &layer.gate_up,
                down: &layer.down,
                norm: (&layer.mlp_norm, eps),
                act: self.cfg.flags.activation,
            };
            let scratch = MlpScratch { xn: &xn, gate_up: &gate_up, act: &act };
            residual_add(b, layer.post_mlp_norm.as_ref(), eps, &xn, &x, |dst, add| {
                mlp.forward(b, &x, &scratch, dst, add)
            })?;
        }
        // head: gather the rows whose logits are wanted (into xn, free now), norm, LM head,
        // then the next token of each
        let n = n_logits;
        let picked = xn.narrow(0, 0, n)?;
        b.embedding(&inp.logit_rows(n)?, &x, &picked)?;
        let head = st.head.narrow(0, 0, n)?;
        b.rms_norm(&picked, &self.norm, eps, &head)?;
        let logits = st.logits.narrow(0, 0, n)?;
        self.lm_head.forward(b, &head, &logits)?;
        if let Some((inv_cap, cap)) = &self.softcap {
            // logits = cap * tanh(logits / cap), in place
            b.binary(BinaryOp::Mul, &logits, &inv_cap.broadcast_as(logits.dims())?, &logits)?;
            b.unary(UnaryOp::Tanh, &logits, &logits)?;
            b.binary(BinaryOp::Mul, &logits, &cap.broadcast_as(logits.dims())?, &logits)?;
        }
        let next = st.next.narrow(0, 0, n)?;
        b.sample(&logits, &inp.uniform(n)?, &inp.sampling(n)?, &next)
    }
}

/// What every layer's attention reads of one step.
struct AttnStep<B: Backend> {
    positions: Tensor<B>, // [T] i32
    row_seq: Tensor<B>,   // [T] i32
    slots: Tensor<B>,     // [T] i32
    tables: Tensor<B>,    // [R, MB] i32
    /// (H, Hkv, D)
    heads: (usize, usize, usize),
    scale: f32,
    block_size: u32,
    eps: f32,
    kind: StepKind,
}

impl<B: Backend> Layer<B> {
    /// `attn = attention(rope(q), rope(k), v)` over the layer's cache `(k, v)`, the step's k
    /// and v written into it first; q, k, v are the heads of `qkv` (`[T, (H + 2 Hkv) D]`),
    /// `scratch` the contiguous q and k (`[T, H, D]`, `[T, Hkv, D]`) for the rotated ones.
    fn attend(
        &self,
        b: &B,
        st: &AttnStep<B>,
        qkv: &Tensor<B>,
        scratch: (&Tensor<B>, &Tensor<B>),
        (kc, vc): (&Tensor<B>, &Tensor<B>),
        attn: &Tensor<B>,
    ) -> TResult<()> {
        let (h, hkv, d) = st.heads;
        let t = qkv.dims()[0];
        let q_raw = qkv.narrow(1, 0, h * d)?.reshape(&[t, h, d])?;
        let k_raw = qkv.narrow(1, h * d, hkv * d)?.reshape(&[t, hkv, d])?;
        let v_raw = qkv.narrow(1, (h + hkv) * d, hkv * d)?.reshape(&[t, hkv, d])?;
        let (q, k) = scratch;
        let Rope { cos, sin } = &self.rope;
        let params = AttentionParams { scale: st.scale, sliding_window: self.window, block_size: st.block_size };
        let AttnStep { positions, row_seq, slots, tables, .. } = st;
        let a = DecodeAttention {
            q: &q_raw,
            k: &k_raw,
            v: &v_raw,
            cos,
            sin,
            positions,
            slot_mapping: slots,
            q_rot: q,
            k_cache: kc,
            v_cache: vc,
            block_tables: tables,
            row_seq,
            params,
            // per-head RMSNorm before RoPE (the composed ops norm k into the k scratch)
            qk_norm: self.qk_norm.as_ref().map(|n| QkNorm { q: &n.q, k: &n.k, eps: st.eps, k_normed: k }),
        };
        match st.kind {
            // RoPE of q and k, the K/V write and attention in one op (one launch on CUDA
            // without qk_norm; two with it)
            StepKind::Decode => b.decode_attention(&a, attn),
            // RoPE of q and k (qk_norm first) and the K/V write in one launch, then attention
            StepKind::Mixed => a.unfused(b, attn),
        }
    }
}

/// (C, H, Hkv, D, I)
fn dims(cfg: &ModelConfig) -> (usize, usize, usize, usize, usize) {
    (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.intermediate_size)
}

fn ones<B: Backend>(b: &B, dtype: DType, n: usize) -> TResult<Tensor<B>> {
    b.tensor(&HostTensor::from_f32_as(&[n], &vec![1.0; n], dtype))
}

/// `x += proj`, the add fused into the GEMM (`proj(dst, accumulate)` computes into dst);
/// with a post-norm (Gemma's sandwich), `x += norm(proj)` through `scratch` (`[T, C]`, like
/// `x`).
fn residual_add<B: Backend>(
    b: &B,
    post_norm: Option<&Tensor<B>>,
    eps: f32,
    scratch: &Tensor<B>,
    x: &Tensor<B>,
    proj: impl FnOnce(&Tensor<B>, bool) -> TResult<()>,
) -> TResult<()> {
    match post_norm {
        None => proj(x, true),
        Some(w) => {
            proj(scratch, false)?;
            b.rms_norm(scratch, w, eps, scratch)?;
            b.binary(BinaryOp::Add, x, scratch, x)
        }
    }
}

/// A norm weight `[n]` in the compute dtype. Gemma stores `w` and scales by `1 + w`, which
/// transformers adds in f32: added here in f32 before rounding to `dtype`.
fn norm_weight(
    src: &dyn WeightSource,
    name: &str,
    n: usize,
    dtype: DType,
    plus_one: bool,
) -> Result<HostTensor, ModelError> {
    if !plus_one {
        return src.get_shaped(name, &[n], dtype);
    }
    let w = src.get_shaped(name, &[n], DType::F32)?.to_f32();
    let w: Vec<f32> = w.iter().map(|v| 1.0 + v).collect();
    Ok(HostTensor::from_f32_as(&[n], &w, dtype))
}

/// What every constructor builds the same way: the RoPE tables (global, and the sliding
/// layers' local ones), the embedding scale and the soft-capping constants.
struct Shared<B: Backend> {
    global: Rope<B>,
    local: Rope<B>,
    embed_scale: Option<Tensor<B>>,
    softcap: Option<(Tensor<B>, Tensor<B>)>,
}

impl<B: Backend> Shared<B> {
    fn new(b: &B, cfg: &ModelConfig, dtype: DType, max_ctx: usize) -> Result<Self, ModelError> {
        let global = rope_tables(b, cfg.head_dim, max_ctx, cfg.rope_theta, &cfg.rope_scaling)?;
        let local = match cfg.flags.rope_local_theta {
            Some(theta) => rope_tables(b, cfg.head_dim, max_ctx, theta, &rope::RopeScaling::None)?,
            None => global.clone(),
        };
        let scalar = |v: f32, dt: DType| b.tensor(&HostTensor::from_f32_as(&[1], &[v], dt));
        let ArchFlags { scale_embeddings, final_logit_softcapping, .. } = cfg.flags;
        let embed_scale = match scale_embeddings {
            true => Some(scalar((cfg.hidden_size as f32).sqrt(), dtype)?),
            false => None,
        };
        let softcap = match final_logit_softcapping {
            Some(cap) => Some((scalar(1.0 / cap, DType::F32)?, scalar(cap, DType::F32)?)),
            None => None,
        };
        Ok(Shared { global, local, embed_scale, softcap })
    }

    fn window(&self, cfg: &ModelConfig, l: usize) -> u32 {
        cfg.layer_window(l).unwrap_or(0) as u32
    }

    fn rope(&self, cfg: &ModelConfig, l: usize) -> Rope<B> {
        if cfg.layer_uses_local_rope(l) {
            self.local.clone()
        } else {
            self.global.clone()
        }
    }

    fn finish(
        self,
        cfg: ModelConfig,
        dtype: DType,
        embed: Embedding<B>,
        layers: Vec<Layer<B>>,
        norm: Tensor<B>,
        lm_head: Linear<B>,
    ) -> Llama<B> {
        Llama { cfg, dtype, embed, embed_scale: self.embed_scale, layers, norm, lm_head, softcap: self.softcap }
    }
}

/// A layer's norm weights as ones (random models): the flags say which exist.
struct LayerNorms<B: Backend> {
    attn: Tensor<B>,
    qk: Option<QkNormWeights<B>>,
    post_attn: Option<Tensor<B>>,
    mlp: Tensor<B>,
    post_mlp: Option<Tensor<B>>,
}

impl<B: Backend> LayerNorms<B> {
    fn ones(b: &B, flags: &ArchFlags, dtype: DType, c: usize, d: usize) -> TResult<Self> {
        let sandwich = |on: bool| if on { ones(b, dtype, c).map(Some) } else { Ok(None) };
        Ok(LayerNorms {
            attn: ones(b, dtype, c)?,
            qk: match flags.qk_norm {
                true => Some(QkNormWeights { q: ones(b, dtype, d)?, k: ones(b, dtype, d)? }),
                false => None,
            },
            post_attn: sandwich(flags.sandwich_norms)?,
            mlp: ones(b, dtype, c)?,
            post_mlp: sandwich(flags.sandwich_norms)?,
        })
    }
}

fn rope_tables<B: Backend>(
    b: &B,
    d: usize,
    max_ctx: usize,
    theta: f32,
    scaling: &rope::RopeScaling,
) -> Result<Rope<B>, ModelError> {
    let (cos, sin) = rope::try_tables(d, max_ctx, theta, scaling)?;
    let cos = b.tensor(&HostTensor::from_f32(&[max_ctx, d / 2], &cos))?;
    let sin = b.tensor(&HostTensor::from_f32(&[max_ctx, d / 2], &sin))?;
    Ok(Rope { cos, sin })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::{GgufFile, GgufWeights};
    use encore_cpu::Cpu;

    /// Prefill logits of `model` over `ids` (one sequence, one 16-slot block per 16 tokens).
    fn prefill_logits(model: &Llama<Cpu>, ids: &[u32]) -> Vec<f32> {
        use crate::step_inputs::{HostInputs, InputDims, LogitRow, StepInputs, TokenRow};
        let t = ids.len();
        let blocks = t.div_ceil(16);
        let state = model.new_state(&Cpu, t, t).unwrap();
        let inputs = StepInputs::new(&Cpu, InputDims { max_tokens: t, max_seqs: t, max_blocks: blocks }).unwrap();
        let cache = model.new_cache(&Cpu, blocks, 16).unwrap();
        let mut host = HostInputs { block_tables: vec![(0..blocks as i32).collect()], ..Default::default() };
        for (p, &id) in ids.iter().enumerate() {
            host.tokens.push(TokenRow { id, position: p as i32, seq: 0, slot: p as i32 });
            host.logits.push(LogitRow::greedy(p as i32));
        }
        inputs.upload(&Cpu, &host).unwrap();
        model.forward(&Cpu, &state, &inputs, &cache, t, t, StepKind::Mixed).unwrap();
        Cpu.download(&state.logits).unwrap().to_f32()
    }

    /// `--quantize` on a float safetensors model: the projections, the embedding and the LM
    /// head become Q8_0 (the tiny model's rows of 64 and 128 are not whole Q4_K blocks: q4_k
    /// falls back to Q8_0), and the logits stay within Q8_0's error of the float model's.
    #[test]
    fn in_situ_quantization_keeps_the_float_models_logits() {
        let dir = crate::golden::golden_dir().join("tiny-llama3");
        let files = crate::hub::open_model(&dir).unwrap();
        let ids: Vec<u32> = (0..20).map(|i| (i * 37 % 512) as u32).collect();
        let dense = Llama::load(&Cpu, files.config.clone(), files.weights.as_ref(), DType::F32, 64).unwrap();
        let want = prefill_logits(&dense, &ids);
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        for qt in crate::quantize::QUANTIZE_TYPES {
            let opts = LoadOptions { quantize: Some(qt), ..Default::default() };
            let q =
                Llama::load_with(&Cpu, files.config.clone(), files.weights.as_ref(), DType::F32, 64, &opts).unwrap();
            assert_eq!(q.weight_kinds(), "Q8_0 (lm_head Q8_0)", "{qt}");
            assert!(
                q.resident_weight_bytes() * 3 < dense.resident_weight_bytes(),
                "{qt}: quantized weights are smaller"
            );
            let got = prefill_logits(&q, &ids);
            let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(worst <= 0.05 * scale, "{qt}: max |logit diff| {worst} (scale {scale})");
        }
    }

    /// The default model (Q4_1 projections, Q8_0 tied embedding) loads without
    /// dequantization: the weights held are the GGUF's tensor bytes, within 5%.
    #[test]
    fn quantized_weights_take_the_gguf_tensor_bytes() {
        let path = crate::hub::default_model_path().expect("fetching the default model");
        let file = GgufFile::open(&path).unwrap();
        let gguf_bytes: usize = file.tensors.iter().map(|t| t.end - t.start).sum();
        let cfg = file.model_config().unwrap();
        let src = GgufWeights::new(file).unwrap();
        let model = Llama::load(&Cpu, cfg, &src, DType::F32, 64).unwrap();
        let held = model.resident_weight_bytes();
        assert_eq!(model.weight_kinds(), "Q4_1 (lm_head Q8_0)");
        let ratio = held as f64 / gguf_bytes as f64;
        eprintln!("weights held {held} bytes, GGUF tensors {gguf_bytes} bytes");
        assert!((0.95..=1.05).contains(&ratio), "{held} bytes held for {gguf_bytes} in the GGUF ({ratio:.3})");
    }
}
