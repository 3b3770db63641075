//! Cache directories from the environment. One test in its own binary: it sets environment
//! variables, which would race with other tests' threads.

use encore_models::hub::{cache_dir, hf_hub_cache, resolve_model};
use encore_models::hub_download::{HubOptions, DEFAULT_ENDPOINT};
use std::path::PathBuf;

#[test]
fn cache_directories_follow_the_environment() {
    let keys = [
        "ENCORE_CACHE",
        "XDG_CACHE_HOME",
        "HOME",
        "HF_HUB_CACHE",
        "HF_HOME",
        "HF_HUB_OFFLINE",
        "HF_ENDPOINT",
        "HF_TOKEN",
    ];
    let saved: Vec<_> = keys.iter().map(std::env::var_os).collect();
    for k in keys {
        std::env::remove_var(k);
    }
    std::env::set_var("HOME", "/h");
    assert_eq!(cache_dir().unwrap(), PathBuf::from("/h/.cache/encore"));
    assert_eq!(hf_hub_cache().unwrap(), PathBuf::from("/h/.cache/huggingface/hub"));
    std::env::set_var("XDG_CACHE_HOME", "/x");
    assert_eq!(cache_dir().unwrap(), PathBuf::from("/x/encore"));
    assert_eq!(hf_hub_cache().unwrap(), PathBuf::from("/x/huggingface/hub"));
    std::env::set_var("ENCORE_CACHE", "/e");
    std::env::set_var("HF_HOME", "/hf");
    assert_eq!(cache_dir().unwrap(), PathBuf::from("/e"));
    assert_eq!(hf_hub_cache().unwrap(), PathBuf::from("/hf/hub"));

    let hub = tempfile::tempdir().unwrap();
    std::env::set_var("HF_HUB_CACHE", hub.path());
    assert_eq!(hf_hub_cache().unwrap(), hub.path());
    let snap = hub.path().join("models--org--name/snapshots/r1");
    std::fs::create_dir_all(&snap).unwrap();
    // a complete snapshot (config + weights) is taken from the cache with no network
    for f in ["config.json", "model.safetensors", "m.gguf"] {
        std::fs::write(snap.join(f), "{}").unwrap();
    }
    assert_eq!(resolve_model("org/name").unwrap(), snap);
    let o = HubOptions::from_env().unwrap();
    assert_eq!(
        (o.cache.as_path(), o.endpoint.as_str(), o.token.as_deref(), o.offline),
        (hub.path(), DEFAULT_ENDPOINT, None, false)
    );
    // offline: the cache only, one line naming the variable
    std::env::set_var("HF_HUB_OFFLINE", "1");
    assert_eq!(resolve_model("org/name:m.gguf").unwrap(), snap.join("m.gguf"));
    let e = resolve_model("org/other").unwrap_err().to_string();
    assert!(
        e.contains("`org/other`") && e.contains("HF_HUB_OFFLINE") && e.contains("not in the local Hugging Face cache"),
        "{e}"
    );
    let e = resolve_model("org/name:other.gguf").unwrap_err().to_string();
    assert!(e.contains("`org/name:other.gguf`") && e.contains("HF_HUB_OFFLINE") && !e.contains('\n'), "{e}");
    std::env::set_var("HF_ENDPOINT", "http://127.0.0.1:9");
    std::env::set_var("HF_TOKEN", "hf_x");
    let o = HubOptions::from_env().unwrap();
    assert_eq!((o.endpoint.as_str(), o.token.as_deref(), o.offline), ("http://127.0.0.1:9", Some("hf_x"), true));
    std::env::remove_var("HF_HUB_OFFLINE");
    std::env::remove_var("HF_TOKEN");
    // the token file beside the cache counts when HF_TOKEN is not set
    std::env::remove_var("HF_HUB_CACHE");
    let home = tempfile::tempdir().unwrap();
    std::env::set_var("HF_HOME", home.path());
    std::fs::write(home.path().join("token"), "hf_file\n").unwrap();
    assert_eq!(HubOptions::from_env().unwrap().token.as_deref(), Some("hf_file"));
    std::env::set_var("HF_HUB_CACHE", hub.path());
    let e = resolve_model("./no/such/dir").unwrap_err().to_string();
    assert!(e.contains("./no/such/dir") && e.to_lowercase().contains("no such file"), "{e}");
    assert_eq!(resolve_model(hub.path().to_str().unwrap()).unwrap(), hub.path(), "an existing path is taken as is");

    std::env::remove_var("ENCORE_CACHE");
    std::env::remove_var("XDG_CACHE_HOME");
    std::env::remove_var("HOME");
    assert!(cache_dir().unwrap_err().to_string().contains("ENCORE_CACHE"));
    for (k, v) in keys.iter().zip(saved) {
        match v {
            Some(v) => std::env::set_var(k, v),
            None => std::env::remove_var(k),
        }
    }
}
