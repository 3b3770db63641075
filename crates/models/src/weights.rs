//! The weight-source contract the decoder loads through: tensors looked up by their exact
//! Hugging Face names ("model.layers.0.self_attn.q_proj.weight"), returned as contiguous
//! [`HostTensor`]s already converted to the compute dtype, or (`get_raw`) quantized tensors
//! as their raw blocks. Implemented by
//! [`crate::safetensors::SafetensorsWeights`] and [`crate::gguf::GgufWeights`]; [`open_weights`]
//! picks one from a path. Also the load progress bar and the shape check the decoder uses.

use crate::config::ModelConfig;
use crate::error::{escaped, ModelError, Result};
use encore_tensor::{DType, HostQTensor, HostTensor};
use half::{bf16, f16};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use memmap2::Mmap;
use std::fs::File;
use std::io::IsTerminal;
use std::path::Path;

pub trait WeightSource: Send + Sync {
    /// Every tensor name, sorted.
    fn names(&self) -> Vec<String>;
    /// HF shape of `name` without loading it; `None` if absent.
    fn dims(&self, name: &str) -> Option<Vec<usize>>;
    /// The tensor converted (or dequantised) to `dtype`, which must be a float dtype.
    fn get(&self, name: &str, dtype: DType) -> Result<HostTensor>;
    fn has(&self, name: &str) -> bool {
        self.dims(name).is_some()
    }
    /// `get`, after checking that the stored shape is `dims`.
    fn get_shaped(&self, name: &str, dims: &[usize], dtype: DType) -> Result<HostTensor> {
        match self.dims(name) {
            Some(actual) => expect_shape(name, &actual, dims)?,
            None => return Err(self.missing(name)),
        }
        self.get(name, dtype)
    }
    /// The error for an absent tensor, naming the files searched.
    fn missing(&self, name: &str) -> ModelError;
    /// What the tensors come from, for messages ("m.gguf", "dir/model.safetensors", ...).
    fn source_desc(&self) -> String {
        match self.missing("") {
            ModelError::MissingTensor { source_desc, .. } => source_desc,
            _ => "the weights".to_string(),
        }
    }
    /// The raw ggml blocks of a 2-D tensor stored quantized (`[rows, cols]` in HF order,
    /// rows permuted as [`WeightSource::get`] permutes them); `None` for a tensor stored in
    /// a float dtype (then use `get`). Sources without quantized tensors keep the default.
    fn get_raw(&self, name: &str) -> Result<Option<HostQTensor>> {
        if !self.has(name) {
            return Err(self.missing(name));
        }
        Ok(None)
    }
    /// What loading will do that the file does not say (tensors expanded from a block type
    /// encore has no kernels for), for [`validate_weights`]'s warnings.
    fn notes(&self) -> Vec<String> {
        Vec::new()
    }
}

/// Opens `path`: a `.gguf` file, a `.safetensors` file, or a directory holding
/// `model.safetensors` or `model.safetensors.index.json` (sharded).
pub fn open_weights(path: &Path) -> Result<Box<dyn WeightSource>> {
    if path.is_dir() {
        return Ok(Box::new(crate::safetensors::SafetensorsWeights::open_dir(path)?));
    }
    match path.extension().and_then(|e| e.to_str()) {
        Some("gguf") => Ok(Box::new(crate::gguf::GgufWeights::new(crate::gguf::GgufFile::open(path)?)?)),
        Some("json") => Ok(Box::new(crate::safetensors::SafetensorsWeights::open_index(path)?)),
        _ => Ok(Box::new(crate::safetensors::SafetensorsWeights::open_file(path)?)),
    }
}

