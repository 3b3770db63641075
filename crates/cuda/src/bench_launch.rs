//! `encore bench launch`: what each launch-parameter mode costs, eager and under a CUDA graph,
//! on a chain of small strided ops shaped like one decode layer (rope-like half-head copies
//! and binary ops on narrowed `[T, H, D]` views of `[T, 3*C]` buffers, so every op needs
//! its strides). Per mode it reports microseconds per op (CUDA events around each step,
//! after a warm-up, median over the repetitions), the captured graph's nodes by type,
//! capture and instantiate times, metadata bytes uploaded per step, and whether the graph
//! replay and the eager run of every mode give bit-identical results.

use std::ffi::c_void;

use cudarc::driver::sys;
use encore_tensor::{BinaryOp, DType, Layout, StridedMeta};

use crate::error::drv;
use crate::graph::{capture, NodeAudit};
use crate::kernels::{binary_index, float_index, Kernel};
use crate::{CudaDevice, CudaError, DeviceBuffer, LaunchParamMode};

#[derive(Clone, Debug)]
pub struct LaunchBenchConfig {
    /// Tokens in the step (T).
    pub tokens: usize,
    /// Hidden size (C); the buffers are `[T, 3*C]` like a fused QKV projection.
    pub hidden: usize,
    /// Head dim (D); H = C / D.
    pub head_dim: usize,
    /// Strided ops per step.
    pub ops: usize,
    pub warmup: usize,
    pub reps: usize,
    /// f32, bf16 or f16.
    pub dtype: DType,
    pub modes: Vec<LaunchParamMode>,
}

impl Default for LaunchBenchConfig {
    fn default() -> Self {
        LaunchBenchConfig {
            tokens: 1,
            hidden: 2048,
            head_dim: 128,
            ops: 256,
            warmup: 20,
            reps: 200,
            dtype: DType::BF16,
            modes: LaunchParamMode::ALL.to_vec(),
        }
    }
}

/// One mode's numbers.
#[derive(Clone, Debug)]
pub struct LaunchBenchRow {
    pub mode: LaunchParamMode,
    pub eager_us_per_op: f64,
    pub graph_us_per_op: f64,
    pub nodes: NodeAudit,
    pub capture_ms: f64,
    pub instantiate_ms: f64,
    /// Metadata bytes copied host-to-device per eager step (upload mode).
    pub bytes_uploaded_per_step: u64,
    /// Graph replay output == this mode's eager output, bit for bit.
    pub graph_matches_eager: bool,
    /// This mode's eager output == the first mode's, bit for bit.
    pub matches_first_mode: bool,
}

#[derive(Clone, Debug)]
pub struct LaunchBenchReport {
    pub device: String,
    pub config: LaunchBenchConfig,
    pub rows: Vec<LaunchBenchRow>,
}

impl LaunchBenchReport {
    /// True when every replay matched its eager run and every mode matched the first.
    pub fn all_match(&self) -> bool {
        self.rows.iter().all(|r| r.graph_matches_eager && r.matches_first_mode)
    }

    pub fn to_table(&self) -> String {
        let c = &self.config;
        let mut s = format!(
            "launch bench on {}: {}, T={} C={} D={}, {} strided ops per step, median of {} reps\n",
            self.device, c.dtype, c.tokens, c.hidden, c.head_dim, c.ops, c.reps
        );
        s.push_str("| mode | eager us/op | graph us/op | graph nodes | kernel | memcpy | alloc | free | other | capture ms | instantiate ms | meta bytes/step | identical |\n");
        s.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
        for r in &self.rows {
            let n = &r.nodes;
            s.push_str(&format!(
                "| {} | {:.2} | {:.2} | {} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {} | {} |\n",
                r.mode,
                r.eager_us_per_op,
                r.graph_us_per_op,
                n.total(),
                n.kernel,
                n.memcpy,
                n.mem_alloc,
                n.mem_free,
                n.memset + n.other,
                r.capture_ms,
                r.instantiate_ms,
                r.bytes_uploaded_per_step,
                if r.graph_matches_eager && r.matches_first_mode { "yes" } else { "NO" },
            ));
        }
        s
    }

