//! `encore serve` end to end: the real binary on 127.0.0.1 (CPU, f32, the default model),
//! driven by real clients: `curl` and the official `openai` Python package
//! (`tests/openai_client.py`, in a venv under `target/openai-venv`, which `.ci/run` creates
//! and this test creates when missing). One server serves every case in order: error
//! statuses, the Python client (chat and completions, streamed and not, stop strings,
//! logprobs, seeds), concurrent greedy requests equal to each run alone, a cancelled stream
//! giving its KV blocks back, 429 on a full queue, `encore bench serve` and a short
//! `encore bench soak` against it, and a graceful SIGTERM. A second server
//! (the tiny golden model, no API key) shows the key is optional.

#[path = "../../models/tests/common/mod.rs"]
mod common;

use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

const KEY: &str = "test-key";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Server {
    child: Child,
    port: u16,
    log: tempfile::NamedTempFile,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        let port = free_port();
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_encore"))
            .args(["serve", "--port", &port.to_string()])
            .args(args)
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .expect("start encore serve");
        let s = Server { child, port, log };
        // the first run may fetch the default model from PyPI
        let t0 = Instant::now();
        while s.curl(&["/health"]).0 != 200 {
            assert!(t0.elapsed() < Duration::from_secs(300), "encore serve never became ready:\n{}", s.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        s
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// `curl -s` of `path` with extra args; returns (status, body).
    fn curl(&self, args: &[&str]) -> (u16, String) {
        let (path, rest) = args.split_first().unwrap();
        let out = Command::new("curl")
            .args(["-s", "--max-time", "120", "-w", "\n%{http_code}"])
            .args(rest)
            .arg(self.url(path))
            .output()
            .expect("curl runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// POST a JSON body with the API key.
    fn post(&self, path: &str, body: &str) -> (u16, Value) {
        let auth = format!("Authorization: Bearer {KEY}");
        let (code, text) = self.curl(&[path, "-H", &auth, "-H", "Content-Type: application/json", "-d", body]);
        (code, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// A metric's value (a line `name value`).
    fn metric(&self, name: &str) -> f64 {
        let auth = format!("Authorization: Bearer {KEY}");
        let (_, text) = self.curl(&["/metrics", "-H", &auth]);
        let line = text.lines().find(|l| l.split(' ').next() == Some(name));
        line.and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or_else(|| panic!("no {name} in\n{text}"))
    }

    /// A `curl -N` stream, read until its first `data:` frame; the reader keeps the pipe
    /// open (the client stays) until it is dropped.
    fn open_stream(&self, body: &str) -> (Child, BufReader<ChildStdout>) {
        let mut c = Command::new("curl")
            .args(["-sN", "--max-time", "120", "-H", &format!("Authorization: Bearer {KEY}"), "-d", body])
            .arg(self.url("/v1/completions"))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut r = BufReader::new(c.stdout.take().unwrap());
        let mut line = String::new();
        while !line.starts_with("data: ") {
            line.clear();
            assert!(r.read_line(&mut line).unwrap() > 0, "the stream ended before its first frame");
        }
        (c, r)
    }

    fn sigterm_and_wait(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let t0 = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(t0.elapsed() < Duration::from_secs(60), "encore serve did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- encore serve log ---\n{}", self.log());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < Duration::from_secs(60), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A Python with the `openai` package: `target/openai-venv`, created here when missing.
fn python_with_openai() -> PathBuf {
    let venv = repo().join("target/openai-venv");
    let py = venv.join("bin/python");
    let has_openai = |py: &Path| Command::new(py).args(["-c", "import openai"]).status().is_ok_and(|s| s.success());
    if !has_openai(&py) {
        eprintln!("installing the openai package into {} (CI does this in .ci/run)", venv.display());
        let ok = Command::new("python3").arg("-m").arg("venv").arg(&venv).status().is_ok_and(|s| s.success())
            && Command::new(&py).args(["-m", "pip", "install", "-q", "openai"]).status().is_ok_and(|s| s.success());
        assert!(ok && has_openai(&py), "cannot install the openai Python package into {}", venv.display());
    }
    py
}

fn completion(prompt: &str, max_tokens: usize) -> String {
    serde_json::json!({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0}).to_string()
}

fn long_stream() -> String {
    serde_json::json!({"prompt": "Count to a thousand:", "max_tokens": 400, "temperature": 0, "ignore_eos": true,
                       "stream": true})
    .to_string()
}

#[test]
fn serve_end_to_end_with_curl_and_the_openai_client() {
    assert!(Command::new("curl").arg("--version").output().is_ok(), "curl is needed (.ci/run installs it)");
    let python = python_with_openai();
    let mut s = Server::start(&[
        "--api-key",
        KEY,
        "--served-model-name",
        "smol",
        "--max-ctx",
        "512",
        "--kv-cache-gib",
        "0.25",
        "--max-num-seqs",
        "4",
        "--max-concurrent",
        "4",
        "--max-queue",
        "0",
        "--max-body-bytes",
        "65536",
    ]);
    let log = s.log();
    assert!(log.contains("KV cache:") && log.contains("listening on http://127.0.0.1:"), "{log}");

    // curl: statuses
    assert_eq!(s.curl(&["/health"]).0, 200, "/health needs no key");
    assert_eq!(s.curl(&["/v1/models"]).0, 401);
    assert_eq!(s.curl(&["/v1/models", "-H", "Authorization: Bearer nope"]).0, 401);
    let (code, models) = s.curl(&["/v1/models", "-H", &format!("Authorization: Bearer {KEY}")]);
    assert_eq!(code, 200);
    assert_eq!(serde_json::from_str::<Value>(&models).unwrap()["data"][0]["id"], "smol");
    let (code, v) = s.post("/v1/completions", r#"{"prompt": "x", "temperature": -2}"#);
    assert_eq!((code, v["error"]["param"].as_str()), (400, Some("temperature")), "{v}");
    let (code, v) = s.post("/v1/chat/completions", r#"{"model": "gpt-4", "messages": []}"#);
    assert_eq!((code, v["error"]["code"].as_str()), (404, Some("model_not_found")), "{v}");
    let (code, v) = s.post("/v1/completions", &format!(r#"{{"prompt": "{}"}}"#, "a".repeat(70_000)));
    assert_eq!((code, v["error"]["type"].as_str()), (413, Some("invalid_request_error")), "{v}");
    let chat = r#"{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "temperature": 0,
                   "stream": true, "stream_options": {"include_usage": true}}"#;
    let auth = format!("Authorization: Bearer {KEY}");
    let (code, sse) = s.curl(&["/v1/chat/completions", "-N", "-H", &auth, "-d", chat]);
    assert_eq!(code, 200);
    let frames: Vec<&str> = sse.split("\n\n").filter(|f| !f.trim().is_empty()).collect();
    assert!(frames.iter().all(|f| f.starts_with("data: ")), "{sse}");
    assert_eq!(frames.last(), Some(&"data: [DONE]"), "{sse}");
    let usage: Value = serde_json::from_str(&frames[frames.len() - 2][6..]).unwrap();
    assert!(usage["usage"]["completion_tokens"].as_u64().unwrap() <= 3, "{usage}");

    // the official openai client
    let out = Command::new(&python)
        .arg(repo().join("tests/openai_client.py"))
        .args([&s.url("/v1"), KEY, "smol"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tests/openai_client.py failed:\n{text}");
    eprint!("{text}");

    // 4 concurrent greedy requests == each alone (CPU f32: identical text)
    let prompts = ["The capital of France is", "One, two, three,", "My favourite food is pizza because", "Hello"];
    let alone: Vec<Value> = prompts.iter().map(|p| s.post("/v1/completions", &completion(p, 6)).1).collect();
    let together: Vec<Value> = std::thread::scope(|sc| {
        let hs: Vec<_> = prompts.iter().map(|p| sc.spawn(|| s.post("/v1/completions", &completion(p, 6)).1)).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for ((p, a), t) in prompts.iter().zip(&alone).zip(&together) {
        let text = |v: &Value| v["choices"][0]["text"].as_str().map(str::to_string);
        assert!(text(a).is_some_and(|t| !t.is_empty()), "{a}");
        assert_eq!(text(a), text(t), "prompt {p:?}: batched output differs from the same request alone");
    }

    // a cancelled stream gives its blocks back
    let total = s.metric("encore_kv_blocks_total");
    let aborted = s.metric("encore_requests_aborted_total");
    let generated = s.metric("encore_generation_tokens_total");
    let (mut c, _out) = s.open_stream(&long_stream());
    c.kill().unwrap();
    c.wait().unwrap();
    eventually("the cancelled request's blocks", || {
        s.metric("encore_kv_blocks_free") == total && s.metric("encore_num_requests_running") == 0.0
    });
    assert_eq!(s.metric("encore_requests_aborted_total"), aborted + 1.0);
    assert!(s.metric("encore_generation_tokens_total") < generated + 100.0, "the stream ran on after the client left");

    // --max-concurrent 4 --max-queue 0: a fifth request is refused with 429
    let mut streams: Vec<_> = (0..4).map(|_| s.open_stream(&long_stream())).collect();
    let (code, v) = s.post("/v1/completions", &completion("x", 1));
    assert_eq!((code, v["error"]["code"].as_str()), (429, Some("queue_full")), "{v}");
    for (c, _) in &mut streams {
        c.kill().unwrap();
        c.wait().unwrap();
    }
    eventually("every place back", || {
        s.metric("encore_num_requests_in_flight") == 0.0 && s.metric("encore_kv_blocks_free") == total
    });

    // encore bench serve against it (model id from /v1/models)
    let json = tempfile::NamedTempFile::new().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_encore"))
        .args(["bench", "serve", "--url", &s.url("/v1"), "--api-key", KEY, "--num-prompts", "4", "--concurrency", "2"])
        .args(["--input-len", "8", "--output-len", "4", "--json", json.path().to_str().unwrap()])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success() && table.contains("Mean TTFT (ms):"),
        "{table}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_str(&std::fs::read_to_string(json.path()).unwrap()).unwrap();
    assert_eq!((r["completed"].as_u64(), r["failed"].as_u64(), r["model"].as_str()), (Some(4), Some(0), Some("smol")));
    assert_eq!(r["total_output_tokens"], 16);
    assert!(r["ttft_ms"]["p99"].as_f64().unwrap() > 0.0 && r["itl_ms"]["mean"].as_f64().unwrap() > 0.0, "{r}");

    // a short soak: 6 clients over 4 places (so 429s, the intended refusals), random lengths,
    // 30% cancelled mid-stream; every request ends once and every block comes back
    let json = tempfile::NamedTempFile::new().unwrap();
    let pid = s.child.id().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_encore"))
        .args(["bench", "soak", "--url", &s.url("/v1"), "--api-key", KEY, "--concurrency", "6", "--duration", "6"])
        .args(["--input-len", "2:24", "--output-len", "2:12", "--cancel-fraction", "0.3", "--sample-every", "2"])
        .args(["--server-pid", &pid, "--max-growth-pct", "50", "--json", json.path().to_str().unwrap()])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{table}{}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_str(&std::fs::read_to_string(json.path()).unwrap()).unwrap();
    let n = |k: &str| r[k].as_u64().unwrap_or_else(|| panic!("{k} in {r}"));
    assert!(n("completed") > 0 && n("cancelled") > 0, "{table}");
    assert_eq!(n("failed") + n("wrong_length"), 0, "{table}");
    assert_eq!(n("server_ended"), n("completed") + n("cancelled"), "{table}");
    assert!(r["samples"][0]["rss_mib"].as_f64().unwrap() > 10.0, "{r}");

    // SIGTERM: the running stream finishes, then the server exits 0
    let body = serde_json::json!({"prompt": "Once upon a time", "max_tokens": 6, "temperature": 0, "stream": true});
    let mut c = Command::new("curl")
        .args(["-sN", "--max-time", "60", "-H", &auth, "-d", &body.to_string()])
        .arg(s.url("/v1/completions"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = c.stdout.take().unwrap();
    let mut first = [0u8; 6];
    out.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"data: ");
    let status = s.sigterm_and_wait();
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert!(c.wait().unwrap().success() && rest.trim_end().ends_with("data: [DONE]"), "{rest}");
    assert!(status.success(), "encore serve exited with {status}:\n{}", s.log());
    assert!(s.log().contains("shutting down"), "{}", s.log());
}

#[test]
fn serve_without_an_api_key_and_a_model_without_tokenizer() {
    let tiny = repo().join("tests/golden/tiny-llama3");
    let mut s = Server::start(&["--model", tiny.to_str().unwrap(), "--max-ctx", "64", "--kv-blocks", "8"]);
    let (code, models) = s.curl(&["/v1/models"]);
    assert_eq!(code, 200, "no key needed: {models}");
    assert_eq!(serde_json::from_str::<Value>(&models).unwrap()["data"][0]["id"], "tiny-llama3");
    let (code, body) =
        s.curl(&["/v1/completions", "-d", r#"{"prompt": [1, 2, 3], "max_tokens": 3, "ignore_eos": true}"#]);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((code, v["usage"]["completion_tokens"].as_u64()), (200, Some(3)), "{body}");
    let (code, body) = s.curl(&["/v1/completions", "-d", r#"{"prompt": "text"}"#]);
    assert!(code == 400 && body.contains("token ids"), "{body}");
    assert!(s.sigterm_and_wait().success());
}

/// A request whose template render runs out of memory gets a 400 naming the limit (the
/// template worker dies, not the server), and the next request is served by a fresh worker.
#[test]
fn a_template_that_exhausts_memory_fails_its_request_not_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let template = "{% if messages[0].content == 'boom' %}{% set ns = namespace(s='ab') %}\
        {% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}{% endif %}\
        {% for m in messages %}{{ m.content }}{% endfor %}";
    let m = dir.path().join("m.gguf");
    std::fs::write(&m, common::tiny_llama_model_gguf(true).kv_str("tokenizer.chat_template", template).build())
        .unwrap();
    let s = Server::start(&["--model", m.to_str().unwrap(), "--max-ctx", "64", "--kv-blocks", "8"]);
    assert!(s.log().contains("render in a worker process capped at 512.0 MiB"), "{}", s.log());
    let chat = |content: &str| {
        let body = format!(r#"{{"messages": [{{"role": "user", "content": "{content}"}}], "max_tokens": 2}}"#);
        s.curl(&["/v1/chat/completions", "-H", "Content-Type: application/json", "-d", &body])
    };
    for _ in 0..2 {
        let (code, body) = chat("boom");
        assert!(code == 400 && body.contains("memory limit") && body.contains("m.gguf"), "{code} {body}");
        let (code, body) = chat("ab");
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        assert_eq!((code, v["usage"]["prompt_tokens"].as_u64().is_some()), (200, true), "{body}");
    }
}

/// The last stderr line of `encore serve ARGS`, which must fail without a panic.
fn serve_fails(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_encore")).arg("serve").args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success() && !stderr.contains("panicked"), "encore serve {args:?}: {stderr}");
    let last = stderr.lines().last().unwrap_or_default().to_string();
    assert!(last.starts_with("error: "), "one-line error expected last: {stderr}");
    last
}

#[test]
fn serve_refuses_bad_flags_a_busy_port_and_a_missing_model_in_one_line() {
    assert!(serve_fails(&["--device", "tpu"]).contains("--device"));
    assert!(serve_fails(&["--dtype", "f8"]).contains("--dtype"));
    assert!(serve_fails(&["--max-concurrent", "0"]).contains("--max-concurrent"));
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    assert!(serve_fails(&["--port", &port]).contains(&format!("127.0.0.1:{port}")));
    let free = free_port().to_string();
    assert!(serve_fails(&["--port", &free, "--model", "/nonexistent/model-dir"]).contains("/nonexistent/model-dir"));
    let tiny = repo().join("tests/golden/tiny-llama3");
    let e = serve_fails(&["--port", &free, "--model", tiny.to_str().unwrap(), "--block-size", "0"]);
    assert!(e.contains("--block-size"), "{e}");
}
