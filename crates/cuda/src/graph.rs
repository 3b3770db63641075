//! CUDA graphs on the device's stream: `capture` records what a closure queues, `Graph::audit`
//! counts the nodes by type, `Graph::instantiate` makes a `GraphExec` (instantiated and
//! uploaded, so the first replay is not slow), `GraphExec::replay` is one `cuGraphLaunch`
//! and nothing else, and `GraphExec::update` re-targets an exec at a graph of the same
//! topology with other buffer addresses (`cuGraphExecUpdate`, no re-instantiation).
//!
//! Capture is in thread-local mode. While it runs, the device refuses allocation outside the
//! pool, HtoD/DtoH copies, synchronisation, module loads and ParamCache misses with
//! `CaptureViolation`; `capture` then ends the capture, destroys the partial graph and
//! returns the error, and the stream is usable again (also if the closure panics).
//!
//! What a graph keeps alive (`CaptureKeep`, shared by the graph and every exec made from it):
//! the ParamCache pins of the entries its kernels read, the pool blocks released during the
//! capture (its kernels may still address them), and the host words of upload-mode memcpy
//! nodes (every replay copies from them again). Buffers allocated before the capture and
//! used by it stay the caller's to keep alive while the graph may replay.

use std::sync::{Arc, Weak};

use std::time::Instant;

use cudarc::driver::sys;

use crate::alloc::Block;
use crate::device::{CudaDevice, Inner};
use crate::error::drv;
use crate::param_cache::Pins;
use crate::CudaError;

/// Nodes of a graph by type.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeAudit {
    pub kernel: usize,
    pub memcpy: usize,
    pub memset: usize,
    pub mem_alloc: usize,
    pub mem_free: usize,
    pub other: usize,
}

impl NodeAudit {
    pub fn total(&self) -> usize {
        self.kernel + self.memcpy + self.memset + self.mem_alloc + self.mem_free + self.other
    }

    /// True when every node is a kernel (what a decode graph must audit to).
    pub fn kernels_only(&self) -> bool {
        self.total() == self.kernel
    }
}

impl std::fmt::Display for NodeAudit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} nodes: {} kernel, {} memcpy, {} memset, {} alloc, {} free, {} other",
            self.total(),
            self.kernel,
            self.memcpy,
            self.memset,
            self.mem_alloc,
            self.mem_free,
            self.other
        )
    }
}

/// What must outlive every replay of a captured graph.
struct CaptureKeep {
    dev: Weak<Inner>,
    blocks: Vec<Block>,
    _words: Vec<Box<[u32]>>,
    pins: Pins,
}

impl Drop for CaptureKeep {
    fn drop(&mut self) {
        let blocks = std::mem::take(&mut self.blocks);
        match self.dev.upgrade() {
            Some(inner) => inner.pool.return_graph_blocks(blocks),
            // Only the device's own drop (it drains its retired keeps, context current,
            // stream synced) can drop a keep after the last device handle: free directly.
            None => {
                for b in blocks {
                    let _ = crate::alloc::RawAlloc::free(&crate::alloc::DriverAlloc, b.ptr);
                }
            }
        }
    }
}

/// An open capture: ends it (and hands back what it collected) on every path, including a
/// panic in the closure, so the stream never stays capturing.
struct OpenCapture<'a> {
    dev: &'a CudaDevice,
    scope: Option<crate::param_cache::PinScope>,
    /// The driver capture was begun and not yet ended.
    stream_open: bool,
    /// The pool collects released blocks for this capture.
    pool_open: bool,
}

/// What a finished capture produced.
struct Ended {
    graph: sys::CUgraph,
    status: Result<(), CudaError>,
    keep: CaptureKeep,
}

impl OpenCapture<'_> {
    fn end(&mut self) -> Ended {
        let mut graph = std::ptr::null_mut();
        let mut status = Ok(());
        if std::mem::take(&mut self.stream_open) {
            // SAFETY: we began this capture on this stream (thread-local mode, this thread);
            // `graph` is a valid out-pointer.
            status = drv("cuStreamEndCapture", unsafe { sys::cuStreamEndCapture(self.dev.stream(), &mut graph) });
        }
        self.dev.set_capturing(false);
        let blocks = if std::mem::take(&mut self.pool_open) { self.dev.0.pool.end_capture() } else { Vec::new() };
        let words = std::mem::take(&mut *self.dev.0.captured_words.lock().unwrap_or_else(|e| e.into_inner()));
        let pins = self.scope.take().map(|s| s.finish()).unwrap_or_default();
        Ended { graph, status, keep: CaptureKeep { dev: self.dev.downgrade(), blocks, _words: words, pins } }
    }
}

impl Drop for OpenCapture<'_> {
    fn drop(&mut self) {
        if self.stream_open || self.pool_open {
            // Unwinding or begin failed: nothing will replay what was captured.
            let ended = self.end();
            destroy_graph(ended.graph);
        }
    }
}

