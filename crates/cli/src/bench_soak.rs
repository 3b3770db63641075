//! `encore bench soak` (also `encore bench-soak`): a bounded soak of an encore server:
//! concurrent clients with random lengths, some cancelled mid-stream, for a fixed time;
//! checks that every request ends once and that the server's memory stays flat
//! (`encore_server::soak`). Exits non-zero when any check fails.

use anyhow::{bail, Context, Result};
use clap::Args;
use encore_server::soak::{self, SoakConfig};
use std::time::Duration;

#[derive(Args, Debug)]
pub struct BenchSoakArgs {
    /// The server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    url: String,
    /// The model id to request (default: the first of GET /v1/models).
    #[arg(long)]
    model: Option<String>,
    #[arg(long)]
    api_key: Option<String>,
    /// Clients sending requests back to back.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 600)]
    duration: u64,
    /// Prompt tokens, MIN:MAX (random ids).
    #[arg(long, default_value = "16:512")]
    input_len: String,
    /// max_tokens, MIN:MAX.
    #[arg(long, default_value = "16:256")]
    output_len: String,
    /// Share of requests closed mid-stream.
    #[arg(long, default_value_t = 0.1)]
    cancel_fraction: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The server's pid, to sample its resident (and GPU) memory.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Seconds between memory samples.
    #[arg(long, default_value_t = 30)]
    sample_every: u64,
    /// Largest memory growth after the warm-up, percent.
    #[arg(long, default_value_t = 5.0)]
    max_growth_pct: f64,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

fn range(flag: &str, s: &str) -> Result<(usize, usize)> {
    let parse = |v: &str| v.trim().parse::<usize>().with_context(|| format!("{flag}: `{s}` is not MIN:MAX"));
    match s.split_once(':') {
        Some((a, b)) => Ok((parse(a)?, parse(b)?)),
        None => parse(s).map(|v| (v, v)),
    }
}

pub fn run(a: BenchSoakArgs) -> Result<()> {
    if !(a.max_growth_pct >= 0.0 && a.max_growth_pct.is_finite()) {
        bail!("--max-growth-pct must be >= 0");
    }
    let cfg = SoakConfig {
        url: a.url,
        model: a.model,
        api_key: a.api_key,
        concurrency: a.concurrency,
        duration: Duration::from_secs(a.duration),
        input_len: range("--input-len", &a.input_len)?,
        output_len: range("--output-len", &a.output_len)?,
        cancel_fraction: a.cancel_fraction,
        seed: a.seed,
        server_pid: a.server_pid,
        sample_every: Duration::from_secs(a.sample_every.max(1)),
        max_growth: a.max_growth_pct / 100.0,
    };
    let report = soak::run(cfg)?;
    crate::bench_serve::print_report(
        &report.table(),
        &report.errors,
        &serde_json::to_value(&report)?,
        a.json.as_deref(),
    )?;
    if !report.problems.is_empty() {
        bail!("soak failed: {}", report.problems.join("; "));
    }
    Ok(())
}
