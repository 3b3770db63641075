//! The server over real HTTP on 127.0.0.1, with the tiny golden model (token ids only, no
//! tokenizer): every error status (400 naming the field, 401, 404, 413, 429, 503 while
//! loading), completions streamed and not, and a cancelled stream giving its KV blocks
//! back. Text, chat templates and real clients are `crates/cli/tests/serve.rs`.

use encore_engine::{worker, EngineConfig, EngineError, QueueLimits};
use encore_server::routes::{router, AppState};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Opts {
    api_key: Option<&'static str>,
    limits: QueueLimits,
    max_body_bytes: usize,
    /// Loading waits for this to fire.
    gate: Option<std::sync::mpsc::Receiver<()>>,
}

impl Default for Opts {
    fn default() -> Self {
        Opts { api_key: None, limits: QueueLimits::default(), max_body_bytes: 8 << 20, gate: None }
    }
}

/// Starts a server on a free port; returns its base URL.
async fn start(o: Opts) -> String {
    let path = std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/golden/tiny-llama3"));
    let cfg = EngineConfig { max_ctx: Some(4096), kv_blocks: Some(1024), max_num_seqs: 4, ..Default::default() };
    let gate = o.gate;
    let engine = worker::spawn(cfg, o.limits, move || {
        if let Some(g) = gate {
            let _ = g.recv();
        }
        Ok::<_, EngineError>(encore_models::hub::open_model(&path)?)
    });
    let mut st = AppState::new(engine, None, Some("tiny".into()));
    st.api_key = o.api_key.map(str::to_string);
    st.max_body_bytes = o.max_body_bytes;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router(Arc::new(st))).await });
    base
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
}

