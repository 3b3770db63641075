//! Bad input to `encore`, one table row per case: the arguments and the files made for it in
//! a temp dir. Every row must exit non-zero (and not with a panic's 101), print exactly one
//! line on stderr, and name the flag, file, tensor or field at fault. Offline: the models
//! are the committed tiny ones (tests/golden) or tiny GGUF files written here.

#[path = "../../models/tests/common/mod.rs"]
mod common;

use common::{f32_bytes, safetensors_bytes, tiny_llama_gguf, tiny_llama_model_gguf, ty, GgufBuilder};
use std::path::{Path, PathBuf};
use std::process::Command;

fn encore(args: &[String]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_encore")).args(args).output().expect("run encore");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "encore {args:?} panicked: {stderr}");
    (out.status.code().unwrap_or(-1), stderr)
}

fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden").join(name)
}

/// One bad input. `args` may hold `{dir}` (the case's temp dir); `setup` writes its files
/// there; every `needles` entry must be in the error line, and `once`, when given, exactly
/// once (an I/O cause printed twice was a bug).
struct Case {
    name: &'static str,
    args: &'static [&'static str],
    setup: fn(&Path),
    needles: &'static [&'static str],
    once: Option<&'static str>,
}

fn nothing(_: &Path) {}

fn run_case(c: &Case) {
    let dir = tempfile::tempdir().unwrap();
    (c.setup)(dir.path());
    let d = dir.path().display().to_string();
    let args: Vec<String> = c.args.iter().map(|a| a.replace("{dir}", &d)).collect();
    let (code, stderr) = encore(&args);
    assert!(code != 0 && code != 101, "{}: exit code {code} (stderr {stderr:?})", c.name);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{}: one line expected, got {stderr:?}", c.name);
    let line = lines[0];
    assert!(line.starts_with("error: "), "{}: {line:?}", c.name);
    assert!(!line.chars().any(|ch| ch.is_control()), "{}: raw control characters in {line:?}", c.name);
    for n in c.needles {
        let n = n.replace("{dir}", &d);
        assert!(line.contains(&n), "{}: {line:?} does not name {n:?}", c.name);
    }
    if let Some(once) = c.once {
        assert_eq!(line.matches(once).count(), 1, "{}: {once:?} should appear once in {line:?}", c.name);
    }
}

// ---- files the rows write ------------------------------------------------------------------

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn gguf(dir: &Path, b: GgufBuilder) {
    write(dir, "m.gguf", &b.build());
}

/// The byte position of the `offset` field of tensor `name`'s info in a built GGUF file.
fn offset_field(bytes: &[u8], name: &str, n_dims: usize) -> usize {
    let mut key = (name.len() as u64).to_le_bytes().to_vec();
    key.extend_from_slice(name.as_bytes());
    let at = bytes.windows(key.len()).position(|w| w == key.as_slice()).expect("tensor info");
    at + key.len() + 4 + 8 * n_dims + 4
}

/// The tiny Llama folder (config, weights, generation config) copied into `dir`.
fn tiny_llama_folder(dir: &Path) {
    for f in ["config.json", "generation_config.json", "model.safetensors"] {
        std::fs::copy(golden("tiny-llama3").join(f), dir.join(f)).unwrap();
    }
}

/// A byte-level BPE tokenizer.json (from the GGUF writer's JSON) into `dir`.
fn tokenizer_json(dir: &Path) -> String {
    let json = encore_models::tokenizer::gpt2_tokenizer_json(&["a", "b", "ab", "Ġ"], &[1, 1, 1, 1], &["a b"], None)
        .unwrap()
        .to_string();
    write(dir, "tokenizer.json", json.as_bytes());
    json
}

fn setup_corrupt_config(dir: &Path) {
    write(dir, "config.json", b"{ not json");
}

fn setup_qk_zero_dim(dir: &Path) {
    gguf(dir, tiny_llama_model_gguf(true).tensor("blk.0.attn_q.weight", &[32, 0], 0, vec![]));
}

