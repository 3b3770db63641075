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
//! One capture per device at a time: `capture` claims the device's capturing flag with a
//! compare-exchange, so a second thread starting one meanwhile gets `CaptureViolation` and
//! leaves the first's capture rules and pool blocks alone.
//!
//! What a graph keeps alive (`CaptureKeep`, shared by the graph and every exec made from it):
//! the ParamCache pins of the entries its kernels read, the pool blocks released during the
//! capture and those handed out during it and released later (its kernels may still address
//! them), and the host words of upload-mode memcpy nodes (every replay copies from them
//! again). Buffers allocated before the capture and used by it stay the caller's to keep
//! alive while the graph may replay.
//!
//! Neither `Graph` nor `GraphExec` is `Sync`: the CUDA docs ("Graph object thread safety")
//! say graph objects are not internally synchronised, read-only-looking calls included, so
//! a handle is used by one thread at a time (it may move between threads: `Send`).

use std::sync::{Arc, Weak};

use std::time::Instant;

use cudarc::driver::sys;

use crate::alloc::{Block, CaptureId};
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
    /// The driver could not list the nodes (see `Graph::try_audit` for why): the counts
    /// are not the graph's, and `kernels_only` is false.
    pub failed: bool,
}

impl NodeAudit {
    pub fn total(&self) -> usize {
        self.kernel + self.memcpy + self.memset + self.mem_alloc + self.mem_free + self.other
    }

    /// True when every node is a kernel (what a decode graph must audit to); never for a
    /// failed audit.
    pub fn kernels_only(&self) -> bool {
        !self.failed && self.total() == self.kernel
    }
}

impl std::fmt::Display for NodeAudit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.failed {
            return write!(f, "audit failed (the driver could not list the nodes)");
        }
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
    /// The pool's id of the capture: blocks it handed out and that were released after it
    /// ended are held under it (see `Pool::release`) and come back with `blocks`.
    capture_id: CaptureId,
    blocks: Vec<Block>,
    _words: Vec<Box<[u32]>>,
    pins: Pins,
}

