//! `encore bench`: decode-step benchmark on CUDA, per mode (eager, graph x upload | cached |
//! inline), on random weights created on the device from a preset shape or a model
//! folder's config, or on the weights of a model file (`weights`: a GGUF keeps its
//! quantized blocks, so quantized models are measured as they run). Per row: ms per step, tokens/s, % of the HBM floor (weight bytes over the
//! device-to-device copy bandwidth measured in the same run), kernels per step, graph nodes
//! by type, capture ms, graph memory, host microseconds per step; plus prefill tokens/s.
//!
//! Timing: wall clock around `steps` steps with the stream synchronised before and after.
//! Every step runs the full serving path: host inputs packed, ONE HtoD copy, then the eager
//! forward or one graph replay. Host microseconds per step are the host's own cost of
//! issuing one step onto an idle device (median of 21). Each row also re-checks that the greedy tokens equal the
//! eager step's (all rows decode at one fixed position, so every step is identical).

use crate::graph_runner::GraphDecoder;
use crate::model_runner::{Eager, ModelRunner, RunnerConfig, SeqChunk};
const GREEDY: encore_tensor::SampleParams = encore_tensor::SampleParams::GREEDY;
use crate::EngineError;
use encore_cuda::{Cuda, LaunchParamMode, NodeAudit};
use encore_models::config::ModelConfig;
use encore_models::Llama;
use encore_tensor::testing::Rng;
use encore_tensor::{Backend, DType};
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchMode {
    Eager,
    Graph(LaunchParamMode),
}

impl std::str::FromStr for BenchMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "eager" => Ok(BenchMode::Eager),
            _ => match s.strip_prefix("graph-").map(str::parse) {
                Some(Ok(m)) => Ok(BenchMode::Graph(m)),
                _ => Err(format!("unknown mode `{s}` (expected eager, graph-upload, graph-cached or graph-inline)")),
            },
        }
    }
}

impl std::fmt::Display for BenchMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BenchMode::Eager => f.write_str("eager"),
            BenchMode::Graph(m) => write!(f, "graph-{}", m.as_str()),
        }
    }
}

#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub name: String,
    pub model: ModelConfig,
    pub batches: Vec<usize>,
    pub ctx: usize,
    /// Position every row decodes at (the anchor uses 300).
    pub pos: usize,
    pub steps: usize,
    pub modes: Vec<BenchMode>,
    pub prefill_tokens: usize,
    /// Position the timed prefill starts at (earlier positions are filled first, untimed).
    pub prefill_depth: usize,
    pub dtype: DType,
    pub ordinal: usize,
    /// Also capture every bucket up to the largest batch (inline), as serving does at load.
    pub capture_all: bool,
    /// Load the weights of this model file (e.g. a `.gguf`) instead of random ones; its
    /// config must be `model`.
    pub weights: Option<std::path::PathBuf>,
    /// Random weights as random blocks of this type (`Llama::random_blocks`) instead of
    /// floats: the quantized kernels at a preset's shape, without a file.
    pub quant: Option<encore_tensor::QuantType>,
    /// Launch with programmatic dependent launch (`CudaDevice::set_pdl`).
    pub pdl: bool,
    /// The decode attention's fewest keys a split (`Cuda::set_decode_min_chunk`); None: the
    /// default.
    pub decode_min_chunk: Option<u32>,
}

/// Capture of every decode bucket up to the largest batch, as at engine start.
#[derive(Clone, Debug, Default)]
pub struct CaptureAll {
    pub buckets: Vec<usize>,
    pub capture_ms: f64,
    pub graph_mem_bytes: i64,
    pub fallbacks: usize,
}

#[derive(Clone, Debug, Default)]
pub struct BenchRow {
    pub batch: usize,
    pub mode: String,
    pub ms_per_step: f64,
    /// Graph replay alone (no input copy), for graph modes.
    pub replay_ms: Option<f64>,
    pub tokens_per_s: f64,
    pub pct_of_floor: f64,
    pub kernels_per_step: u64,
    pub strided_launches_per_step: u64,
    pub audit: Option<NodeAudit>,
    pub capture_ms: Option<f64>,
    pub graph_mem_bytes: Option<i64>,
    pub host_us_per_step: f64,
    /// Greedy tokens equal the eager step's.
    pub tokens_match_eager: bool,
}

/// One layer's decode attention alone, every row at the bench position.
#[derive(Clone, Debug, Default)]
pub struct AttnRow {
    pub batch: usize,
    pub pos: usize,
    pub us_per_layer: f64,
    /// K and V bytes read per launch / time.
    pub kv_gbps: f64,
    pub pct_of_copy: f64,
}