fn destroy_graph(g: sys::CUgraph) {
    if !g.is_null() {
        // SAFETY: a graph returned by cuStreamEndCapture, destroyed once.
        let _ = unsafe { sys::cuGraphDestroy(g) };
    }
}

/// Capture everything `f` queues on `dev`'s stream into a graph. On an error inside `f` (or
/// a capture the driver invalidated) the capture is ended, the partial graph destroyed and
/// the error returned; the device stays usable.
pub fn capture<F>(dev: &CudaDevice, f: F) -> Result<Graph, CudaError>
where
    F: FnOnce() -> Result<(), CudaError>,
{
    if dev.is_capturing() {
        return Err(CudaError::capture("a nested capture"));
    }
    dev.bind()?;
    let t0 = Instant::now();
    dev.0.pool.begin_capture();
    let mut open =
        OpenCapture { dev, scope: Some(dev.param_cache().begin_pin_scope()), stream_open: false, pool_open: true };
    dev.set_capturing(true);
    // SAFETY: our stream is valid and not capturing (checked above); thread-local mode makes
    // the driver refuse unsafe calls (sync allocs/copies) made by this thread meanwhile.
    drv("cuStreamBeginCapture_v2", unsafe {
        sys::cuStreamBeginCapture_v2(dev.stream(), sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
    })?; // on error `open` drops: capturing flag cleared, pool capture ended, pins released
    open.stream_open = true;

    let result = f();
    let ended = open.end();
    let graph = ended.graph;
    let keep = Arc::new(ended.keep);
    let outcome = result.and(ended.status).and_then(|_| {
        if graph.is_null() {
            Err(CudaError::Driver { call: "cuStreamEndCapture", msg: "the capture produced no graph".into() })
        } else {
            Ok(())
        }
    });
    match outcome {
        Ok(()) => Ok(Graph { graph, keep, dev: dev.clone(), capture_ms: t0.elapsed().as_secs_f64() * 1e3 }),
        Err(e) => {
            destroy_graph(graph);
            drop(keep); // nothing replays it: blocks go back to the pool, pins are released
            Err(e)
        }
    }
}

/// A captured graph (not yet executable).
pub struct Graph {
    graph: sys::CUgraph,
    keep: Arc<CaptureKeep>,
    dev: CudaDevice,
    capture_ms: f64,
}

// SAFETY: a CUgraph may be used from any thread; Graph's methods take &self and only read it
// (the driver serialises graph queries), and it is destroyed once, in Drop.
unsafe impl Send for Graph {}
// SAFETY: see Send.
unsafe impl Sync for Graph {}

impl Graph {
    /// Wall time of the capture (begin to end, including the closure), in milliseconds.
    pub fn capture_ms(&self) -> f64 {
        self.capture_ms
    }

    /// ParamCache entries this graph pins (cached mode).
    pub fn pinned_entries(&self) -> usize {
        self.keep.pins.len()
    }

    /// The raw handle (for debugging tools such as `cuGraphDebugDotPrint`).
    pub fn raw(&self) -> sys::CUgraph {
        self.graph
    }

    /// Count the nodes by type (`cuGraphGetNodes` + `cuGraphNodeGetType`).
    pub fn audit(&self) -> NodeAudit {
        self.try_audit().unwrap_or_else(|e| {
            self.dev.defer(e);
            NodeAudit::default()
        })
    }

    fn try_audit(&self) -> Result<NodeAudit, CudaError> {
        let mut n = 0usize;
        // SAFETY: valid graph; a null node array asks for the count only.
        drv("cuGraphGetNodes", unsafe { sys::cuGraphGetNodes(self.graph, std::ptr::null_mut(), &mut n) })?;
        let mut nodes = vec![std::ptr::null_mut(); n];
        // SAFETY: `nodes` has room for `n` handles; the driver writes at most `n`.
        drv("cuGraphGetNodes", unsafe { sys::cuGraphGetNodes(self.graph, nodes.as_mut_ptr(), &mut n) })?;
        let mut a = NodeAudit::default();
        for &node in &nodes[..n] {
            let mut ty = 0u32;
            // SAFETY: the node belongs to this graph; CUgraphNodeType is a repr(u32) enum, and
            // writing it into a u32 keeps an unknown future value from becoming an invalid enum.
            drv("cuGraphNodeGetType", unsafe {
                sys::cuGraphNodeGetType(node, &mut ty as *mut u32 as *mut sys::CUgraphNodeType)
            })?;
            use sys::CUgraphNodeType as T;
            match ty {
                t if t == T::CU_GRAPH_NODE_TYPE_KERNEL as u32 => a.kernel += 1,
                t if t == T::CU_GRAPH_NODE_TYPE_MEMCPY as u32 => a.memcpy += 1,
                t if t == T::CU_GRAPH_NODE_TYPE_MEMSET as u32 => a.memset += 1,
                t if t == T::CU_GRAPH_NODE_TYPE_MEM_ALLOC as u32 => a.mem_alloc += 1,
                t if t == T::CU_GRAPH_NODE_TYPE_MEM_FREE as u32 => a.mem_free += 1,
                _ => a.other += 1,
            }
        }
        Ok(a)
    }

    /// Instantiate, then `cuGraphUpload` so that the first replay is not slow.
    pub fn instantiate(&self) -> Result<GraphExec, CudaError> {
        if self.dev.is_capturing() {
            return Err(CudaError::capture("graph instantiation"));
        }
        self.dev.bind()?;
        let t0 = Instant::now();
        let mut raw = std::ptr::null_mut();
        // SAFETY: valid graph and out-pointer; flags 0 (upload-mode graphs free what they
        // allocate, so no auto-free-on-launch is needed).
        drv("cuGraphInstantiateWithFlags", unsafe { sys::cuGraphInstantiateWithFlags(&mut raw, self.graph, 0) })?;
        let mut exec =
            GraphExec { exec: raw, keeps: vec![self.keep.clone()], dev: self.dev.clone(), instantiate_ms: 0.0 };
        // SAFETY: `exec` was just instantiated; the stream is ours and not capturing. On
        // error `exec` drops and destroys it.
        drv("cuGraphUpload", unsafe { sys::cuGraphUpload(exec.exec, self.dev.stream()) })?;
        exec.instantiate_ms = t0.elapsed().as_secs_f64() * 1e3;
        Ok(exec)
    }
}

impl Drop for Graph {
    fn drop(&mut self) {
        let _ = self.dev.bind();
        destroy_graph(self.graph);
    }
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Graph").field("audit", &self.audit()).field("capture_ms", &self.capture_ms).finish()
    }
}