impl Drop for CaptureKeep {
    fn drop(&mut self) {
        let blocks = std::mem::take(&mut self.blocks);
        match self.dev.upgrade() {
            Some(inner) => inner.pool.return_graph_blocks(self.capture_id, blocks),
            // Only the device's own drop (it drains its retired keeps, context current,
            // stream synced) can drop a keep after the last device handle: free directly
            // (the late-released blocks go with `Pool::forget_graphs` there).
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
    capture_id: CaptureId,
    /// This capture holds the device's capturing flag (claimed before anything else).
    flag_held: bool,
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
        if std::mem::take(&mut self.flag_held) {
            self.dev.end_capturing();
        }
        let id = self.capture_id;
        let blocks = if std::mem::take(&mut self.pool_open) { self.dev.0.pool.end_capture(id) } else { Vec::new() };
        let words = std::mem::take(&mut *self.dev.0.captured_words.lock().unwrap_or_else(|e| e.into_inner()));
        let pins = self.scope.take().map(|s| s.finish()).unwrap_or_default();
        let keep = CaptureKeep { dev: self.dev.downgrade(), capture_id: id, blocks, _words: words, pins };
        Ended { graph, status, keep }
    }
}

impl Drop for OpenCapture<'_> {
    fn drop(&mut self) {
        if self.stream_open || self.pool_open || self.flag_held {
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
    // The claim comes first and is atomic: a loser returns here having touched nothing.
    if !dev.try_begin_capturing() {
        return Err(CudaError::capture("a nested capture (or one started by another thread)"));
    }
    let mut open =
        OpenCapture { dev, scope: None, stream_open: false, pool_open: false, capture_id: 0, flag_held: true };
    dev.bind()?; // on error `open` drops: the flag is released
    let t0 = Instant::now();
    open.capture_id = dev.0.pool.begin_capture()?;
    open.pool_open = true;
    open.scope = Some(dev.param_cache().begin_pin_scope());
    // SAFETY: our stream is valid and not capturing (we hold the flag); thread-local mode makes
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

// SAFETY: a CUgraph may be used from any thread, one at a time (the CUDA docs: graph objects
// are not internally synchronised). Not `Sync`, so no two threads call into the same graph
// at once; it is destroyed once, in Drop.
unsafe impl Send for Graph {}

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

    /// Count the nodes by type; a driver failure gives an audit with `failed` set (never an
    /// empty audit that would read as "kernels only"), and the error is surfaced by the next
    /// `synchronize`. Prefer [`Graph::try_audit`], which returns the error.
    pub fn audit(&self) -> NodeAudit {
        self.try_audit().unwrap_or_else(|e| {
            self.dev.defer(e);
            NodeAudit { failed: true, ..NodeAudit::default() }
        })
    }

    /// Count the nodes by type (`cuGraphGetNodes` + `cuGraphNodeGetType`), or the driver
    /// error that prevented it.
    pub fn try_audit(&self) -> Result<NodeAudit, CudaError> {
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
        let mut exec = GraphExec { exec: raw, keep: self.keep.clone(), dev: self.dev.clone(), instantiate_ms: 0.0 };
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
    /// The keep of the graph it was made from, or of the graph it was last updated to
    /// (the keeps it replaced are retired behind the stream).
    keep: Arc<CaptureKeep>,
    dev: CudaDevice,
    instantiate_ms: f64,
}

// SAFETY: a CUgraphExec may be launched from any thread, one at a time (the CUDA docs say
// graph objects, executable ones included, are not internally synchronised: no `Sync`);
// `update` takes &mut self, and the handle is destroyed once, in Drop.
unsafe impl Send for GraphExec {}

impl GraphExec {
    /// Instantiate + upload wall time, in milliseconds.
    pub fn instantiate_ms(&self) -> f64 {
        self.instantiate_ms
    }

    /// Queue one replay on the device stream: `cuGraphLaunch` and nothing else.
    pub fn replay(&self) -> Result<(), CudaError> {
        self.dev.bind()?;
        // SAFETY: the exec is alive and everything it references is kept alive by `keep`
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
        // Replays queued before the update may still read the old graph's keep: it goes
        // when the stream has passed them, so per-step updates do not pile up keeps.
        if !Arc::ptr_eq(&self.keep, &g.keep) {
            let old = std::mem::replace(&mut self.keep, g.keep.clone());
            self.dev.retire(Box::new(old));
        }
        Ok(())
    }

    /// Whether this exec holds `g`'s resources (it was made from `g` or last updated to it).
    pub fn holds(&self, g: &Graph) -> bool {
        Arc::ptr_eq(&self.keep, &g.keep)
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
        self.dev.retire(Box::new(self.keep.clone()));
    }
}

impl std::fmt::Debug for GraphExec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphExec").field("instantiate_ms", &self.instantiate_ms).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_audit_never_reads_as_kernels_only() {
        let failed = NodeAudit { failed: true, ..NodeAudit::default() };
        assert!(!failed.kernels_only(), "an empty, failed audit is not a clean decode graph");
        assert!(failed.to_string().contains("audit failed"), "{failed}");
        let clean = NodeAudit { kernel: 3, ..NodeAudit::default() };
        assert!(clean.kernels_only());
        assert!(!NodeAudit { kernel: 3, memcpy: 1, ..NodeAudit::default() }.kernels_only());
    }

    #[test]
    fn graph_handles_are_send_but_not_sync() {
        fn send<T: Send>() {}
        send::<Graph>();
        send::<GraphExec>();
        // No `Sync` impl: the const asserts below fail to compile if one is added.
        trait NotSync {
            const OK: bool = true;
        }
        impl<T: ?Sized> NotSync for T {}
        struct Probe<T: ?Sized>(std::marker::PhantomData<T>);
        #[allow(dead_code)]
        impl<T: ?Sized + Sync> Probe<T> {
            const OK: bool = false;
        }
        const { assert!(Probe::<Graph>::OK, "Graph must not be Sync") };
        const { assert!(Probe::<GraphExec>::OK, "GraphExec must not be Sync") };
    }
}