    pub fn to_json(&self) -> String {
        let c = &self.config;
        let modes: Vec<String> = c.modes.iter().map(|m| format!("\"{m}\"")).collect();
        let rows: Vec<String> = self
            .rows
            .iter()
            .map(|r| {
                let n = &r.nodes;
                format!(
                    concat!(
                        "{{\"mode\":\"{}\",\"eager_us_per_op\":{},\"graph_us_per_op\":{},",
                        "\"nodes\":{{\"total\":{},\"kernel\":{},\"memcpy\":{},\"memset\":{},\"mem_alloc\":{},",
                        "\"mem_free\":{},\"other\":{}}},\"capture_ms\":{},\"instantiate_ms\":{},",
                        "\"bytes_uploaded_per_step\":{},\"graph_matches_eager\":{},\"matches_first_mode\":{}}}"
                    ),
                    r.mode,
                    json_f64(r.eager_us_per_op),
                    json_f64(r.graph_us_per_op),
                    n.total(),
                    n.kernel,
                    n.memcpy,
                    n.memset,
                    n.mem_alloc,
                    n.mem_free,
                    n.other,
                    json_f64(r.capture_ms),
                    json_f64(r.instantiate_ms),
                    r.bytes_uploaded_per_step,
                    r.graph_matches_eager,
                    r.matches_first_mode
                )
            })
            .collect();
        format!(
            concat!(
                "{{\"bench\":\"launch\",\"device\":{},\"config\":{{\"tokens\":{},\"hidden\":{},\"head_dim\":{},",
                "\"ops\":{},\"warmup\":{},\"reps\":{},\"dtype\":\"{}\",\"modes\":[{}]}},\"rows\":[{}]}}"
            ),
            json_str(&self.device),
            c.tokens,
            c.hidden,
            c.head_dim,
            c.ops,
            c.warmup,
            c.reps,
            c.dtype,
            modes.join(","),
            rows.join(",")
        )
    }
}

fn json_f64(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.4}")
    } else {
        "null".into()
    }
}

fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// Run the launch benchmark on `dev`. The device's launch mode is restored afterwards.
pub fn bench_launch(dev: &CudaDevice, cfg: LaunchBenchConfig) -> Result<LaunchBenchReport, CudaError> {
    let saved = dev.launch_mode();
    let result = run(dev, &cfg);
    dev.set_launch_mode(saved);
    Ok(LaunchBenchReport { device: dev.name(), config: cfg, rows: result? })
}

fn invalid(msg: String) -> CudaError {
    CudaError::Tensor(encore_tensor::Error::InvalidArgument { op: "bench launch", msg })
}

fn run(dev: &CudaDevice, cfg: &LaunchBenchConfig) -> Result<Vec<LaunchBenchRow>, CudaError> {
    if cfg.head_dim < 2 || cfg.head_dim % 2 != 0 || cfg.hidden % cfg.head_dim != 0 || cfg.tokens == 0 {
        return Err(invalid(format!("need an even D dividing C, T > 0 (got {cfg:?})")));
    }
    if cfg.ops == 0 || cfg.reps == 0 {
        return Err(invalid("ops and reps must be positive".into()));
    }
    let chain = Chain::new(dev, cfg)?;
    let mut rows = Vec::new();
    let mut first: Option<Vec<u8>> = None;
    for &mode in &cfg.modes {
        dev.set_launch_mode(mode);
        // Eager: warm-up (fills the ParamCache in cached mode), then timed steps.
        for _ in 0..cfg.warmup.max(1) {
            chain.run(dev)?;
        }
        dev.synchronize()?;
        let before = dev.launch_stats();
        let eager = time_steps(dev, cfg.reps, || chain.run(dev))?;
        let bytes_per_step = dev.launch_stats().since(&before).bytes_uploaded / cfg.reps as u64;
        let eager_out = chain.output(dev)?;

        // Graph: capture one step, audit, instantiate; check one replay against eager.
        let graph = capture(dev, || chain.run(dev))?;
        let nodes = graph.audit();
        let exec = graph.instantiate()?;
        dev.memset_zero(&chain.out, 0, chain.out.bytes())?;
        exec.replay()?;
        let graph_out = chain.output(dev)?;
        for _ in 0..cfg.warmup {
            exec.replay()?;
        }
        let replay = time_steps(dev, cfg.reps, || exec.replay())?;
        dev.synchronize()?;

        let per_op = |ms: f64| ms * 1e3 / cfg.ops as f64;
        let matches_first_mode = first.as_ref().is_none_or(|f| *f == eager_out);
        rows.push(LaunchBenchRow {
            mode,
            eager_us_per_op: per_op(eager),
            graph_us_per_op: per_op(replay),
            nodes,
            capture_ms: graph.capture_ms(),
            instantiate_ms: exec.instantiate_ms(),
            bytes_uploaded_per_step: bytes_per_step,
            graph_matches_eager: graph_out == eager_out,
            matches_first_mode,
        });
        first.get_or_insert(eager_out);
    }
    Ok(rows)
}

