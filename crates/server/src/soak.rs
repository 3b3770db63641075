//! `encore bench soak`: a bounded soak of an encore server. For `duration`, `concurrency`
//! clients each send streaming completions back to back with random prompt and output
//! lengths (`ignore_eos`, so a finished request must carry exactly its `max_tokens`), and a
//! `cancel_fraction` of them close the stream after a random number of tokens. It samples
//! the server's resident memory (`/proc/PID/status`, with `server_pid`) and the GPU memory
//! the server's process holds (`nvidia-smi`, where present) as it goes, and at the end reads
//! `/metrics` to check the server's own accounting: every request the clients started ended
//! once (finished or aborted), nothing is left running, and every KV block is free.
//!
//! Failures: any error but a 429 (the intended refusal when the queue is full), a finished
//! request with a token count other than its `max_tokens`, a metrics mismatch, or memory
//! that grows by more than `max_growth` after the warm-up (the first fifth of the run).

use crate::bench_serve::{base_url, first_model, one_request};
use crate::bench_stats::RequestResult;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct SoakConfig {
    pub url: String,
    pub model: Option<String>,
    pub api_key: Option<String>,
    pub concurrency: usize,
    pub duration: Duration,
    /// Prompt tokens (random ids), inclusive range.
    pub input_len: (usize, usize),
    /// `max_tokens`, inclusive range.
    pub output_len: (usize, usize),
    /// Share of requests the client cancels mid-stream.
    pub cancel_fraction: f64,
    pub seed: u64,
    /// The server's process, for its resident memory.
    pub server_pid: Option<u32>,
    /// Seconds between memory samples.
    pub sample_every: Duration,
    /// Largest allowed growth of RSS or GPU memory after the warm-up, as a fraction.
    pub max_growth: f64,
}

/// One memory sample.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct MemSample {
    pub t_s: f64,
    pub rss_mib: Option<f64>,
    pub gpu_mib: Option<f64>,
    pub completed: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SoakReport {
    pub duration_s: f64,
    pub concurrency: usize,
    pub started: usize,
    pub completed: usize,
    pub cancelled: usize,
    pub rejected_429: usize,
    /// Errors other than 429.
    pub failed: usize,
    /// Finished requests whose token count differs from their max_tokens.
    pub wrong_length: usize,
    pub output_tokens: usize,
    pub output_throughput: f64,
    /// Server counters over the run (finished + aborted), and what the clients expected.
    pub server_ended: Option<u64>,
    pub server_running_after: Option<u64>,
    pub kv_blocks_free_after: Option<u64>,
    pub kv_blocks_total: Option<u64>,
    pub samples: Vec<MemSample>,
    pub rss_growth: Option<f64>,
    pub gpu_growth: Option<f64>,
    /// Why the soak failed (empty: passed).
    pub problems: Vec<String>,
    pub errors: Vec<String>,
}

pub fn run(cfg: SoakConfig) -> Result<SoakReport, crate::bench_serve::BenchError> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(soak(cfg))
}

#[derive(Default)]
struct Tally {
    started: usize,
    results: Vec<RequestResult>,
    wrong_length: usize,
}

