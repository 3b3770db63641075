//! The decoder config of a GGUF file, from its metadata: every key is read under
//! `{general.architecture}.` (`llama.embedding_length`, `qwen2.embedding_length`, ...), the
//! common ones by [`GgufFile::model_config`], what differs per architecture by one function
//! each (`llama_config`, `qwen2_config`, ...). Llama-3 RoPE scaling comes as the
//! `rope_freqs.weight` tensor (per-frequency divisors) and becomes [`RopeScaling::Factors`].
//! Not here: tensor names (`gguf.rs`) and the tokenizer (`tokenizer.rs`).

use crate::config::{Arch, ArchFlags, GluActivation, ModelConfig};
use crate::dequant::GgmlType;
use crate::error::{escaped, Result};
use crate::gguf::{GgufFile, GgufValue};
use encore_tensor::rope::RopeScaling;

/// The GGUF architectures (`general.architecture`) encore reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgufArch {
    Llama,
    /// Not written by llama.cpp's converter (it writes Mistral 7B as `llama`), but by others.
    Mistral,
    Qwen2,
    Qwen3,
    Gemma3,
}

impl GgufArch {
    pub const SUPPORTED: &'static str = "llama, mistral, qwen2, qwen3, gemma3";

    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "llama" => GgufArch::Llama,
            "mistral" => GgufArch::Mistral,
            "qwen2" => GgufArch::Qwen2,
            "qwen3" => GgufArch::Qwen3,
            "gemma3" => GgufArch::Gemma3,
            _ => return None,
        })
    }

    /// The metadata key prefix (`{name}.block_count`).
    pub fn name(self) -> &'static str {
        match self {
            GgufArch::Llama => "llama",
            GgufArch::Mistral => "mistral",
            GgufArch::Qwen2 => "qwen2",
            GgufArch::Qwen3 => "qwen3",
            GgufArch::Gemma3 => "gemma3",
        }
    }

    /// llama.cpp's converter interleaves the rope pairs of Q/K rows (`LlamaModel.permute`)
    /// only for the architectures it runs with "normal" (GPT-J style) RoPE; the NeoX-style
    /// ones (Qwen2/3, Gemma 3) keep the Hugging Face row order.
    pub fn permutes_qk(self) -> bool {
        matches!(self, GgufArch::Llama | GgufArch::Mistral)
    }
}

impl GgufFile {
    /// `general.architecture`, checked to be one encore reads.
    pub fn arch(&self) -> Result<GgufArch> {
        let key = "general.architecture";
        let name = self.str(key).ok_or_else(|| self.field_err(key, "missing"))?;
        GgufArch::from_name(name).ok_or_else(|| {
            self.field_err(
                key,
                format!("`{}` is not supported in GGUF (supported: {})", escaped(name), GgufArch::SUPPORTED),
            )
        })
    }

    /// `{arch}.{k}` (the architecture already checked).
    fn arch_key(&self, k: &str) -> String {
        let arch = self.str("general.architecture").unwrap_or("llama");
        format!("{arch}.{k}")
    }

    /// The decoder config: the keys every architecture shares, then its own.
    pub fn model_config(&self) -> Result<ModelConfig> {
        let arch = self.arch()?;
        let cfg = self.common_config()?;
        let cfg = match arch {
            GgufArch::Llama => self.llama_config(cfg)?,
            GgufArch::Mistral => self.mistral_config(cfg)?,
            GgufArch::Qwen2 => self.qwen2_config(cfg)?,
            GgufArch::Qwen3 => self.qwen3_config(cfg)?,
            GgufArch::Gemma3 => self.gemma3_config(cfg)?,
        };
        cfg.validate(&self.path().display().to_string())?;
        Ok(cfg)
    }

