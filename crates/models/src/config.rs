//! A Hugging Face `config.json`, parsed and validated into the one [`ModelConfig`] the decoder
//! reads. Both spellings are accepted: the hub's (top-level `rope_theta`, `rope_scaling`,
//! `torch_dtype`) and transformers 5's (`rope_parameters`, `dtype`). Anything encore would have
//! to guess at (an unknown architecture, YaRN, Llama's `attention_bias`, ...) is an error that
//! names the field. GGUF metadata becomes a `ModelConfig` in `gguf.rs`.

use crate::error::{ModelError, Result};
use crate::limits;
use encore_tensor::rope::RopeScaling;
use encore_tensor::DType;
/// The MLP activation is the backend's (fused projections take it).
pub use encore_tensor::GluActivation;
use serde_json::{Map, Value};
use std::path::Path;

/// The decoder families encore runs: one decoder, switched by flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    Gemma3,
}

impl Arch {
    pub fn hf_name(self) -> &'static str {
        match self {
            Arch::Llama => "LlamaForCausalLM",
            Arch::Mistral => "MistralForCausalLM",
            Arch::Qwen2 => "Qwen2ForCausalLM",
            Arch::Qwen3 => "Qwen3ForCausalLM",
            Arch::Gemma3 => "Gemma3ForCausalLM",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    /// C
    pub hidden_size: usize,
    /// I
    pub intermediate_size: usize,
    /// L
    pub num_hidden_layers: usize,
    /// H
    pub num_attention_heads: usize,
    /// Hkv
    pub num_key_value_heads: usize,
    /// D (not always C / H: Llama-3.2 and others set it explicitly)
    pub head_dim: usize,
    /// V
    pub vocab_size: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    pub rope_scaling: RopeScaling,
    pub max_position_embeddings: usize,
    /// No `lm_head.weight`: the output projection is `model.embed_tokens.weight`.
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry biases (Qwen2); o_proj never does.
    pub attention_bias: bool,
    /// Mistral's attention window, in tokens; `None` is full attention.
    pub sliding_window: Option<usize>,
    pub bos_token_id: Option<u32>,
    /// Generation stops at any of these (may be empty).
    pub eos_token_ids: Vec<u32>,
    /// The dtype the checkpoint was saved in, if it says.
    pub torch_dtype: Option<DType>,
    /// What Qwen3 and Gemma 3 add (all off for Llama, Mistral and Qwen2).
    pub flags: ArchFlags,
}

/// The decoder switches beyond Llama's, set from the architecture and its config fields.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ArchFlags {
    /// `self_attn.{q,k}_norm.weight` `[D]`: RMSNorm of each q and k head before RoPE.
    pub qk_norm: bool,
    /// Gemma: every RMSNorm scales by `1 + w` (the stored weight is the offset from one).
    pub norm_plus_one: bool,
    /// Gemma: embedding rows are multiplied by sqrt(C) (rounded to the compute dtype).
    pub scale_embeddings: bool,
    /// Gemma's sandwich norms: `post_attention_layernorm` on the attention output,
    /// `pre_feedforward_layernorm` before the MLP, `post_feedforward_layernorm` after it.
    pub sandwich_norms: bool,
    pub activation: GluActivation,
    /// q.k is scaled by `query_pre_attn_scalar^-1/2` (Gemma); `None`: `head_dim^-1/2`.
    pub query_pre_attn_scalar: Option<f32>,
    /// Per layer, whether it attends through `sliding_window` (Gemma 3's `layer_types`);
    /// empty: every layer does when `sliding_window` is set (Mistral).
    pub sliding_layers: Vec<bool>,
    /// RoPE base of the sliding layers, unscaled (Gemma 3's `rope_local_base_freq`);
    /// `None`: every layer uses `rope_theta` and `rope_scaling`.
    pub rope_local_theta: Option<f32>,
    /// `logits = cap * tanh(logits / cap)` after the LM head.
    pub final_logit_softcapping: Option<f32>,
}

impl ModelConfig {
    /// The attention window of layer `l` (`None`: full attention).
    pub fn layer_window(&self, l: usize) -> Option<usize> {
        match self.flags.sliding_layers.get(l) {
            Some(false) => None,
            _ => self.sliding_window,
        }
    }

