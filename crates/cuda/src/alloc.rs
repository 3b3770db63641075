//! The caching device allocator: size-class free lists over blocks that come from the
//! driver once and are reused forever (until `trim`). What it guarantees:
//!
//! - While the stream is capturing it never calls the driver: a capture-time allocation is
//!   served from the free lists or fails with `CaptureViolation { op: "allocation" }`.
//! - A block released while the stream is capturing may be referenced by the graph being
//!   captured, so it does not go back to the free lists: the capture collects it and the
//!   graph hands it back when the graph (and every exec made from it) is dropped.
//! - A block handed out while a capture is open may be addressed by that graph's kernels
//!   too: when it is released after the capture ended it goes to that graph, not to the
//!   free lists, and comes back with the graph's other blocks.
//! - One capture at a time: `begin_capture` refuses a second one (atomically, under the
//!   pool's lock), so a losing thread never ends or steals the winner's capture.
//! - Reuse is stream-ordered: the device has one stream, so a block released after queuing
//!   work and handed out again is only touched by work queued later on the same stream.
//!   Returning blocks to the driver (`trim`) needs the stream idle: the caller syncs first.
//!
//! The driver side is the [`RawAlloc`] trait, so the pool logic is tested on the CPU.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::CudaError;

/// Smallest block handed out; also the granularity of small classes.
pub const MIN_BLOCK: usize = 512;
/// Above this, sizes are rounded to 2 MiB only (weights, KV cache: allocated once).
pub const LARGE_BLOCK: usize = 64 << 20;
const LARGE_GRANULE: usize = 2 << 20;

/// The size class (block size) serving a request of `bytes`: at least `MIN_BLOCK`; up to
/// `LARGE_BLOCK`, four classes per power of two (at most 25% waste); above it, 2 MiB steps.
pub fn size_class(bytes: usize) -> usize {
    if bytes <= MIN_BLOCK {
        MIN_BLOCK
    } else if bytes > LARGE_BLOCK {
        bytes.next_multiple_of(LARGE_GRANULE)
    } else {
        let p = bytes.next_power_of_two();
        bytes.next_multiple_of(p / 8)
    }
}

/// Where blocks come from. `alloc` returns `Ok(None)` when the device is out of memory (the
/// pool then trims its cache and retries once).
pub trait RawAlloc: Send + Sync {
    fn alloc(&self, bytes: usize) -> Result<Option<u64>, CudaError>;
    fn free(&self, ptr: u64) -> Result<(), CudaError>;
}

/// One block of a size class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    pub ptr: u64,
    pub class: usize,
}

/// Allocator counters (bytes are block sizes, i.e. after rounding).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Blocks obtained from the driver.
    pub driver_allocs: u64,
    /// Allocations served from the free lists.
    pub reuses: u64,
    /// Bytes currently held from the driver (in use + cached + held by graphs).
    pub reserved_bytes: usize,
    /// Bytes handed out and not yet released.
    pub in_use_bytes: usize,
    /// Bytes on the free lists.
    pub cached_bytes: usize,
    /// Bytes released during captures and kept until their graphs drop.
    pub graph_held_bytes: usize,
}

/// Which capture (and so which graph) a block belongs to.
pub type CaptureId = u64;

/// The open capture: blocks released during it, and blocks handed out during it that are
/// still in use (the graph may address both).
struct OpenCapture {
    id: CaptureId,
    retired: Vec<Block>,
    handed_out: Vec<u64>,
}

#[derive(Default)]
struct State {
    free: HashMap<usize, Vec<u64>>,
    /// `Some` while a capture is open.
    capture: Option<OpenCapture>,
    next_capture: CaptureId,
    /// Blocks handed out during a finished capture and not yet released: ptr -> capture.
    graph_owned: HashMap<u64, CaptureId>,
    /// Blocks of `graph_owned` released after their capture ended, until the graph drops.
    released_late: HashMap<CaptureId, Vec<Block>>,
    stats: PoolStats,
}

pub struct Pool<R: RawAlloc> {
    raw: R,
    state: Mutex<State>,
}

