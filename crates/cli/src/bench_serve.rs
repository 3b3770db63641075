//! `encore bench serve` (also `encore bench-serve`): load an OpenAI-compatible server with
//! streaming completions and report TTFT / TPOT / ITL / throughput like `vllm bench serve`.

use anyhow::{bail, Context, Result};
use clap::Args;
use encore_server::bench_serve::{self, BenchConfig, PromptKind};
use std::time::Duration;

#[derive(Args, Debug)]
pub struct BenchServeArgs {
    /// The server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    url: String,
    /// The model id to request (default: the first of GET /v1/models).
    #[arg(long)]
    model: Option<String>,
    /// Sent as `Authorization: Bearer KEY`.
    #[arg(long)]
    api_key: Option<String>,
    /// Requests in flight at most (default: no limit).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Requests per second, Poisson arrivals (default: all at once).
    #[arg(long)]
    request_rate: Option<f64>,
    #[arg(long, default_value_t = 100)]
    num_prompts: usize,
    /// Prompt length in tokens (ids) or words.
    #[arg(long, default_value_t = 128)]
    input_len: usize,
    /// Tokens generated per request (`max_tokens`, `ignore_eos`).
    #[arg(long, default_value_t = 128)]
    output_len: usize,
    /// ids (random token ids, exact lengths) or words (random common words).
    #[arg(long, default_value = "ids")]
    prompt_kind: String,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Seconds one request may take.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

pub fn run(a: BenchServeArgs) -> Result<()> {
    let prompt_kind = match a.prompt_kind.as_str() {
        "ids" => PromptKind::Ids,
        "words" => PromptKind::Words,
        other => bail!("--prompt-kind: unknown kind `{other}` (expected ids or words)"),
    };
    let cfg = BenchConfig {
        url: a.url,
        model: a.model,
        api_key: a.api_key,
        concurrency: a.concurrency,
        request_rate: a.request_rate,
        num_prompts: a.num_prompts,
        input_len: a.input_len,
        output_len: a.output_len,
        prompt_kind,
        seed: a.seed,
        timeout: Duration::from_secs(a.timeout.max(1)),
    };
    let report = bench_serve::run(cfg)?;
    print_report(&report.table(), &report.errors, &serde_json::to_value(&report)?, a.json.as_deref())?;
    if report.completed == 0 {
        bail!("every request failed ({} of {})", report.failed, report.num_prompts);
    }
    Ok(())
}

/// The table on stdout, the failed requests' messages on stderr, the report as JSON to
/// `--json` (shared with `bench soak`).
pub fn print_report(
    table: &str,
    errors: &[String],
    report: &serde_json::Value,
    json: Option<&std::path::Path>,
) -> Result<()> {
    print!("{table}");
    for e in errors {
        eprintln!("failed request: {e}");
    }
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(report)?;
        std::fs::write(path, text + "\n").with_context(|| format!("--json {}", path.display()))?;
    }
    Ok(())
}
