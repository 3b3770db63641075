//! A Hugging Face `config.json`, parsed and validated into the one [`ModelConfig`] the decoder
//! reads. Both spellings are accepted: the hub's (top-level `rope_theta`, `rope_scaling`,
//! `torch_dtype`) and transformers 5's (`rope_parameters`, `dtype`). Anything encore would have
//! to guess at (an unknown architecture, YaRN, Llama's `attention_bias`, ...) is an error that
//! names the field. GGUF metadata becomes a `ModelConfig` in `gguf.rs`.

use crate::error::{ModelError, Result};
use crate::limits;
use encore_tensor::rope::RopeScaling;
use encore_tensor::DType;
use serde_json::{Map, Value};
use std::path::Path;

/// The decoder families encore runs: one decoder, switched by flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Mistral,
    Qwen2,
}

impl Arch {
    pub fn hf_name(self) -> &'static str {
        match self {
            Arch::Llama => "LlamaForCausalLM",
            Arch::Mistral => "MistralForCausalLM",
            Arch::Qwen2 => "Qwen2ForCausalLM",
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
            None if num_attention_heads > 0 && hidden_size % num_attention_heads == 0 => {
                hidden_size / num_attention_heads
            }
            None => return Err(f.err("head_dim", "absent, and hidden_size is not a multiple of num_attention_heads")),
        };
        let hidden_act = f.opt_str("hidden_act")?.unwrap_or("silu");
        if hidden_act != "silu" {
            return Err(f.err("hidden_act", format!("`{hidden_act}` is not supported (only silu)")));
        }
        if f.opt_bool("mlp_bias")?.unwrap_or(false) {
            return Err(f.err("mlp_bias", "MLP biases are not supported"));
        }
        let attention_bias = match arch {
            Arch::Qwen2 => true,
            Arch::Llama | Arch::Mistral => {
                if f.opt_bool("attention_bias")?.unwrap_or(false) {
                    return Err(
                        f.err("attention_bias", "true is not supported for Llama/Mistral (it biases o_proj too)")
                    );
                }
                false
            }
        };
        let (rope_theta, rope_scaling) = f.rope()?;
        let default_max_pos = if arch == Arch::Llama { 2048 } else { 32768 };
        let cfg = ModelConfig {
            arch,
            hidden_size,
            intermediate_size: f.usize("intermediate_size")?,
            num_hidden_layers: f.usize("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            vocab_size: f.usize("vocab_size")?,
            rms_norm_eps: f.opt_f64("rms_norm_eps")?.unwrap_or(1e-6) as f32,
            rope_theta,
            rope_scaling,
            max_position_embeddings: f.opt_usize("max_position_embeddings")?.unwrap_or(default_max_pos),
            tie_word_embeddings: f.opt_bool("tie_word_embeddings")?.unwrap_or(false),
            attention_bias,
            sliding_window: f.sliding_window(arch)?,
            bos_token_id: f.opt_token("bos_token_id")?,
            eos_token_ids: f.token_list("eos_token_id")?,
            torch_dtype: f.dtype()?,
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
        let layer = attn.checked_add(bias)?.checked_add(mlp)?.checked_add(c.checked_mul(2)?)?;
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
                            "`{name}` is not supported (known: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM)"
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
            Some(other) => {
                Err(self.err("model_type", format!("`{other}` is not supported (known: llama, mistral, qwen2)")))
            }
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

    fn sliding_window(&self, arch: Arch) -> Result<Option<usize>> {
        match arch {
            Arch::Mistral => self.opt_usize("sliding_window"),
            // Qwen2 carries a window that applies only when `use_sliding_window` is set, and then
            // only to some layers: not supported.
            Arch::Qwen2 => {
                let sliding_layers = self
                    .get("layer_types")
                    .and_then(Value::as_array)
                    .is_some_and(|a| a.iter().any(|t| t.as_str() == Some("sliding_attention")));
                if self.opt_bool("use_sliding_window")?.unwrap_or(false) || sliding_layers {
                    return Err(self.err("use_sliding_window", "Qwen2's per-layer sliding window is not supported"));
                }
                Ok(None)
            }
            Arch::Llama => Ok(None),
        }
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