    /// Whether layer `l` takes the local RoPE table (`rope_local_theta`).
    pub fn layer_uses_local_rope(&self, l: usize) -> bool {
        self.flags.rope_local_theta.is_some() && self.flags.sliding_layers.get(l) == Some(&true)
    }

    /// The factor on q.k.
    pub fn attention_scale(&self) -> f32 {
        1.0 / self.flags.query_pre_attn_scalar.unwrap_or(self.head_dim as f32).sqrt()
    }
}

impl ModelConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = crate::weights::read_text(path)?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn from_json_str(json: &str) -> Result<Self> {
        Self::parse(json, "config.json")
    }

    /// `file` names the source in error messages.
    pub fn parse(json: &str, file: &str) -> Result<Self> {
        let value: Value =
            serde_json::from_str(json).map_err(|e| ModelError::config(file, "<json>", format!("invalid JSON: {e}")))?;
        let Value::Object(obj) = value else {
            return Err(ModelError::config(file, "<json>", "expected a JSON object"));
        };
        let f = Fields { file, obj: &obj };
        let arch = f.arch()?;
        let hidden_size = f.usize("hidden_size")?;
        let num_attention_heads = f.usize("num_attention_heads")?;
        let num_key_value_heads = f.opt_usize("num_key_value_heads")?.unwrap_or(num_attention_heads);
        let head_dim = match f.opt_usize("head_dim")? {
            Some(d) => d,
            None if arch == Arch::Gemma3 => 256,
            None if num_attention_heads > 0 && hidden_size % num_attention_heads == 0 => {
                hidden_size / num_attention_heads
            }
            None => return Err(f.err("head_dim", "absent, and hidden_size is not a multiple of num_attention_heads")),
        };
        let activation = f.activation(arch)?;
        if f.opt_bool("mlp_bias")?.unwrap_or(false) {
            return Err(f.err("mlp_bias", "MLP biases are not supported"));
        }
        let attention_bias = match arch {
            Arch::Qwen2 => true,
            Arch::Llama | Arch::Mistral | Arch::Qwen3 | Arch::Gemma3 => {
                if f.opt_bool("attention_bias")?.unwrap_or(false) {
                    return Err(f.err(
                        "attention_bias",
                        format!("true is not supported for {} (it biases o_proj too)", arch.hf_name()),
                    ));
                }
                false
            }
        };
        let (rope_theta, rope_scaling, rope_local_theta) = match arch {
            Arch::Gemma3 => f.gemma3_rope()?,
            _ => {
                let (theta, scaling) = f.rope()?;
                (theta, scaling, None)
            }
        };
        let default_max_pos = match arch {
            Arch::Llama => 2048,
            Arch::Gemma3 => 131072,
            _ => 32768,
        };
        let num_hidden_layers = f.usize("num_hidden_layers")?;
        let (sliding_window, sliding_layers) = f.sliding_window(arch, num_hidden_layers)?;
        let gemma = arch == Arch::Gemma3;
        let flags = ArchFlags {
            qk_norm: matches!(arch, Arch::Qwen3 | Arch::Gemma3),
            norm_plus_one: gemma,
            scale_embeddings: gemma,
            sandwich_norms: gemma,
            activation,
            query_pre_attn_scalar: match gemma {
                true => Some(f.opt_f64("query_pre_attn_scalar")?.unwrap_or(256.0) as f32),
                false => None,
            },
            sliding_layers,
            rope_local_theta,
            final_logit_softcapping: f.softcapping(arch)?,
        };
        let cfg = ModelConfig {
            arch,
            hidden_size,
            intermediate_size: f.usize("intermediate_size")?,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            vocab_size: f.usize("vocab_size")?,
            rms_norm_eps: f.opt_f64("rms_norm_eps")?.unwrap_or(1e-6) as f32,
            rope_theta,
            rope_scaling,
            max_position_embeddings: f.opt_usize("max_position_embeddings")?.unwrap_or(default_max_pos),
            // Gemma3TextConfig ties by default; the others untie
            tie_word_embeddings: f.opt_bool("tie_word_embeddings")?.unwrap_or(gemma),
            attention_bias,
            sliding_window,
            bos_token_id: f.opt_token("bos_token_id")?,
            eos_token_ids: f.token_list("eos_token_id")?,
            torch_dtype: f.dtype()?,
            flags,
        };
        cfg.validate(file)?;
        Ok(cfg)
    }

    /// Checks that hold for every config, whatever it was parsed from.
    pub fn validate(&self, file: &str) -> Result<()> {
        let positive = [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("vocab_size", self.vocab_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (field, v) in positive {
            if v == 0 {
                return Err(ModelError::config(file, field, "must be positive"));
            }
        }
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            return Err(ModelError::config(
                file,
                "num_key_value_heads",
                format!(
                    "{} does not divide num_attention_heads = {}",
                    self.num_key_value_heads, self.num_attention_heads
                ),
            ));
        }
        if self.head_dim % 2 != 0 {
            return Err(ModelError::config(file, "head_dim", format!("{} is odd; RoPE needs pairs", self.head_dim)));
        }
        if !(self.rms_norm_eps > 0.0 && self.rms_norm_eps.is_finite()) {
            return Err(ModelError::config(
                file,
                "rms_norm_eps",
                format!("{} is not a positive number", self.rms_norm_eps),
            ));
        }
        if !(self.rope_theta > 0.0 && self.rope_theta.is_finite()) {
            return Err(ModelError::config(
                file,
                "rope_theta",
                format!("{} is not a positive number", self.rope_theta),
            ));
        }
        check_rope_scaling(&self.rope_scaling, file, "rope_scaling")?;
        self.validate_sizes(file)?;
        if self.sliding_window == Some(0) {
            return Err(ModelError::config(file, "sliding_window", "must be positive or null"));
        }
        self.validate_flags(file)?;
        for (field, id) in self
            .bos_token_id
            .iter()
            .map(|&id| ("bos_token_id", id))
            .chain(self.eos_token_ids.iter().map(|&id| ("eos_token_id", id)))
        {
            if id as usize >= self.vocab_size {
                return Err(ModelError::config(
                    file,
                    field,
                    format!("{id} is outside the vocabulary of {}", self.vocab_size),
                ));
            }
        }
        Ok(())
    }

    /// The [`ArchFlags`] numbers: positive and finite, one layer kind per layer.
    fn validate_flags(&self, file: &str) -> Result<()> {
        let f = &self.flags;
        for (field, v) in [
            ("query_pre_attn_scalar", f.query_pre_attn_scalar),
            ("rope_local_base_freq", f.rope_local_theta),
            ("final_logit_softcapping", f.final_logit_softcapping),
        ] {
            if let Some(v) = v {
                if !(v > 0.0 && v.is_finite()) {
                    return Err(ModelError::config(file, field, format!("{v} is not a positive number")));
                }
            }
        }
        if !f.sliding_layers.is_empty() && f.sliding_layers.len() != self.num_hidden_layers {
            return Err(ModelError::config(
                file,
                "layer_types",
                format!("{} entries for num_hidden_layers = {}", f.sliding_layers.len(), self.num_hidden_layers),
            ));
        }
        Ok(())
    }

    /// Every count the loader allocates by is bounded ([`limits::MAX_LAYERS`],
    /// [`limits::MAX_DIM`]) and the parameter count fits 64 bits, so a corrupt number fails
    /// here with its field name instead of aborting an allocation later.
    fn validate_sizes(&self, file: &str) -> Result<()> {
        if self.num_hidden_layers > limits::MAX_LAYERS {
            return Err(ModelError::config(
                file,
                "num_hidden_layers",
                format!("{} is over the limit of {} (a corrupt file?)", self.num_hidden_layers, limits::MAX_LAYERS),
            ));
        }
        let dims = [
            ("hidden_size", Some(self.hidden_size)),
            ("intermediate_size", Some(self.intermediate_size)),
            ("vocab_size", Some(self.vocab_size)),
            ("max_position_embeddings", Some(self.max_position_embeddings)),
            ("num_attention_heads", self.num_attention_heads.checked_mul(self.head_dim)),
            ("num_key_value_heads", self.num_key_value_heads.checked_mul(self.head_dim)),
        ];
        for (field, v) in dims {
            match v {
                Some(v) if v <= limits::MAX_DIM => {}
                _ => {
                    let what =
                        if field.starts_with("num_") { format!("{field} x head_dim") } else { field.to_string() };
                    return Err(ModelError::config(
                        file,
                        field,
                        format!("{what} is over the limit of {} elements (a corrupt file?)", limits::MAX_DIM),
                    ));
                }
            }
        }
        if self.param_count().is_none() {
            return Err(ModelError::config(file, "num_hidden_layers", "the parameter count overflows 64 bits"));
        }
        Ok(())
    }

    /// Parameters of the decoder (embedding, layers, norm, an untied LM head); `None` when
    /// the count overflows.
    pub fn param_count(&self) -> Option<u64> {
        let (c, i, v) = (self.hidden_size as u64, self.intermediate_size as u64, self.vocab_size as u64);
        let q = (self.num_attention_heads as u64).checked_mul(self.head_dim as u64)?;
        let kv = (self.num_key_value_heads as u64).checked_mul(self.head_dim as u64)?;
        let attn = q.checked_add(kv.checked_mul(2)?)?.checked_mul(c)?.checked_add(c.checked_mul(q)?)?;
        let bias = if self.attention_bias { q.checked_add(kv.checked_mul(2)?)? } else { 0 };
        let mlp = c.checked_mul(i)?.checked_mul(3)?;
        let norms = if self.flags.sandwich_norms { 4 } else { 2 };
        let qk_norms = if self.flags.qk_norm { 2 * self.head_dim as u64 } else { 0 };
        let layer =
            attn.checked_add(bias)?.checked_add(mlp)?.checked_add(c.checked_mul(norms)?)?.checked_add(qk_norms)?;
        let embed = v.checked_mul(c)?;
        let head = if self.tie_word_embeddings { 0 } else { embed };
        layer.checked_mul(self.num_hidden_layers as u64)?.checked_add(embed)?.checked_add(head)?.checked_add(c)
    }

    /// Bytes of the weights stored as `dtype`; `None` when the count overflows.
    pub fn weight_bytes(&self, dtype: DType) -> Option<u64> {
        self.param_count()?.checked_mul(dtype.size_in_bytes() as u64)
    }

    /// Bytes of a KV cache (K and V, every layer) for `num_seqs` sequences of `max_ctx`
    /// positions stored as `dtype`; `None` when the count overflows. The number to give
    /// [`limits::check_fits`] before allocating the cache.
    pub fn kv_cache_bytes(&self, num_seqs: usize, max_ctx: usize, dtype: DType) -> Option<u64> {
        [self.num_hidden_layers, num_seqs, max_ctx, self.num_key_value_heads, self.head_dim, dtype.size_in_bytes()]
            .iter()
            .try_fold(2u64, |acc, &n| acc.checked_mul(n as u64))
    }

    /// H / Hkv: query heads per KV head.
    pub fn num_groups(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }
}

