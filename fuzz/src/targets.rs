//! The fuzz targets: each takes arbitrary bytes, runs them through one parser and what
//! consumes its result (config -> size checks, GGUF -> tokenizer, template, weights), and
//! ignores the errors. Failures are panics, aborts (allocations past the runner's memory
//! cap), and hangs. Work per input is bounded here (small tensors only, small template
//! limits) so a run makes many executions, not one slow one.

use encore_models::chat::{ChatTemplate, Message, TemplateLimits};
use encore_models::config::ModelConfig;
use encore_models::gguf::{GgufFile, GgufWeights};
use encore_models::safetensors::SafetensorsWeights;
use encore_models::tokenizer::Tokenizer;
use encore_models::weights::{validate_weights, WeightSource};
use encore_tensor::DType;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// A named target.
pub type Target = (&'static str, fn(&[u8]));

/// Every target, by the name the runner and `cargo fuzz` use.
pub const TARGETS: &[Target] = &[
    ("gguf", gguf),
    ("safetensors", safetensors),
    ("safetensors_index", safetensors_index),
    ("config_json", config_json),
    ("tokenizer_json", tokenizer_json),
    ("chat_template", chat_template),
    ("openai_request", openai_request),
];

/// Targets that fail on purpose, to test the runner's detection of each kind of failure;
/// `--target all` does not include them.
pub const SELFTEST_TARGETS: &[Target] = &[
    ("selftest_panic", |_| panic!("selftest panic")),
    ("selftest_abort", |_| std::process::abort()),
    ("selftest_oom", |d| {
        let v = vec![1u8; (1usize << 40) + d.len()];
        assert!(v[0] == 1);
    }),
    ("selftest_leak", |_| {
        std::mem::forget(vec![1u8; 1 << 20]);
    }),
    ("selftest_hang", |_| loop {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }),
];

pub fn target(name: &str) -> Option<fn(&[u8])> {
    TARGETS.iter().chain(SELFTEST_TARGETS).find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// Removes what the targets left on disk in this process (the index target's folder).
pub fn cleanup() {
    if let Some(dir) = INDEX_DIR.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Tensors up to this many elements are loaded (dequantised, converted, un-permuted).
const MAX_LOADED_ELEMENTS: usize = 1 << 18;

const TEMPLATE_LIMITS: TemplateLimits = TemplateLimits { fuel: 100_000, max_output_bytes: 64 << 10 };

fn load_small_tensors(w: &dyn WeightSource) {
    for name in w.names() {
        let small = w.dims(&name).is_some_and(|d| {
            d.iter().try_fold(1usize, |a, &x| a.checked_mul(x)).is_some_and(|n| n <= MAX_LOADED_ELEMENTS)
        });
        if small {
            let _ = w.get(&name, DType::F32);
            let _ = w.get(&name, DType::BF16);
        }
    }
}

fn render(t: &ChatTemplate, content: &str) {
    let msgs = [Message::new("system", "Be brief."), Message::new("user", content), Message::new("assistant", "ok")];
    let _ = t.render(&msgs, true);
    let _ = t.render(&msgs[1..2], false);
}

fn exercise_tokenizer(t: &Tokenizer) {
    for text in ["ab Hello, world 12 <s>", "", "\u{FFFD}é 🙂"] {
        if let Ok(ids) = t.encode(text, true) {
            let _ = t.decode(&ids, false);
            let mut d = t.stream_decoder(true);
            for id in ids.iter().take(16) {
                let _ = d.step(*id);
            }
            let _ = d.flush();
        }
    }
    let _ = t.decode(&[0, 1, 2, u32::MAX], true);
}

/// A GGUF file: header, metadata, tensor infos; then the config, the tokenizer, the chat
/// template, the weights (validated against the config) and every small tensor.
pub fn gguf(data: &[u8]) {
    let Ok(file) = GgufFile::from_bytes(Path::new("fuzz.gguf"), data.to_vec()) else { return };
    let cfg = file.model_config();
    if let Ok(tok) = Tokenizer::from_gguf(&file) {
        exercise_tokenizer(&tok);
        if let Some(src) = file.chat_template() {
            let t = ChatTemplate::lenient(src, tok.bos().map(|b| b.1), tok.eos().map(|e| e.1), "fuzz.gguf")
                .with_limits(TEMPLATE_LIMITS);
            render(&t, "hi");
        }
    }
    let Ok(w) = GgufWeights::new(file) else { return };
    if let Ok(cfg) = &cfg {
        let _ = validate_weights(cfg, &w);
        let _ = cfg.kv_cache_bytes(4, cfg.max_position_embeddings, DType::BF16);
    }
    load_small_tensors(&w);
}

/// The config of the committed tiny Llama, to validate fuzzed weights against.
fn tiny_config() -> &'static ModelConfig {
    static CFG: OnceLock<ModelConfig> = OnceLock::new();
    CFG.get_or_init(|| {
        ModelConfig::from_file(&crate::seeds::repo_root().join("tests/golden/tiny-llama3/config.json"))
            .expect("tests/golden/tiny-llama3/config.json")
    })
}

/// A single safetensors file: header checks, then every small tensor.
pub fn safetensors(data: &[u8]) {
    let Ok(w) = SafetensorsWeights::from_bytes(Path::new("fuzz.safetensors"), data.to_vec()) else { return };
    let _ = validate_weights(tiny_config(), &w);
    load_small_tensors(&w);
}

/// A folder with two fixed shards, written once per process; the input is the index.
static INDEX_DIR: OnceLock<PathBuf> = OnceLock::new();

fn index_dir() -> &'static PathBuf {
    INDEX_DIR.get_or_init(|| {
        let dir = crate::runner::scratch_dir("encore-fuzz-index-").expect("temp dir").keep();
        for (file, bytes) in crate::seeds::index_shards() {
            std::fs::write(dir.join(file), bytes).expect("write shard");
        }
        dir
    })
}

/// `model.safetensors.index.json` over two fixed shards (`a`, `c` in shard 1; `b` in 2).
pub fn safetensors_index(data: &[u8]) {
    let dir = index_dir();
    let index = dir.join(encore_models::safetensors::INDEX_FILE);
    if std::fs::write(&index, data).is_err() {
        return;
    }
    let Ok(w) = SafetensorsWeights::open_index(&index) else { return };
    load_small_tensors(&w);
}

/// `config.json`, then the size checks and RoPE tables built from it.
pub fn config_json(data: &[u8]) {
    // lossy: a flipped bit must not stop the input at a UTF-8 check before the parser
    let text = String::from_utf8_lossy(data);
    let Ok(cfg) = ModelConfig::parse(&text, "fuzz.json") else { return };
    let _ = cfg.param_count();
    let _ = cfg.weight_bytes(DType::BF16);
    let _ = cfg.kv_cache_bytes(1000, 4096, DType::BF16);
    let _ = cfg.kv_cache_bytes(usize::MAX, usize::MAX, DType::F32);
    if let Ok((cos, sin)) = encore_tensor::rope::try_tables(cfg.head_dim.min(256), 8, cfg.rope_theta, &cfg.rope_scaling)
    {
        assert!(cos.iter().chain(&sin).all(|v| v.is_finite()), "a validated config gave non-finite RoPE tables");
    }
}

/// `tokenizer.json`, then encoding, decoding and streaming.
pub fn tokenizer_json(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(t) = Tokenizer::from_json_str(&text, Path::new("fuzz-tokenizer.json")) else { return };
    exercise_tokenizer(&t);
}

/// A chat template (bytes before the first NUL) rendered with a user message (the bytes
/// after it), within small limits.
pub fn chat_template(data: &[u8]) {
    let (src, content) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b"hi"[..]),
    };
    let src = String::from_utf8_lossy(src);
    let content = String::from_utf8_lossy(content);
    let t = ChatTemplate::lenient(&src, Some("<s>"), Some("</s>"), "fuzz").with_limits(TEMPLATE_LIMITS);
    render(&t, &content);
}