/// Checks, before anything is allocated, that `src` holds every tensor the decoder of `cfg`
/// loads, in the shape it loads it (one-line errors naming the tensor), and that an untied
/// config has its `lm_head.weight` (never silently tied). Returns warnings for what the
/// decoder would ignore: layers beyond `num_hidden_layers`, an `lm_head.weight` next to
/// tied embeddings. `Llama::load` calls it first; `hub::open_model` prints its warnings.
pub fn validate_weights(cfg: &ModelConfig, src: &dyn WeightSource) -> Result<Vec<String>> {
    let (c, h, hkv, d, i, v) = (
        cfg.hidden_size,
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim,
        cfg.intermediate_size,
        cfg.vocab_size,
    );
    let check = |name: &str, dims: &[usize]| -> Result<()> {
        match src.dims(name) {
            Some(actual) => expect_shape(name, &actual, dims),
            None => Err(src.missing(name)),
        }
    };
    let mut warnings = src.notes();
    check("model.embed_tokens.weight", &[v, c])?;
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        check(&format!("{p}.input_layernorm.weight"), &[c])?;
        check(&format!("{p}.self_attn.q_proj.weight"), &[h * d, c])?;
        check(&format!("{p}.self_attn.k_proj.weight"), &[hkv * d, c])?;
        check(&format!("{p}.self_attn.v_proj.weight"), &[hkv * d, c])?;
        if cfg.attention_bias {
            check(&format!("{p}.self_attn.q_proj.bias"), &[h * d])?;
            check(&format!("{p}.self_attn.k_proj.bias"), &[hkv * d])?;
            check(&format!("{p}.self_attn.v_proj.bias"), &[hkv * d])?;
        }
        if cfg.flags.qk_norm {
            check(&format!("{p}.self_attn.q_norm.weight"), &[d])?;
            check(&format!("{p}.self_attn.k_norm.weight"), &[d])?;
        }
        check(&format!("{p}.self_attn.o_proj.weight"), &[c, h * d])?;
        check(&format!("{p}.post_attention_layernorm.weight"), &[c])?;
        if cfg.flags.sandwich_norms {
            check(&format!("{p}.pre_feedforward_layernorm.weight"), &[c])?;
            check(&format!("{p}.post_feedforward_layernorm.weight"), &[c])?;
        }
        check(&format!("{p}.mlp.gate_proj.weight"), &[i, c])?;
        check(&format!("{p}.mlp.up_proj.weight"), &[i, c])?;
        check(&format!("{p}.mlp.down_proj.weight"), &[c, i])?;
    }
    check("model.norm.weight", &[c])?;
    match (cfg.tie_word_embeddings, src.has("lm_head.weight")) {
        (false, false) => {
            return Err(ModelError::Weights {
                source_desc: src.source_desc(),
                msg: "no `lm_head.weight`, and the config has tie_word_embeddings = false (set it to true if the \
                      embedding is the LM head)"
                    .to_string(),
            })
        }
        (false, true) => check("lm_head.weight", &[v, c])?,
        (true, true) => warnings.push(format!(
            "{}: `lm_head.weight` is ignored: the config has tie_word_embeddings = true",
            src.source_desc()
        )),
        (true, false) => {}
    }
    let beyond = src
        .names()
        .iter()
        .filter_map(|n| n.strip_prefix("model.layers.")?.split('.').next()?.parse::<usize>().ok())
        .filter(|&l| l >= cfg.num_hidden_layers)
        .max();
    if let Some(top) = beyond {
        warnings.push(format!(
            "{}: holds layers up to {top} but num_hidden_layers = {}: layers {}..={top} are ignored",
            src.source_desc(),
            cfg.num_hidden_layers,
            cfg.num_hidden_layers
        ));
    }
    Ok(warnings)
}

/// The file's bytes: memory mapped, or owned (the `from_bytes` constructors, for tests and
/// fuzzing).
pub(crate) enum FileBytes {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for FileBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            FileBytes::Mapped(m) => m,
            FileBytes::Owned(v) => v,
        }
    }
}

/// `path` opened for reading when it is a regular file (after symlinks). A FIFO would block
/// the open and a device would be read or mapped forever, so anything else is an error that
/// says what it is; a missing file or a symlink loop reports the real I/O error.
pub(crate) fn open_regular_file(path: &Path) -> Result<File> {
    let meta = std::fs::metadata(path).map_err(|e| ModelError::io(path, e))?;
    if !meta.is_file() {
        return Err(not_a_regular_file(path, &meta));
    }
    File::open(path).map_err(|e| ModelError::io(path, e))
}

/// The error for a path that exists but is neither a regular file nor (where a folder is
/// accepted) a directory.
pub(crate) fn not_a_regular_file(path: &Path, meta: &std::fs::Metadata) -> ModelError {
    let kind = if meta.is_dir() { "a directory" } else { special_kind(meta) };
    ModelError::io(path, std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("not a regular file ({kind})")))
}

/// "a FIFO", "a character device", ... for a path that is neither a file nor a folder.
pub(crate) fn special_kind(meta: &std::fs::Metadata) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        if t.is_fifo() {
            return "a FIFO";
        } else if t.is_char_device() {
            return "a character device";
        } else if t.is_block_device() {
            return "a block device";
        } else if t.is_socket() {
            return "a socket";
        }
    }
    let _ = meta;
    "a special file"
}