async fn post(base: &str, path: &str, body: &str, key: Option<&str>) -> (u16, Value) {
    let mut r =
        client().post(format!("{base}{path}")).header("content-type", "application/json").body(body.to_string());
    if let Some(k) = key {
        r = r.bearer_auth(k);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

async fn get(base: &str, path: &str) -> (u16, String) {
    let resp = client().get(format!("{base}{path}")).send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

async fn wait_ready(base: &str) {
    let t0 = Instant::now();
    while get(base, "/health").await.0 != 200 {
        assert!(t0.elapsed() < Duration::from_secs(20), "server never became ready");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The value of a metric line `name value` (no labels).
async fn metric(base: &str, name: &str) -> f64 {
    let text = get(base, "/metrics").await.1;
    let line = text.lines().find(|l| l.split(' ').next() == Some(name)).unwrap_or_else(|| panic!("no {name}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let t0 = Instant::now();
    while !f().await {
        assert!(t0.elapsed() < Duration::from_secs(20), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn assert_error(status: u16, body: &Value, want: u16, param: Option<&str>) {
    assert_eq!(status, want, "{body}");
    let e = &body["error"];
    assert!(e["message"].is_string() && e.get("type").is_some() && e.get("code").is_some(), "{body}");
    assert_eq!(e["param"].as_str(), param, "{body}");
    if let Some(p) = param {
        assert!(e["message"].as_str().unwrap().contains(p), "{body} should name {p}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_and_every_error_status() {
    let base = start(Opts { max_body_bytes: 4096, ..Default::default() }).await;
    wait_ready(&base).await;

    let (s, v) =
        post(&base, "/v1/completions", r#"{"prompt": [1, 5, 9], "max_tokens": 4, "ignore_eos": true}"#, None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["model"], "tiny");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!((v["usage"]["prompt_tokens"].as_u64(), v["usage"]["completion_tokens"].as_u64()), (Some(3), Some(4)));

    let bad = [
        (r#"{"prompt": [1], "temperature": -1}"#, "temperature"),
        (r#"{"prompt": [1], "top_p": 2}"#, "top_p"),
        (r#"{"prompt": [1], "max_tokens": "many"}"#, "max_tokens"),
        (r#"{"prompt": [1], "max_tokens": 5000}"#, "max_tokens"),
        (r#"{"prompt": [1], "n": 3}"#, "n"),
        (r#"{"prompt": [1], "presence_penalty": 3}"#, "presence_penalty"),
        (r#"{"prompt": [9999]}"#, "prompt"),
        (r#"{"max_tokens": 1}"#, "prompt"),
    ];
    for (body, field) in bad {
        let (s, v) = post(&base, "/v1/completions", body, None).await;
        assert_error(s, &v, 400, Some(field));
    }
    let (s, v) = post(&base, "/v1/chat/completions", r#"{"messages": "hi"}"#, None).await;
    assert_error(s, &v, 400, Some("messages"));
    let (s, v) = post(&base, "/v1/completions", "{not json", None).await;
    assert_error(s, &v, 400, None);

    let (s, v) = post(&base, "/v1/completions", r#"{"model": "gpt-4o", "prompt": [1]}"#, None).await;
    assert_error(s, &v, 404, Some("model"));
    assert_eq!(v["error"]["code"], "model_not_found");
    let (s, _) = post(&base, "/v1/completions", r#"{"model": "tiny", "prompt": [1], "max_tokens": 1}"#, None).await;
    assert_eq!(s, 200);
    let (s, v) = post(&base, "/v1/nothing", "{}", None).await;
    assert_error(s, &v, 404, None);

    let big = format!(r#"{{"prompt": {:?}}}"#, vec![1u32; 3000]);
    let (s, v) = post(&base, "/v1/completions", &big, None).await;
    assert_error(s, &v, 413, None);

    let (s, models) = get(&base, "/v1/models").await;
    let m: Value = serde_json::from_str(&models).unwrap();
    assert_eq!(s, 200);
    assert_eq!(
        (&m["data"][0]["id"], &m["data"][0]["object"], &m["data"][0]["owned_by"]),
        (&json!("tiny"), &json!("model"), &json!("encore"))
    );
    assert!(m["data"][0]["root"].as_str().unwrap().ends_with("tiny-llama3"));

    let text = get(&base, "/metrics").await.1;
    assert!(text.contains(r#"encore_http_requests_total{route="/v1/completions",status="400"} 9"#), "{text}");
    assert!(text.contains(r#"route="/v1/completions",status="413""#), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_key_guards_every_route_but_health() {
    let base = start(Opts { api_key: Some("sekrit"), ..Default::default() }).await;
    wait_ready(&base).await;
    let body = r#"{"prompt": [1, 2], "max_tokens": 2}"#;
    for key in [None, Some("wrong")] {
        let (s, v) = post(&base, "/v1/completions", body, key).await;
        assert_error(s, &v, 401, None);
    }
    assert_eq!(get(&base, "/v1/models").await.0, 401);
    assert_eq!(get(&base, "/metrics").await.0, 401);
    assert_eq!(get(&base, "/health").await.0, 200);
    assert_eq!(post(&base, "/v1/completions", body, Some("sekrit")).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_503_while_loading_then_serves() {
    let (go, gate) = std::sync::mpsc::channel();
    let base = start(Opts { gate: Some(gate), ..Default::default() }).await;
    let (s, body) = get(&base, "/health").await;
    assert_eq!(s, 503, "{body}");
    let (s, v) = post(&base, "/v1/completions", r#"{"prompt": [1]}"#, None).await;
    assert_error(s, &v, 503, None);
    assert_eq!(get(&base, "/v1/models").await.0, 503);
    assert_eq!(get(&base, "/metrics").await.0, 200);
    go.send(()).unwrap();
    wait_ready(&base).await;
    assert_eq!(post(&base, "/v1/completions", r#"{"prompt": [1], "max_tokens": 1}"#, None).await.0, 200);
}

/// Reads a streaming response until at least one `data:` frame has arrived (the tiny model
/// has no tokenizer, so its chunks carry logprobs, not text).
async fn first_frame(resp: &mut reqwest::Response) -> String {
    let mut seen = String::new();
    while !seen.contains("\n\n") {
        seen.push_str(&String::from_utf8_lossy(&resp.chunk().await.unwrap().expect("a frame")));
    }
    seen
}

fn stream_body(max_tokens: usize) -> String {
    json!({"prompt": [1, 2, 3], "max_tokens": max_tokens, "ignore_eos": true, "stream": true,
           "logprobs": 0, "stream_options": {"include_usage": true}})
    .to_string()
}

async fn open_stream(base: &str, max_tokens: usize) -> reqwest::Response {
    let resp = client().post(format!("{base}/v1/completions")).body(stream_body(max_tokens)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    resp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_stream_then_a_cancelled_one_frees_its_blocks() {
    let base = start(Opts::default()).await;
    wait_ready(&base).await;
    let text = open_stream(&base, 5).await.text().await.unwrap();
    let frames: Vec<&str> = text.split("\n\n").filter(|f| !f.is_empty()).collect();
    assert!(frames.iter().all(|f| f.starts_with("data: ")), "{text}");
    assert_eq!(frames.last(), Some(&"data: [DONE]"));
    let usage: Value = serde_json::from_str(&frames[frames.len() - 2][6..]).unwrap();
    assert_eq!(usage["usage"]["completion_tokens"], 5);

    let total = metric(&base, "encore_kv_blocks_total").await;
    let mut resp = open_stream(&base, 4000).await;
    first_frame(&mut resp).await;
    drop(resp);
    eventually("the cancelled request's blocks", async || {
        metric(&base, "encore_kv_blocks_free").await == total
            && metric(&base, "encore_num_requests_running").await == 0.0
    })
    .await;
    assert_eq!(metric(&base, "encore_requests_aborted_total").await, 1.0);
    assert!(metric(&base, "encore_generation_tokens_total").await < 4005.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429() {
    let base = start(Opts { limits: QueueLimits { max_concurrent: 1, max_queue: 0 }, ..Default::default() }).await;
    wait_ready(&base).await;
    let mut first = open_stream(&base, 4000).await;
    first_frame(&mut first).await;
    let (s, v) = post(&base, "/v1/completions", r#"{"prompt": [1], "max_tokens": 1}"#, None).await;
    assert_error(s, &v, 429, None);
    assert_eq!(v["error"]["code"], "queue_full");
    drop(first);
    eventually("the place to be given back", async || metric(&base, "encore_num_requests_in_flight").await == 0.0)
        .await;
    assert_eq!(post(&base, "/v1/completions", r#"{"prompt": [1], "max_tokens": 1}"#, None).await.0, 200);
}
