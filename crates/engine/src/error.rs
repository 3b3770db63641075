//! The engine's error type.

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Tensor(#[from] encore_tensor::Error),
    #[error(transparent)]
    Model(#[from] encore_models::ModelError),
    #[error("{0}")]
    Config(String),
    #[error(
        "the sequence needs {needed} positions but the context holds {max_ctx} (raise --max-ctx or shorten the prompt)"
    )]
    ContextFull { needed: usize, max_ctx: usize },
    #[error("--device {0}: {1}")]
    Device(String, String),
}
