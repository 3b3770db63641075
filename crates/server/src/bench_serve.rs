//! `encore bench serve`: a load generator for any OpenAI-compatible server, after
//! `vllm bench serve`. It sends `num_prompts` streaming completions (`ignore_eos: true`,
//! `max_tokens: output_len`, greedy) with random prompts of `input_len` token ids or words,
//! at most `concurrency` at once and/or at a Poisson `request_rate`, and times each
//! request's chunks: TTFT, TPOT, ITL, end-to-end. The statistics are `bench_stats.rs`.

use crate::bench_stats::{BenchReport, RequestResult};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PromptKind {
    /// Token ids drawn from `100..10000` (every real vocabulary has them): exact lengths.
    Ids,
    /// Common English words, about one token each.
    Words,
}

#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// The server's base URL (`http://127.0.0.1:8000`; a trailing `/v1` is accepted).
    pub url: String,
    /// None: the first id of `GET /v1/models`.
    pub model: Option<String>,
    pub api_key: Option<String>,
    /// Requests in flight at most; None: no limit.
    pub concurrency: Option<usize>,
    /// Requests per second (Poisson arrivals); None: all at once.
    pub request_rate: Option<f64>,
    pub num_prompts: usize,
    pub input_len: usize,
    pub output_len: usize,
    pub prompt_kind: PromptKind,
    pub seed: u64,
    /// Per request.
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Config(String),
    #[error("{url}: {msg}")]
    Http { url: String, msg: String },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

const WORDS: [&str; 48] = [
    "the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "was", "with", "be", "by", "on", "not", "he",
    "this", "are", "or", "his", "from", "at", "which", "but", "have", "an", "had", "they", "you", "were", "their",
    "one", "all", "we", "can", "her", "has", "there", "been", "if", "more", "when", "will", "would", "who", "so", "no",
];

/// The prompts of a run (the same for a given seed).
pub fn prompts(kind: PromptKind, n: usize, len: usize, seed: u64) -> Vec<Value> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| match kind {
            PromptKind::Ids => json!((0..len).map(|_| rng.random_range(100u32..10000)).collect::<Vec<_>>()),
            PromptKind::Words => {
                json!((0..len).map(|_| WORDS[rng.random_range(0..WORDS.len())]).collect::<Vec<_>>().join(" "))
            }
        })
        .collect()
}

/// Run the benchmark on a runtime of its own.
pub fn run(cfg: BenchConfig) -> Result<BenchReport, BenchError> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(bench(cfg))
}

pub(crate) fn base_url(url: &str) -> String {
    let u = url.trim_end_matches('/');
    u.strip_suffix("/v1").unwrap_or(u).to_string()
}

pub async fn bench(cfg: BenchConfig) -> Result<BenchReport, BenchError> {
    if cfg.num_prompts == 0 || cfg.input_len == 0 || cfg.output_len == 0 {
        return Err(BenchError::Config("--num-prompts, --input-len and --output-len must be at least 1".into()));
    }
    if cfg.concurrency == Some(0) {
        return Err(BenchError::Config("--concurrency must be at least 1".into()));
    }
    if cfg.request_rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        return Err(BenchError::Config("--request-rate must be > 0".into()));
    }
    let base = base_url(&cfg.url);
    let client = reqwest::Client::builder()
        .timeout(cfg.timeout)
        .pool_max_idle_per_host(cfg.concurrency.unwrap_or(cfg.num_prompts))
        .build()
        .map_err(|e| BenchError::Http { url: base.clone(), msg: e.to_string() })?;
    let model = match &cfg.model {
        Some(m) => m.clone(),
        None => first_model(&client, &base, cfg.api_key.as_deref()).await?,
    };
    let prompts = prompts(cfg.prompt_kind, cfg.num_prompts, cfg.input_len, cfg.seed);
    let limit = Arc::new(Semaphore::new(cfg.concurrency.unwrap_or(Semaphore::MAX_PERMITS)));
    let mut rng = StdRng::seed_from_u64(cfg.seed ^ 0x9e37_79b9);
    let url = format!("{base}/v1/completions");
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(prompts.len());
    for (i, prompt) in prompts.into_iter().enumerate() {
        if let (Some(rate), true) = (cfg.request_rate, i > 0) {
            let gap = -(1.0 - rng.random::<f64>()).ln() / rate; // exponential inter-arrival
            tokio::time::sleep(Duration::from_secs_f64(gap)).await;
        }
        let permit = limit.clone().acquire_owned().await.expect("the semaphore is never closed");
        let body = json!({
            "model": model, "prompt": prompt, "max_tokens": cfg.output_len, "ignore_eos": true,
            "temperature": 0.0, "stream": true, "stream_options": {"include_usage": true},
        });
        let (client, url, key) = (client.clone(), url.clone(), cfg.api_key.clone());
        let input_len = cfg.input_len;
        tasks.push(tokio::spawn(async move {
            let r = one_request(&client, &url, key.as_deref(), &body, input_len, None).await;
            drop(permit);
            r
        }));
    }
    let mut results = Vec::with_capacity(tasks.len());
    for t in tasks {
        results.push(t.await.unwrap_or_else(|e| RequestResult { error: Some(e.to_string()), ..Default::default() }));
    }
    let mut report = BenchReport::new(&results, t0.elapsed().as_secs_f64());
    report.url = base;
    report.model = model;
    report.num_prompts = cfg.num_prompts;
    report.input_len = cfg.input_len;
    report.output_len = cfg.output_len;
    report.max_concurrency = cfg.concurrency;
    report.request_rate = cfg.request_rate;
    Ok(report)
}

