//! `--model org/name` (config, tokenizer files, safetensors weights or their shards) and
//! `--model org/name:FILE.gguf` (one GGUF file), downloaded into the standard Hugging Face
//! cache (`<cache>/models--org--name/{blobs,snapshots,refs}`) through the `hf-hub` crate's
//! sync API, which brings the cache layout, the progress bar (indicatif), resume of a cut
//! download (`<blob>.sync.part` + `Range`) and `HF_ENDPOINT`. Added around it here: `HF_TOKEN`
//! and `HF_HUB_OFFLINE` (hf-hub reads only the token file), a cache-first look-up that needs no
//! network, a size check of every downloaded file, and one-line errors (401/403 name
//! `HF_TOKEN`).

use crate::error::{ModelError, Result};
use crate::hub::{hf_hub_cache, hf_snapshot};
use hf_hub::api::sync::{Api, ApiBuilder, ApiError, ApiRepo};
use std::path::{Path, PathBuf};

/// Where and how to reach the hub; [`HubOptions::from_env`] reads the usual variables.
#[derive(Clone, Debug)]
pub struct HubOptions {
    /// The hub cache (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, ...).
    pub cache: PathBuf,
    /// `$HF_ENDPOINT`, else `https://huggingface.co`.
    pub endpoint: String,
    /// `$HF_TOKEN`, else the token file beside the cache (`$HF_HOME/token`).
    pub token: Option<String>,
    /// `$HF_HUB_OFFLINE`: only the cache is read.
    pub offline: bool,
    pub progress: bool,
    /// Resumed attempts after a connection is cut within one download.
    pub max_retries: usize,
}

pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

fn env(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.is_empty())
}

impl HubOptions {
    pub fn from_env() -> Result<Self> {
        let cache = hf_hub_cache().ok_or_else(|| ModelError::Hub {
            msg: "no Hugging Face cache: set HF_HOME (HOME is not set)".to_string(),
        })?;
        let offline =
            env("HF_HUB_OFFLINE").is_some_and(|v| matches!(v.to_lowercase().as_str(), "1" | "true" | "yes" | "on"));
        let token = env("HF_TOKEN").or_else(|| hf_hub::Cache::new(cache.clone()).token());
        Ok(HubOptions {
            cache,
            endpoint: env("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.to_string()),
            token,
            offline,
            progress: true,
            max_retries: 3,
        })
    }
}

/// `org/name` or `org/name:FILE.gguf` -> (repo id, file). `None` for anything else.
pub fn parse_hub_spec(spec: &str) -> Option<(&str, Option<&str>)> {
    let (repo, file) = match spec.split_once(':') {
        Some((repo, file)) if file.ends_with(".gguf") && !file.starts_with('/') && !file.contains("..") => {
            (repo, Some(file))
        }
        Some(_) => return None,
        None => (spec, None),
    };
    let parts: Vec<&str> = repo.split('/').collect();
    let ok = parts.len() == 2 && parts.iter().all(|p| !p.is_empty() && !p.starts_with('.'));
    ok.then_some((repo, file))
}

/// The local path of a hub model: the snapshot folder of `repo` (`file` = `None`) or the
/// snapshot's `file`. Taken from the cache when it is complete there, else downloaded
/// (never with `offline`).
pub fn download_model(opts: &HubOptions, repo: &str, file: Option<&str>) -> Result<PathBuf> {
    if let Some(path) = cached(opts, repo, file) {
        return Ok(path);
    }
    let what = match file {
        Some(f) => format!("`{repo}:{f}`"),
        None => format!("`{repo}`"),
    };
    if opts.offline {
        return Err(ModelError::Hub {
            msg: format!(
                "HF_HUB_OFFLINE is set and {what} is not in the local Hugging Face cache ({})",
                opts.cache.join(folder(repo)).display()
            ),
        });
    }
    let api = ApiBuilder::new()
        .with_cache_dir(opts.cache.clone())
        .with_endpoint(opts.endpoint.trim_end_matches('/').to_string())
        .with_token(opts.token.clone())
        .with_progress(opts.progress)
        .with_retries(opts.max_retries)
        .build()
        .map_err(|e| hub_err(opts, &what, e))?;
    let hub = Hub { opts, repo: api.model(repo.to_string()), api, repo_id: repo.to_string(), what };
    if let Some(f) = file {
        return fetch(&hub, f);
    }
    let info = hub.repo.info().map_err(|e| hub_err(opts, &hub.what, e))?;
    let names: Vec<&str> = info.siblings.iter().map(|s| s.rfilename.as_str()).collect();
    let config = fetch(&hub, "config.json")?;
    for optional in ["generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"] {
        if names.contains(&optional) {
            fetch(&hub, optional)?;
        }
    }
    for weights in weight_files(&hub, &names)? {
        fetch(&hub, &weights)?;
    }
    Ok(config.parent().unwrap_or(Path::new(".")).to_path_buf())
}

/// One repository on one hub, for [`fetch`].
struct Hub<'a> {
    opts: &'a HubOptions,
    api: Api,
    repo: ApiRepo,
    repo_id: String,
    /// `` `org/name` `` for messages.
    what: String,
}

