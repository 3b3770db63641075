// The GPU tests of the `graph` test target, included by main.rs with the `cuda` feature (see
// main.rs for what they cover). An included file cannot carry `//!` docs or inner attributes.

use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};

use encore_cuda::kernels::{binary_index, FATBIN};
use encore_cuda::{
    bench_launch, capture, CudaDevice, CudaError, DeviceBuffer, DeviceConfig, LaunchBenchConfig, LaunchParamMode,
};
use encore_tensor::check::{MatOperand, MatmulDims};
use encore_tensor::testing::{round_to, Rng};
use encore_tensor::{BinaryOp, DType, HostTensor, Layout, StridedMeta};

fn device() -> CudaDevice {
    CudaDevice::new(0).expect("CUDA device 0 (these tests run on a GPU host)")
}

fn upload_f32(dev: &CudaDevice, v: &[f32]) -> DeviceBuffer {
    let buf = dev.alloc(v.len() * 4).unwrap();
    dev.htod(bytemuck_f32(v), &buf, 0).unwrap();
    buf
}

fn bytemuck_f32(v: &[f32]) -> &[u8] {
    bytemuck::cast_slice(v)
}

fn download_bytes(dev: &CudaDevice, buf: &DeviceBuffer) -> Vec<u8> {
    let mut out = vec![0u8; buf.bytes()];
    dev.dtoh(buf, 0, &mut out).unwrap();
    out
}