#[derive(Clone, Debug, Default)]
pub struct BenchReport {
    pub model: String,
    pub device: String,
    pub dtype: String,
    pub ctx: usize,
    pub pos: usize,
    pub copy_gbps: f64,
    pub weight_bytes: usize,
    pub floor_ms: f64,
    pub prefill_tokens: usize,
    pub prefill_depth: usize,
    pub prefill_tok_s: f64,
    pub attention: Vec<AttnRow>,
    pub rows: Vec<BenchRow>,
    pub capture_all: Option<CaptureAll>,
}

fn sync(b: &Cuda) -> Result<(), EngineError> {
    Ok(b.synchronize()?)
}

/// Device-to-device copy bandwidth in bytes/s (bytes read + written), `cuMemcpyDtoDAsync`
/// over 2 GiB, as the PyTorch anchor measures it.
fn copy_bandwidth(b: &Cuda) -> Result<f64, EngineError> {
    let bytes = 2usize << 30;
    let dev = b.device();
    let t = |e: encore_cuda::CudaError| EngineError::from(encore_tensor::Error::from(e));
    let src = dev.alloc(bytes).map_err(t)?;
    let dst = dev.alloc(bytes).map_err(t)?;
    for _ in 0..3 {
        dev.copy_dtod(&src, &dst, bytes).map_err(t)?;
    }
    sync(b)?;
    let reps = 10;
    let start = Instant::now();
    for _ in 0..reps {
        dev.copy_dtod(&src, &dst, bytes).map_err(t)?;
    }
    sync(b)?;
    Ok(2.0 * bytes as f64 * reps as f64 / start.elapsed().as_secs_f64())
}