/// Median of `reps` timings (ms) of `step`, each between two events on the stream.
fn time_steps(
    dev: &CudaDevice,
    reps: usize,
    mut step: impl FnMut() -> Result<(), CudaError>,
) -> Result<f64, CudaError> {
    let (start, end) = (Event::new()?, Event::new()?);
    let mut ms = Vec::with_capacity(reps);
    for _ in 0..reps {
        start.record(dev)?;
        step()?;
        end.record(dev)?;
        ms.push(end.elapsed_since(&start)?);
    }
    ms.sort_by(f64::total_cmp);
    Ok(ms[ms.len() / 2])
}

/// A timing event (the bench's own: the device keeps no events).
struct Event(sys::CUevent);

impl Event {
    fn new() -> Result<Self, CudaError> {
        let mut e = std::ptr::null_mut();
        // SAFETY: valid out-pointer; the caller bound the device context.
        drv("cuEventCreate", unsafe { sys::cuEventCreate(&mut e, sys::CUevent_flags::CU_EVENT_DEFAULT as u32) })?;
        Ok(Event(e))
    }

    fn record(&self, dev: &CudaDevice) -> Result<(), CudaError> {
        // SAFETY: event alive, stream is the device's; the bench never records while capturing.
        drv("cuEventRecord", unsafe { sys::cuEventRecord(self.0, dev.stream()) })
    }

    /// Waits for `self`, then milliseconds between `start` and `self`.
    fn elapsed_since(&self, start: &Event) -> Result<f64, CudaError> {
        let mut ms = 0f32;
        // SAFETY: both events alive and recorded on the same stream.
        unsafe {
            drv("cuEventSynchronize", sys::cuEventSynchronize(self.0))?;
            drv("cuEventElapsedTime_v2", sys::cuEventElapsedTime_v2(&mut ms, start.0, self.0))?;
        }
        Ok(ms as f64)
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        // SAFETY: created in `new`, destroyed once.
        let _ = unsafe { sys::cuEventDestroy_v2(self.0) };
    }
}

/// One strided launch of the chain: copy (dst, src) or binary (dst, lhs, rhs).
struct Step {
    kernel: Kind,
    dst: u64,
    a: u64,
    b: u64,
    meta: StridedMeta,
    grid: u32,
}

#[derive(Clone, Copy)]
enum Kind {
    Copy,
    Mul,
    Add,
}

/// The buffers and the ops of one decode-layer-like step.
struct Chain {
    _qkv: DeviceBuffer,
    _rot: DeviceBuffer,
    out: DeviceBuffer,
    steps: Vec<Step>,
    copy: usize,
    mul: usize,
    add: usize,
    fi: usize,
}

const BLOCK: u32 = 256;