fn setup_duplicate_key(dir: &Path) {
    gguf(dir, tiny_llama_model_gguf(true).kv_duplicate("llama.context_length"));
}

fn setup_overlapping_gguf(dir: &Path) {
    let mut bytes = tiny_llama_model_gguf(true).build();
    let at = offset_field(&bytes, "blk.0.ffn_norm.weight", 1);
    bytes[at..at + 8].copy_from_slice(&0u64.to_le_bytes()); // on top of token_embd.weight
    write(dir, "m.gguf", &bytes);
}

fn setup_control_key(dir: &Path) {
    gguf(dir, tiny_llama_model_gguf(true).kv_raw("evil\x1b[2J\nkey", ty::BOOL, &[9]));
}

fn setup_huge_array(dir: &Path) {
    let mut p = ty::U64.to_le_bytes().to_vec();
    p.extend((1u64 << 50).to_le_bytes());
    gguf(dir, tiny_llama_gguf().kv_raw("tokenizer.ggml.scores", ty::ARRAY, &p));
}

fn setup_huge_layer_count(dir: &Path) {
    gguf(dir, tiny_llama_model_gguf(true).kv_u32("llama.block_count", 4_000_000_000));
}

fn setup_rope_factor_zero(dir: &Path) {
    let b = tiny_llama_model_gguf(true)
        .kv_str("llama.rope.scaling.type", "linear")
        .kv_f32("llama.rope.scaling.factor", 0.0);
    gguf(dir, b);
}

fn setup_untied_without_lm_head(dir: &Path) {
    // the weights without `output.weight` but the config says untied: a GGUF cannot say
    // that (it infers tying), so this is the safetensors folder with lm_head removed
    tiny_llama_folder(dir);
    let w = encore_models::safetensors::SafetensorsWeights::open_dir(&golden("tiny-llama3")).unwrap();
    use encore_models::weights::WeightSource;
    let kept: Vec<(String, Vec<usize>, Vec<u8>)> = w
        .names()
        .into_iter()
        .filter(|n| n != "lm_head.weight")
        .map(|n| {
            let t = w.get(&n, encore_tensor::DType::F32).unwrap();
            (n, t.dims, t.data)
        })
        .collect();
    let entries: Vec<_> = kept.iter().map(|(n, d, b)| (n.as_str(), "F32", d.clone(), b.clone())).collect();
    write(dir, "model.safetensors", &safetensors_bytes(&entries));
}

fn setup_shape_mismatch(dir: &Path) {
    tiny_llama_folder(dir);
    write(
        dir,
        "model.safetensors",
        &safetensors_bytes(&[("model.norm.weight", "F32", vec![65], f32_bytes(&[1.0; 64]))]),
    );
}

fn setup_overlapping_safetensors(dir: &Path) {
    tiny_llama_folder(dir);
    let h = r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}"#;
    let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
    bytes.extend(h.as_bytes());
    bytes.extend([0u8; 16]);
    write(dir, "model.safetensors", &bytes);
}

fn setup_index_disagrees(dir: &Path) {
    tiny_llama_folder(dir);
    std::fs::rename(dir.join("model.safetensors"), dir.join("shard-1.safetensors")).unwrap();
    let w = encore_models::safetensors::SafetensorsWeights::open_dir(&golden("tiny-llama3")).unwrap();
    use encore_models::weights::WeightSource;
    let mut map = serde_json::Map::new();
    for n in w.names().into_iter().filter(|n| n != "model.norm.weight") {
        map.insert(n, "shard-1.safetensors".into());
    }
    write(dir, "model.safetensors.index.json", serde_json::json!({ "weight_map": map }).to_string().as_bytes());
}

fn setup_decoder_syntax_error(dir: &Path) {
    tiny_llama_folder(dir);
    let mut json = tokenizer_json(dir);
    let at = json.find("\"decoder\"").unwrap();
    json.insert_str(at + 30, "}{,");
    write(dir, "tokenizer.json", json.as_bytes());
}