pub fn run_bench(cfg: &BenchConfig) -> Result<BenchReport, EngineError> {
    let b = Cuda::new(cfg.ordinal).map_err(|e| EngineError::Device(format!("cuda:{}", cfg.ordinal), e.to_string()))?;
    let dev = b.device().clone();
    dev.set_pdl(cfg.pdl).map_err(|e| EngineError::Device(format!("cuda:{}", cfg.ordinal), format!("--pdl: {e}")))?;
    if let Some(keys) = cfg.decode_min_chunk {
        b.set_decode_min_chunk(keys);
    }
    let copy_bw = copy_bandwidth(&b)?;
    let max_batch = *cfg.batches.iter().max().ok_or_else(|| EngineError::Config("--batch: no batch sizes".into()))?;
    if cfg.pos + 1 > cfg.ctx {
        return Err(EngineError::Config(format!("--pos {} must be below --ctx {}", cfg.pos, cfg.ctx)));
    }
    if cfg.prefill_depth + cfg.prefill_tokens > cfg.ctx {
        return Err(EngineError::Config(format!(
            "--prefill-depth {} + --prefill {} must fit in --ctx {}",
            cfg.prefill_depth, cfg.prefill_tokens, cfg.ctx
        )));
    }
    let model = match &cfg.weights {
        Some(path) => {
            let files = encore_models::hub::open_model(path)?;
            Llama::load(&b, files.config.clone(), files.weights.as_ref(), cfg.dtype, cfg.ctx)?
        }
        None => match cfg.quant {
            Some(qt) => Llama::random_blocks(&b, cfg.model.clone(), cfg.dtype, cfg.ctx, 1234, qt)?,
            None => Llama::random(&b, cfg.model.clone(), cfg.dtype, cfg.ctx, 1234)?,
        },
    };
    let weight_bytes = model.weight_bytes();
    let block_size = 16;
    let rc = RunnerConfig {
        block_size,
        num_blocks: max_batch * cfg.ctx.div_ceil(block_size),
        max_num_seqs: max_batch,
        max_num_batched_tokens: cfg.prefill_tokens.max(max_batch),
        max_model_len: cfg.ctx,
    };
    let mut runner = ModelRunner::new(b.clone(), model, rc)?;
    let tables: Vec<Vec<u32>> = (0..max_batch).map(|s| runner.static_table(s)).collect();
    for (i, t) in runner.cache.k.iter().chain(&runner.cache.v).enumerate() {
        b.fill_uniform(t, 99 + i as u64, 1.0)?; // attention reads real numbers, not zeros
    }
    let mut rng = Rng::seeded(5);
    let vocab = cfg.model.vocab_size;
    let floor_ms = weight_bytes as f64 / copy_bw * 1e3;
    let mut report = BenchReport {
        model: cfg.name.clone(),
        device: dev.name(),
        dtype: cfg.dtype.to_string(),
        ctx: cfg.ctx,
        pos: cfg.pos,
        copy_gbps: copy_bw / 1e9,
        weight_bytes,
        floor_ms,
        prefill_tokens: cfg.prefill_tokens,
        prefill_depth: cfg.prefill_depth,
        ..Default::default()
    };

    // prefill: one prompt of `prefill_tokens` tokens, median of 3 after a warm-up
    dev.set_launch_mode(LaunchParamMode::Inline);
    let prompt: Vec<u32> = (0..cfg.prefill_tokens).map(|_| rng.below(vocab) as u32).collect();
    let prefill =
        [SeqChunk { tokens: &prompt, start: 0, block_table: &tables[0], sample: true, uniform: 0, params: GREEDY }];
    runner.step(&mut Eager, &prefill)?;
    let mut times = Vec::new();
    for _ in 0..3 {
        sync(&b)?;
        let t = Instant::now();
        runner.step(&mut Eager, &prefill)?;
        sync(&b)?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    report.prefill_tok_s = cfg.prefill_tokens as f64 / times[1];

    for &batch in &cfg.batches {
        report.attention.push(attention_alone(&b, &runner, &tables, batch, cfg.pos)?);
        let toks: Vec<[u32; 1]> = (0..batch).map(|_| [rng.below(vocab) as u32]).collect();
        let rows: Vec<SeqChunk> = (0..batch)
            .map(|s| SeqChunk {
                tokens: &toks[s],
                start: cfg.pos,
                block_table: &tables[s],
                sample: true,
                uniform: 0,
                params: GREEDY,
            })
            .collect();
        // the eager tokens every mode must reproduce
        dev.set_launch_mode(LaunchParamMode::Inline);
        runner.step(&mut Eager, &rows)?;
        let want = runner.read_next(batch)?;
        for &mode in &cfg.modes {
            let row = bench_mode(&b, &mut runner, &rows, batch, mode, cfg.steps, &want)?;
            let mut row = row;
            row.tokens_per_s = batch as f64 * 1e3 / row.ms_per_step;
            row.pct_of_floor = 100.0 * floor_ms / row.ms_per_step;
            report.rows.push(row);
        }
    }
    dev.set_launch_mode(LaunchParamMode::Inline);
    if cfg.capture_all {
        sync(&b)?;
        let (free0, _) = dev.mem_info().map_err(encore_tensor::Error::from)?;
        let graphs = GraphDecoder::capture(&mut runner, LaunchParamMode::Inline, None)?;
        sync(&b)?;
        let (free1, _) = dev.mem_info().map_err(encore_tensor::Error::from)?;
        report.capture_all = Some(CaptureAll {
            buckets: graphs.audits().iter().map(|(b, _)| *b).collect(),
            capture_ms: graphs.capture_ms(),
            graph_mem_bytes: free0 as i64 - free1 as i64,
            fallbacks: graphs.fallbacks().len(),
        });
    }
    Ok(report)
}

/// Time one layer's attention over `batch` rows at `pos` (the cache holds random values).
fn attention_alone(
    b: &Cuda,
    runner: &ModelRunner<Cuda>,
    tables: &[Vec<u32>],
    batch: usize,
    pos: usize,
) -> Result<AttnRow, EngineError> {
    use encore_tensor::{AttentionParams, HostTensor};
    let c = &runner.model.cfg;
    let (h, hkv, d) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
    let dt = runner.model.dtype;
    let q = b.zeros(dt, &[batch, h, d])?;
    b.fill_uniform(&q, 7, 1.0)?;
    let out = b.zeros(dt, &[batch, h, d])?;
    let flat: Vec<i32> = tables[..batch].iter().flatten().map(|&x| x as i32).collect();
    let mb = tables[0].len();
    let t = b.tensor(&HostTensor::from_i32(&[batch, mb], &flat))?;
    let seqs = b.tensor(&HostTensor::from_i32(&[batch], &(0..batch as i32).collect::<Vec<_>>()))?;
    let p = b.tensor(&HostTensor::from_i32(&[batch], &vec![pos as i32; batch]))?;
    let params =
        AttentionParams { scale: 1.0 / (d as f32).sqrt(), sliding_window: 0, block_size: runner.cfg.block_size as u32 };
    let (kc, vc) = (&runner.cache.k[0], &runner.cache.v[0]);
    let launch = || b.attention(&q, kc, vc, &t, &seqs, &p, params, &out).map_err(EngineError::from);
    for _ in 0..5 {
        launch()?;
    }
    sync(b)?;
    let reps = 50;
    let t0 = Instant::now();
    for _ in 0..reps {
        launch()?;
    }
    sync(b)?;
    let secs = t0.elapsed().as_secs_f64() / reps as f64;
    let bytes = (batch * (pos + 1) * hkv * d * 2 * dt.size_in_bytes()) as f64;
    let copy = copy_bandwidth(b)?;
    Ok(AttnRow {
        batch,
        pos,
        us_per_layer: secs * 1e6,
        kv_gbps: bytes / secs / 1e9,
        pct_of_copy: 100.0 * bytes / secs / copy,
    })
}

fn bench_mode(
    b: &Cuda,
    runner: &mut ModelRunner<Cuda>,
    rows: &[SeqChunk],
    batch: usize,
    mode: BenchMode,
    steps: usize,
    want: &[u32],
) -> Result<BenchRow, EngineError> {
    let dev = b.device().clone();
    let mut row = BenchRow { batch, mode: mode.to_string(), ..Default::default() };
    match mode {
        BenchMode::Eager => {
            dev.set_launch_mode(LaunchParamMode::Inline);
            for _ in 0..3 {
                runner.step(&mut Eager, rows)?;
            }
            let s0 = dev.launch_stats();
            runner.step(&mut Eager, rows)?;
            let d = dev.launch_stats().since(&s0);
            row.kernels_per_step = d.kernels;
            row.strided_launches_per_step = d.inline + d.cached + d.upload;
            (row.ms_per_step, row.host_us_per_step) =
                time_steps(b, steps, || runner.step(&mut Eager, rows).map(|_| ()))?;
        }
        BenchMode::Graph(m) => {
            dev.set_launch_mode(m);
            sync(b)?;
            let (free0, _) = dev.mem_info().map_err(encore_tensor::Error::from)?;
            let graphs = GraphDecoder::capture_buckets(runner, &[batch], m, None)?;
            sync(b)?;
            let (free1, _) = dev.mem_info().map_err(encore_tensor::Error::from)?;
            if let Some((_, why)) = graphs.fallbacks().first() {
                return Err(EngineError::Config(format!("{mode} batch {batch}: capture failed: {why}")));
            }
            row.capture_ms = Some(graphs.capture_ms());
            row.graph_mem_bytes = Some(free0 as i64 - free1 as i64);
            let audit = graphs.audits()[0].1;
            row.audit = Some(audit);
            row.kernels_per_step = audit.kernel as u64;
            let s0 = dev.launch_stats();
            runner.step(&mut Eager, rows)?;
            let d = dev.launch_stats().since(&s0);
            row.strided_launches_per_step = d.inline + d.cached + d.upload;
            // the serving step: pack the inputs, one HtoD copy, one graph launch
            let mut graphs = graphs;
            (row.ms_per_step, row.host_us_per_step) =
                time_steps(b, steps, || runner.step(&mut graphs, rows).map(|_| ()))?;
            let t = Instant::now();
            for _ in 0..steps {
                graphs.replay(batch)?;
            }
            sync(b)?;
            row.replay_ms = Some(t.elapsed().as_secs_f64() * 1e3 / steps as f64);
        }
    }
    row.tokens_match_eager = runner.read_next(batch)? == want;
    dev.set_launch_mode(LaunchParamMode::Inline);
    Ok(row)
}

/// (ms per step over `steps` back-to-back steps between two syncs, host microseconds of one
/// step issued onto an idle device: the median of 21, so no step waits behind another).
fn time_steps(
    b: &Cuda,
    steps: usize,
    mut step: impl FnMut() -> Result<(), EngineError>,
) -> Result<(f64, f64), EngineError> {
    for _ in 0..3 {
        step()?;
    }
    sync(b)?;
    let t = Instant::now();
    for _ in 0..steps {
        step()?;
    }
    sync(b)?;
    let ms = t.elapsed().as_secs_f64() * 1e3 / steps as f64;
    let mut host = Vec::with_capacity(21);
    for _ in 0..21 {
        sync(b)?;
        let t = Instant::now();
        step()?;
        host.push(t.elapsed().as_secs_f64() * 1e6);
    }
    sync(b)?;
    host.sort_by(f64::total_cmp);
    Ok((ms, host[10]))
}

impl BenchReport {
    pub fn to_table(&self) -> String {
        let mut s = format!(
            "{} on {} ({}), ctx {}, pos {}: weights {:.3} GB, copy {:.0} GB/s, floor {:.3} ms, prefill {} tok at depth {} at {:.0} tok/s\n",
            self.model,
            self.device,
            self.dtype,
            self.ctx,
            self.pos,
            self.weight_bytes as f64 / 1e9,
            self.copy_gbps,
            self.floor_ms,
            self.prefill_tokens,
            self.prefill_depth,
            self.prefill_tok_s
        );
        for a in &self.attention {
            s += &format!(
                "attention alone: batch {} at pos {}: {:.1} us/layer, {:.0} GB/s on KV bytes ({:.0}% of copy)\n",
                a.batch, a.pos, a.us_per_layer, a.kv_gbps, a.pct_of_copy
            );
        }
        s += &format!(
            "{:>5} {:<13} {:>9} {:>9} {:>10} {:>7} {:>8} {:>8} {:>10} {:>9} {:>9} {:>5}  nodes\n",
            "batch",
            "mode",
            "ms/step",
            "replay",
            "tok/s",
            "%floor",
            "kernels",
            "strided",
            "capture",
            "graphMiB",
            "host_us",
            "same"
        );
        for r in &self.rows {
            let opt = |x: Option<f64>, p: usize| x.map(|v| format!("{v:.p$}")).unwrap_or_else(|| "-".into());
            s += &format!(
                "{:>5} {:<13} {:>9.4} {:>9} {:>10.1} {:>7.1} {:>8} {:>8} {:>10} {:>9} {:>9.1} {:>5}  {}\n",
                r.batch,
                r.mode,
                r.ms_per_step,
                opt(r.replay_ms, 4),
                r.tokens_per_s,
                r.pct_of_floor,
                r.kernels_per_step,
                r.strided_launches_per_step,
                opt(r.capture_ms, 1),
                r.graph_mem_bytes.map(|m| format!("{:.1}", m as f64 / (1 << 20) as f64)).unwrap_or_else(|| "-".into()),
                r.host_us_per_step,
                if r.tokens_match_eager { "yes" } else { "NO" },
                r.audit.map(|a| a.to_string()).unwrap_or_else(|| "-".into())
            );
        }
        if let Some(c) = &self.capture_all {
            s += &format!(
                "all buckets {:?}: captured (warm-up + capture + instantiate + upload) in {:.1} ms, graph memory {:.1} MiB, {} fallbacks\n",
                c.buckets,
                c.capture_ms,
                c.graph_mem_bytes as f64 / (1 << 20) as f64,
                c.fallbacks
            );
        }
        s
    }

    pub fn to_json(&self) -> serde_json::Value {
        let rows: Vec<serde_json::Value> = self
            .rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "batch": r.batch, "mode": r.mode, "ms_per_step": r.ms_per_step, "replay_ms": r.replay_ms,
                    "tokens_per_s": r.tokens_per_s, "pct_of_floor": r.pct_of_floor,
                    "kernels_per_step": r.kernels_per_step, "strided_launches_per_step": r.strided_launches_per_step,
                    "nodes": r.audit.map(|a| serde_json::json!({"total": a.total(), "kernel": a.kernel, "memcpy": a.memcpy,
                        "memset": a.memset, "mem_alloc": a.mem_alloc, "mem_free": a.mem_free, "other": a.other})),
                    "capture_ms": r.capture_ms, "graph_mem_bytes": r.graph_mem_bytes,
                    "host_us_per_step": r.host_us_per_step, "tokens_match_eager": r.tokens_match_eager,
                })
            })
            .collect();
        serde_json::json!({
            "model": self.model, "device": self.device, "dtype": self.dtype, "ctx": self.ctx, "pos": self.pos,
            "copy_GBps": self.copy_gbps, "weight_bytes": self.weight_bytes, "floor_ms": self.floor_ms,
            "prefill_tokens": self.prefill_tokens, "prefill_depth": self.prefill_depth,
            "prefill_tok_s": self.prefill_tok_s, "rows": rows,
            "attention": self.attention.iter().map(|a| serde_json::json!({"batch": a.batch, "pos": a.pos,
                "us_per_layer": a.us_per_layer, "kv_GBps": a.kv_gbps, "pct_of_copy": a.pct_of_copy})).collect::<Vec<_>>(),
            "capture_all": self.capture_all.as_ref().map(|c| serde_json::json!({"buckets": c.buckets,
                "capture_ms": c.capture_ms, "graph_mem_bytes": c.graph_mem_bytes, "fallbacks": c.fallbacks})),
        })
    }
}