impl Chain {
    fn new(dev: &CudaDevice, cfg: &LaunchBenchConfig) -> Result<Self, CudaError> {
        let fi = float_index(cfg.dtype).ok_or_else(|| invalid(format!("dtype {} is not a float", cfg.dtype)))?;
        let (t, c, d) = (cfg.tokens, cfg.hidden, cfg.head_dim);
        let (h, half) = (c / d, d / 2);
        let es = cfg.dtype.size_in_bytes();
        // qkv, out: [T, 3C]; rot: [T, C] (the rotate-half scratch, like rope's).
        let qkv = dev.alloc(t * 3 * c * es)?;
        let rot = dev.alloc(t * c * es)?;
        let out = dev.alloc_zeroed(t * 3 * c * es)?;
        dev.htod(&random_bytes(t * 3 * c, cfg.dtype, 0x5eed), &qkv, 0)?;
        dev.htod(&random_bytes(t * c, cfg.dtype, 0xfeed), &rot, 0)?;

        // `[T, H, D]` view of third `j` of a `[T, 3C]` buffer, then one half of the head dim.
        let thd3 = |j: usize, lo: bool| -> Result<Layout, CudaError> {
            let l = Layout::contiguous(&[t, 3 * c]).narrow(1, j * c, c)?.reshape(&[t, h, d])?;
            Ok(l.narrow(2, if lo { 0 } else { half }, half)?)
        };
        let thd1 = |lo: bool| -> Result<Layout, CudaError> {
            Ok(Layout::contiguous(&[t, h, d]).narrow(2, if lo { 0 } else { half }, half)?)
        };
        let numel = (t * h * half) as u32;
        let grid = numel.div_ceil(BLOCK).clamp(1, 1024);
        let mut steps = Vec::with_capacity(cfg.ops);
        for i in 0..cfg.ops {
            let cycle = i / 4;
            let src = 1 + cycle % 2; // k or v
            let dst = cycle % 3; // q, k or v third of `out`
            let step = match i % 4 {
                // rotate-half: rot[.., :D/2] = src[.., D/2:], rot[.., D/2:] = src[.., :D/2]
                0 | 1 => {
                    let lo = i % 4 == 0;
                    let (dl, sl) = (thd1(lo)?, thd3(src, !lo)?);
                    let meta = StridedMeta::new("copy", &[&dl, &sl])?;
                    Step { kernel: Kind::Copy, dst: rot.ptr(), a: qkv.ptr(), b: 0, meta, grid }
                }
                // out[.., half] = q[.., half] (op) rot[.., half]
                k => {
                    let lo = k == 2;
                    let (dl, ql, rl) = (thd3(dst, lo)?, thd3(0, lo)?, thd1(lo)?);
                    let meta = StridedMeta::new("binary", &[&dl, &ql, &rl])?;
                    let kind = if lo { Kind::Mul } else { Kind::Add };
                    Step { kernel: kind, dst: out.ptr(), a: qkv.ptr(), b: rot.ptr(), meta, grid }
                }
            };
            if step.meta.is_contiguous() {
                return Err(invalid("a bench view came out contiguous; the bench must measure strided ops".into()));
            }
            steps.push(step);
        }
        Ok(Chain {
            _qkv: qkv,
            _rot: rot,
            out,
            steps,
            copy: fi,
            mul: binary_index(BinaryOp::Mul),
            add: binary_index(BinaryOp::Add),
            fi,
        })
    }