fn setup_bad_tokenizer_config(dir: &Path) {
    tiny_llama_folder(dir);
    tokenizer_json(dir);
    write(dir, "tokenizer_config.json", b"{\"add_bos_token\": tr");
}

fn setup_looping_template(dir: &Path) {
    let t = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}";
    gguf(dir, tiny_llama_model_gguf(true).kv_str("tokenizer.chat_template", t));
}

fn setup_flooding_template(dir: &Path) {
    let t = "{% for i in range(100000) %}{{ 'x' * 10000 }}{% endfor %}";
    gguf(dir, tiny_llama_model_gguf(true).kv_str("tokenizer.chat_template", t));
}

/// A string that doubles 40 times (a terabyte) without ever being printed: neither fuel nor
/// the output limit sees it; the worker's memory cap does.
const DOUBLING_TEMPLATE: &str =
    "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}";

fn setup_doubling_template(dir: &Path) {
    gguf(dir, tiny_llama_model_gguf(true).kv_str("tokenizer.chat_template", DOUBLING_TEMPLATE));
}

fn setup_fifo(dir: &Path) {
    let ok = Command::new("mkfifo").arg(dir.join("model.gguf")).status().map(|s| s.success()).unwrap_or(false);
    assert!(ok, "mkfifo");
}

fn setup_symlink_loop(dir: &Path) {
    std::os::unix::fs::symlink(dir.join("b"), dir.join("a")).unwrap();
    std::os::unix::fs::symlink(dir.join("a"), dir.join("b")).unwrap();
}

fn setup_lone_safetensors(dir: &Path) {
    std::fs::copy(golden("tiny-llama3").join("model.safetensors"), dir.join("w.safetensors")).unwrap();
}

fn setup_text_file(dir: &Path) {
    write(dir, "notes.txt", b"hello");
}

fn setup_tiny_gguf(dir: &Path) {
    gguf(dir, tiny_llama_model_gguf(true));
}

const P: &str = "--prompt";

