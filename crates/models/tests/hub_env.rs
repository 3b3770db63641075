//! Cache directories from the environment. One test in its own binary: it sets environment
//! variables, which would race with other tests' threads.

use encore_models::hub::{cache_dir, hf_hub_cache, resolve_model};
use std::path::PathBuf;

#[test]
fn cache_directories_follow_the_environment() {
    let keys = ["ENCORE_CACHE", "XDG_CACHE_HOME", "HOME", "HF_HUB_CACHE", "HF_HOME"];
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
    assert_eq!(resolve_model("org/name").unwrap(), snap);
    let e = resolve_model("org/other").unwrap_err().to_string();
    assert!(e.contains("org/other") && e.contains("not in the local Hugging Face cache"), "{e}");
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
