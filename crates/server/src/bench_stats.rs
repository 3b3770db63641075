//! The numbers `encore bench serve` reports, as `vllm bench serve` does: per-request
//! timings (TTFT, TPOT, ITL, end-to-end) summarised as mean / median / p90 / p99 in
//! milliseconds, and request / token throughputs over the run.

use serde::Serialize;

/// One request as the client saw it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RequestResult {
    pub ok: bool,
    pub error: Option<String>,
    pub prompt_tokens: usize,
    pub output_tokens: usize,
    /// Seconds from sending to the first text chunk.
    pub ttft: f64,
    /// Seconds between text chunks.
    pub itl: Vec<f64>,
    /// Seconds from sending to the end of the stream.
    pub latency: f64,
    /// The HTTP status of a refused request.
    pub status: Option<u16>,
    /// The client closed the stream on purpose after some tokens (soak runs; `ok` too).
    pub cancelled: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    pub mean: f64,
    pub median: f64,
    pub p90: f64,
    pub p99: f64,
}

impl Summary {
    /// Of `values` (seconds), in milliseconds; zeros when empty.
    pub fn of_ms(values: &[f64]) -> Summary {
        if values.is_empty() {
            return Summary::default();
        }
        let mut v: Vec<f64> = values.iter().map(|x| x * 1e3).collect();
        v.sort_by(f64::total_cmp);
        Summary {
            mean: v.iter().sum::<f64>() / v.len() as f64,
            median: percentile(&v, 50.0),
            p90: percentile(&v, 90.0),
            p99: percentile(&v, 99.0),
        }
    }
}

/// Linear interpolation between closest ranks (numpy's default) over sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    match sorted.len() {
        0 => 0.0,
        1 => sorted[0],
        n => {
            let rank = p / 100.0 * (n - 1) as f64;
            let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
            sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct BenchReport {
    pub url: String,
    pub model: String,
    pub num_prompts: usize,
    pub input_len: usize,
    pub output_len: usize,
    /// None: unlimited.
    pub max_concurrency: Option<usize>,
    /// None: every request at once.
    pub request_rate: Option<f64>,
    pub completed: usize,
    pub failed: usize,
    /// The first few failure messages.
    pub errors: Vec<String>,
    pub duration_s: f64,
    pub total_input_tokens: usize,
    pub total_output_tokens: usize,
    pub request_throughput: f64,
    pub output_throughput: f64,
    pub total_token_throughput: f64,
    pub ttft_ms: Summary,
    pub tpot_ms: Summary,
    pub itl_ms: Summary,
    pub e2el_ms: Summary,
}

impl BenchReport {
    pub fn new(results: &[RequestResult], duration_s: f64) -> BenchReport {
        let ok: Vec<&RequestResult> = results.iter().filter(|r| r.ok).collect();
        let total_in: usize = ok.iter().map(|r| r.prompt_tokens).sum();
        let total_out: usize = ok.iter().map(|r| r.output_tokens).sum();
        let tpot: Vec<f64> = ok
            .iter()
            .filter(|r| r.output_tokens > 1)
            .map(|r| (r.latency - r.ttft) / (r.output_tokens - 1) as f64)
            .collect();
        let itl: Vec<f64> = ok.iter().flat_map(|r| r.itl.iter().copied()).collect();
        let per_s = |x: f64| if duration_s > 0.0 { x / duration_s } else { 0.0 };
        BenchReport {
            completed: ok.len(),
            failed: results.len() - ok.len(),
            errors: results.iter().filter_map(|r| r.error.clone()).take(5).collect(),
            duration_s,
            total_input_tokens: total_in,
            total_output_tokens: total_out,
            request_throughput: per_s(ok.len() as f64),
            output_throughput: per_s(total_out as f64),
            total_token_throughput: per_s((total_in + total_out) as f64),
            ttft_ms: Summary::of_ms(&ok.iter().map(|r| r.ttft).collect::<Vec<_>>()),
            tpot_ms: Summary::of_ms(&tpot),
            itl_ms: Summary::of_ms(&itl),
            e2el_ms: Summary::of_ms(&ok.iter().map(|r| r.latency).collect::<Vec<_>>()),
            ..Default::default()
        }
    }

    /// The table `vllm bench serve` prints.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let mut line = |k: &str, v: String| s.push_str(&format!("{k:<40}{v:>12}\n"));
        line("Successful requests:", self.completed.to_string());
        line("Failed requests:", self.failed.to_string());
        line("Maximum request concurrency:", self.max_concurrency.map_or("inf".into(), |c| c.to_string()));
        line("Request rate (req/s):", self.request_rate.map_or("inf".into(), |r| format!("{r:.2}")));
        line("Benchmark duration (s):", format!("{:.2}", self.duration_s));
        line("Total input tokens:", self.total_input_tokens.to_string());
        line("Total generated tokens:", self.total_output_tokens.to_string());
        line("Request throughput (req/s):", format!("{:.2}", self.request_throughput));
        line("Output token throughput (tok/s):", format!("{:.2}", self.output_throughput));
        line("Total token throughput (tok/s):", format!("{:.2}", self.total_token_throughput));
        for (name, m) in
            [("TTFT", &self.ttft_ms), ("TPOT", &self.tpot_ms), ("ITL", &self.itl_ms), ("E2E latency", &self.e2el_ms)]
        {
            line(&format!("Mean {name} (ms):"), format!("{:.2}", m.mean));
            line(&format!("Median {name} (ms):"), format!("{:.2}", m.median));
            line(&format!("P90 {name} (ms):"), format!("{:.2}", m.p90));
            line(&format!("P99 {name} (ms):"), format!("{:.2}", m.p99));
        }
        format!("{:=^52}\n{s}{}\n", " Serving Benchmark Result ", "=".repeat(52))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_like_numpy() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 50.0), 2.5);
        assert!((percentile(&v, 90.0) - 3.7).abs() < 1e-12);
        assert_eq!(percentile(&[5.0], 99.0), 5.0);
    }

    #[test]
    fn report_counts_only_successes_and_derives_tpot() {
        let ok = RequestResult {
            ok: true,
            prompt_tokens: 10,
            output_tokens: 5,
            ttft: 0.1,
            itl: vec![0.05; 4],
            latency: 0.3,
            ..Default::default()
        };
        let bad = RequestResult { error: Some("HTTP 500".into()), ..Default::default() };
        let r = BenchReport::new(&[ok.clone(), ok, bad], 2.0);
        assert_eq!((r.completed, r.failed, r.total_output_tokens), (2, 1, 10));
        assert!((r.tpot_ms.mean - 50.0).abs() < 1e-9);
        assert!((r.ttft_ms.median - 100.0).abs() < 1e-9);
        assert_eq!(r.request_throughput, 1.0);
        assert_eq!(r.errors, vec!["HTTP 500".to_string()]);
        assert!(r.table().contains("Mean TTFT (ms):"));
    }
}
