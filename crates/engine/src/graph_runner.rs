//! Decode graphs: one captured CUDA graph per batch bucket, replayed with one packed
//! host-to-device input copy and one `cuGraphLaunch` per step.
//!
//! Capture protocol, per bucket, largest first: fill the step inputs with sentinel rows
//! (position -1, slot -1: kv_write skips them, attention writes zeros), run one eager step
//! (in `cached` mode this fills the ParamCache; the pool also reaches its steady state),
//! then capture the same step. The graph reads its inputs from the static `StepInputs`
//! buffer and context lengths from device memory, so one graph per bucket serves every
//! position. A bucket whose capture fails is logged (once, in the report) and runs eagerly;
//! every decode step that runs eagerly (no graph for its bucket) is counted in
//! [`GraphStats`], never silent. Sampling settings are per-row step inputs, so one graph
//! serves any mix of greedy and sampled requests. The device's launch
//! mode is restored after capture, so later eager work runs in the mode it was given.

use crate::model_runner::{ModelRunner, StepRunner};
use crate::EngineError;
use encore_cuda::{capture, CacheGuard, Cuda, CudaError, GraphExec, LaunchParamMode, NodeAudit};
use encore_models::HostInputs;

struct BucketGraph {
    bucket: usize,
    exec: GraphExec,
    audit: NodeAudit,
    // keeps the ParamCache pins of the graph alive as long as the exec replays it
    _graph: encore_cuda::Graph,
}

pub struct GraphDecoder {
    graphs: Vec<BucketGraph>,
    fallbacks: Vec<(usize, String)>,
    capture_ms: f64,
    stats: GraphStats,
    _cache: Option<CacheGuard>,
}

/// What ran the steps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GraphStats {
    /// Pure decode steps replayed from a graph.
    pub replayed: u64,
    /// Pure decode steps run eagerly: their bucket has no graph.
    pub eager_no_graph: u64,
    /// Steps with prefill rows (always eager).
    pub mixed: u64,
}

/// Test hook: make the capture of this bucket fail (a synchronisation inside the capture).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailCapture(pub usize);

impl GraphDecoder {
    /// Capture every bucket of `runner.cfg.max_batch` with the device in `mode`.
    pub fn capture(
        runner: &mut ModelRunner<Cuda>,
        mode: LaunchParamMode,
        fail: Option<FailCapture>,
    ) -> Result<Self, EngineError> {
        let buckets = runner.buckets.clone();
        Self::capture_buckets(runner, &buckets, mode, fail)
    }

    pub fn capture_buckets(
        runner: &mut ModelRunner<Cuda>,
        buckets: &[usize],
        mode: LaunchParamMode,
        fail: Option<FailCapture>,
    ) -> Result<Self, EngineError> {
        let dev = runner.backend.device().clone();
        let before = dev.launch_mode();
        dev.set_launch_mode(mode);
        let cache = (mode == LaunchParamMode::Cached).then(|| dev.param_cache().enable());
        let mut me = GraphDecoder {
            graphs: Vec::new(),
            fallbacks: Vec::new(),
            capture_ms: 0.0,
            stats: GraphStats::default(),
            _cache: cache,
        };
        let mut order = buckets.to_vec();
        order.sort_unstable_by(|a, b| b.cmp(a));
        let t0 = std::time::Instant::now();
        let bar = capture_progress(order.len());
        for bucket in order {
            bar.set_message(format!("capturing decode graphs (bucket {bucket})"));
            match Self::capture_one(runner, bucket, fail) {
                Ok(g) => me.graphs.push(g),
                Err(e) => me.fallbacks.push((bucket, e.to_string())),
            }
            bar.inc(1);
        }
        bar.finish_and_clear();
        dev.set_launch_mode(before);
        me.capture_ms = t0.elapsed().as_secs_f64() * 1e3;
        Ok(me)
    }

    fn capture_one(
        runner: &mut ModelRunner<Cuda>,
        bucket: usize,
        fail: Option<FailCapture>,
    ) -> Result<BucketGraph, EngineError> {
        let mut pad = HostInputs::default();
        pad.pad_to(bucket, bucket);
        runner.inputs.upload(&runner.backend, &pad)?;
        let ModelRunner { backend, model, cache, state, inputs, .. } = &*runner;
        let step = || model.forward(backend, state, inputs, cache, bucket, bucket);
        step()?; // warm-up: fills the ParamCache in cached mode
        let dev = backend.device();
        let graph = capture(dev, || {
            step().map_err(CudaError::from)?;
            if fail == Some(FailCapture(bucket)) {
                dev.synchronize()?; // a capture rule violation, on purpose
            }
            Ok(())
        })
        .map_err(encore_tensor::Error::from)?;
        let audit = graph.try_audit().map_err(encore_tensor::Error::from)?; // unaudited: no replay
        let exec = graph.instantiate().map_err(encore_tensor::Error::from)?;
        Ok(BucketGraph { bucket, exec, audit, _graph: graph })
    }

    pub fn fallbacks(&self) -> &[(usize, String)] {
        &self.fallbacks
    }

    pub fn capture_ms(&self) -> f64 {
        self.capture_ms
    }

    /// Node audit of each captured bucket, largest first.
    pub fn audits(&self) -> Vec<(usize, NodeAudit)> {
        self.graphs.iter().map(|g| (g.bucket, g.audit)).collect()
    }

    /// Replay the graph of `bucket` over the inputs already in the step buffer; false if
    /// the bucket has no graph.
    pub fn replay(&self, bucket: usize) -> Result<bool, EngineError> {
        match self.graphs.iter().find(|g| g.bucket == bucket) {
            Some(g) => {
                g.exec.replay().map_err(encore_tensor::Error::from)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

/// A buckets-captured bar on stderr, drawn only when stderr is a terminal.
fn capture_progress(buckets: usize) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    let target = if std::io::stderr().is_terminal() {
        indicatif::ProgressDrawTarget::stderr()
    } else {
        indicatif::ProgressDrawTarget::hidden()
    };
    let bar = indicatif::ProgressBar::with_draw_target(Some(buckets as u64), target);
    if let Ok(style) = indicatif::ProgressStyle::with_template("{msg} [{bar:20}] {pos}/{len}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

impl StepRunner<Cuda> for GraphDecoder {
    fn run(
        &mut self,
        runner: &ModelRunner<Cuda>,
        t: usize,
        n_logits: usize,
        decode_bucket: Option<usize>,
    ) -> Result<bool, EngineError> {
        match decode_bucket {
            Some(b) if self.replay(b)? => {
                self.stats.replayed += 1;
                return Ok(true);
            }
            Some(_) => self.stats.eager_no_graph += 1,
            None => self.stats.mixed += 1,
        }
        runner.forward(t, n_logits)?;
        Ok(false)
    }
}

impl GraphDecoder {
    pub fn stats(&self) -> GraphStats {
        self.stats
    }
}
