//! Step graphs: one captured CUDA graph per step shape, replayed with one packed
//! host-to-device input copy and one `cuGraphLaunch` per step. Pure decode steps have one
//! shape per batch bucket (`b` token rows, `b` logit rows); steps with prefill rows (chunks
//! mixed with decodes) one per token bucket up to `--graph-max-tokens` (`T` token rows,
//! `max_num_seqs` logit rows). Every kernel's grid depends on those shapes only (attention
//! plans its work on the device), so a graph serves any mix of sequences, chunk lengths and
//! positions that fits its shape.
//!
//! Capture protocol, per shape, largest first: fill the step inputs with sentinel rows
//! (position -1, slot -1: kv_write skips them, attention writes zeros), run one eager step
//! (in `cached` mode this fills the ParamCache; the pool also reaches its steady state),
//! then capture the same step. The graph reads its inputs from the static `StepInputs`
//! buffer and context lengths from device memory, so one graph per bucket serves every
//! position. A bucket whose capture fails is logged (once, in the report) and runs eagerly;
//! every decode step that runs eagerly (no graph for its bucket) is counted in
//! [`GraphStats`], never silent. Sampling settings are per-row step inputs, so one graph
//! serves any mix of greedy and sampled requests. The device's launch
//! mode is restored after capture, so later eager work runs in the mode it was given.

use crate::buckets::token_buckets;
use crate::model_runner::{ModelRunner, StepPlan, StepRunner, StepShape};
use crate::EngineError;
use encore_cuda::{capture, CacheGuard, Cuda, CudaError, GraphExec, LaunchParamMode, NodeAudit};
use encore_models::HostInputs;

struct BucketGraph {
    shape: StepShape,
    exec: GraphExec,
    audit: NodeAudit,
    // keeps the ParamCache pins of the graph alive as long as the exec replays it
    _graph: encore_cuda::Graph,
}

pub struct GraphDecoder {
    graphs: Vec<BucketGraph>,
    /// Shapes whose capture failed (their token rows), and why.
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
    /// Steps with prefill rows replayed from a graph.
    pub mixed_replayed: u64,
    /// Steps with prefill rows run eagerly (more tokens than the largest mixed graph, or
    /// its capture failed).
    pub mixed: u64,
}

/// Test hook: make the capture of this bucket fail (a synchronisation inside the capture).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailCapture(pub usize);

impl GraphDecoder {
    /// Capture every decode bucket of `runner.cfg.max_num_seqs` with the device in `mode`.
    pub fn capture(
        runner: &mut ModelRunner<Cuda>,
        mode: LaunchParamMode,
        fail: Option<FailCapture>,
    ) -> Result<Self, EngineError> {
        Self::capture_all(runner, mode, fail, 0)
    }

    /// Capture every decode bucket and, when `mixed_max_tokens > 0`, every token bucket of
    /// steps with prefill rows up to that many tokens (and the step budget); the runner then
    /// pads such steps to the captured buckets (`ModelRunner::mixed_buckets`).
    pub fn capture_all(
        runner: &mut ModelRunner<Cuda>,
        mode: LaunchParamMode,
        fail: Option<FailCapture>,
        mixed_max_tokens: usize,
    ) -> Result<Self, EngineError> {
        let mut shapes: Vec<StepShape> = runner.buckets.iter().map(|&b| StepShape::decode(b)).collect();
        let max_tokens = mixed_max_tokens.min(runner.cfg.max_num_batched_tokens);
        let logits = runner.cfg.max_num_seqs;
        for tokens in token_buckets(max_tokens) {
            let s = StepShape::mixed(tokens, logits);
            if !shapes.contains(&s) {
                shapes.push(s);
            }
        }
        let me = Self::capture_shapes(runner, &shapes, mode, fail)?;
        let mut mixed: Vec<usize> = me
            .graphs
            .iter()
            .filter(|g| g.shape == StepShape::mixed(g.shape.tokens, logits))
            .map(|g| g.shape.tokens)
            .collect();
        mixed.sort_unstable();
        mixed.retain(|&t| t <= max_tokens);
        runner.mixed_buckets = mixed;
        Ok(me)
    }

