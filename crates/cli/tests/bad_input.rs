//! Bad input to `encore`: each case exits non-zero with a one-line error naming the flag,
//! file or field, and never panics. (Regression tests named after the input they pin.)

use std::process::Command;

fn encore(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_encore")).args(args).output().expect("run encore");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "encore {args:?} panicked: {stderr}");
    (out.status.code().unwrap_or(-1), stderr)
}

fn fails_naming(args: &[&str], needle: &str) {
    let (code, stderr) = encore(args);
    assert_ne!(code, 0, "encore {args:?} should fail");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "encore {args:?}: one line expected, got {stderr:?}");
    assert!(lines[0].contains(needle), "encore {args:?}: {:?} does not name {needle:?}", lines[0]);
}

fn tiny_model() -> String {
    format!("{}/../../tests/golden/tiny-llama3", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn invalid_sampling_values_name_their_flag() {
    fails_naming(&["generate", "--prompt", "x", "--temperature=-1"], "--temperature");
    fails_naming(&["generate", "--prompt", "x", "--top-p", "1.5"], "--top-p");
    fails_naming(&["generate", "--prompt", "x", "--min-p", "2"], "--min-p");
    fails_naming(&["generate", "--prompt", "x", "--max-tokens", "0"], "--max-tokens");
}

#[test]
fn unknown_device_and_dtype_name_their_flag() {
    fails_naming(&["generate", "--prompt", "x", "--device", "tpu"], "--device");
    fails_naming(&["generate", "--prompt", "x", "--dtype", "f8"], "--dtype");
    fails_naming(&["generate", "--prompt", "x", "--launch-params", "sometimes"], "--launch-params");
}

#[test]
fn missing_model_path_names_the_path() {
    fails_naming(&["generate", "--prompt", "x", "--model", "/nonexistent/model-dir"], "/nonexistent/model-dir");
}

#[test]
fn model_folder_without_tokenizer_names_the_folder() {
    fails_naming(&["generate", "--prompt", "x", "--model", &tiny_model()], "tokenizer");
}

#[test]
fn corrupt_config_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), "{ not json").unwrap();
    fails_naming(&["generate", "--prompt", "x", "--model", dir.path().to_str().unwrap()], "config.json");
}

#[test]
fn no_prompt_names_the_flag() {
    fails_naming(&["generate"], "--prompt");
}

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_device_without_the_cuda_build_says_how_to_get_it() {
    fails_naming(&["generate", "--prompt", "x", "--device", "cuda"], "--features cuda");
    fails_naming(&["bench", "--preset", "llama-3.2-1b"], "--features cuda");
}

#[test]
fn bench_rejects_unknown_presets_and_modes() {
    let (code, stderr) = encore(&["bench", "--preset", "gpt-5", "--device", "cpu"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("--device"), "{stderr}");
    fails_naming(&["bench", "nonsense"], "nonsense");
}

/// The default model (fetched once into encore's cache, as the README's first command does).
#[test]
fn prompt_longer_than_the_context_names_max_ctx() {
    let long = "word ".repeat(64);
    fails_naming(&["generate", "--prompt", &long, "--max-ctx", "16", "--max-tokens", "4"], "--max-ctx");
}