/// An instantiated graph; replay it as often as needed.
pub struct GraphExec {
    exec: sys::CUgraphExec,
    /// The keep of the graph it was made from, plus those of graphs it was updated to.
    keeps: Vec<Arc<CaptureKeep>>,
    dev: CudaDevice,
    instantiate_ms: f64,
}

// SAFETY: a CUgraphExec may be launched from any thread; `update` takes &mut self, and the
// handle is destroyed once, in Drop.
unsafe impl Send for GraphExec {}
// SAFETY: `replay` only reads the handle; the driver serialises launches on the stream.
unsafe impl Sync for GraphExec {}

impl GraphExec {
    /// Instantiate + upload wall time, in milliseconds.
    pub fn instantiate_ms(&self) -> f64 {
        self.instantiate_ms
    }

    /// Queue one replay on the device stream: `cuGraphLaunch` and nothing else.
    pub fn replay(&self) -> Result<(), CudaError> {
        self.dev.bind()?;
        // SAFETY: the exec is alive and everything it references is kept alive by `keeps`
        // (and by the caller for its own buffers).
        drv("cuGraphLaunch", unsafe { sys::cuGraphLaunch(self.exec, self.dev.stream()) })
    }

    /// Point this exec at `g`'s parameters (buffer addresses, metadata) when `g` has the
    /// same topology as the graph it was made from; no re-instantiation.
    pub fn update(&mut self, g: &Graph) -> Result<(), CudaError> {
        self.dev.bind()?;
        let mut info = std::mem::MaybeUninit::<sys::CUgraphExecUpdateResultInfo>::zeroed();
        // SAFETY: both handles alive; `info` is a valid out-pointer.
        let r = unsafe { sys::cuGraphExecUpdate_v2(self.exec, g.graph, info.as_mut_ptr()) };
        if r != sys::CUresult::CUDA_SUCCESS {
            // SAFETY: `result` is the first field, a repr(u32) enum; read it as u32 so an
            // unknown value stays an integer.
            let code = unsafe { *(info.as_ptr() as *const u32) };
            let why = drv("cuGraphExecUpdate_v2", r).err().map(|e| e.to_string()).unwrap_or_default();
            return Err(CudaError::Driver {
                call: "cuGraphExecUpdate_v2",
                msg: format!("{why}; update result {code} (the topology or node kinds differ)"),
            });
        }
        // Replays queued before the update may still read the old graph's keep: hold it too.
        self.keeps.push(g.keep.clone());
        Ok(())
    }
}

impl Drop for GraphExec {
    fn drop(&mut self) {
        let _ = self.dev.bind();
        // SAFETY: destroyed once; the driver frees an exec that is still running when it
        // completes.
        let _ = unsafe { sys::cuGraphExecDestroy(self.exec) };
        // Replays may still be queued: the host words and blocks they use go when the
        // stream has passed them.
        for k in self.keeps.drain(..) {
            self.dev.retire(Box::new(k));
        }
    }
}

impl std::fmt::Debug for GraphExec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphExec").field("instantiate_ms", &self.instantiate_ms).finish()
    }
}