pub async fn soak(cfg: SoakConfig) -> Result<SoakReport, crate::bench_serve::BenchError> {
    use crate::bench_serve::BenchError;
    let bad = |m: &str| Err(BenchError::Config(m.to_string()));
    if cfg.concurrency == 0 || cfg.duration.is_zero() {
        return bad("--concurrency and --duration must be at least 1");
    }
    if cfg.input_len.0 == 0
        || cfg.input_len.0 > cfg.input_len.1
        || cfg.output_len.0 == 0
        || cfg.output_len.0 > cfg.output_len.1
    {
        return bad("--input-len and --output-len are MIN:MAX ranges with 1 <= MIN <= MAX");
    }
    if !(0.0..=1.0).contains(&cfg.cancel_fraction) {
        return bad("--cancel-fraction must be in [0, 1]");
    }
    let base = base_url(&cfg.url);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .pool_max_idle_per_host(cfg.concurrency)
        .build()
        .map_err(|e| BenchError::Http { url: base.clone(), msg: e.to_string() })?;
    let model = match &cfg.model {
        Some(m) => m.clone(),
        None => first_model(&client, &base, cfg.api_key.as_deref()).await?,
    };
    let before = metrics(&client, &base, cfg.api_key.as_deref()).await;
    let tally = Arc::new(Mutex::new(Tally::default()));
    let t0 = Instant::now();
    let deadline = t0 + cfg.duration;
    let mut clients = Vec::new();
    for c in 0..cfg.concurrency {
        let (client, tally, cfg, model) = (client.clone(), tally.clone(), cfg.clone(), model.clone());
        let url = format!("{base}/v1/completions");
        clients.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(cfg.seed.wrapping_add(c as u64 * 0x9e37_79b9));
            while Instant::now() < deadline {
                let n_in = rng.random_range(cfg.input_len.0..=cfg.input_len.1);
                let n_out = rng.random_range(cfg.output_len.0..=cfg.output_len.1);
                let prompt: Vec<u32> = (0..n_in).map(|_| rng.random_range(100u32..10000)).collect();
                let cancel =
                    (rng.random::<f64>() < cfg.cancel_fraction).then(|| rng.random_range(1..=n_out.div_ceil(2)));
                let body = json!({
                    "model": model, "prompt": prompt, "max_tokens": n_out, "ignore_eos": true,
                    "temperature": 0.8, "top_p": 0.95, "seed": rng.random::<u32>(), "stream": true,
                    "stream_options": {"include_usage": true},
                });
                lock(&tally).started += 1;
                let r = one_request(&client, &url, cfg.api_key.as_deref(), &body, n_in, cancel).await;
                let refused = r.status == Some(429);
                {
                    let mut t = lock(&tally);
                    if r.ok && !r.cancelled && r.output_tokens != n_out {
                        t.wrong_length += 1;
                    }
                    t.results.push(RequestResult { itl: Vec::new(), ..r });
                }
                if refused {
                    tokio::time::sleep(Duration::from_millis(50)).await; // back off a little
                }
            }
        }));
    }
    let samples = sample_memory(&cfg, &tally, deadline).await;
    for c in clients {
        let _ = c.await;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    // the server ends an aborted request within a step; give it a moment to settle
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = metrics(&client, &base, cfg.api_key.as_deref()).await;
    let t = lock(&tally);
    Ok(report(&cfg, &t, samples, elapsed, before.as_ref(), after.as_ref()))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn sample_memory(cfg: &SoakConfig, tally: &Mutex<Tally>, deadline: Instant) -> Vec<MemSample> {
    let t0 = Instant::now();
    let mut samples = Vec::new();
    loop {
        let now = Instant::now();
        let completed = lock(tally).results.len();
        let s = MemSample {
            t_s: (now - t0).as_secs_f64(),
            rss_mib: cfg.server_pid.and_then(rss_mib),
            gpu_mib: cfg.server_pid.and_then(gpu_mib),
            completed,
        };
        eprintln!(
            "soak: {:>6.0} s  {completed:>7} requests  RSS {}  GPU {}",
            s.t_s,
            s.rss_mib.map_or("-".into(), |v| format!("{v:.0} MiB")),
            s.gpu_mib.map_or("-".into(), |v| format!("{v:.0} MiB"))
        );
        samples.push(s);
        if now >= deadline {
            return samples;
        }
        tokio::time::sleep(cfg.sample_every.min(deadline - now).max(Duration::from_millis(10))).await;
    }
}

/// VmRSS of a process, MiB.
fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// GPU memory a process holds, MiB (nvidia-smi's per-process accounting).
fn gpu_mib(pid: u32) -> Option<f64> {
    let out = std::process::Command::new("nvidia-smi")
        .args(["--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let mut f = l.split(',').map(str::trim);
        (f.next()?.parse::<u32>().ok()? == pid).then(|| f.next()?.parse().ok()).flatten()
    })
}

/// The unlabelled samples of a Prometheus text page.
async fn metrics(client: &reqwest::Client, base: &str, key: Option<&str>) -> Option<HashMap<String, f64>> {
    let mut req = client.get(format!("{base}/metrics"));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let text = req.send().await.ok()?.text().await.ok()?;
    Some(parse_metrics(&text))
}

pub fn parse_metrics(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.split_once(' ')?;
            (!name.contains('{')).then(|| Some((name.to_string(), value.trim().parse().ok()?))).flatten()
        })
        .collect()
}

/// Growth of the largest value after the warm-up over the value at its end, as a fraction.
fn growth(samples: &[MemSample], f: impl Fn(&MemSample) -> Option<f64>) -> Option<f64> {
    let warm = samples.last()?.t_s / 5.0;
    let after: Vec<f64> = samples.iter().filter(|s| s.t_s >= warm).filter_map(&f).collect();
    let (first, max) = (*after.first()?, after.iter().copied().fold(f64::MIN, f64::max));
    (first > 0.0).then(|| (max - first) / first)
}

fn report(
    cfg: &SoakConfig,
    t: &Tally,
    samples: Vec<MemSample>,
    elapsed: f64,
    before: Option<&HashMap<String, f64>>,
    after: Option<&HashMap<String, f64>>,
) -> SoakReport {
    let r = &t.results;
    let completed = r.iter().filter(|r| r.ok && !r.cancelled).count();
    let cancelled = r.iter().filter(|r| r.cancelled).count();
    let rejected = r.iter().filter(|r| r.status == Some(429)).count();
    let failed = r.iter().filter(|r| !r.ok && r.status != Some(429)).count();
    let output_tokens: usize = r.iter().filter(|r| r.ok).map(|r| r.output_tokens).sum();
    let get = |m: Option<&HashMap<String, f64>>, k: &str| m.and_then(|m| m.get(k)).map(|&v| v as u64);
    let ended = |m| Some(get(m, "encore_requests_finished_total")? + get(m, "encore_requests_aborted_total")?);
    let server_ended = ended(after).zip(ended(before)).map(|(a, b)| a - b);
    let mut rep = SoakReport {
        duration_s: elapsed,
        concurrency: cfg.concurrency,
        started: t.started,
        completed,
        cancelled,
        rejected_429: rejected,
        failed,
        wrong_length: t.wrong_length,
        output_tokens,
        output_throughput: output_tokens as f64 / elapsed.max(1e-9),
        server_ended,
        server_running_after: get(after, "encore_num_requests_running"),
        kv_blocks_free_after: get(after, "encore_kv_blocks_free"),
        kv_blocks_total: get(after, "encore_kv_blocks_total"),
        rss_growth: growth(&samples, |s| s.rss_mib),
        gpu_growth: growth(&samples, |s| s.gpu_mib),
        samples,
        errors: r.iter().filter(|r| r.status != Some(429)).filter_map(|r| r.error.clone()).take(5).collect(),
        ..Default::default()
    };
    rep.problems = problems(cfg, &rep);
    rep
}