/// A regular file mapped read-only.
pub(crate) fn map_file(path: &Path) -> Result<FileBytes> {
    let file = open_regular_file(path)?;
    // SAFETY: the map is read-only and model files are not written while encore runs; a
    // file truncated underneath us by another process is outside what we can defend against.
    let mmap = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
    Ok(FileBytes::Mapped(mmap))
}

/// A regular file read as UTF-8 text.
pub(crate) fn read_text(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut file = open_regular_file(path)?;
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(|e| ModelError::io(path, e))?;
    Ok(text)
}

/// The one-line error for a tensor whose shape disagrees with the config.
pub fn expect_shape(name: &str, actual: &[usize], expected: &[usize]) -> Result<()> {
    if actual == expected {
        Ok(())
    } else {
        Err(ModelError::TensorShape { name: escaped(name), expected: expected.to_vec(), found: actual.to_vec() })
    }
}

/// Converts `data`, stored as `from` (f32, bf16 or f16 little-endian), to `to`.
pub(crate) fn convert(name: &str, from: DType, data: &[u8], dims: Vec<usize>, to: DType) -> Result<HostTensor> {
    if !to.is_float() {
        return Err(ModelError::UnsupportedTensorType { name: name.to_string(), dtype: format!("{to} (requested)") });
    }
    if from == to {
        return Ok(HostTensor::new(to, dims, data.to_vec())?);
    }
    let out: Vec<u8> = match (from, to) {
        // bf16 -> f32 is exact and is the common path for f32 runs of bf16 checkpoints.
        (DType::BF16, DType::F32) => {
            data.chunks_exact(2).flat_map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32().to_le_bytes()).collect()
        }
        (DType::F16, DType::F32) => {
            data.chunks_exact(2).flat_map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32().to_le_bytes()).collect()
        }
        _ => {
            let t = HostTensor::new(from, dims.clone(), data.to_vec())?;
            return Ok(t.cast(to)?);
        }
    };
    Ok(HostTensor::new(to, dims, out)?)
}

/// f32 values (from dequantisation) stored as `dtype`.
pub(crate) fn from_f32(name: &str, dims: Vec<usize>, values: &[f32], dtype: DType) -> Result<HostTensor> {
    if !dtype.is_float() {
        return Err(ModelError::UnsupportedTensorType {
            name: name.to_string(),
            dtype: format!("{dtype} (requested)"),
        });
    }
    Ok(HostTensor::from_f32_as(&dims, values, dtype))
}

/// A bytes-loaded progress bar on stderr, drawn only when stderr is a terminal. Each `get`
/// advances it; it clears itself once every byte was loaded or the source is dropped.
pub(crate) struct LoadProgress {
    bar: ProgressBar,
}

impl LoadProgress {
    pub(crate) fn new(total_bytes: u64, what: &str) -> Self {
        let target =
            if std::io::stderr().is_terminal() { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
        let bar = ProgressBar::with_draw_target(Some(total_bytes), target);
        if let Ok(style) = ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} ({eta})") {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(format!("loading {what}"));
        LoadProgress { bar }
    }

    pub(crate) fn advance(&self, bytes: u64) {
        self.bar.inc(bytes);
        if self.bar.length().is_some_and(|len| self.bar.position() >= len) {
            self.bar.finish_and_clear();
        }
    }
}

impl Drop for LoadProgress {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use encore_tensor::testing::Rng;

    #[test]
    fn convert_between_float_dtypes_matches_host_tensor_cast() {
        let mut rng = Rng::fresh("convert_between_float_dtypes_matches_host_tensor_cast");
        let values = rng.vec(64, -10.0, 10.0);
        for from in DType::FLOATS {
            let src = HostTensor::from_f32_as(&[8, 8], &values, from);
            for to in DType::FLOATS {
                let got = convert("w", from, &src.data, vec![8, 8], to).unwrap();
                assert_eq!(got, src.cast(to).unwrap(), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn expect_shape_names_the_tensor_and_both_shapes() {
        let err = expect_shape("model.norm.weight", &[64], &[128]).unwrap_err().to_string();
        assert_eq!(err, "tensor `model.norm.weight`: expected shape [128], found [64]");
        assert!(expect_shape("x", &[2, 3], &[2, 3]).is_ok());
    }

    #[test]
    fn integer_compute_dtype_is_refused() {
        let err = convert("w", DType::F32, &[0; 4], vec![1], DType::U32).unwrap_err();
        assert!(err.to_string().contains("`w`"), "{err}");
    }
}