fn download_f32(dev: &CudaDevice, buf: &DeviceBuffer) -> Vec<f32> {
    download_bytes(dev, buf).chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

const BLOCK: u32 = 256;

fn grid(meta: &StridedMeta) -> u32 {
    meta.numel.div_ceil(BLOCK).clamp(1, 1024)
}

/// `dst = lhs (op) rhs` over f32 views, through `prepare_meta` like every strided launch.
fn binary(
    dev: &CudaDevice,
    op: BinaryOp,
    lhs: (&DeviceBuffer, &Layout),
    rhs: (&DeviceBuffer, &Layout),
    dst: (&DeviceBuffer, &Layout),
) -> Result<(), CudaError> {
    let meta = StridedMeta::new("binary", &[dst.1, lhs.1, rhs.1])?;
    let prepared = dev.prepare_meta(meta)?;
    let mut m = prepared.meta;
    let (mut a, mut b, mut c) = (lhs.0.ptr(), rhs.0.ptr(), dst.0.ptr());
    let mut params = [
        &mut a as *mut u64 as *mut c_void,
        &mut b as *mut u64 as *mut c_void,
        &mut c as *mut u64 as *mut c_void,
        &mut m as *mut StridedMeta as *mut c_void,
    ];
    let f = &dev.kernels().binary[binary_index(op)][0];
    // SAFETY: binary_<op>_f32(const float*, const float*, float*, StridedMeta); the views
    // were built from the buffers' shapes, so every index lies inside them.
    unsafe { dev.launch(f, (grid(&meta), 1, 1), (BLOCK, 1, 1), 0, &mut params) }
}

/// `dst = src` over f32 views (copy_f32_f32).
fn copy(dev: &CudaDevice, src: (&DeviceBuffer, &Layout), dst: (&DeviceBuffer, &Layout)) -> Result<(), CudaError> {
    let meta = StridedMeta::new("copy", &[dst.1, src.1])?;
    let prepared = dev.prepare_meta(meta)?;
    let mut m = prepared.meta;
    let (mut s, mut d) = (src.0.ptr(), dst.0.ptr());
    let mut params = [
        &mut s as *mut u64 as *mut c_void,
        &mut d as *mut u64 as *mut c_void,
        &mut m as *mut StridedMeta as *mut c_void,
    ];
    let f = &dev.kernels().copy[0][0];
    // SAFETY: copy_f32_f32(const float*, float*, StridedMeta); views inside the buffers.
    unsafe { dev.launch(f, (grid(&meta), 1, 1), (BLOCK, 1, 1), 0, &mut params) }
}

const R: usize = 8;
const C: usize = 48;
/// Strided ops in one `Chain::run` (plus one contiguous op).
const STRIDED_OPS: usize = 4;

/// A few strided ops over transposed and narrowed views; every output is rewritten from
/// the inputs on each run, so runs are repeatable.
struct Chain {
    x: DeviceBuffer,   // [R, C]
    y: DeviceBuffer,   // [C, R]
    t: DeviceBuffer,   // [R, C]
    z: DeviceBuffer,   // [R, C]
    out: DeviceBuffer, // [R, C]
    tt: DeviceBuffer,  // [C, R]
}

impl Chain {
    fn new(dev: &CudaDevice, rng: &mut Rng) -> Chain {
        Chain {
            x: upload_f32(dev, &rng.vec(R * C, -2.0, 2.0)),
            y: upload_f32(dev, &rng.vec(C * R, -2.0, 2.0)),
            t: upload_f32(dev, &rng.vec(R * C, -2.0, 2.0)),
            z: upload_f32(dev, &rng.vec(R * C, -2.0, 2.0)),
            out: upload_f32(dev, &rng.vec(R * C, -2.0, 2.0)),
            tt: upload_f32(dev, &rng.vec(C * R, -2.0, 2.0)),
        }
    }

    /// Same shapes, fresh buffers holding the same inputs (for exec update).
    fn twin(&self, dev: &CudaDevice) -> Chain {
        let cp = |b: &DeviceBuffer| {
            let n = dev.alloc(b.bytes()).unwrap();
            dev.htod(&download_bytes(dev, b), &n, 0).unwrap();
            n
        };
        Chain { x: cp(&self.x), y: cp(&self.y), t: cp(&self.t), z: cp(&self.z), out: cp(&self.out), tt: cp(&self.tt) }
    }

    fn run(&self, dev: &CudaDevice) -> Result<(), CudaError> {
        let rc = Layout::contiguous(&[R, C]);
        let yt = Layout::contiguous(&[C, R]).transpose(0, 1)?; // [R, C] view of y
        let half = C / 2;
        let lo = rc.narrow(1, 0, half)?;
        let hi = rc.narrow(1, half, half)?;
        // t = x + y^T (rhs transposed)
        binary(dev, BinaryOp::Add, (&self.x, &rc), (&self.y, &yt), (&self.t, &rc))?;
        // out[:, :C/2] = t[:, :C/2] * x[:, C/2:]
        binary(dev, BinaryOp::Mul, (&self.t, &lo), (&self.x, &hi), (&self.out, &lo))?;
        // out[:, C/2:] = t[:, C/2:] - y^T[:, :C/2]
        binary(dev, BinaryOp::Sub, (&self.t, &hi), (&self.y, &yt.narrow(1, 0, half)?), (&self.out, &hi))?;
        // tt = t^T (strided destination)
        copy(dev, (&self.t, &rc), (&self.tt, &Layout::contiguous(&[C, R]).transpose(0, 1)?))?;
        // z = x * x (contiguous: inline in every mode)
        binary(dev, BinaryOp::Mul, (&self.x, &rc), (&self.x, &rc), (&self.z, &rc))
    }

    fn results(&self, dev: &CudaDevice) -> Vec<u8> {
        [&self.t, &self.out, &self.tt, &self.z].iter().flat_map(|b| download_bytes(dev, b)).collect()
    }

    fn scramble(&self, dev: &CudaDevice, rng: &mut Rng) {
        for b in [&self.t, &self.out, &self.tt, &self.z] {
            dev.htod(bytemuck_f32(&rng.vec(b.bytes() / 4, 5.0, 9.0)), b, 0).unwrap();
        }
    }

    /// The f64 reference of `out` and `tt`.
    fn reference(&self, dev: &CudaDevice) -> (Vec<f64>, Vec<f64>) {
        let (x, y) = (download_f32(dev, &self.x), download_f32(dev, &self.y));
        let t: Vec<f64> = (0..R * C).map(|i| x[i] as f64 + y[(i % C) * R + i / C] as f64).collect();
        let half = C / 2;
        let mut out = vec![0.0; R * C];
        let mut tt = vec![0.0; C * R];
        for r in 0..R {
            for c in 0..C {
                let i = r * C + c;
                out[i] = if c < half { t[i] * x[r * C + c + half] as f64 } else { t[i] - y[(c - half) * R + r] as f64 };
                tt[c * R + r] = t[i];
            }
        }
        (out, tt)
    }
}

/// An eager op and a new capture + replay work (after a capture violation, say).
fn assert_device_usable(dev: &CudaDevice) {
    assert!(!dev.is_capturing(), "the capture was ended");
    let mut rng = Rng::fresh("assert_device_usable");
    let ch = Chain::new(dev, &mut rng);
    ch.run(dev).expect("eager run after the violation");
    let eager = ch.results(dev);
    let (out, tt) = ch.reference(dev);
    let got = download_f32(dev, &ch.out);
    for (i, (g, w)) in got.iter().zip(&out).enumerate() {
        assert!((*g as f64 - w).abs() <= 1e-5 + 1e-5 * w.abs(), "out[{i}] = {g}, reference {w}");
    }
    let got_tt = download_f32(dev, &ch.tt);
    assert!(got_tt.iter().zip(&tt).all(|(g, w)| (*g as f64 - w).abs() <= 1e-5 + 1e-5 * w.abs()));
    ch.scramble(dev, &mut rng);
    let g = capture(dev, || ch.run(dev)).expect("a new capture after the violation");
    g.instantiate().unwrap().replay().unwrap();
    dev.synchronize().unwrap();
    assert_eq!(ch.results(dev), eager, "replay after the violation matches eager");
}

fn expect_violation(r: Result<encore_cuda::Graph, CudaError>, op: &str) {
    match r {
        Err(CudaError::CaptureViolation { op: got }) => {
            assert!(got.contains(op), "violation names `{got}`, expected `{op}`")
        }
        Err(e) => panic!("expected a capture violation ({op}), got {e}"),
        Ok(g) => panic!("expected a capture violation ({op}), the capture succeeded: {}", g.audit()),
    }
}

// ---- replay == eager, audits --------------------------------------------------------------

#[test]
fn replay_is_bit_identical_to_eager_in_every_mode() {
    let dev = device();
    let mut rng = Rng::fresh("replay_is_bit_identical_to_eager_in_every_mode");
    let ch = Chain::new(&dev, &mut rng);
    let mut first: Option<Vec<u8>> = None;
    for mode in LaunchParamMode::ALL {
        dev.set_launch_mode(mode);
        ch.scramble(&dev, &mut rng);
        ch.run(&dev).unwrap();
        let eager = ch.results(&dev);
        ch.scramble(&dev, &mut rng);
        let g = capture(&dev, || ch.run(&dev)).unwrap();
        let exec = g.instantiate().unwrap();
        for _ in 0..3 {
            exec.replay().unwrap();
        }
        dev.synchronize().unwrap();
        assert_eq!(ch.results(&dev), eager, "{mode}: replay differs from the eager run");
        if let Some(f) = &first {
            assert_eq!(&eager, f, "{mode}: eager result differs from inline mode");
        }
        first.get_or_insert(eager);
    }
}

#[test]
fn inline_graphs_are_kernels_only() {
    let dev = device();
    let ch = Chain::new(&dev, &mut Rng::fresh("inline_graphs_are_kernels_only"));
    dev.set_launch_mode(LaunchParamMode::Inline);
    let g = capture(&dev, || ch.run(&dev)).unwrap();
    let a = g.audit();
    assert!(a.kernels_only(), "{a}");
    assert_eq!(a.kernel, STRIDED_OPS + 1);
}

#[test]
fn warm_cached_graphs_are_kernels_only_and_pin_their_entries() {
    let dev = device();
    let ch = Chain::new(&dev, &mut Rng::fresh("warm_cached_graphs_are_kernels_only_and_pin_their_entries"));
    dev.set_launch_mode(LaunchParamMode::Cached);
    ch.run(&dev).unwrap(); // warm-up fills the cache
    dev.synchronize().unwrap();
    let misses = dev.param_cache().stats().misses;
    assert!(misses > 0, "the warm-up missed and uploaded");
    let g = capture(&dev, || ch.run(&dev)).unwrap();
    let a = g.audit();
    assert!(a.kernels_only(), "{a}");
    assert_eq!(a.kernel, STRIDED_OPS + 1);
    assert_eq!(dev.param_cache().stats().misses, misses, "no miss during capture");
    assert!(g.pinned_entries() > 0);
    let exec = g.instantiate().unwrap();
    assert!(dev.param_cache().stats().pinned > 0);
    assert_eq!(dev.param_cache().clear(), 0, "pinned entries survive clear()");
    drop(g);
    assert!(dev.param_cache().stats().pinned > 0, "the exec still pins the entries");
    drop(exec);
    dev.synchronize().unwrap(); // retired keeps go once the stream passed them
    assert_eq!(dev.param_cache().stats().pinned, 0, "dropping graph and exec releases the pins");
    assert!(dev.param_cache().clear() > 0);
}

#[test]
fn cache_guard_turns_cached_mode_on() {
    let dev = device();
    let ch = Chain::new(&dev, &mut Rng::fresh("cache_guard_turns_cached_mode_on"));
    dev.set_launch_mode(LaunchParamMode::Upload);
    let before = dev.launch_stats();
    {
        let _guard = dev.param_cache().enable();
        assert_eq!(dev.effective_launch_mode(), LaunchParamMode::Cached);
        ch.run(&dev).unwrap();
    }
    let used = dev.launch_stats().since(&before);
    assert_eq!((used.cached, used.upload), (STRIDED_OPS as u64, 0), "{used:?}");
    assert_eq!(dev.effective_launch_mode(), LaunchParamMode::Upload);
}

#[test]
fn upload_graphs_have_four_nodes_per_strided_op() {
    let dev = device();
    let mut rng = Rng::fresh("upload_graphs_have_four_nodes_per_strided_op");
    let ch = Chain::new(&dev, &mut rng);
    dev.set_launch_mode(LaunchParamMode::Upload);
    ch.run(&dev).unwrap();
    let eager = ch.results(&dev);
    let before = dev.launch_stats();
    let g = capture(&dev, || ch.run(&dev)).unwrap();
    let used = dev.launch_stats().since(&before);
    assert_eq!((used.upload, used.inline), (STRIDED_OPS as u64, 1), "the contiguous op stays inline");
    assert!(used.bytes_uploaded > 0);
    let a = g.audit();
    assert_eq!(
        (a.kernel, a.memcpy, a.mem_alloc, a.mem_free, a.memset, a.other),
        (STRIDED_OPS + 1, STRIDED_OPS, STRIDED_OPS, STRIDED_OPS, 0, 0),
        "{a}"
    );
    let exec = g.instantiate().unwrap();
    drop(g); // the exec keeps the host words its memcpy nodes read
    for _ in 0..2 {
        ch.scramble(&dev, &mut rng);
        exec.replay().unwrap();
        dev.synchronize().unwrap();
        assert_eq!(ch.results(&dev), eager, "upload replay");
    }
}

// ---- capture rules --------------------------------------------------------------------------

#[test]
fn capture_rejects_allocation_outside_the_pool() {
    let dev = device();
    let r = capture(&dev, || {
        let _b = dev.alloc(3 << 20 | 4096)?; // a class never allocated on this device
        Ok(())
    });
    expect_violation(r, "allocation");
    assert_device_usable(&dev);
}

#[test]
fn capture_time_allocation_is_served_from_the_pool() {
    let dev = device();
    let bytes = (1 << 20) + 4096;
    drop(dev.alloc(bytes).unwrap());
    let allocs = dev.pool_stats().driver_allocs;
    let g = capture(&dev, || {
        let b = dev.alloc_zeroed(bytes)?; // memset node, block from the free list
        drop(b); // released during capture: the graph keeps it
        Ok(())
    })
    .unwrap();
    assert_eq!(dev.pool_stats().driver_allocs, allocs, "no driver allocation while capturing");
    assert_eq!(g.audit().memset, 1);
    assert!(dev.pool_stats().graph_held_bytes >= bytes, "{:?}", dev.pool_stats());
    let other = dev.alloc(bytes).unwrap();
    drop(g);
    assert_eq!(dev.pool_stats().graph_held_bytes, 0, "a dropped graph returns its blocks");
    drop(other);
    assert_device_usable(&dev);
}

#[test]
fn capture_rejects_htod() {
    let dev = device();
    let buf = dev.alloc(64).unwrap();
    let r = capture(&dev, || dev.htod(&[7u8; 64], &buf, 0));
    expect_violation(r, "host-to-device");
    assert_device_usable(&dev);
}

#[test]
fn capture_rejects_dtoh() {
    let dev = device();
    let buf = dev.alloc_zeroed(64).unwrap();
    let r = capture(&dev, || {
        let mut host = [0u8; 64];
        dev.dtoh(&buf, 0, &mut host)
    });
    expect_violation(r, "device-to-host");
    assert_device_usable(&dev);
}

#[test]
fn capture_rejects_synchronize() {
    let dev = device();
    let r = capture(&dev, || dev.synchronize());
    expect_violation(r, "synchronize");
    assert_device_usable(&dev);
}

#[test]
fn capture_rejects_a_cache_miss() {
    let dev = device();
    let ch = Chain::new(&dev, &mut Rng::fresh("capture_rejects_a_cache_miss"));
    dev.set_launch_mode(LaunchParamMode::Cached); // no warm-up: the first lookup misses
    let r = capture(&dev, || ch.run(&dev));
    expect_violation(r, "param cache miss");
    assert_eq!(dev.param_cache().stats().pinned, 0, "a failed capture pins nothing");
    assert_device_usable(&dev); // eager run warms the cache, then the capture hits
}

#[test]
fn capture_rejects_module_load_and_nested_capture() {
    let dev = device();
    expect_violation(capture(&dev, || dev.load_module(FATBIN).map(drop)), "module load");
    expect_violation(capture(&dev, || capture(&dev, || Ok(())).map(drop)), "nested capture");
    let m = dev.load_module(FATBIN).expect("loading outside a capture works");
    assert_eq!(m.function("binary_add_f32").unwrap().name, "binary_add_f32");
    assert_device_usable(&dev);
}

#[test]
fn a_panic_inside_capture_ends_the_capture() {
    let dev = device();
    let r = catch_unwind(AssertUnwindSafe(|| capture(&dev, || panic!("boom inside capture"))));
    assert!(r.is_err());
    assert_device_usable(&dev);
}

/// Two threads start a capture on one device at the same moment: exactly one gets it, and
/// the loser leaves the winner's capture alone (before the fix the check-then-set let both
/// start; the loser's failure cleared the winner's capturing flag and took its pool blocks).
#[test]
fn two_threads_starting_a_capture_at_once_never_share_it() {
    let dev = device();
    dev.set_launch_mode(LaunchParamMode::Inline);
    let ch = Chain::new(&dev, &mut Rng::fresh("two_threads_starting_a_capture_at_once_never_share_it"));
    for round in 0..20 {
        let barrier = std::sync::Barrier::new(2);
        let results: Vec<Result<encore_cuda::Graph, CudaError>> = std::thread::scope(|s| {
            let attempt = || {
                barrier.wait();
                capture(&dev, || {
                    ch.run(&dev)?;
                    std::thread::sleep(std::time::Duration::from_millis(20)); // the loser fails meanwhile
                    assert!(dev.is_capturing(), "round {round}: the winner's capture rules were switched off");
                    let err = dev.alloc(7 << 20).expect_err("a fresh size while capturing");
                    assert!(err.is_capture_violation(), "round {round}: {err}");
                    Ok(())
                })
            };
            let a = s.spawn(attempt);
            let b = s.spawn(attempt);
            vec![a.join().unwrap(), b.join().unwrap()]
        });
        let (won, lost): (Vec<_>, Vec<_>) = results.into_iter().partition(|r| r.is_ok());
        assert_eq!((won.len(), lost.len()), (1, 1), "round {round}: exactly one capture");
        let lost = lost.into_iter().next().unwrap().unwrap_err();
        assert!(lost.is_capture_violation(), "round {round}: {lost}");
        let g = won.into_iter().next().unwrap().unwrap();
        assert!(g.try_audit().unwrap().kernels_only(), "round {round}: {}", g.audit());
        g.instantiate().unwrap().replay().unwrap();
        dev.synchronize().unwrap();
    }
    assert_device_usable(&dev);
}

/// A buffer handed out during a capture (its kernels write it) and dropped after: its block
/// must stay with the graph until the graph drops, or the next allocation of that size
/// would get memory the graph still writes on every replay.
#[test]
fn a_block_allocated_during_capture_and_dropped_after_is_not_reused_while_the_graph_lives() {
    let dev = device();
    let bytes = 1 << 16;
    drop(dev.alloc(bytes).unwrap()); // a free block of this class for the capture to take
    let held0 = dev.pool_stats().graph_held_bytes;
    let mut kept = None;
    let g = capture(&dev, || {
        kept = Some(dev.alloc_zeroed(bytes)?); // a memset node writing the block
        Ok(())
    })
    .unwrap();
    let buf = kept.take().unwrap();
    let ptr = buf.ptr();
    drop(buf);
    assert_eq!(dev.pool_stats().graph_held_bytes, held0 + bytes, "the graph holds the block");
    let other = dev.alloc(bytes).unwrap();
    assert_ne!(other.ptr(), ptr, "the block must not be handed out while the graph may replay");
    let exec = g.instantiate().unwrap();
    exec.replay().unwrap();
    drop((g, exec));
    dev.synchronize().unwrap(); // the exec's keep goes once the stream has passed its replays
    assert_eq!(dev.pool_stats().graph_held_bytes, held0, "and comes back when the graph is gone");
    drop(other);
    assert_device_usable(&dev);
}

/// Updating an exec every step (to a freshly captured graph of the same topology) must not
/// pile up the keeps of the graphs it was updated away from.
#[test]
fn exec_update_per_step_releases_the_old_graphs() {
    let dev = device();
    dev.set_launch_mode(LaunchParamMode::Inline);
    let ch = Chain::new(&dev, &mut Rng::fresh("exec_update_per_step_releases_the_old_graphs"));
    let step = || {
        drop(dev.alloc(4096).unwrap()); // a free block the capture takes and releases
        capture(&dev, || {
            ch.run(&dev)?;
            drop(dev.alloc(4096)?); // released during capture: this graph's keep holds it
            Ok(())
        })
        .unwrap()
    };
    let held0 = dev.pool_stats().graph_held_bytes;
    let first = step();
    let mut exec = first.instantiate().unwrap();
    drop(first);
    for i in 0..300 {
        let g = step();
        exec.update(&g).unwrap_or_else(|e| panic!("step {i}: {e}"));
        assert!(exec.holds(&g));
        drop(g);
        exec.replay().unwrap();
    }
    dev.synchronize().unwrap();
    let held = dev.pool_stats().graph_held_bytes - held0;
    assert_eq!(held, 4096, "only the current graph's block is held, not one per update");
    drop(exec);
    dev.synchronize().unwrap();
    assert_eq!(dev.pool_stats().graph_held_bytes, held0);
}

#[test]
fn try_audit_returns_the_counts_audit_shows() {
    let dev = device();
    dev.set_launch_mode(LaunchParamMode::Inline);
    let ch = Chain::new(&dev, &mut Rng::fresh("try_audit_returns_the_counts_audit_shows"));
    let g = capture(&dev, || ch.run(&dev)).unwrap();
    let a = g.try_audit().unwrap();
    assert_eq!(a, g.audit());
    assert!(!a.failed && a.kernels_only() && a.kernel == STRIDED_OPS + 1, "{a}");
}

// ---- exec update ------------------------------------------------------------------------------

/// Capture the same chain on twin buffer sets `a` and `b`, instantiate `a`'s graph, update
/// it to `b`'s. Returns whether the driver accepted the update; when it did, the replay must
/// write `b` (with `a`'s eager results) and leave `a` alone, else the exec still replays `a`.
fn update_case(dev: &CudaDevice, rng: &mut Rng) -> bool {
    let a = Chain::new(dev, rng);
    let b = a.twin(dev);
    a.run(dev).unwrap();
    let want = a.results(dev);
    a.scramble(dev, rng);
    b.scramble(dev, rng);
    let (before_a, before_b) = (a.results(dev), b.results(dev));
    let ga = capture(dev, || a.run(dev)).unwrap();
    let gb = capture(dev, || b.run(dev)).unwrap();
    let mut exec = ga.instantiate().unwrap();
    let updated = exec.update(&gb).is_ok();
    drop((ga, gb));
    exec.replay().unwrap();
    dev.synchronize().unwrap();
    let mode = dev.launch_mode();
    if updated {
        assert_eq!(b.results(dev), want, "{mode}: the updated exec writes b");
        assert_eq!(a.results(dev), before_a, "{mode}: the old buffers are not touched");
    } else {
        assert_eq!(a.results(dev), want, "{mode}: a refused update leaves the exec on a");
        assert_eq!(b.results(dev), before_b, "{mode}: b untouched");
    }
    updated
}

#[test]
fn exec_update_retargets_the_graph_at_new_buffers() {
    let dev = device();
    let mut rng = Rng::fresh("exec_update_retargets_the_graph_at_new_buffers");
    for mode in [LaunchParamMode::Inline, LaunchParamMode::Cached] {
        dev.set_launch_mode(mode);
        assert!(update_case(&dev, &mut rng), "{mode}: kernel-only graphs of one topology update");
    }
    // Upload-mode graphs hold mem-alloc/free and host memcpy nodes: the driver may refuse to
    // update them; either way the exec must stay correct.
    dev.set_launch_mode(LaunchParamMode::Upload);
    let updated = update_case(&dev, &mut rng);
    println!("upload-mode exec update accepted: {updated}");
}

#[test]
fn exec_update_refuses_another_topology() {
    let dev = device();
    let ch = Chain::new(&dev, &mut Rng::fresh("exec_update_refuses_another_topology"));
    let g1 = capture(&dev, || ch.run(&dev)).unwrap();
    let g2 = capture(&dev, || {
        ch.run(&dev)?;
        ch.run(&dev)
    })
    .unwrap();
    let mut exec = g1.instantiate().unwrap();
    assert!(exec.update(&g2).is_err());
    exec.replay().unwrap(); // the exec is still usable
    dev.synchronize().unwrap();
}

// ---- cuBLAS -------------------------------------------------------------------------------------

fn gemm_case(dev: &CudaDevice, dtype: DType, batch: usize, m: usize, n: usize, k: usize, rng: &mut Rng) {
    let es = dtype.size_in_bytes();
    // A: [batch, m, k] row-major; B stored as [n, k] and read transposed (x @ W^T), shared.
    let a = round_to(dtype, &rng.vec(batch * m * k, -1.0, 1.0));
    let w = round_to(dtype, &rng.vec(n * k, -1.0, 1.0));
    let up = |v: &[f32]| {
        let h = HostTensor::from_f32_as(&[v.len()], v, dtype);
        let b = dev.alloc(h.data.len()).unwrap();
        dev.htod(&h.data, &b, 0).unwrap();
        b
    };
    let (da, dw) = (up(&a), up(&w));
    let dc = dev.alloc_zeroed(batch * m * n * es).unwrap();
    let dims = MatmulDims {
        batch,
        m,
        n,
        k,
        lhs: MatOperand { offset: 0, batch_stride: m * k, row_stride: k, col_stride: 1 },
        rhs: MatOperand { offset: 0, batch_stride: 0, row_stride: 1, col_stride: k },
        dst: MatOperand { offset: 0, batch_stride: m * n, row_stride: n, col_stride: 1 },
    };
    dev.blas().gemm(dtype, &dims, da.ptr(), dw.ptr(), dc.ptr()).unwrap();
    let got_bytes = download_bytes(dev, &dc);
    let got = HostTensor { dtype, dims: vec![batch * m * n], data: got_bytes.clone() }.to_f32();
    for bi in 0..batch {
        for i in 0..m {
            for j in 0..n {
                let (mut s, mut mag) = (0f64, 0f64);
                for l in 0..k {
                    let p = a[bi * m * k + i * k + l] as f64 * w[j * k + l] as f64;
                    s += p;
                    mag += p.abs();
                }
                let g = got[bi * m * n + i * n + j] as f64;
                let tol = match dtype {
                    DType::F32 => 1e-5 * mag + 1e-6,
                    _ => 8e-3 * s.abs() + 1e-4 * mag + 1e-5,
                };
                assert!((g - s).abs() <= tol, "{dtype} gemm [{bi},{i},{j}] = {g}, reference {s} (tol {tol:e})");
            }
        }
    }
    // Captured: kernel nodes only (the workspace is set, nothing is allocated), same bits.
    dev.memset_zero(&dc, 0, dc.bytes()).unwrap();
    let g = capture(dev, || dev.blas().gemm(dtype, &dims, da.ptr(), dw.ptr(), dc.ptr())).unwrap();
    let audit = g.audit();
    assert!(audit.kernel >= 1 && audit.mem_alloc == 0 && audit.memcpy == 0, "{dtype} gemm graph: {audit}");
    g.instantiate().unwrap().replay().unwrap();
    dev.synchronize().unwrap();
    assert_eq!(download_bytes(dev, &dc), got_bytes, "{dtype} gemm replay");
}

#[test]
fn gemm_matches_the_reference_and_captures_without_allocations() {
    let dev = device();
    let mut rng = Rng::fresh("gemm_matches_the_reference_and_captures_without_allocations");
    gemm_case(&dev, DType::F32, 3, 33, 47, 65, &mut rng);
    gemm_case(&dev, DType::BF16, 2, 1, 96, 128, &mut rng); // decode-shaped: m = 1
    gemm_case(&dev, DType::F16, 1, 17, 64, 40, &mut rng);
}

// ---- memory, counters, bench --------------------------------------------------------------------

#[test]
fn copies_round_trip_through_small_staging_in_chunks() {
    let cfg = DeviceConfig { staging_bytes: 4096, ..DeviceConfig::default() };
    let dev = CudaDevice::with_config(0, cfg).unwrap();
    let mut rng = Rng::fresh("copies_round_trip_through_small_staging_in_chunks");
    let data: Vec<u8> = (0..50_001).map(|_| rng.next_u64() as u8).collect();
    let buf = dev.alloc_zeroed(60_000).unwrap();
    assert!(download_bytes(&dev, &buf).iter().all(|&b| b == 0), "alloc_zeroed is zero");
    dev.htod(&data, &buf, 999).unwrap();
    let mut back = vec![0u8; data.len()];
    dev.dtoh(&buf, 999, &mut back).unwrap();
    assert_eq!(back, data);
    assert!(dev.htod(&data, &buf, 10_000).is_err(), "out-of-range copies are refused");
}

#[test]
fn launch_stats_count_every_mode() {
    let dev = device();
    let ch = Chain::new(&dev, &mut Rng::fresh("launch_stats_count_every_mode"));
    for mode in LaunchParamMode::ALL {
        dev.set_launch_mode(mode);
        let before = dev.launch_stats();
        ch.run(&dev).unwrap();
        let s = dev.launch_stats().since(&before);
        assert_eq!(s.kernels, STRIDED_OPS as u64 + 1, "{mode}");
        let strided = match mode {
            LaunchParamMode::Inline => s.inline - 1,
            LaunchParamMode::Cached => s.cached,
            LaunchParamMode::Upload => s.upload,
        };
        assert_eq!(strided, STRIDED_OPS as u64, "{mode}: {s:?}");
        assert_eq!(s.bytes_uploaded > 0, mode == LaunchParamMode::Upload, "{mode}: {s:?}");
    }
    dev.synchronize().unwrap();
}

#[test]
fn launch_bench_runs_and_every_mode_agrees() {
    let dev = device();
    let cfg = LaunchBenchConfig { ops: 16, warmup: 2, reps: 5, ..LaunchBenchConfig::default() };
    let report = bench_launch(&dev, cfg).unwrap();
    println!("{}", report.to_table());
    assert_eq!(report.rows.len(), 3);
    assert!(report.all_match(), "{}", report.to_table());
    for r in &report.rows {
        assert!(r.eager_us_per_op > 0.0 && r.graph_us_per_op > 0.0);
        match r.mode {
            LaunchParamMode::Upload => assert_eq!(r.nodes.total(), 4 * 16, "{}", r.nodes),
            _ => assert!(r.nodes.kernels_only() && r.nodes.kernel == 16, "{}", r.nodes),
        }
    }
    assert!(report.to_json().contains("\"bench\":\"launch\""));
    assert_eq!(dev.launch_mode(), LaunchParamMode::Inline, "the bench restores the mode");
}

/// The full launch benchmark (default config) for `.gpu/run.sh` when the CLI has no
/// `encore bench launch`: `graph --ignored --exact launch_bench_full --nocapture`.
#[test]
#[ignore = "a benchmark: run it explicitly"]
fn launch_bench_full() {
    let dev = device();
    let report = bench_launch(&dev, LaunchBenchConfig::default()).unwrap();
    println!("{}", report.to_table());
    println!("{}", report.to_json());
    assert!(report.all_match(), "a replay or a mode gave different bits:\n{}", report.to_table());
}

/// cuBLAS GEMMs at Llama-3.2-1B decode shapes (x @ W^T, bf16), captured one by one: none
/// may touch the host (no memcpy, alloc or free node). cuBLAS does add a memset node for
/// its split-K LM-head kernel (N = 128256), which is why decode steps of M <= 8 rows take
/// gemv.cu for the LM head (and for the projections at M <= 2); the memset shapes are printed.
#[test]
fn decode_shaped_cublas_gemms_capture_without_host_nodes() {
    let dev = device();
    for m in [1usize, 8, 16, 64] {
        for (n, k) in [(3072usize, 2048usize), (2048, 2048), (16384, 2048), (2048, 8192), (128256, 2048)] {
            let es = 2;
            let a = dev.alloc_zeroed(m * k * es).unwrap();
            let w = dev.alloc_zeroed(n * k * es).unwrap();
            let c = dev.alloc_zeroed(m * n * es).unwrap();
            let dims = MatmulDims {
                batch: 1,
                m,
                n,
                k,
                lhs: MatOperand { offset: 0, batch_stride: 0, row_stride: k, col_stride: 1 },
                rhs: MatOperand { offset: 0, batch_stride: 0, row_stride: 1, col_stride: k },
                dst: MatOperand { offset: 0, batch_stride: 0, row_stride: n, col_stride: 1 },
            };
            dev.blas().gemm(DType::BF16, &dims, a.ptr(), w.ptr(), c.ptr()).unwrap();
            let g = capture(&dev, || dev.blas().gemm(DType::BF16, &dims, a.ptr(), w.ptr(), c.ptr())).unwrap();
            let audit = g.audit();
            assert_eq!(
                (audit.memcpy, audit.mem_alloc, audit.mem_free, audit.other),
                (0, 0, 0, 0),
                "m={m} n={n} k={k}: {audit}"
            );
            if !audit.kernels_only() {
                eprintln!("cuBLAS m={m} n={n} k={k}: {audit}");
            }
        }
    }
}