    /// Shapes, norms, RoPE, vocabulary and special tokens, as `llama.*` defines them (every
    /// architecture here uses the same key names under its own prefix); `arch` is Llama until
    /// the per-architecture function sets it.
    fn common_config(&self) -> Result<ModelConfig> {
        let key = |k: &str| self.arch_key(k);
        let hidden_size = self.usize(&key("embedding_length"))?;
        let num_attention_heads = self.usize(&key("attention.head_count"))?;
        let num_key_value_heads =
            self.opt_u64(&key("attention.head_count_kv"))?.map_or(num_attention_heads, |v| v as usize);
        let head_dim = match self.opt_u64(&key("attention.key_length"))? {
            Some(d) => d as usize,
            None if num_attention_heads > 0 => hidden_size / num_attention_heads,
            None => return Err(self.field_err(&key("attention.head_count"), "must be positive")),
        };
        if let Some(rot) = self.opt_u64(&key("rope.dimension_count"))? {
            if rot as usize != head_dim {
                return Err(self.field_err(
                    &key("rope.dimension_count"),
                    format!("{rot} != head dim {head_dim}: partial RoPE is not supported"),
                ));
            }
        }
        let vocab_size = match self.opt_u64(&key("vocab_size"))? {
            Some(v) => v as usize,
            None => self
                .get("tokenizer.ggml.tokens")
                .and_then(GgufValue::as_array)
                .map(|a| a.len())
                .ok_or_else(|| self.field_err(&key("vocab_size"), "missing, and no tokenizer.ggml.tokens"))?,
        };
        let mut eos_token_ids: Vec<u32> = self.token("tokenizer.ggml.eos_token_id")?.into_iter().collect();
        if let Some(eot) = self.token("tokenizer.ggml.eot_token_id")? {
            if !eos_token_ids.contains(&eot) {
                eos_token_ids.push(eot);
            }
        }
        Ok(ModelConfig {
            arch: Arch::Llama,
            hidden_size,
            intermediate_size: self.usize(&key("feed_forward_length"))?,
            num_hidden_layers: self.usize(&key("block_count"))?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            vocab_size,
            rms_norm_eps: self
                .opt_f64(&key("attention.layer_norm_rms_epsilon"))?
                .ok_or_else(|| self.field_err(&key("attention.layer_norm_rms_epsilon"), "missing"))?
                as f32,
            rope_theta: self.opt_f64(&key("rope.freq_base"))?.unwrap_or(10000.0) as f32,
            rope_scaling: self.rope_scaling(head_dim)?,
            max_position_embeddings: self.usize(&key("context_length"))?,
            tie_word_embeddings: !self.tensors.iter().any(|t| t.name == "output.weight"),
            attention_bias: false,
            sliding_window: None,
            bos_token_id: self.token("tokenizer.ggml.bos_token_id")?,
            eos_token_ids,
            torch_dtype: None,
            flags: ArchFlags::default(),
        })
    }

    fn token(&self, k: &str) -> Result<Option<u32>> {
        self.opt_u64(k)?
            .map(|v| u32::try_from(v).map_err(|_| self.field_err(k, format!("{v} is not a token id"))))
            .transpose()
    }

    /// `{arch}.rope.scaling.type` (none / linear), or the `rope_freqs.weight` divisors.
    fn rope_scaling(&self, head_dim: usize) -> Result<RopeScaling> {
        let key = |k: &str| self.arch_key(k);
        let kind_key = key("rope.scaling.type");
        let from_keys = match self.str(&kind_key) {
            None | Some("none") => RopeScaling::None,
            Some("linear") => {
                let k = key("rope.scaling.factor");
                let factor = self.opt_f64(&k)?.ok_or_else(|| self.field_err(&k, "missing"))?;
                RopeScaling::Linear { factor: factor as f32 }
            }
            Some(other) => {
                return Err(self.field_err(&kind_key, format!("`{}` is not supported (none, linear)", escaped(other))))
            }
        };
        match (self.rope_freqs(head_dim)?, from_keys) {
            (None, s) => Ok(s),
            (Some(divisors), RopeScaling::None) => Ok(RopeScaling::Factors { divisors }),
            (Some(_), _) => Err(self.field_err(&kind_key, "linear scaling together with rope_freqs.weight")),
        }
    }