const CASES: &[Case] = &[
    // ---- flags ----
    Case {
        name: "negative temperature",
        args: &["generate", P, "x", "--temperature=-1"],
        setup: nothing,
        needles: &["--temperature"],
        once: None,
    },
    Case {
        name: "top-p above 1",
        args: &["generate", P, "x", "--top-p", "1.5"],
        setup: nothing,
        needles: &["--top-p"],
        once: None,
    },
    Case {
        name: "min-p above 1",
        args: &["generate", P, "x", "--min-p", "2"],
        setup: nothing,
        needles: &["--min-p"],
        once: None,
    },
    Case {
        name: "max-tokens 0",
        args: &["generate", P, "x", "--max-tokens", "0"],
        setup: nothing,
        needles: &["--max-tokens"],
        once: None,
    },
    Case {
        name: "unknown device",
        args: &["generate", P, "x", "--device", "tpu"],
        setup: nothing,
        needles: &["--device"],
        once: None,
    },
    Case {
        name: "unknown dtype",
        args: &["generate", P, "x", "--dtype", "f8"],
        setup: nothing,
        needles: &["--dtype"],
        once: None,
    },
    Case {
        name: "unknown launch params",
        args: &["generate", P, "x", "--launch-params", "sometimes"],
        setup: nothing,
        needles: &["--launch-params"],
        once: None,
    },
    Case {
        name: "pdl on the cpu",
        args: &["generate", P, "x", "--pdl"],
        setup: nothing,
        needles: &["--pdl", "--device cuda"],
        once: None,
    },
    Case {
        name: "bench pdl on the cpu",
        args: &["bench", "--device", "cpu", "--pdl"],
        setup: nothing,
        needles: &["--pdl"],
        once: None,
    },
    Case { name: "no prompt", args: &["generate"], setup: nothing, needles: &["--prompt"], once: None },
    Case {
        name: "missing prompts file",
        args: &["generate", "--prompts-file", "{dir}/none.txt"],
        setup: nothing,
        needles: &["--prompts-file", "{dir}/none.txt"],
        once: Some("No such file or directory"),
    },
    // ---- bench: flags are checked before "built without CUDA" ----
    Case {
        name: "bench on cpu",
        args: &["bench", "--preset", "gpt-5", "--device", "cpu"],
        setup: nothing,
        needles: &["--device"],
        once: None,
    },
    Case {
        name: "bench unknown benchmark",
        args: &["bench", "nonsense"],
        setup: nothing,
        needles: &["nonsense"],
        once: None,
    },
    Case {
        name: "bench unknown preset",
        args: &["bench", "--preset", "gpt-5"],
        setup: nothing,
        needles: &["--preset", "gpt-5"],
        once: None,
    },
    Case {
        name: "bench batch 0",
        args: &["bench", "--batch", "1,0"],
        setup: nothing,
        needles: &["--batch", "`0`"],
        once: None,
    },
    Case {
        name: "bench unknown mode",
        args: &["bench", "--modes", "eager,fast"],
        setup: nothing,
        needles: &["--modes", "fast"],
        once: None,
    },
    Case {
        name: "bench launch unknown mode",
        args: &["bench", "launch", "--modes", "graph-inline"],
        setup: nothing,
        needles: &["--modes"],
        once: None,
    },
    Case {
        name: "bench pos past ctx",
        args: &["bench", "--ctx", "64", "--pos", "64"],
        setup: nothing,
        needles: &["--pos"],
        once: None,
    },
    Case {
        name: "bench ctx overflow",
        args: &["bench", "--ctx", "18446744073709551615", "--pos", "1"],
        setup: nothing,
        needles: &["--ctx", "overflows"],
        once: None,
    },
    Case {
        name: "bench missing model",
        args: &["bench", "--model", "{dir}/none"],
        setup: nothing,
        needles: &["{dir}/none/config.json"],
        once: Some("No such file or directory"),
    },
    // ---- model paths ----
    Case {
        name: "missing model path",
        args: &["generate", P, "x", "--model", "/nonexistent/model-dir"],
        setup: nothing,
        needles: &["/nonexistent/model-dir"],
        once: Some("No such file or directory"),
    },
    Case {
        name: "fifo as model",
        args: &["generate", P, "x", "--model", "{dir}/model.gguf"],
        setup: setup_fifo,
        needles: &["{dir}/model.gguf", "not a regular file or directory (a FIFO)"],
        once: None,
    },
    Case {
        name: "device as model",
        args: &["generate", P, "x", "--model", "/dev/null"],
        setup: nothing,
        needles: &["/dev/null", "not a regular file or directory"],
        once: None,
    },
    Case {
        name: "symlink loop as model",
        args: &["generate", P, "x", "--model", "{dir}/a"],
        setup: setup_symlink_loop,
        needles: &["{dir}/a", "symbolic links"],
        once: None,
    },
    Case {
        name: "safetensors file without its config",
        args: &["generate", P, "x", "--model", "{dir}/w.safetensors"],
        setup: setup_lone_safetensors,
        needles: &["no config.json", "--model takes"],
        once: None,
    },
    Case {
        name: "text file as model",
        args: &["generate", P, "x", "--model", "{dir}/notes.txt"],
        setup: setup_text_file,
        needles: &["notes.txt", "not a GGUF file", "--model takes"],
        once: None,
    },
    Case {
        name: "folder without tokenizer",
        args: &["generate", P, "x", "--model", "{dir}"],
        setup: tiny_llama_folder,
        needles: &["tokenizer"],
        once: None,
    },
    Case {
        name: "corrupt config.json",
        args: &["generate", P, "x", "--model", "{dir}"],
        setup: setup_corrupt_config,
        needles: &["config.json"],
        once: None,
    },
    // ---- GGUF ----
    Case {
        name: "gguf Q with a zero dim",
        args: &["generate", P, "ab", "--model", "{dir}/m.gguf"],
        setup: setup_qk_zero_dim,
        needles: &["m.gguf", "blk.0.attn_q.weight", "dimension 1 is 0"],
        once: None,
    },
    Case {
        name: "gguf duplicate key",
        args: &["generate", P, "ab", "--model", "{dir}/m.gguf"],
        setup: setup_duplicate_key,
        needles: &["m.gguf", "`llama.context_length` appears twice"],
        once: None,
    },
    Case {
        name: "gguf overlapping tensors",
        args: &["generate", P, "ab", "--model", "{dir}/m.gguf"],
        setup: setup_overlapping_gguf,
        needles: &["m.gguf", "token_embd.weight", "blk.0.ffn_norm.weight", "overlap"],
        once: None,
    },
    Case {
        name: "gguf key with control characters",
        args: &["generate", P, "ab", "--model", "{dir}/m.gguf"],
        setup: setup_control_key,
        needles: &["evil\\u{1b}[2J\\nkey"],
        once: None,
    },
    Case {
        name: "gguf huge array count",
        args: &["generate", P, "ab", "--model", "{dir}/m.gguf"],
        setup: setup_huge_array,
        needles: &["tokenizer.ggml.scores", "needs more bytes"],
        once: None,
    },
    Case {
        name: "gguf huge layer count",
        args: &["generate", P, "ab", "--model", "{dir}/m.gguf"],
        setup: setup_huge_layer_count,
        needles: &["num_hidden_layers", "over the limit"],
        once: None,
    },
    Case {
        name: "gguf rope factor 0",
        args: &["generate", P, "ab", "--model", "{dir}/m.gguf"],
        setup: setup_rope_factor_zero,
        needles: &["rope_scaling.factor", "not a positive number"],
        once: None,
    },
    Case {
        name: "prompt longer than the context",
        args: &[
            "generate",
            P,
            "ab ab ab ab ab ab ab ab ab ab ab ab ab ab ab ab ab ab",
            "--max-ctx",
            "8",
            "--model",
            "{dir}/m.gguf",
        ],
        setup: setup_tiny_gguf,
        needles: &["--max-ctx"],
        once: None,
    },
    // ---- safetensors folders ----
    Case {
        name: "untied config without lm_head",
        args: &["generate", P, "x", "--model", "{dir}"],
        setup: setup_untied_without_lm_head,
        needles: &["lm_head.weight", "tie_word_embeddings"],
        once: None,
    },
    Case {
        name: "safetensors shape vs offsets",
        args: &["generate", P, "x", "--model", "{dir}"],
        setup: setup_shape_mismatch,
        needles: &["model.safetensors", "`model.norm.weight`", "needs 260 bytes"],
        once: None,
    },
    Case {
        name: "safetensors overlapping tensors",
        args: &["generate", P, "x", "--model", "{dir}"],
        setup: setup_overlapping_safetensors,
        needles: &["`a`", "`b`", "overlap"],
        once: None,
    },
    Case {
        name: "sharded index disagrees with its shard",
        args: &["generate", P, "x", "--model", "{dir}"],
        setup: setup_index_disagrees,
        needles: &["model.safetensors.index.json", "`model.norm.weight`", "not in the weight_map"],
        once: None,
    },
    // ---- tokenizer and template ----
    Case {
        name: "tokenizer.json syntax error inside decoder",
        args: &["generate", P, "x", "--model", "{dir}"],
        setup: setup_decoder_syntax_error,
        needles: &["tokenizer.json", "invalid JSON"],
        once: None,
    },
    Case {
        name: "tokenizer_config.json not JSON",
        args: &["generate", P, "x", "--model", "{dir}"],
        setup: setup_bad_tokenizer_config,
        needles: &["tokenizer_config.json", "invalid JSON"],
        once: Some("EOF while parsing"),
    },
    Case {
        name: "chat template that never ends",
        args: &["generate", P, "ab", "--chat", "--model", "{dir}/m.gguf"],
        setup: setup_looping_template,
        needles: &["chat template", "m.gguf", "instructions"],
        once: None,
    },
    Case {
        name: "chat template that floods",
        args: &["generate", P, "ab", "--chat", "--model", "{dir}/m.gguf"],
        setup: setup_flooding_template,
        needles: &["chat template", "output passed the limit"],
        once: None,
    },
    Case {
        name: "chat template that builds a huge string",
        args: &["generate", P, "ab", "--chat", "--model", "{dir}/m.gguf"],
        setup: setup_doubling_template,
        needles: &["chat template", "m.gguf", "memory limit"],
        once: None,
    },
];