impl<R: RawAlloc> Pool<R> {
    pub fn new(raw: R) -> Self {
        Pool { raw, state: Mutex::new(State::default()) }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A block of at least `bytes`. `capturing`: free lists only. `make_idle` is called
    /// (then the cache trimmed) before the one retry after an out-of-memory.
    pub fn alloc(
        &self,
        bytes: usize,
        capturing: bool,
        make_idle: impl FnOnce() -> Result<(), CudaError>,
    ) -> Result<Block, CudaError> {
        let class = size_class(bytes);
        {
            let mut s = self.lock();
            if let Some(ptr) = s.free.get_mut(&class).and_then(Vec::pop) {
                s.stats.reuses += 1;
                s.stats.cached_bytes -= class;
                s.stats.in_use_bytes += class;
                if let Some(c) = s.capture.as_mut() {
                    c.handed_out.push(ptr);
                }
                return Ok(Block { ptr, class });
            }
        }
        if capturing {
            return Err(CudaError::capture("allocation"));
        }
        let ptr = match self.raw.alloc(class)? {
            Some(p) => p,
            None => {
                make_idle()?;
                self.trim()?;
                self.raw.alloc(class)?.ok_or_else(|| CudaError::Driver {
                    call: "cuMemAlloc_v2",
                    msg: format!("out of device memory allocating {class} bytes"),
                })?
            }
        };
        let mut s = self.lock();
        s.stats.driver_allocs += 1;
        s.stats.reserved_bytes += class;
        s.stats.in_use_bytes += class;
        Ok(Block { ptr, class })
    }

    /// Give a block back: to the free lists, or to the graph that may address it (the open
    /// capture's, or the finished capture's that handed it out).
    pub fn release(&self, b: Block) {
        let mut s = self.lock();
        s.stats.in_use_bytes -= b.class;
        if let Some(c) = s.capture.as_mut() {
            c.handed_out.retain(|&p| p != b.ptr);
            c.retired.push(b);
            s.stats.graph_held_bytes += b.class;
        } else if let Some(id) = s.graph_owned.remove(&b.ptr) {
            s.released_late.entry(id).or_default().push(b);
            s.stats.graph_held_bytes += b.class;
        } else {
            s.free.entry(b.class).or_default().push(b.ptr);
            s.stats.cached_bytes += b.class;
        }
    }

    /// Start collecting the blocks the graph being captured may address. Refused while
    /// another capture is open (one stream, one capture).
    pub fn begin_capture(&self) -> Result<CaptureId, CudaError> {
        let mut s = self.lock();
        if s.capture.is_some() {
            return Err(CudaError::capture("a second capture while one is open"));
        }
        s.next_capture += 1;
        let id = s.next_capture;
        s.capture = Some(OpenCapture { id, retired: Vec::new(), handed_out: Vec::new() });
        Ok(id)
    }

    /// Stop collecting: the blocks released during capture `id` (the graph keeps them);
    /// blocks it handed out that are still in use will go to the graph when released.
    /// Ending a capture that is not the open one does nothing.
    pub fn end_capture(&self, id: CaptureId) -> Vec<Block> {
        let mut s = self.lock();
        match s.capture.take() {
            Some(c) if c.id == id => {
                for p in c.handed_out {
                    s.graph_owned.insert(p, id);
                }
                c.retired
            }
            other => {
                s.capture = other;
                Vec::new()
            }
        }
    }

    /// The graph of capture `id` was dropped (and the stream passed its replays): its blocks
    /// go back to the free lists, and blocks it handed out that are still in use will go
    /// there when released.
    pub fn return_graph_blocks(&self, id: CaptureId, blocks: Vec<Block>) {
        let mut s = self.lock();
        let late = s.released_late.remove(&id).unwrap_or_default();
        for b in blocks.into_iter().chain(late) {
            s.stats.graph_held_bytes -= b.class;
            s.stats.cached_bytes += b.class;
            s.free.entry(b.class).or_default().push(b.ptr);
        }
        s.graph_owned.retain(|_, owner| *owner != id);
    }

    /// Every graph is gone (the device is being dropped, its stream idle): what they held
    /// goes to the free lists, to be trimmed.
    pub fn forget_graphs(&self) {
        let ids: Vec<CaptureId> = self.lock().released_late.keys().copied().collect();
        for id in ids {
            self.return_graph_blocks(id, Vec::new());
        }
        self.lock().graph_owned.clear();
    }

    /// Return every cached block to the driver; the caller guarantees the stream is idle and
    /// not capturing. Returns the bytes released.
    pub fn trim(&self) -> Result<usize, CudaError> {
        let free = std::mem::take(&mut self.lock().free);
        let mut released = 0;
        let mut first_err = None;
        for (class, ptrs) in free {
            for p in ptrs {
                match self.raw.free(p) {
                    Ok(()) => released += class,
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
                let mut s = self.lock();
                s.stats.cached_bytes -= class;
                s.stats.reserved_bytes -= class;
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(released),
        }
    }

    pub fn stats(&self) -> PoolStats {
        self.lock().stats
    }
}

/// Blocks straight from `cuMemAlloc_v2` / `cuMemFree_v2` (the device's context must be current).
#[cfg(feature = "cuda")]
pub struct DriverAlloc;

#[cfg(feature = "cuda")]
impl RawAlloc for DriverAlloc {
    fn alloc(&self, bytes: usize) -> Result<Option<u64>, CudaError> {
        use cudarc::driver::sys;
        let mut p: sys::CUdeviceptr = 0;
        // SAFETY: `p` is a valid out-pointer; the device binds its context before any pool call.
        let r = unsafe { sys::cuMemAlloc_v2(&mut p, bytes) };
        if r == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
            return Ok(None);
        }
        crate::error::drv("cuMemAlloc_v2", r)?;
        Ok(Some(p))
    }

    fn free(&self, ptr: u64) -> Result<(), CudaError> {
        // SAFETY: `ptr` came from cuMemAlloc_v2 above and is on no free list any more (trim
        // took it off), and the caller made the stream idle, so no queued work uses it.
        crate::error::drv("cuMemFree_v2", unsafe { cudarc::driver::sys::cuMemFree_v2(ptr) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    /// Hands out fake addresses; runs out after `limit` bytes.
    #[derive(Default)]
    struct Fake {
        next: AtomicU64,
        live: AtomicUsize,
        limit: usize,
        frees: AtomicUsize,
        sizes: Mutex<HashMap<u64, usize>>,
    }

    impl RawAlloc for Fake {
        fn alloc(&self, bytes: usize) -> Result<Option<u64>, CudaError> {
            if self.live.load(Ordering::SeqCst) + bytes > self.limit {
                return Ok(None);
            }
            self.live.fetch_add(bytes, Ordering::SeqCst);
            let ptr = 0x1000_0000 + self.next.fetch_add(bytes as u64, Ordering::SeqCst);
            self.sizes.lock().unwrap().insert(ptr, bytes);
            Ok(Some(ptr))
        }
        fn free(&self, ptr: u64) -> Result<(), CudaError> {
            let bytes = self.sizes.lock().unwrap().remove(&ptr).expect("freeing a live block");
            self.live.fetch_sub(bytes, Ordering::SeqCst);
            self.frees.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    fn pool(limit: usize) -> Pool<Fake> {
        Pool::new(Fake { limit, ..Default::default() })
    }

    fn idle() -> Result<(), CudaError> {
        Ok(())
    }

    #[test]
    fn size_classes_cover_the_request_with_bounded_waste() {
        let mut prev = 0;
        for bytes in (1..5000).chain([65_537, 1 << 20, (1 << 20) + 1, 3 << 20, 100 << 20, (100 << 20) + 7]) {
            let c = size_class(bytes);
            assert!(c >= bytes && c >= MIN_BLOCK, "{bytes} -> {c}");
            assert!(c >= prev, "classes are monotonic");
            prev = c;
            if bytes > MIN_BLOCK && bytes <= LARGE_BLOCK {
                assert!(c * 4 <= bytes * 5 + 4 * MIN_BLOCK, "{bytes} -> {c}: over 25% waste");
                assert_eq!(c % 128, 0, "classes keep 128-byte alignment");
            }
        }
        assert_eq!(size_class(0), MIN_BLOCK);
        assert_eq!(size_class(600), 640);
        assert_eq!(size_class(1 << 20), 1 << 20);
        assert_eq!(size_class((100 << 20) + 7), (100 << 20) + LARGE_GRANULE);
    }

    #[test]
    fn released_blocks_are_reused_by_the_same_class_only() {
        let p = pool(1 << 30);
        let a = p.alloc(1000, false, idle).unwrap();
        p.release(a);
        let b = p.alloc(1001, false, idle).unwrap();
        assert_eq!(b, a, "same class: reused");
        let c = p.alloc(5000, false, idle).unwrap();
        assert_ne!(c.ptr, a.ptr);
        let s = p.stats();
        assert_eq!((s.driver_allocs, s.reuses), (2, 1));
        assert_eq!(s.in_use_bytes, size_class(1000) + size_class(5000));
    }

    #[test]
    fn capture_allocations_come_from_the_free_lists_or_fail() {
        let p = pool(1 << 30);
        let a = p.alloc(4096, false, idle).unwrap();
        p.release(a);
        let id = p.begin_capture().unwrap();
        assert_eq!(p.alloc(4096, true, idle).unwrap(), a);
        let err = p.alloc(8192, true, idle).unwrap_err();
        assert!(matches!(&err, CudaError::CaptureViolation { op } if op == "allocation"), "{err}");
        assert_eq!(p.stats().driver_allocs, 1, "no driver call while capturing");
        p.release(a);
        let held = p.end_capture(id);
        assert_eq!(held, vec![a], "a block released during capture stays with the graph");
        assert_ne!(p.alloc(4096, false, idle).unwrap(), a, "and is not handed out again meanwhile");
        assert_eq!(p.stats().graph_held_bytes, 4096);
        p.return_graph_blocks(id, held);
        assert_eq!(p.alloc(4096, false, idle).unwrap(), a);
        assert_eq!(p.stats().graph_held_bytes, 0);
    }

    #[test]
    fn a_block_handed_out_during_capture_and_released_after_stays_with_the_graph() {
        let p = pool(1 << 30);
        let a = p.alloc(4096, false, idle).unwrap();
        p.release(a);
        let id = p.begin_capture().unwrap();
        let b = p.alloc(4096, true, idle).unwrap(); // the graph's kernels write into b
        assert_eq!(b, a);
        assert!(p.end_capture(id).is_empty(), "b is still in use when the capture ends");
        p.release(b); // the caller drops its buffer; the graph still addresses b
        assert_eq!(p.stats().graph_held_bytes, 4096);
        let c = p.alloc(4096, false, idle).unwrap();
        assert_ne!(c, b, "b must not be handed out while the graph may replay");
        p.release(c);
        p.return_graph_blocks(id, Vec::new()); // the graph (and its execs) dropped
        assert_eq!(p.stats().graph_held_bytes, 0);
        let mut again = vec![p.alloc(4096, false, idle).unwrap(), p.alloc(4096, false, idle).unwrap()];
        again.sort_by_key(|x| x.ptr);
        assert!(again.contains(&b), "b is back on the free lists: {again:?}");
        again.into_iter().for_each(|x| p.release(x));
        // a block still in use when its graph drops goes to the free lists when released
        let id = p.begin_capture().unwrap();
        let d = p.alloc(4096, true, idle).unwrap();
        p.end_capture(id);
        p.return_graph_blocks(id, Vec::new());
        p.release(d);
        assert_eq!(p.stats().graph_held_bytes, 0);
        assert_eq!(p.alloc(4096, false, idle).unwrap(), d);
    }

    #[test]
    fn forget_graphs_returns_every_late_released_block_for_the_final_trim() {
        let p = pool(1 << 30);
        let a = p.alloc(4096, false, idle).unwrap();
        p.release(a);
        let id = p.begin_capture().unwrap();
        let b = p.alloc(4096, true, idle).unwrap();
        p.end_capture(id);
        p.release(b); // held for the graph, whose keep the dying device frees directly
        assert_eq!(p.stats().graph_held_bytes, 4096);
        p.forget_graphs();
        assert_eq!(p.stats().graph_held_bytes, 0);
        assert_eq!(p.trim().unwrap(), 4096, "the block is freed, not leaked");
    }

    #[test]
    fn only_one_capture_can_be_open_and_a_loser_leaves_the_winner_alone() {
        let p = std::sync::Arc::new(pool(1 << 30));
        let a = p.alloc(4096, false, idle).unwrap();
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (p, barrier) = (p.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    p.begin_capture().ok()
                })
            })
            .collect();
        let won: Vec<CaptureId> = handles.into_iter().filter_map(|h| h.join().unwrap()).collect();
        assert_eq!(won.len(), 1, "exactly one thread opens the capture");
        let err = p.begin_capture().unwrap_err();
        assert!(err.is_capture_violation(), "{err}");
        assert!(p.end_capture(won[0] + 100).is_empty(), "ending another capture does nothing");
        p.release(a); // still collected by the winner's open capture
        assert_eq!(p.end_capture(won[0]), vec![a]);
        assert!(p.begin_capture().is_ok(), "a new capture after the winner ended");
    }

    #[test]
    fn out_of_memory_trims_the_cache_and_retries_once() {
        let p = pool(3 * 4096);
        let a = p.alloc(4096, false, idle).unwrap();
        let b = p.alloc(4096, false, idle).unwrap();
        p.release(a);
        p.release(b);
        let _c = p.alloc(8192, false, idle).expect("trimmed two cached 4 KiB blocks");
        assert_eq!(p.raw.frees.load(Ordering::SeqCst), 2);
        assert_eq!(p.stats().cached_bytes, 0);
        let idled = std::cell::Cell::new(false);
        let err = p
            .alloc(1 << 20, false, || {
                idled.set(true);
                Ok(())
            })
            .unwrap_err();
        assert!(idled.get(), "the stream is made idle before blocks go back to the driver");
        assert!(err.to_string().contains("out of device memory"), "{err}");
    }
}