/// A JSON object read field by field, each failure naming its field.
struct Fields<'a> {
    file: &'a str,
    obj: &'a Map<String, Value>,
}

impl Fields<'_> {
    fn err(&self, field: &str, msg: impl Into<String>) -> ModelError {
        ModelError::config(self.file, field, msg)
    }

    /// The field's value; `null` counts as absent.
    fn get(&self, field: &str) -> Option<&Value> {
        self.obj.get(field).filter(|v| !v.is_null())
    }

    fn opt_usize(&self, field: &str) -> Result<Option<usize>> {
        self.get(field)
            .map(|v| {
                v.as_u64()
                    .map(|n| n as usize)
                    .ok_or_else(|| self.err(field, format!("expected a non-negative integer, found {v}")))
            })
            .transpose()
    }

    fn usize(&self, field: &str) -> Result<usize> {
        self.opt_usize(field)?.ok_or_else(|| self.err(field, "missing"))
    }

    fn opt_f64(&self, field: &str) -> Result<Option<f64>> {
        self.get(field)
            .map(|v| v.as_f64().ok_or_else(|| self.err(field, format!("expected a number, found {v}"))))
            .transpose()
    }

    fn opt_bool(&self, field: &str) -> Result<Option<bool>> {
        self.get(field)
            .map(|v| v.as_bool().ok_or_else(|| self.err(field, format!("expected true or false, found {v}"))))
            .transpose()
    }

    fn opt_str(&self, field: &str) -> Result<Option<&str>> {
        self.get(field)
            .map(|v| v.as_str().ok_or_else(|| self.err(field, format!("expected a string, found {v}"))))
            .transpose()
    }

    fn opt_token(&self, field: &str) -> Result<Option<u32>> {
        self.get(field)
            .map(|v| token_id(v).ok_or_else(|| self.err(field, format!("expected a token id, found {v}"))))
            .transpose()
    }

    /// An int, a list of ints, or absent.
    fn token_list(&self, field: &str) -> Result<Vec<u32>> {
        match self.get(field) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| token_id(v).ok_or_else(|| self.err(field, format!("expected token ids, found {v}"))))
                .collect(),
            Some(v) => Ok(vec![
                token_id(v).ok_or_else(|| self.err(field, format!("expected a token id or a list, found {v}")))?
            ]),
        }
    }

    fn arch(&self) -> Result<Arch> {
        let known = |name: &str| match name {
            "LlamaForCausalLM" => Some(Arch::Llama),
            "MistralForCausalLM" => Some(Arch::Mistral),
            "Qwen2ForCausalLM" => Some(Arch::Qwen2),
            "Qwen3ForCausalLM" => Some(Arch::Qwen3),
            "Gemma3ForCausalLM" => Some(Arch::Gemma3),
            _ => None,
        };
        if let Some(v) = self.get("architectures") {
            let names: Vec<&str> =
                v.as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
            return match names.as_slice() {
                [name] => known(name).ok_or_else(|| {
                    self.err(
                        "architectures",
                        format!(
                            "`{name}` is not supported (known: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, Gemma3ForCausalLM)"
                        ),
                    )
                }),
                _ => Err(self.err("architectures", format!("expected a list of one architecture name, found {v}"))),
            };
        }
        // Configs built in code (not saved from a model) carry only `model_type`.
        match self.opt_str("model_type")? {
            Some("llama") => Ok(Arch::Llama),
            Some("mistral") => Ok(Arch::Mistral),
            Some("qwen2") => Ok(Arch::Qwen2),
            Some("qwen3") => Ok(Arch::Qwen3),
            Some("gemma3_text") => Ok(Arch::Gemma3),
            Some(other) => Err(self.err(
                "model_type",
                format!("`{other}` is not supported (known: llama, mistral, qwen2, qwen3, gemma3_text)"),
            )),
            None => Err(self.err("architectures", "missing (and no model_type)")),
        }
    }

    /// `(rope_theta, scaling)` from `rope_theta` + `rope_scaling` or from `rope_parameters`.
    fn rope(&self) -> Result<(f32, RopeScaling)> {
        let (params, field) = match (self.get("rope_parameters"), self.get("rope_scaling")) {
            (Some(p), _) => (Some(p), "rope_parameters"),
            (None, s) => (s, "rope_scaling"),
        };
        let params = match params {
            None => None,
            Some(Value::Object(m)) => Some(m),
            Some(v) => return Err(self.err(field, format!("expected an object, found {v}"))),
        };
        let theta_in_params = params.and_then(|p| p.get("rope_theta")).filter(|v| !v.is_null());
        let theta = match theta_in_params {
            Some(v) => v
                .as_f64()
                .ok_or_else(|| self.err(&format!("{field}.rope_theta"), format!("expected a number, found {v}")))?,
            None => self.opt_f64("rope_theta")?.unwrap_or(10000.0),
        };
        let Some(p) = params else { return Ok((theta as f32, RopeScaling::None)) };
        let sub = Fields { file: self.file, obj: p };
        let kind = match (sub.opt_str("rope_type")?, sub.opt_str("type")?) {
            (Some(t), _) | (None, Some(t)) => t,
            (None, None) => {
                return Err(self.err(field, "has no rope_type (per-layer-type rope parameters are not supported)"))
            }
        };
        let num = |name: &str| -> Result<f64> {
            sub.opt_f64(name)?
                .ok_or_else(|| self.err(&format!("{field}.{name}"), format!("missing (needed by rope_type {kind})")))
        };
        let scaling = match kind {
            "default" => RopeScaling::None,
            "linear" => RopeScaling::Linear { factor: num("factor")? as f32 },
            "llama3" => RopeScaling::Llama3 {
                factor: num("factor")? as f32,
                low_freq_factor: num("low_freq_factor")? as f32,
                high_freq_factor: num("high_freq_factor")? as f32,
                original_max_position_embeddings: num("original_max_position_embeddings")? as usize,
            },
            other => {
                return Err(self.err(
                    &format!("{field}.rope_type"),
                    format!("`{other}` is not supported (known: default, linear, llama3)"),
                ))
            }
        };
        check_rope_scaling(&scaling, self.file, field)?;
        Ok((theta as f32, scaling))
    }

    /// `(sliding_window, sliding_layers)`: Mistral's one window for every layer; Gemma 3's
    /// window on the layers `layer_types` (or `sliding_window_pattern`) marks sliding.
    fn sliding_window(&self, arch: Arch, layers: usize) -> Result<(Option<usize>, Vec<bool>)> {
        match arch {
            Arch::Mistral => Ok((self.opt_usize("sliding_window")?, Vec::new())),
            // Qwen2/3 carry a window that applies only when `use_sliding_window` is set, and
            // then only to some layers: not supported.
            Arch::Qwen2 | Arch::Qwen3 => {
                let sliding_layers = self
                    .get("layer_types")
                    .and_then(Value::as_array)
                    .is_some_and(|a| a.iter().any(|t| t.as_str() == Some("sliding_attention")));
                if self.opt_bool("use_sliding_window")?.unwrap_or(false) || sliding_layers {
                    return Err(self.err(
                        "use_sliding_window",
                        format!("{}'s per-layer sliding window is not supported", arch.hf_name()),
                    ));
                }
                Ok((None, Vec::new()))
            }
            Arch::Gemma3 => {
                let window = self.opt_usize("sliding_window")?.unwrap_or(4096);
                Ok((Some(window), self.layer_types(layers)?))
            }
            Arch::Llama => Ok((None, Vec::new())),
        }
    }

    /// Gemma 3's per-layer attention kinds: `layer_types` (one of `sliding_attention` /
    /// `full_attention` per layer), else every `sliding_window_pattern`-th layer full
    /// (transformers' default pattern is 6).
    fn layer_types(&self, layers: usize) -> Result<Vec<bool>> {
        // bounded before the per-layer list is built (validate_sizes runs later)
        if layers > limits::MAX_LAYERS {
            return Err(self.err(
                "num_hidden_layers",
                format!("{layers} is over the limit of {} (a corrupt file?)", limits::MAX_LAYERS),
            ));
        }
        if let Some(v) = self.get("layer_types") {
            let items = v.as_array().ok_or_else(|| self.err("layer_types", format!("expected a list, found {v}")))?;
            if items.len() != layers {
                return Err(
                    self.err("layer_types", format!("has {} entries for num_hidden_layers = {layers}", items.len()))
                );
            }
            return items
                .iter()
                .map(|t| match t.as_str() {
                    Some("sliding_attention") => Ok(true),
                    Some("full_attention") => Ok(false),
                    _ => Err(self.err("layer_types", format!("`{t}` is not sliding_attention or full_attention"))),
                })
                .collect();
        }
        let pattern = self.opt_usize("sliding_window_pattern")?.unwrap_or(6);
        if pattern == 0 {
            return Err(self.err("sliding_window_pattern", "must be positive"));
        }
        Ok((0..layers).map(|l| (l + 1) % pattern != 0).collect())
    }

    /// `(rope_theta, rope_scaling, rope_local_theta)` of Gemma 3: the global layers' from
    /// `rope_theta` + `rope_scaling` (default 1e6), the sliding layers' from
    /// `rope_local_base_freq` (default 1e4, unscaled); or transformers 5's
    /// `rope_parameters` with one entry per layer type.
    fn gemma3_rope(&self) -> Result<(f32, RopeScaling, Option<f32>)> {
        let per_type =
            self.get("rope_parameters").and_then(Value::as_object).filter(|p| p.contains_key("full_attention"));
        if let Some(p) = per_type {
            let sub = |key: &str| -> Result<Map<String, Value>> {
                match p.get(key) {
                    Some(Value::Object(m)) => Ok(m.clone()),
                    other => Err(self.err(
                        &format!("rope_parameters.{key}"),
                        format!("expected an object, found {}", other.unwrap_or(&Value::Null)),
                    )),
                }
            };
            let (full, sliding) = (sub("full_attention")?, sub("sliding_attention")?);
            let mut obj = self.obj.clone();
            obj.insert("rope_parameters".into(), Value::Object(full));
            let (theta, scaling) = Fields { file: self.file, obj: &obj }.rope()?;
            obj.insert("rope_parameters".into(), Value::Object(sliding));
            let (local, local_scaling) = Fields { file: self.file, obj: &obj }.rope()?;
            if local_scaling != RopeScaling::None {
                return Err(self.err(
                    "rope_parameters.sliding_attention.rope_type",
                    "scaling of the sliding layers' RoPE is not supported",
                ));
            }
            return Ok((theta, scaling, Some(local)));
        }
        let mut obj = self.obj.clone();
        if obj.get("rope_theta").is_none_or(Value::is_null) {
            obj.insert("rope_theta".into(), Value::from(1_000_000.0));
        }
        let (theta, scaling) = Fields { file: self.file, obj: &obj }.rope()?;
        let local = self.opt_f64("rope_local_base_freq")?.unwrap_or(10_000.0) as f32;
        Ok((theta, scaling, Some(local)))
    }

    /// The MLP activation from `hidden_activation` (Gemma) or `hidden_act`.
    fn activation(&self, arch: Arch) -> Result<GluActivation> {
        let (field, name) = match (self.opt_str("hidden_activation")?, self.opt_str("hidden_act")?) {
            (Some(a), _) => ("hidden_activation", a),
            (None, Some(a)) => ("hidden_act", a),
            (None, None) if arch == Arch::Gemma3 => return Ok(GluActivation::GeluTanh),
            (None, None) => return Ok(GluActivation::Silu),
        };
        match name {
            "silu" => Ok(GluActivation::Silu),
            "gelu_pytorch_tanh" => Ok(GluActivation::GeluTanh),
            other => Err(self.err(field, format!("`{other}` is not supported (silu or gelu_pytorch_tanh)"))),
        }
    }

    /// Gemma's `final_logit_softcapping` (attention soft-capping is refused: no Gemma 3
    /// sets it). Other architectures have none.
    fn softcapping(&self, arch: Arch) -> Result<Option<f32>> {
        if arch != Arch::Gemma3 {
            return Ok(None);
        }
        if let Some(cap) = self.opt_f64("attn_logit_softcapping")? {
            return Err(self.err("attn_logit_softcapping", format!("{cap}: attention soft-capping is not supported")));
        }
        Ok(self.opt_f64("final_logit_softcapping")?.map(|c| c as f32))
    }

    fn dtype(&self) -> Result<Option<DType>> {
        let (field, name) = match (self.opt_str("dtype")?, self.opt_str("torch_dtype")?) {
            (Some(d), _) => ("dtype", d),
            (None, Some(d)) => ("torch_dtype", d),
            (None, None) => return Ok(None),
        };
        match name {
            "float32" => Ok(Some(DType::F32)),
            "bfloat16" => Ok(Some(DType::BF16)),
            "float16" => Ok(Some(DType::F16)),
            other => Err(self.err(field, format!("`{other}` is not supported (float32, bfloat16 or float16)"))),
        }
    }
}