    /// The `rope_freqs.weight` tensor: `D/2` positive f32 divisors of the base frequencies.
    fn rope_freqs(&self, head_dim: usize) -> Result<Option<Vec<f32>>> {
        let name = "rope_freqs.weight";
        let Some(info) = self.tensors.iter().find(|t| t.name == name) else { return Ok(None) };
        let half = head_dim / 2;
        match &info.ggml_type {
            Ok(GgmlType::F32) => {}
            Ok(t) => return Err(self.field_err(name, format!("type {} (only F32 is supported)", t.name()))),
            Err(d) => return Err(self.field_err(name, format!("type {d} (only F32 is supported)"))),
        }
        if info.dims != [half] {
            return Err(
                self.field_err(name, format!("dims {:?}, expected [{half}] for head dim {head_dim}", info.dims))
            );
        }
        let divisors: Vec<f32> = self
            .tensor_bytes(info)
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().expect("chunks of 4")))
            .collect();
        if let Some((i, d)) = divisors.iter().enumerate().find(|(_, d)| !(d.is_finite() && **d > 0.0)) {
            return Err(self.field_err(name, format!("factor {i} = {d} is not a positive number")));
        }
        Ok(Some(divisors))
    }

    /// Llama (and Mistral written as `llama`): the common config as is.
    fn llama_config(&self, cfg: ModelConfig) -> Result<ModelConfig> {
        Ok(cfg)
    }

    /// Mistral: Llama plus the attention window.
    fn mistral_config(&self, cfg: ModelConfig) -> Result<ModelConfig> {
        let window = self.opt_u64(&self.arch_key("attention.sliding_window"))?.map(|w| w as usize);
        Ok(ModelConfig { arch: Arch::Mistral, sliding_window: window, ..cfg })
    }

    /// Qwen2: biases on q/k/v (the tensors `blk.N.attn_{q,k,v}.bias` must be there).
    fn qwen2_config(&self, cfg: ModelConfig) -> Result<ModelConfig> {
        if let Some(k) = self.opt_u64(&self.arch_key("attention.sliding_window"))? {
            return Err(self.field_err(
                &self.arch_key("attention.sliding_window"),
                format!("{k}: Qwen2's per-layer sliding window is not supported"),
            ));
        }
        Ok(ModelConfig { arch: Arch::Qwen2, attention_bias: true, ..cfg })
    }

    /// Qwen3: q/k RMSNorm per head, no biases.
    fn qwen3_config(&self, cfg: ModelConfig) -> Result<ModelConfig> {
        Ok(ModelConfig { arch: Arch::Qwen3, flags: ArchFlags { qk_norm: true, ..Default::default() }, ..cfg })
    }

    /// Gemma 3, as llama.cpp and transformers read it: every Gemma switch; the window
    /// `gemma3.attention.sliding_window` on all but every `sliding_window_pattern`-th layer
    /// (6 unless the file says); local RoPE base `rope.freq_base_swa` (10000 unless the file
    /// says); llama.cpp's attention scale (`head_dim^-1/2`; the 62-layer 27B uses
    /// `(C / H)^-1/2`, its `query_pre_attn_scalar`).
    fn gemma3_config(&self, cfg: ModelConfig) -> Result<ModelConfig> {
        let key = |k: &str| format!("gemma3.{k}");
        let layers = cfg.num_hidden_layers;
        // bounded before the per-layer list is built (validate runs later)
        if layers > crate::limits::MAX_LAYERS {
            return Err(self.field_err(
                &key("block_count"),
                format!("{layers} is over the limit of {} (a corrupt file?)", crate::limits::MAX_LAYERS),
            ));
        }
        let window = self.usize(&key("attention.sliding_window"))?;
        let pattern = self.opt_u64(&key("attention.sliding_window_pattern"))?.unwrap_or(6) as usize;
        if pattern == 0 {
            return Err(self.field_err(&key("attention.sliding_window_pattern"), "must be positive"));
        }
        let heads = cfg.num_attention_heads;
        let scalar = if layers == 62 && heads > 0 { cfg.hidden_size / heads } else { cfg.head_dim };
        if self.opt_f64(&key("attn_logit_softcapping"))?.is_some() {
            return Err(self.field_err(&key("attn_logit_softcapping"), "attention soft-capping is not supported"));
        }
        let flags = ArchFlags {
            qk_norm: true,
            norm_plus_one: true,
            scale_embeddings: true,
            sandwich_norms: true,
            activation: GluActivation::GeluTanh,
            query_pre_attn_scalar: Some(scalar as f32),
            sliding_layers: (0..layers).map(|l| (l + 1) % pattern != 0).collect(),
            rope_local_theta: Some(self.opt_f64(&key("rope.freq_base_swa"))?.unwrap_or(10_000.0) as f32),
            final_logit_softcapping: self.opt_f64(&key("final_logit_softcapping"))?.map(|c| c as f32),
        };
        Ok(ModelConfig { arch: Arch::Gemma3, sliding_window: Some(window), flags, ..cfg })
    }
}