    /// Capture the decode graphs of `buckets` only.
    pub fn capture_buckets(
        runner: &mut ModelRunner<Cuda>,
        buckets: &[usize],
        mode: LaunchParamMode,
        fail: Option<FailCapture>,
    ) -> Result<Self, EngineError> {
        let shapes: Vec<StepShape> = buckets.iter().map(|&b| StepShape::decode(b)).collect();
        Self::capture_shapes(runner, &shapes, mode, fail)
    }

    fn capture_shapes(
        runner: &mut ModelRunner<Cuda>,
        shapes: &[StepShape],
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
        let mut order = shapes.to_vec();
        order.sort_unstable_by_key(|s| std::cmp::Reverse((s.tokens, s.logits)));
        let t0 = std::time::Instant::now();
        let bar = capture_progress(order.len());
        for shape in order {
            bar.set_message(format!("capturing step graphs ({} x {})", shape.tokens, shape.logits));
            match Self::capture_one(runner, shape, fail) {
                Ok(g) => me.graphs.push(g),
                Err(e) => me.fallbacks.push((shape.tokens, e.to_string())),
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
        shape: StepShape,
        fail: Option<FailCapture>,
    ) -> Result<BucketGraph, EngineError> {
        let mut pad = HostInputs::default();
        pad.pad_to(shape.tokens, shape.logits);
        runner.inputs.upload(&runner.backend, &pad)?;
        let ModelRunner { backend, model, cache, state, inputs, .. } = &*runner;
        let step = || model.forward(backend, state, inputs, cache, shape.tokens, shape.logits, shape.kind);
        step()?; // warm-up: fills the ParamCache in cached mode
        let dev = backend.device();
        let graph = capture(dev, || {
            step().map_err(CudaError::from)?;
            if fail == Some(FailCapture(shape.tokens)) {
                dev.synchronize()?; // a capture rule violation, on purpose
            }
            Ok(())
        })
        .map_err(encore_tensor::Error::from)?;
        let audit = graph.try_audit().map_err(encore_tensor::Error::from)?; // unaudited: no replay
        let exec = graph.instantiate().map_err(encore_tensor::Error::from)?;
        Ok(BucketGraph { shape, exec, audit, _graph: graph })
    }

    pub fn fallbacks(&self) -> &[(usize, String)] {
        &self.fallbacks
    }

    pub fn capture_ms(&self) -> f64 {
        self.capture_ms
    }

    /// Node audit of each captured decode bucket, largest first.
    pub fn audits(&self) -> Vec<(usize, NodeAudit)> {
        self.graphs
            .iter()
            .filter(|g| g.shape == StepShape::decode(g.shape.tokens))
            .map(|g| (g.shape.tokens, g.audit))
            .collect()
    }

    /// Node audit of every captured shape, largest first.
    pub fn shape_audits(&self) -> Vec<(StepShape, NodeAudit)> {
        self.graphs.iter().map(|g| (g.shape, g.audit)).collect()
    }

    /// Replay the decode graph of `bucket` over the inputs already in the step buffer;
    /// false if the bucket has no graph.
    pub fn replay(&self, bucket: usize) -> Result<bool, EngineError> {
        self.replay_shape(StepShape::decode(bucket))
    }

    /// Replay the graph of `shape`; false if it has none.
    pub fn replay_shape(&self, shape: StepShape) -> Result<bool, EngineError> {
        match self.graphs.iter().find(|g| g.shape == shape) {
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
    fn run(&mut self, runner: &ModelRunner<Cuda>, plan: StepPlan) -> Result<bool, EngineError> {
        let replayed = match plan.shape {
            Some(s) => self.replay_shape(s)?,
            None => false,
        };
        match (plan.decode, replayed) {
            (true, true) => self.stats.replayed += 1,
            (true, false) => self.stats.eager_no_graph += 1,
            (false, true) => self.stats.mixed_replayed += 1,
            (false, false) => self.stats.mixed += 1,
        }
        if !replayed {
            runner.forward(plan.tokens, plan.logits, plan.kind())?;
        }
        Ok(replayed)
    }
}

impl GraphDecoder {
    pub fn stats(&self) -> GraphStats {
        self.stats
    }
}