/// Scaling factors that are not positive finite numbers make every RoPE angle NaN or
/// infinite (NaN logits): errors, not values. `field` is the object they came from.
fn check_rope_scaling(scaling: &RopeScaling, file: &str, field: &str) -> Result<()> {
    let positive = |name: &str, v: f32| -> Result<()> {
        if v > 0.0 && v.is_finite() {
            Ok(())
        } else {
            Err(ModelError::config(file, format!("{field}.{name}"), format!("{v} is not a positive number")))
        }
    };
    match *scaling {
        RopeScaling::None => Ok(()),
        RopeScaling::Linear { factor } => positive("factor", factor),
        RopeScaling::Factors { ref divisors } => divisors.iter().try_for_each(|&d| positive("divisors", d)),
        RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
            positive("factor", factor)?;
            positive("low_freq_factor", low_freq_factor)?;
            positive("high_freq_factor", high_freq_factor)?;
            if high_freq_factor <= low_freq_factor {
                return Err(ModelError::config(
                    file,
                    format!("{field}.high_freq_factor"),
                    "must be above low_freq_factor",
                ));
            }
            if original_max_position_embeddings == 0 {
                return Err(ModelError::config(
                    file,
                    format!("{field}.original_max_position_embeddings"),
                    "must be positive",
                ));
            }
            Ok(())
        }
    }
}

fn token_id(v: &Value) -> Option<u32> {
    v.as_u64().and_then(|n| u32::try_from(n).ok())
}