/// What the request target prepares against: a tiny byte-level tokenizer, the SmolLM2
/// template (small limits) and a 64-token context.
fn request_info() -> &'static encore_engine::EngineInfo {
    static INFO: OnceLock<encore_engine::EngineInfo> = OnceLock::new();
    INFO.get_or_init(|| {
        let json = crate::seeds::seed_tokenizer_json();
        let tok = Tokenizer::from_json_str(&json, Path::new("fuzz-tokenizer.json")).expect("seed tokenizer");
        let template =
            ChatTemplate::lenient(crate::seeds::SMOLLM2, None, Some("<|im_end|>"), "fuzz").with_limits(TEMPLATE_LIMITS);
        encore_engine::EngineInfo {
            path: PathBuf::from("fuzz"),
            report: encore_engine::RunReport::default(),
            max_model_len: 64,
            vocab_size: tok.vocab_size(),
            tokenizer: Some(std::sync::Arc::new(tok)),
            chat_template: Some(std::sync::Arc::new(template)),
        }
    })
}

/// A request body of `POST /v1/chat/completions` and of `POST /v1/completions`: JSON
/// parsing with field paths, then the checks and the prompt (template, tokenizer) the
/// server makes before a request reaches the engine. Every refusal must be a 4xx.
pub fn openai_request(data: &[u8]) {
    use encore_server::error::parse_json;
    use encore_server::params;
    let info = request_info();
    let check = |r: Result<params::Prepared, encore_server::ApiError>| {
        if let Err(e) = r {
            assert!(e.status.is_client_error(), "a bad request answered {}: {}", e.status, e.message);
        }
    };
    if let Ok(req) = parse_json(data) {
        check(params::chat(req, info));
    }
    if let Ok(req) = parse_json(data) {
        check(params::completion(req, info));
    }
}