    fn kernel<'d>(&self, dev: &'d CudaDevice, kind: Kind) -> &'d Kernel {
        let k = dev.kernels();
        match kind {
            Kind::Copy => &k.copy[self.copy][self.copy],
            Kind::Mul => &k.binary[self.mul][self.fi],
            Kind::Add => &k.binary[self.add][self.fi],
        }
    }

    /// Queue one step: every op through `prepare_meta`, so the device's mode applies.
    fn run(&self, dev: &CudaDevice) -> Result<(), CudaError> {
        for s in &self.steps {
            let prepared = dev.prepare_meta(s.meta)?;
            let mut meta = prepared.meta;
            let (mut dst, mut a, mut b) = (s.dst, s.a, s.b);
            let f = self.kernel(dev, s.kernel);
            let meta_p = &mut meta as *mut StridedMeta as *mut c_void;
            let (dst_p, a_p, b_p) = (
                &mut dst as *mut u64 as *mut c_void,
                &mut a as *mut u64 as *mut c_void,
                &mut b as *mut u64 as *mut c_void,
            );
            match s.kernel {
                // copy_<s>_<d>(const S* src, D* dst, StridedMeta meta)
                Kind::Copy => {
                    let mut params = [a_p, dst_p, meta_p];
                    // SAFETY: argument types match copy.cu's signature (two device pointers,
                    // then the by-value StridedMeta); the meta's views lie inside the buffers.
                    unsafe { dev.launch(f, (s.grid, 1, 1), (BLOCK, 1, 1), 0, &mut params)? };
                }
                // binary_<op>_<t>(const T* lhs, const T* rhs, T* dst, StridedMeta meta)
                Kind::Mul | Kind::Add => {
                    let mut params = [a_p, b_p, dst_p, meta_p];
                    // SAFETY: argument types match binary.cu's signature; the views lie inside
                    // the buffers (built from their shapes above).
                    unsafe { dev.launch(f, (s.grid, 1, 1), (BLOCK, 1, 1), 0, &mut params)? };
                }
            }
            drop(prepared); // upload mode: queue the free after the launch
        }
        Ok(())
    }

    fn output(&self, dev: &CudaDevice) -> Result<Vec<u8>, CudaError> {
        let mut v = vec![0u8; self.out.bytes()];
        dev.dtoh(&self.out, 0, &mut v)?;
        Ok(v)
    }
}

/// `n` values uniform in [-1, 1) as `dtype` bytes (xorshift; never zeros).
fn random_bytes(n: usize, dtype: DType, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    };
    let mut out = Vec::with_capacity(n * dtype.size_in_bytes());
    for _ in 0..n {
        let v = next();
        match dtype {
            DType::BF16 => out.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes()),
            DType::F16 => out.extend_from_slice(&half::f16::from_f32(v).to_le_bytes()),
            _ => out.extend_from_slice(&v.to_le_bytes()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_renders_table_and_json() {
        let row = LaunchBenchRow {
            mode: LaunchParamMode::Upload,
            eager_us_per_op: 5.9,
            graph_us_per_op: 3.95,
            nodes: NodeAudit { kernel: 256, memcpy: 256, mem_alloc: 256, mem_free: 256, ..Default::default() },
            capture_ms: 1.5,
            instantiate_ms: 2.25,
            bytes_uploaded_per_step: 256 * 36,
            graph_matches_eager: true,
            matches_first_mode: false,
        };
        let r = LaunchBenchReport { device: "GPU \"x\"".into(), config: LaunchBenchConfig::default(), rows: vec![row] };
        let t = r.to_table();
        assert!(t.contains("| upload | 5.90 | 3.95 | 1024 | 256 | 256 | 256 | 256 | 0 |"), "{t}");
        assert!(t.contains("| NO |"), "a mismatch must show: {t}");
        assert!(!r.all_match());
        let j = r.to_json();
        assert!(j.starts_with("{\"bench\":\"launch\",\"device\":\"GPU \\\"x\\\"\""), "{j}");
        assert!(
            j.contains("\"nodes\":{\"total\":1024,\"kernel\":256,\"memcpy\":256,\"memset\":0,\"mem_alloc\":256"),
            "{j}"
        );
        assert!(j.contains("\"modes\":[\"inline\",\"cached\",\"upload\"]"), "{j}");
        assert_eq!(j.matches('{').count(), j.matches('}').count());
    }

    #[test]
    fn random_bytes_are_nonzero_and_in_range() {
        let b = random_bytes(1000, DType::F32, 7);
        let v: Vec<f32> = b.chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        assert!(v.iter().all(|x| (-1.0..1.0).contains(x)));
        assert!(v.iter().filter(|x| **x == 0.0).count() < 3);
        assert!(v.iter().any(|x| *x < -0.5) && v.iter().any(|x| *x > 0.5));
        assert_eq!(random_bytes(10, DType::BF16, 7).len(), 20);
    }
}