pub(crate) async fn first_model(client: &reqwest::Client, base: &str, key: Option<&str>) -> Result<String, BenchError> {
    let url = format!("{base}/v1/models");
    let err = |msg: String| BenchError::Http { url: url.clone(), msg };
    let mut req = client.get(&url);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let resp = req.send().await.map_err(|e| err(e.to_string()))?;
    let status = resp.status();
    let text = resp.text().await.map_err(|e| err(e.to_string()))?;
    if !status.is_success() {
        return Err(err(format!("HTTP {status}: {}", text.chars().take(200).collect::<String>())));
    }
    let v: Value = serde_json::from_str(&text).map_err(|e| err(format!("not JSON: {e}")))?;
    v["data"][0]["id"].as_str().map(str::to_string).ok_or_else(|| err("no model listed (pass --model)".into()))
}

/// One streaming completion, timed chunk by chunk; with `cancel_after: Some(k)` the client
/// drops the stream after `k` text chunks (a cancelled request, as a user closing a tab).
pub(crate) async fn one_request(
    client: &reqwest::Client,
    url: &str,
    key: Option<&str>,
    body: &Value,
    input_len: usize,
    cancel_after: Option<usize>,
) -> RequestResult {
    let start = Instant::now();
    let mut r = RequestResult { prompt_tokens: input_len, ..Default::default() };
    let fail = |mut r: RequestResult, msg: String| {
        r.ok = false;
        r.error = Some(msg);
        r
    };
    let mut req = client.post(url).header("content-type", "application/json").body(body.to_string());
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let mut resp = match req.send().await {
        Ok(resp) => resp,
        Err(e) => return fail(r, e.to_string()),
    };
    if !resp.status().is_success() {
        let status = resp.status();
        r.status = Some(status.as_u16());
        let text = resp.text().await.unwrap_or_default();
        return fail(r, format!("HTTP {status}: {}", text.chars().take(200).collect::<String>()));
    }
    let mut buf = String::new();
    let mut last = start;
    let mut chunks = 0usize;
    let mut usage_tokens = None;
    let mut done = false;
    while !done {
        let bytes = match resp.chunk().await {
            Ok(Some(b)) => b,
            Ok(None) => break,
            Err(e) => return fail(r, e.to_string()),
        };
        buf.push_str(&String::from_utf8_lossy(&bytes));
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            let Some(data) = frame.trim().strip_prefix("data:").map(str::trim) else { continue };
            if data == "[DONE]" {
                done = true;
                break;
            }
            let v: Value = match serde_json::from_str(data) {
                Ok(v) => v,
                Err(e) => return fail(r, format!("bad chunk `{data}`: {e}")),
            };
            if let Some(e) = v.get("error") {
                return fail(r, format!("error in stream: {e}"));
            }
            if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
                usage_tokens = Some(n as usize);
            }
            if v["choices"][0]["text"].as_str().is_some_and(|t| !t.is_empty()) {
                let now = Instant::now();
                if chunks == 0 {
                    r.ttft = (now - start).as_secs_f64();
                } else {
                    r.itl.push((now - last).as_secs_f64());
                }
                last = now;
                chunks += 1;
                if cancel_after == Some(chunks) {
                    r.latency = start.elapsed().as_secs_f64();
                    r.output_tokens = chunks;
                    r.cancelled = true;
                    r.ok = true;
                    return r; // dropping `resp` closes the connection mid-stream
                }
            }
        }
    }
    r.latency = start.elapsed().as_secs_f64();
    if !done {
        return fail(r, "the stream ended without [DONE]".into());
    }
    r.output_tokens = usage_tokens.unwrap_or(chunks);
    if chunks == 0 {
        r.ttft = r.latency;
    }
    r.ok = true;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_have_the_asked_length_and_follow_the_seed() {
        let ids = prompts(PromptKind::Ids, 3, 7, 1);
        assert!(ids.iter().all(|p| p.as_array().unwrap().len() == 7));
        assert_eq!(ids, prompts(PromptKind::Ids, 3, 7, 1));
        assert_ne!(ids, prompts(PromptKind::Ids, 3, 7, 2));
        let words = prompts(PromptKind::Words, 1, 5, 1);
        assert_eq!(words[0].as_str().unwrap().split(' ').count(), 5);
    }

    #[test]
    fn the_base_url_takes_an_optional_v1() {
        assert_eq!(base_url("http://h:1/v1/"), "http://h:1");
        assert_eq!(base_url("http://h:1"), "http://h:1");
    }
}
