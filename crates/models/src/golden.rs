//! Readers for the golden files under `tests/golden/`, all written by `tools/golden.py`
//! (HF transformers + torch, f32, CPU). Every file records its generator so a failing test
//! can say how to regenerate it ([`GENERATOR`]). Formats:
//! - `<model>.logits.safetensors` — `prefill_logits` f32 `[T, V]` for the prompt and
//!   `decode_logits` f32 `[8, V]` for 8 greedy decode steps; the metadata holds `generator`,
//!   `model` (the model folder, relative to the repository root), `prompt_ids` and
//!   `decode_ids` (JSON lists: the id fed at each decode step, i.e. the greedy tokens).
//! - `smollm2.json` — greedy continuations of the default model plus tokenizer cases.
//! - `gguf_dequant.json` — ggml blocks and their values as gguf-py dequantises them.
//! - `gemma3-270m.json` — greedy continuations of Gemma 3 270M as token ids ([`IdsGolden`]).

use crate::chat::Message;
use crate::error::{ModelError, Result};
use encore_tensor::{DType, HostTensor};
use safetensors::tensor::{Dtype as StDtype, SafeTensors};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub const GENERATOR: &str = "tools/golden.py";

/// The repository root: `$ENCORE_REPO_ROOT` when set (test executables packed for a GPU
/// host run from another checkout path), else two levels above this crate.
pub fn repo_root() -> PathBuf {
    match std::env::var_os("ENCORE_REPO_ROOT") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(".."),
    }
}

/// `tests/golden/` of the repository.
pub fn golden_dir() -> PathBuf {
    repo_root().join("tests").join("golden")
}

fn bad(path: &Path, generator: &str, msg: impl Into<String>) -> ModelError {
    ModelError::Golden { path: path.to_path_buf(), generator: generator.to_string(), msg: msg.into() }
}

/// Prefill and decode logits of a tiny random-weight model.
#[derive(Debug)]
pub struct LogitsGolden {
    pub path: PathBuf,
    pub generator: String,
    /// The model folder (config.json + model.safetensors).
    pub model_dir: PathBuf,
    pub prompt_ids: Vec<u32>,
    /// `[T, V]` f32
    pub prefill_logits: HostTensor,
    /// The token fed at decode step `k`: argmax of the previous step's logits.
    pub decode_ids: Vec<u32>,
    /// `[steps, V]` f32: the logits after feeding `decode_ids[k]`.
    pub decode_logits: HostTensor,
}

impl LogitsGolden {
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(path, GENERATOR, e.to_string()))?;
        let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(path, GENERATOR, e.to_string()))?;
        let meta: HashMap<String, String> = meta.metadata().clone().unwrap_or_default();
        let generator = meta.get("generator").cloned().unwrap_or_else(|| GENERATOR.to_string());
        let field = |k: &str| meta.get(k).ok_or_else(|| bad(path, &generator, format!("no `{k}` in the metadata")));
        let ids = |k: &str| -> Result<Vec<u32>> {
            serde_json::from_str(field(k)?).map_err(|e| bad(path, &generator, format!("`{k}`: {e}")))
        };
        let tensor = |k: &str| -> Result<HostTensor> {
            let view = st.tensor(k).map_err(|e| bad(path, &generator, format!("`{k}`: {e}")))?;
            if view.dtype() != StDtype::F32 {
                return Err(bad(path, &generator, format!("`{k}` is {:?}, expected F32", view.dtype())));
            }
            Ok(HostTensor::new(DType::F32, view.shape().to_vec(), view.data().to_vec())?)
        };
        let g = LogitsGolden {
            path: path.to_path_buf(),
            model_dir: repo_root().join(field("model")?),
            prompt_ids: ids("prompt_ids")?,
            prefill_logits: tensor("prefill_logits")?,
            decode_ids: ids("decode_ids")?,
            decode_logits: tensor("decode_logits")?,
            generator: generator.clone(),
        };
        if g.prefill_logits.dims.first() != Some(&g.prompt_ids.len())
            || g.decode_logits.dims.first() != Some(&g.decode_ids.len())
        {
            return Err(bad(path, &generator, "logit rows do not match the id lists"));
        }
        Ok(g)
    }
}

/// One greedy generation of the real SmolLM2.
#[derive(Clone, Debug, Deserialize)]
pub struct GreedyCase {
    pub messages: Vec<Message>,
    /// The chat template rendered with `add_generation_prompt`.
    pub prompt: String,
    pub prompt_ids: Vec<u32>,
    pub generated_ids: Vec<u32>,
    pub generated_text: String,
}

/// A text and the ids HF's tokenizer gives it (no special tokens added).
#[derive(Clone, Debug, Deserialize)]
pub struct TokenizerCase {
    pub text: String,
    pub ids: Vec<u32>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct GreedyGolden {
    #[serde(skip)]
    pub path: PathBuf,
    pub generator: String,
    pub model: String,
    pub dtype: String,
    pub cases: Vec<GreedyCase>,
    pub tokenizer_cases: Vec<TokenizerCase>,
}

impl GreedyGolden {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let mut g: GreedyGolden = serde_json::from_str(&text).map_err(|e| bad(path, GENERATOR, e.to_string()))?;
        g.path = path.to_path_buf();
        Ok(g)
    }
}

/// Blocks of one ggml type and their dequantised values.
#[derive(Clone, Debug, Deserialize)]
pub struct DequantCase {
    #[serde(rename = "type")]
    pub type_name: String,
    pub code: u32,
    pub bytes_hex: String,
    pub values: Vec<f32>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct DequantGolden {
    pub generator: String,
    pub cases: Vec<DequantCase>,
}

impl DequantGolden {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| bad(path, GENERATOR, e.to_string()))
    }
}

impl DequantCase {
    pub fn bytes(&self) -> Vec<u8> {
        (0..self.bytes_hex.len() / 2)
            .map(|i| u8::from_str_radix(&self.bytes_hex[2 * i..2 * i + 2], 16).unwrap_or(0))
            .collect()
    }
}

/// One prompt's greedy run, by token ids: what the reference generated, each token's
/// log-probability and the reference's top 5 at each step.
#[derive(Clone, Debug, Deserialize)]
pub struct IdsCase {
    pub prompt: String,
    pub prompt_ids: Vec<u32>,
    pub generated_ids: Vec<u32>,
    pub logprobs: Vec<f32>,
    pub top5: Vec<Vec<u32>>,
    pub generated_text: String,
}

/// Greedy runs recorded by token ids, so the test needs no tokenizer of encore's.
#[derive(Clone, Debug, Deserialize)]
pub struct IdsGolden {
    #[serde(skip)]
    pub path: PathBuf,
    pub generator: String,
    pub model: String,
    pub dtype: String,
    pub cases: Vec<IdsCase>,
}

impl IdsGolden {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let mut g: IdsGolden = serde_json::from_str(&text).map_err(|e| bad(path, GENERATOR, e.to_string()))?;
        g.path = path.to_path_buf();
        Ok(g)
    }
}