#[test]
fn every_bad_input_is_one_line_naming_its_cause_with_a_non_panic_exit() {
    for c in CASES {
        run_case(c);
    }
}

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_device_without_the_cuda_build_says_how_to_get_it() {
    for args in [&["generate", P, "x", "--device", "cuda"][..], &["bench", "--preset", "llama-3.2-1b"][..]] {
        run_case(&Case {
            name: "cuda without the feature",
            args,
            setup: nothing,
            needles: &["--features cuda"],
            once: None,
        });
    }
}

/// A template that does not compile, loops or floods only breaks `--chat`: without it the
/// model generates (exit 0).
#[test]
fn a_broken_chat_template_does_not_make_the_model_unusable_without_chat() {
    for setup in [setup_looping_template as fn(&Path), setup_flooding_template, setup_doubling_template] {
        let dir = tempfile::tempdir().unwrap();
        setup(dir.path());
        let m = dir.path().join("m.gguf").display().to_string();
        let args: Vec<String> = ["generate", P, "ab", "--max-tokens", "2", "--model", &m].map(String::from).to_vec();
        let (code, stderr) = encore(&args);
        assert_eq!(code, 0, "{stderr}");
    }
    let dir = tempfile::tempdir().unwrap();
    gguf(dir.path(), tiny_llama_model_gguf(true).kv_str("tokenizer.chat_template", "{% for m in messages %}{{ m"));
    let m = dir.path().join("m.gguf").display().to_string();
    let (code, stderr) = encore(&["generate", P, "ab", "--max-tokens", "2", "--model", &m].map(String::from));
    assert_eq!(code, 0, "{stderr}");
    let (code, stderr) = encore(&["generate", P, "ab", "--chat", "--model", &m].map(String::from));
    assert!(code == 1 && stderr.contains("tokenizer.chat_template") && stderr.lines().count() == 1, "{stderr}");
}