fn problems(cfg: &SoakConfig, r: &SoakReport) -> Vec<String> {
    let mut p = Vec::new();
    if r.started != r.completed + r.cancelled + r.rejected_429 + r.failed {
        p.push(format!(
            "{} requests started, {} accounted for",
            r.started,
            r.completed + r.cancelled + r.rejected_429 + r.failed
        ));
    }
    if r.failed > 0 {
        p.push(format!("{} requests failed with errors other than 429", r.failed));
    }
    if r.wrong_length > 0 {
        p.push(format!("{} finished requests did not carry exactly their max_tokens", r.wrong_length));
    }
    if r.completed == 0 {
        p.push("no request finished".into());
    }
    match r.server_ended {
        // a cancelled request whose last token was in flight may end as finished or aborted;
        // either way it ends once
        Some(n) if n as usize != r.completed + r.cancelled => p.push(format!(
            "the server ended {n} requests; the clients finished or cancelled {}",
            r.completed + r.cancelled
        )),
        None => p.push("/metrics could not be read before and after".into()),
        _ => {}
    }
    if r.server_running_after.is_some_and(|n| n > 0) {
        p.push(format!("{:?} requests still running after the soak", r.server_running_after));
    }
    if r.kv_blocks_free_after != r.kv_blocks_total {
        p.push(format!("{:?} of {:?} KV blocks free after the soak", r.kv_blocks_free_after, r.kv_blocks_total));
    }
    for (what, g) in [("RSS", r.rss_growth), ("GPU memory", r.gpu_growth)] {
        if let Some(g) = g.filter(|&g| g > cfg.max_growth) {
            p.push(format!(
                "server {what} grew by {:.1}% after the warm-up (limit {:.1}%)",
                g * 100.0,
                cfg.max_growth * 100.0
            ));
        }
    }
    p
}

impl SoakReport {
    pub fn table(&self) -> String {
        let mut s = String::new();
        let mut line = |k: &str, v: String| s.push_str(&format!("{k:<40}{v:>14}\n"));
        line("Duration (s):", format!("{:.1}", self.duration_s));
        line("Concurrent clients:", self.concurrency.to_string());
        line("Requests started:", self.started.to_string());
        line("Finished (exact max_tokens):", self.completed.to_string());
        line("Cancelled mid-stream:", self.cancelled.to_string());
        line("Refused with 429:", self.rejected_429.to_string());
        line("Failed (other errors):", self.failed.to_string());
        line("Wrong token counts:", self.wrong_length.to_string());
        line("Output token throughput (tok/s):", format!("{:.1}", self.output_throughput));
        line("Server: requests ended:", self.server_ended.map_or("-".into(), |v| v.to_string()));
        line("Server: running after:", self.server_running_after.map_or("-".into(), |v| v.to_string()));
        let kv = match (self.kv_blocks_free_after, self.kv_blocks_total) {
            (Some(f), Some(t)) => format!("{f}/{t}"),
            _ => "-".into(),
        };
        line("Server: KV blocks free after:", kv);
        let pct = |g: Option<f64>| g.map_or("-".into(), |g| format!("{:+.2}%", g * 100.0));
        line("RSS growth after warm-up:", pct(self.rss_growth));
        line("GPU memory growth after warm-up:", pct(self.gpu_growth));
        let verdict =
            if self.problems.is_empty() { "PASS".to_string() } else { format!("FAIL: {}", self.problems.join("; ")) };
        format!("{:=^54}\n{s}{verdict}\n", " Soak Result ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_text_gives_the_unlabelled_samples() {
        let m = parse_metrics(
            "# HELP x y\nencore_kv_blocks_free 12\nencore_http_requests_total{route=\"/\"} 3\nencore_a 1.5\n",
        );
        assert_eq!(m.get("encore_kv_blocks_free"), Some(&12.0));
        assert_eq!(m.get("encore_a"), Some(&1.5));
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn growth_is_measured_after_the_warm_up() {
        let s = |t: f64, v: f64| MemSample { t_s: t, rss_mib: Some(v), ..Default::default() };
        let samples = [s(0.0, 10.0), s(10.0, 100.0), s(30.0, 100.0), s(60.0, 104.0), s(100.0, 102.0)];
        let g = growth(&samples, |s| s.rss_mib).unwrap();
        assert!((g - 0.04).abs() < 1e-12, "{g}");
    }
}
