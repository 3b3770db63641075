//! `/metrics` in the Prometheus text format: HTTP requests by route and status, the
//! engine's queue (waiting, running), KV block usage, prefix-cache hit rate, the share of
//! decode steps that replayed a graph, token counters, and TTFT / TPOT / end-to-end
//! latency histograms measured here, from request arrival to the events the engine sends.

use encore_engine::WorkerStats;
use prometheus::{Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use std::sync::{Arc, Mutex};
use std::time::Instant;

type Getter = fn(&WorkerStats) -> u64;

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    ttft: Histogram,
    tpot: Histogram,
    e2e: Histogram,
    waiting: IntGauge,
    running: IntGauge,
    in_flight: IntGauge,
    kv_blocks: IntGauge,
    kv_blocks_free: IntGauge,
    kv_usage: Gauge,
    prefix_hit_rate: Gauge,
    graphed_share: Gauge,
    /// Engine counters, advanced by what changed since the last scrape.
    counters: Vec<(IntCounter, Getter)>,
    last: Mutex<WorkerStats>,
}

const LATENCY_BUCKETS: [f64; 16] =
    [0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0];
const TPOT_BUCKETS: [f64; 14] = [0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.5];

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: T) -> T {
            r.register(Box::new(m.clone())).expect("metric names are unique");
            m
        }
        let hist = |name: &str, help: &str, buckets: &[f64]| {
            reg(&registry, Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec())).unwrap())
        };
        let gauge = |name: &str, help: &str| reg(&registry, IntGauge::new(name, help).unwrap());
        let ratio = |name: &str, help: &str| reg(&registry, Gauge::new(name, help).unwrap());
        let counter = |name: &str, help: &str| reg(&registry, IntCounter::new(name, help).unwrap());
        let requests = IntCounterVec::new(
            Opts::new("encore_http_requests_total", "HTTP requests by route and status"),
            &["route", "status"],
        )
        .unwrap();
        let counters: Vec<(IntCounter, Getter)> = vec![
            (counter("encore_prompt_tokens_total", "Prompt tokens prefilled"), |s| s.counters.prompt_tokens),
            (counter("encore_prompt_tokens_cached_total", "Prompt tokens found in the prefix cache"), |s| {
                s.counters.cached_prompt_tokens
            }),
            (counter("encore_generation_tokens_total", "Tokens generated"), |s| s.counters.generated_tokens),
            (counter("encore_steps_total", "Engine steps"), |s| s.counters.steps),
            (counter("encore_decode_steps_total", "Steps whose rows were all decode tokens"), |s| {
                s.counters.decode_steps
            }),
            (counter("encore_graphed_steps_total", "Decode steps that replayed a captured graph"), |s| {
                s.counters.graphed_steps
            }),
            (
                counter("encore_mixed_graphed_steps_total", "Steps with prefill rows that replayed a captured graph"),
                |s| s.counters.mixed_graphed_steps,
            ),
            (counter("encore_preemptions_total", "Sequences preempted for KV blocks"), |s| s.counters.preemptions),
            (counter("encore_host_sampled_rows_total", "Rows sampled on the host instead of the device"), |s| {
                s.counters.host_sampled_rows
            }),
            (counter("encore_requests_finished_total", "Requests that ended with stop or length"), |s| {
                s.counters.finished
            }),
            (counter("encore_requests_aborted_total", "Requests aborted (client gone)"), |s| s.counters.aborted),
            (
                counter(
                    "encore_step_schedule_microseconds_total",
                    "Step time spent scheduling and laying out on the host",
                ),
                |s| s.counters.schedule_us,
            ),
            (
                counter(
                    "encore_step_launch_microseconds_total",
                    "Step time spent packing inputs, copying them and launching",
                ),
                |s| s.counters.launch_us,
            ),
            (
                counter(
                    "encore_step_device_microseconds_total",
                    "Step time spent waiting for the device and reading tokens back",
                ),
                |s| s.counters.device_us,
            ),
            (
                counter(
                    "encore_step_postprocess_microseconds_total",
                    "Step time spent on bookkeeping after the device",
                ),
                |s| s.counters.postprocess_us,
            ),
            (
                counter(
                    "encore_step_output_microseconds_total",
                    "Time the engine thread spent detokenizing and sending events",
                ),
                |s| s.output_us,
            ),
            (counter("encore_prefix_cache_queries_total", "Prefix-cache block lookups"), |s| s.gauges.prefix_queries),
            (counter("encore_prefix_cache_hits_total", "Prefix-cache block hits"), |s| s.gauges.prefix_hits),
        ];
        Metrics {
            requests: reg(&registry, requests),
            ttft: hist("encore_time_to_first_token_seconds", "Request arrival to its first token", &LATENCY_BUCKETS),
            tpot: hist("encore_time_per_output_token_seconds", "Mean time per token after the first", &TPOT_BUCKETS),
            e2e: hist("encore_e2e_request_latency_seconds", "Request arrival to its last token", &LATENCY_BUCKETS),
            waiting: gauge("encore_num_requests_waiting", "Requests waiting to be scheduled"),
            running: gauge("encore_num_requests_running", "Requests in the running batch"),
            in_flight: gauge("encore_num_requests_in_flight", "Requests accepted and not yet answered"),
            kv_blocks: gauge("encore_kv_blocks_total", "KV cache blocks"),
            kv_blocks_free: gauge("encore_kv_blocks_free", "KV cache blocks free"),
            kv_usage: ratio("encore_kv_cache_usage_ratio", "Share of KV blocks in use"),
            prefix_hit_rate: ratio("encore_prefix_cache_hit_rate", "Prefix-cache hits per lookup"),
            graphed_share: ratio("encore_graphed_step_ratio", "Share of decode steps that replayed a graph"),
            counters,
            last: Mutex::new(WorkerStats::default()),
            registry,
        }
    }

    pub fn record_status(&self, route: &str, status: u16) {
        self.requests.with_label_values(&[route, &status.to_string()]).inc();
    }

    pub fn timer(self: &Arc<Self>) -> RequestTimer {
        RequestTimer { metrics: self.clone(), start: Instant::now(), first: None, recorded: false }
    }

    /// The text exposition; `stats` is None while the model loads.
    pub fn render(&self, stats: Option<WorkerStats>, in_flight: usize) -> String {
        self.in_flight.set(in_flight as i64);
        if let Some(s) = stats {
            let g = &s.gauges;
            self.waiting.set((g.waiting + s.queued) as i64);
            self.running.set(g.running as i64);
            self.kv_blocks.set(g.kv_blocks as i64);
            self.kv_blocks_free.set(g.kv_blocks_free as i64);
            let used = g.kv_blocks.saturating_sub(g.kv_blocks_free);
            self.kv_usage.set(if g.kv_blocks == 0 { 0.0 } else { used as f64 / g.kv_blocks as f64 });
            let rate = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
            self.prefix_hit_rate.set(rate(g.prefix_hits, g.prefix_queries));
            self.graphed_share.set(rate(s.counters.graphed_steps, s.counters.decode_steps));
            let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            for (c, get) in &self.counters {
                c.inc_by(get(&s).saturating_sub(get(&last)));
            }
            *last = s;
        }
        let mut buf = Vec::new();
        prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("text encoding cannot fail");
        String::from_utf8_lossy(&buf).into_owned()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Latency of one request: `token()` at each generated token, `done()` at the end.
pub struct RequestTimer {
    metrics: Arc<Metrics>,
    start: Instant,
    first: Option<Instant>,
    recorded: bool,
}

impl RequestTimer {
    pub fn token(&mut self) {
        if self.first.is_none() {
            let now = Instant::now();
            self.first = Some(now);
            self.metrics.ttft.observe((now - self.start).as_secs_f64());
        }
    }

    pub fn done(&mut self, completion_tokens: usize) {
        if std::mem::replace(&mut self.recorded, true) {
            return;
        }
        let now = Instant::now();
        self.metrics.e2e.observe((now - self.start).as_secs_f64());
        if let (Some(first), true) = (self.first, completion_tokens > 1) {
            self.metrics.tpot.observe((now - first).as_secs_f64() / (completion_tokens - 1) as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_reports_engine_state_and_counts_deltas() {
        let m = Arc::new(Metrics::new());
        let mut s = WorkerStats::default();
        s.gauges.kv_blocks = 10;
        s.gauges.kv_blocks_free = 5;
        s.gauges.waiting = 2;
        s.queued = 1;
        s.counters.generated_tokens = 7;
        s.counters.decode_steps = 4;
        s.counters.graphed_steps = 3;
        m.render(Some(s), 3);
        s.counters.generated_tokens = 9;
        m.record_status("/v1/completions", 200);
        let mut t = m.timer();
        t.token();
        t.done(5);
        let text = m.render(Some(s), 3);
        for want in [
            "encore_generation_tokens_total 9",
            "encore_kv_cache_usage_ratio 0.5",
            "encore_num_requests_waiting 3",
            "encore_graphed_step_ratio 0.75",
            "encore_http_requests_total{route=\"/v1/completions\",status=\"200\"} 1",
            "encore_time_to_first_token_seconds_count 1",
            "encore_time_per_output_token_seconds_count 1",
            "encore_e2e_request_latency_seconds_count 1",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }
}