fn folder(repo: &str) -> String {
    format!("models--{}", repo.replace('/', "--"))
}

/// The cached snapshot (or its `file`), when everything a model needs is there.
fn cached(opts: &HubOptions, repo: &str, file: Option<&str>) -> Option<PathBuf> {
    let snap = hf_snapshot(&opts.cache, repo).ok()?;
    if let Some(f) = file {
        return snap.join(f).is_file().then(|| snap.join(f));
    }
    let index = snap.join(crate::safetensors::INDEX_FILE);
    let weights_there = if index.is_file() {
        shard_names(&std::fs::read_to_string(&index).ok()?).ok()?.iter().all(|s| snap.join(s).is_file())
    } else {
        snap.join("model.safetensors").is_file()
    };
    (snap.join("config.json").is_file() && weights_there).then_some(snap)
}

/// `model.safetensors.index.json` and its shards, or `model.safetensors`.
fn weight_files(hub: &Hub, names: &[&str]) -> Result<Vec<String>> {
    let (index, what) = (crate::safetensors::INDEX_FILE, &hub.what);
    if names.contains(&index) {
        let path = fetch(hub, index)?;
        let text = crate::weights::read_text(&path)?;
        let mut files =
            shard_names(&text).map_err(|msg| ModelError::Hub { msg: format!("{}: {msg}", path.display()) })?;
        files.insert(0, index.to_string());
        return Ok(files);
    }
    if names.contains(&"model.safetensors") {
        return Ok(vec!["model.safetensors".to_string()]);
    }
    let ggufs: Vec<&&str> = names.iter().filter(|n| n.ends_with(".gguf")).collect();
    let hint = match ggufs.first() {
        Some(g) => format!("; pick a GGUF file with `--model {}:{g}`", what.trim_matches('`')),
        None => String::new(),
    };
    Err(ModelError::Hub {
        msg: format!("{what} has no model.safetensors nor {index} (only safetensors weights are read){hint}"),
    })
}

/// The distinct shard names of an index's `weight_map`, in first-seen order; no path may
/// leave the snapshot.
fn shard_names(index_json: &str) -> std::result::Result<Vec<String>, String> {
    let v: serde_json::Value = serde_json::from_str(index_json).map_err(|e| format!("invalid JSON: {e}"))?;
    let map = v.get("weight_map").and_then(|m| m.as_object()).ok_or("no `weight_map` object")?;
    let mut out: Vec<String> = Vec::new();
    for f in map.values() {
        let f = f.as_str().ok_or("a `weight_map` value is not a string")?;
        if f.starts_with('/') || f.split('/').any(|p| p == "..") {
            return Err(format!("shard `{f}` lies outside the repository"));
        }
        if !out.iter().any(|o| o == f) {
            out.push(f.to_string());
        }
    }
    Ok(out)
}

/// `file` from the cache, else downloaded and checked against the size the server announces
/// (hf-hub renames whatever arrived into the blob: a connection closed early must not become
/// a short weight file).
fn fetch(hub: &Hub, file: &str) -> Result<PathBuf> {
    let what = format!("{} file `{file}`", hub.what);
    if let Some(path) = hf_hub::Cache::new(hub.opts.cache.clone()).model(hub.repo_id.clone()).get(file) {
        return Ok(path);
    }
    let expected = hub.api.metadata(&hub.repo.url(file)).map_err(|e| hub_err(hub.opts, &what, e))?.size() as u64;
    let path = hub.repo.download(file).map_err(|e| hub_err(hub.opts, &what, e))?;
    let got = std::fs::metadata(&path).map_err(|e| ModelError::io(&path, e))?.len();
    if got != expected {
        let blob = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(&blob);
        return Err(ModelError::Hub {
            msg: format!("{what}: {got} of {expected} bytes arrived; removed it, run again to download it"),
        });
    }
    Ok(path)
}

/// One line: the status code when the hub answered one (401/403 name HF_TOKEN), else the
/// transport error.
fn hub_err(opts: &HubOptions, what: &str, e: ApiError) -> ModelError {
    let text = e.to_string().replace('\n', " ");
    let status = text.split("http status: ").nth(1).and_then(|s| s.get(..3)).and_then(|s| s.parse::<u16>().ok());
    let msg = match status {
        Some(401 | 403) => {
            let have = if opts.token.is_some() { "the token in HF_TOKEN has no access" } else { "HF_TOKEN is not set" };
            format!(
                "{what}: {} answered {} (a gated or private repository: {have}; set HF_TOKEN to a token that can read it)",
                opts.endpoint,
                status.unwrap_or(401)
            )
        }
        Some(404) => format!("{what}: not found on {} (HTTP 404)", opts.endpoint),
        _ => format!("{what}: download from {} failed: {text}", opts.endpoint),
    };
    ModelError::Hub { msg }
}