/// Layers in the file beyond `num_hidden_layers` are ignored, with a warning on stderr.
#[test]
fn layers_beyond_num_hidden_layers_are_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    gguf(dir.path(), tiny_llama_model_gguf(true).tensor("blk.1.attn_norm.weight", &[32], 0, f32_bytes(&[1.0; 32])));
    let m = dir.path().join("m.gguf").display().to_string();
    let (code, stderr) = encore(&["generate", P, "ab", "--max-tokens", "2", "--model", &m].map(String::from));
    assert_eq!(code, 0, "{stderr}");
    let warning = stderr.lines().find(|l| l.starts_with("warning: ")).unwrap_or_else(|| panic!("no warning: {stderr}"));
    assert!(warning.contains("m.gguf") && warning.contains("layers 1..=1 are ignored"), "{warning}");
}

/// A `.safetensors` file is read as safetensors with its folder's config (not as GGUF).
#[test]
fn a_safetensors_file_as_model_is_not_parsed_as_gguf() {
    let st = golden("tiny-llama3").join("model.safetensors").display().to_string();
    let (code, stderr) = encore(&["generate", P, "x", "--model", &st].map(String::from));
    assert_ne!(code, 0);
    assert!(stderr.contains("no tokenizer.json") && !stderr.contains("GGUF"), "{stderr}");
}
