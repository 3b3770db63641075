//! The CUDA device: one context (the primary context), ONE non-blocking compute stream, the
//! kernel fatbin loaded once into the typed kernel table, the caching allocator, pinned
//! staging for host<->device copies, the ParamCache arena, cuBLAS(Lt) with an explicit
//! workspace, and the launch-parameter modes (`prepare_meta`).
//!
//! What it is not: there is no event tracking per buffer (cudarc's safe layer records events
//! behind every access; here ordering comes from the single stream), no implicit
//! synchronisation, and no allocation or copy while the stream is capturing (those return
//! `CaptureViolation`). Use one device from one thread at a time: it is `Send + Sync` so it
//! can move between threads, but a capture records whatever any thread queues on the stream.
//! Starting a capture claims the device atomically (`try_begin_capturing`, a
//! compare-exchange): of two threads that start one at once, the second gets
//! `CaptureViolation` and touches nothing of the first's.

use std::any::Any;
use std::collections::VecDeque;
use std::ffi::{c_void, CString};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use cudarc::driver::sys;
use encore_tensor::StridedMeta;

use crate::alloc::{Block, DriverAlloc, Pool, PoolStats};
use crate::blas::Blas;
use crate::error::drv;
use crate::kernels::{Kernel, Kernels};
use crate::modes::{info_words_into, LaunchCounters, LaunchParamMode, LaunchStats, MAX_INFO_WORDS};
use crate::param_cache::{ArenaUpload, ParamCache};
use crate::CudaError;

/// Sizes fixed at device creation.
#[derive(Clone, Debug)]
pub struct DeviceConfig {
    /// Device arena of the ParamCache (cached launch-parameter mode).
    pub param_cache_bytes: usize,
    /// Each of the two pinned host staging buffers for HtoD/DtoH copies (larger copies are
    /// chunked and double-buffered).
    pub staging_bytes: usize,
    /// cuBLAS/cuBLASLt workspace, set explicitly so that capture never allocates one.
    pub blas_workspace_bytes: usize,
    /// Launch-parameter mode at start (switchable with `set_launch_mode`).
    pub launch_mode: LaunchParamMode,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig {
            param_cache_bytes: 4 << 20,
            staging_bytes: 4 << 20,
            blas_workspace_bytes: 32 << 20,
            launch_mode: LaunchParamMode::Inline,
        }
    }
}

/// A handle on one GPU; cheap to clone.
#[derive(Clone)]
pub struct CudaDevice(pub(crate) Arc<Inner>);

/// Anything that must stay alive until the stream has passed the work queued so far.
pub(crate) type Keep = Box<dyn Any + Send>;

/// Retire one `Keep` batch (record one event) every this many items.
const RETIRE_BATCH: usize = 256;

// Field order is drop order: everything that needs the context drops before `raw`.
pub(crate) struct Inner {
    ordinal: usize,
    name: String,
    capturing: AtomicBool,
    mode: AtomicU8,
    /// Launch with programmatic stream serialization (see `set_pdl`).
    pdl: AtomicBool,
    counters: LaunchCounters,
    kernels: Kernels,
    cache: ParamCache,
    pub(crate) pool: Pool<DriverAlloc>,
    /// Upload-mode host words queued while capturing; the graph takes them.
    pub(crate) captured_words: Mutex<Vec<Box<[u32]>>>,
    retired: Mutex<Retired>,
    /// First error from a `Drop` (which cannot return one), surfaced by `synchronize`.
    deferred: Mutex<Option<CudaError>>,
    staging: Mutex<Staging>,
    blas: Blas,
    _arena: RawDeviceMem,
    raw: Raw,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl CudaDevice {
    /// Context, stream, module, kernel table, allocator, staging, ParamCache arena, cuBLAS(Lt).
    pub fn new(ordinal: usize) -> Result<Self, CudaError> {
        Self::with_config(ordinal, DeviceConfig::default())
    }

    pub fn with_config(ordinal: usize, cfg: DeviceConfig) -> Result<Self, CudaError> {
        // SAFETY: only probes whether libcuda can be opened; it loads nothing into our state.
        if !unsafe { sys::is_culib_present() } {
            return Err(CudaError::Unavailable("libcuda.so (the NVIDIA driver) was not found".into()));
        }
        // SAFETY: cuInit takes no pointers; flags must be 0.
        drv("cuInit", unsafe { sys::cuInit(0) })?;
        let mut count = 0;
        // SAFETY: `count` is a valid out-pointer.
        drv("cuDeviceGetCount", unsafe { sys::cuDeviceGetCount(&mut count) })?;
        if ordinal >= count.max(0) as usize {
            return Err(CudaError::Unavailable(format!("no CUDA device {ordinal} ({count} found)")));
        }
        let mut cu_device = 0;
        // SAFETY: valid out-pointer, ordinal checked against the device count.
        drv("cuDeviceGet", unsafe { sys::cuDeviceGet(&mut cu_device, ordinal as i32) })?;
        let name = device_name(cu_device)?;

        let mut raw =
            Raw { cu_device, ctx: std::ptr::null_mut(), stream: std::ptr::null_mut(), module: std::ptr::null_mut() };
        // SAFETY: valid out-pointer and device handle; `Raw::drop` releases what is retained.
        drv("cuDevicePrimaryCtxRetain", unsafe { sys::cuDevicePrimaryCtxRetain(&mut raw.ctx, cu_device) })?;
        raw.bind()?;
        // SAFETY: valid out-pointer; the context is current. Non-blocking: no implicit
        // synchronisation with the legacy default stream (which would break capture).
        drv("cuStreamCreate", unsafe {
            sys::cuStreamCreate(&mut raw.stream, sys::CUstream_flags::CU_STREAM_NON_BLOCKING as u32)
        })?;
        raw.module = load_module_image(crate::kernels::FATBIN)?;
        // SAFETY: `raw.module` was just loaded from our fatbin, and `raw` (which unloads it)
        // is the last field of `Inner` to drop, after the `kernels` table.
        let kernels = unsafe { Kernels::load(raw.module)? };
        let staging = Staging::new(cfg.staging_bytes.max(4096))?;
        let arena = RawDeviceMem::alloc(cfg.param_cache_bytes.max(256))?;
        let blas = Blas::new(raw.stream, cfg.blas_workspace_bytes)?;
        keep_default_pool_memory(cu_device)?;

        let inner = Arc::new_cyclic(|weak: &Weak<Inner>| Inner {
            ordinal,
            name,
            capturing: AtomicBool::new(false),
            mode: AtomicU8::new(cfg.launch_mode.to_u8()),
            pdl: AtomicBool::new(false),
            counters: LaunchCounters::default(),
            kernels,
            cache: ParamCache::new(ordinal, arena.ptr, arena.bytes, Arc::new(ArenaUploader(weak.clone()))),
            pool: Pool::new(DriverAlloc),
            captured_words: Mutex::new(Vec::new()),
            retired: Mutex::new(Retired::default()),
            deferred: Mutex::new(None),
            staging: Mutex::new(staging),
            blas,
            _arena: arena,
            raw,
        });
        Ok(CudaDevice(inner))
    }

    pub fn ordinal(&self) -> usize {
        self.0.ordinal
    }

    /// The marketing name, e.g. "NVIDIA H100 80GB HBM3".
    pub fn name(&self) -> String {
        self.0.name.clone()
    }

    /// (major, minor), e.g. (9, 0) for an H100.
    pub fn compute_capability(&self) -> Result<(i32, i32), CudaError> {
        let attr = |a| {
            let mut v = 0;
            // SAFETY: valid out-pointer and device handle.
            drv("cuDeviceGetAttribute", unsafe { sys::cuDeviceGetAttribute(&mut v, a, self.0.raw.cu_device) })
                .map(|_| v)
        };
        Ok((
            attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
            attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
        ))
    }

    /// The typed kernel table, resolved once when the module was loaded.
    pub fn kernels(&self) -> &Kernels {
        &self.0.kernels
    }

    /// The device's one compute stream (non-blocking). Everything this crate queues goes here.
    pub fn stream(&self) -> sys::CUstream {
        self.0.raw.stream
    }

    pub fn blas(&self) -> &Blas {
        &self.0.blas
    }

    /// The ParamCache of this device (cached launch-parameter mode). `enable()` on it turns
    /// cached metadata on while the guard lives, whatever `launch_mode` says.
    pub fn param_cache(&self) -> &ParamCache {
        &self.0.cache
    }

    /// Make this device's context current on the calling thread (cheap when it already is).
    pub fn bind(&self) -> Result<(), CudaError> {
        self.0.raw.bind()
    }

    pub fn is_capturing(&self) -> bool {
        self.0.capturing.load(Ordering::Acquire)
    }

    /// Claims the capturing flag: `true` for the one caller that switched it from off to on
    /// (it must `end_capturing` later), `false` when a capture is already running.
    pub(crate) fn try_begin_capturing(&self) -> bool {
        self.0.capturing.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// Releases the flag claimed by `try_begin_capturing`.
    pub(crate) fn end_capturing(&self) {
        self.0.capturing.store(false, Ordering::Release);
    }

    fn refuse_while_capturing(&self, op: &str) -> Result<(), CudaError> {
        if self.is_capturing() {
            return Err(CudaError::capture(op));
        }
        Ok(())
    }

    // ---- memory -------------------------------------------------------------------------

    /// `bytes` of device memory from the caching allocator; NOT zeroed. While capturing it is
    /// served from the free lists or fails with `CaptureViolation { op: "allocation" }`.
    pub fn alloc(&self, bytes: usize) -> Result<DeviceBuffer, CudaError> {
        let capturing = self.is_capturing();
        if !capturing {
            self.bind()?;
        }
        let block = self.0.pool.alloc(bytes, capturing, || self.stream_sync())?;
        Ok(DeviceBuffer { block, bytes, dev: self.0.clone() })
    }

    /// `alloc` then a memset to zero queued on the stream (a memset node when capturing).
    pub fn alloc_zeroed(&self, bytes: usize) -> Result<DeviceBuffer, CudaError> {
        let buf = self.alloc(bytes)?;
        self.memset_zero(&buf, 0, bytes)?;
        Ok(buf)
    }

    /// Queue a memset to zero of `bytes` at `offset_bytes` of `buf` on the stream.
    pub fn memset_zero(&self, buf: &DeviceBuffer, offset_bytes: usize, bytes: usize) -> Result<(), CudaError> {
        check_range("memset", offset_bytes, bytes, buf.bytes())?;
        if bytes == 0 {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: the range lies inside a live block of this device (checked above), and the
        // memset is ordered on our stream like every other use of the block.
        drv("cuMemsetD8Async", unsafe {
            sys::cuMemsetD8Async(buf.ptr() + offset_bytes as u64, 0, bytes, self.0.raw.stream)
        })
    }

    /// Queue a device-to-device copy of `bytes` from the start of `src` to the start of
    /// `dst` (`cuMemcpyDtoDAsync`; a memcpy node if captured). Used to measure the copy
    /// bandwidth that defines the HBM floor.
    pub fn copy_dtod(&self, src: &DeviceBuffer, dst: &DeviceBuffer, bytes: usize) -> Result<(), CudaError> {
        check_range("dtod", 0, bytes, src.bytes())?;
        check_range("dtod", 0, bytes, dst.bytes())?;
        self.bind()?;
        // SAFETY: both ranges lie inside live blocks of this device (checked above) and the
        // copy is ordered on our stream like every other use of them.
        drv("cuMemcpyDtoDAsync_v2", unsafe {
            sys::cuMemcpyDtoDAsync_v2(dst.ptr(), src.ptr(), bytes, self.0.raw.stream)
        })
    }

    /// Copy `src` into `dst` at `dst_offset_bytes` (through pinned staging, queued on the
    /// stream; returns once `src` has been copied to staging). CaptureViolation if capturing.
    pub fn htod(&self, src: &[u8], dst: &DeviceBuffer, dst_offset_bytes: usize) -> Result<(), CudaError> {
        check_range("htod", dst_offset_bytes, src.len(), dst.bytes())?;
        self.htod_raw(dst.ptr() + dst_offset_bytes as u64, src)
    }

    pub(crate) fn htod_raw(&self, dst: u64, src: &[u8]) -> Result<(), CudaError> {
        self.refuse_while_capturing("host-to-device copy")?;
        if src.is_empty() {
            return Ok(());
        }
        self.bind()?;
        let stream = self.0.raw.stream;
        let mut st = lock(&self.0.staging);
        let mut off = 0;
        for chunk in src.chunks(st.bytes) {
            let slot = st.next_slot()?;
            // SAFETY: the slot's pinned buffer holds `st.bytes >= chunk.len()` bytes and its
            // previous copy has completed (next_slot waited on its event), so nobody reads it.
            unsafe { std::ptr::copy_nonoverlapping(chunk.as_ptr(), st.host[slot] as *mut u8, chunk.len()) };
            // SAFETY: source is pinned memory we own for the duration of the copy (the slot's
            // event, recorded next, guards its reuse); the destination range was checked.
            drv("cuMemcpyHtoDAsync_v2", unsafe {
                sys::cuMemcpyHtoDAsync_v2(dst + off as u64, st.host[slot], chunk.len(), stream)
            })?;
            st.record(slot, stream)?;
            off += chunk.len();
        }
        Ok(())
    }

    /// Copy `dst.len()` bytes at `src_offset_bytes` of `src` to the host; waits for the
    /// stream (so everything queued before is done). CaptureViolation if capturing.
    pub fn dtoh(&self, src: &DeviceBuffer, src_offset_bytes: usize, dst: &mut [u8]) -> Result<(), CudaError> {
        self.refuse_while_capturing("device-to-host copy")?;
        check_range("dtoh", src_offset_bytes, dst.len(), src.bytes())?;
        if dst.is_empty() {
            return Ok(());
        }
        self.bind()?;
        let stream = self.0.raw.stream;
        {
            let mut st = lock(&self.0.staging);
            let mut off = 0;
            let bytes = st.bytes;
            for chunk in dst.chunks_mut(bytes) {
                let slot = st.next_slot()?;
                // SAFETY: the slot's pinned buffer is free (waited) and large enough; the
                // source range lies inside a live block (checked above).
                drv("cuMemcpyDtoHAsync_v2", unsafe {
                    sys::cuMemcpyDtoHAsync_v2(
                        st.host[slot],
                        src.ptr() + (src_offset_bytes + off) as u64,
                        chunk.len(),
                        stream,
                    )
                })?;
                st.record(slot, stream)?;
                st.wait(slot)?;
                // SAFETY: the copy into the slot completed (waited on its event just above).
                unsafe { std::ptr::copy_nonoverlapping(st.host[slot] as *const u8, chunk.as_mut_ptr(), chunk.len()) };
                off += chunk.len();
            }
        }
        self.stream_passed_everything();
        Ok(())
    }

    /// Wait for all queued work. CaptureViolation if capturing. Also surfaces the first error
    /// a `Drop` could not return (a failed stream-ordered free, say).
    pub fn synchronize(&self) -> Result<(), CudaError> {
        self.refuse_while_capturing("synchronize")?;
        self.stream_sync()?;
        match lock(&self.0.deferred).take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn stream_sync(&self) -> Result<(), CudaError> {
        self.bind()?;
        // SAFETY: our stream is valid for the device's lifetime.
        drv("cuStreamSynchronize", unsafe { sys::cuStreamSynchronize(self.0.raw.stream) })?;
        self.stream_passed_everything();
        Ok(())
    }

    /// Bytes free and total on the device.
    pub fn mem_info(&self) -> Result<(usize, usize), CudaError> {
        self.bind()?;
        let (mut free, mut total) = (0, 0);
        // SAFETY: valid out-pointers; our context is current.
        drv("cuMemGetInfo_v2", unsafe { sys::cuMemGetInfo_v2(&mut free, &mut total) })?;
        Ok((free, total))
    }

    pub fn pool_stats(&self) -> PoolStats {
        self.0.pool.stats()
    }

    /// Return the allocator's cached blocks to the driver (waits for the stream first).
    pub fn trim_pool(&self) -> Result<usize, CudaError> {
        self.refuse_while_capturing("allocator trim")?;
        self.stream_sync()?;
        self.0.pool.trim()
    }

    // ---- modules and launches -----------------------------------------------------------

    /// Look up an entry point of the main module by name. For set-up code (tests, benches,
    /// new kernels before they join the typed table); never call it per launch.
    pub fn function(&self, name: &'static str) -> Result<Kernel, CudaError> {
        self.bind()?;
        get_function(self.0.raw.module, name)
    }

    /// Load another module (cubin, fatbin or PTX image). CaptureViolation if capturing.
    pub fn load_module(&self, image: &[u8]) -> Result<Module, CudaError> {
        self.refuse_while_capturing("module load")?;
        self.bind()?;
        Ok(Module { module: load_module_image(image)?, dev: self.clone() })
    }

    /// Launch `f` on the device's stream. With PDL on (`set_pdl`), with the
    /// programmatic-stream-serialization attribute: the kernel may start while the previous
    /// one in the stream finishes; every entry of kernels/*.cu waits for it
    /// (`griddepcontrol.wait`, common.cuh ENCORE_PDL_ENTRY) before touching memory. Without
    /// it, a launch with no attributes (what cuLaunchKernel does).
    ///
    /// # Safety
    /// `params` holds one pointer per kernel argument, each pointing at a value of exactly
    /// the type the kernel declares, and every device pointer among them addresses memory
    /// large enough for the grid; `f` comes from a module of this device that is still loaded.
    pub unsafe fn launch(
        &self,
        f: &Kernel,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        smem: u32,
        params: &mut [*mut c_void],
    ) -> Result<(), CudaError> {
        self.bind()?;
        // SAFETY: an all-zero attribute value is valid plain data; the field set below is the
        // one the attribute id names.
        let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
        attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
        attr.value.programmaticStreamSerializationAllowed = 1;
        let config = sys::CUlaunchConfig {
            gridDimX: grid.0,
            gridDimY: grid.1,
            gridDimZ: grid.2,
            blockDimX: block.0,
            blockDimY: block.1,
            blockDimZ: block.2,
            sharedMemBytes: smem,
            hStream: self.0.raw.stream,
            attrs: &mut attr,
            numAttrs: self.pdl() as u32,
        };
        // SAFETY: the caller guarantees `params` matches the kernel signature (see above);
        // the stream is ours and valid; `config` and `attr` live until the call returns (the
        // driver copies them); `extra` is null as the driver allows.
        drv("cuLaunchKernelEx", unsafe {
            sys::cuLaunchKernelEx(&config, f.func, params.as_mut_ptr(), std::ptr::null_mut())
        })?;
        self.0.counters.kernel();
        Ok(())
    }

    // ---- programmatic dependent launch --------------------------------------------------

    /// Launch every kernel from now on with programmatic dependent launch (PDL): the next
    /// kernel of the stream, captured graphs included, is scheduled while this one drains,
    /// and waits on the device for its completion. Hopper (compute capability 9.0) and newer;
    /// an older device is an error.
    pub fn set_pdl(&self, on: bool) -> Result<(), CudaError> {
        if on {
            let (major, minor) = self.compute_capability()?;
            if major < 9 {
                return Err(CudaError::Unavailable(format!(
                    "programmatic dependent launch needs compute capability 9.0 or newer; {} is {major}.{minor}",
                    self.name()
                )));
            }
        }
        self.0.pdl.store(on, Ordering::Relaxed);
        Ok(())
    }

    pub fn pdl(&self) -> bool {
        self.0.pdl.load(Ordering::Relaxed)
    }

    // ---- launch-parameter modes ---------------------------------------------------------

    pub fn set_launch_mode(&self, mode: LaunchParamMode) {
        self.0.mode.store(mode.to_u8(), Ordering::Relaxed);
    }

    /// The mode set with `set_launch_mode` (a live ParamCache guard overrides it: see
    /// `effective_launch_mode`).
    pub fn launch_mode(&self) -> LaunchParamMode {
        LaunchParamMode::from_u8(self.0.mode.load(Ordering::Relaxed))
    }

    /// What `prepare_meta` does now: `Cached` while a `param_cache().enable()` guard lives
    /// (candle's protocol), else the mode set.
    pub fn effective_launch_mode(&self) -> LaunchParamMode {
        if self.0.cache.is_enabled() {
            LaunchParamMode::Cached
        } else {
            self.launch_mode()
        }
    }

    pub fn launch_stats(&self) -> LaunchStats {
        self.0.counters.snapshot()
    }

    /// Apply the launch-parameter mode to the metadata of one strided launch. Keep the
    /// result alive until the launch is queued, then drop it.
    ///
    /// - Inline (and any contiguous meta): returned unchanged.
    /// - Cached: `meta.with_info_ptr(p)` with `p` the ParamCache copy of the words; a miss
    ///   while capturing is `CaptureViolation { op: "param cache miss" }`.
    /// - Upload: `cuMemAllocAsync` + `cuMemcpyHtoDAsync` of the words, both on the stream;
    ///   dropping the result queues `cuMemFreeAsync`. Captured, that is four nodes per op
    ///   (mem-alloc, memcpy, kernel, mem-free). The host words are a heap buffer that lives
    ///   until the stream has passed the copy (eager: retired in batches behind an event;
    ///   captured: owned by the graph and every exec made from it, since each replay copies
    ///   from them again; candle frees them right after capture, a replay hazard).
    pub fn prepare_meta(&self, meta: StridedMeta) -> Result<PreparedMeta, CudaError> {
        let mode = if meta.is_contiguous() || meta.info != 0 || meta.rank == 0 {
            LaunchParamMode::Inline
        } else {
            self.effective_launch_mode()
        };
        if mode == LaunchParamMode::Inline {
            self.0.counters.prepared(LaunchParamMode::Inline, 0);
            return Ok(PreparedMeta { meta, upload: None });
        }
        let mut words = [0u32; MAX_INFO_WORDS];
        let n = info_words_into(&meta, &mut words);
        if mode == LaunchParamMode::Cached {
            let ptr = self.0.cache.get_or_insert(&words[..n], self.is_capturing())?;
            self.0.counters.prepared(LaunchParamMode::Cached, 0);
            return Ok(PreparedMeta { meta: meta.with_info_ptr(ptr), upload: None });
        }
        self.upload_meta(meta, words[..n].into())
    }

    fn upload_meta(&self, meta: StridedMeta, words: Box<[u32]>) -> Result<PreparedMeta, CudaError> {
        self.bind()?;
        let bytes = std::mem::size_of_val(&*words);
        let stream = self.0.raw.stream;
        let mut ptr = 0;
        // SAFETY: valid out-pointer; stream-ordered allocation on our stream (a mem-alloc
        // node when capturing), freed by `UploadTemp::drop` on the same stream.
        drv("cuMemAllocAsync", unsafe { sys::cuMemAllocAsync(&mut ptr, bytes, stream) })?;
        // Dropping `temp` (also on the error path below) queues the free.
        let mut temp = UploadTemp { dev: self.0.clone(), ptr, words: None };
        // SAFETY: `ptr` holds `bytes` bytes; the host words stay alive until the stream has
        // passed the copy (UploadTemp retires them; a capture hands them to the graph).
        drv("cuMemcpyHtoDAsync_v2", unsafe {
            sys::cuMemcpyHtoDAsync_v2(ptr, words.as_ptr() as *const c_void, bytes, stream)
        })?;
        if self.is_capturing() {
            lock(&self.0.captured_words).push(words);
        } else {
            temp.words = Some(words);
        }
        self.0.counters.prepared(LaunchParamMode::Upload, bytes);
        Ok(PreparedMeta { meta: meta.with_info_ptr(ptr), upload: Some(temp) })
    }

    // ---- keeping host memory alive until the stream passes -------------------------------

    /// Keep `item` alive until the stream has passed everything queued so far. Cheap: items
    /// are batched and one event is recorded per batch (never while capturing).
    pub(crate) fn retire(&self, item: Keep) {
        let done = {
            let mut r = lock(&self.0.retired);
            r.batch.push(item);
            if r.batch.len() < RETIRE_BATCH || self.is_capturing() {
                return;
            }
            match self.bind().and_then(|_| r.seal(self.0.raw.stream)) {
                Ok(()) => r.collect_done(),
                Err(e) => {
                    self.defer(e);
                    Vec::new()
                }
            }
        };
        drop(done); // outside the lock: a Keep may be a graph's blocks going back to the pool
    }

    /// The stream is idle (after a sync or a waited copy): every retired item may go.
    fn stream_passed_everything(&self) {
        let done = lock(&self.0.retired).collect_all();
        drop(done);
    }

    pub(crate) fn defer(&self, e: CudaError) {
        lock(&self.0.deferred).get_or_insert(e);
    }

    pub(crate) fn downgrade(&self) -> Weak<Inner> {
        Arc::downgrade(&self.0)
    }
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaDevice({}: {})", self.0.ordinal, self.0.name)
    }
}

fn check_range(op: &'static str, offset: usize, len: usize, size: usize) -> Result<(), CudaError> {
    if offset.checked_add(len).is_none_or(|end| end > size) {
        return Err(CudaError::Tensor(encore_tensor::Error::InvalidArgument {
            op,
            msg: format!("bytes {offset}..{} out of a {size}-byte buffer", offset.saturating_add(len)),
        }));
    }
    Ok(())
}

/// Metadata ready for one launch. `meta` is what the kernel gets by value; the private part
/// (upload mode) frees the temporary device buffer on the stream when dropped, so drop it
/// right after queuing the launch.
pub struct PreparedMeta {
    pub meta: StridedMeta,
    upload: Option<UploadTemp>,
}

impl PreparedMeta {
    /// Device address of the uploaded words (upload mode), for tests and audits.
    pub fn uploaded_ptr(&self) -> Option<u64> {
        self.upload.as_ref().map(|u| u.ptr)
    }
}

impl std::fmt::Debug for PreparedMeta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedMeta").field("meta", &self.meta).field("uploaded", &self.uploaded_ptr()).finish()
    }
}

struct UploadTemp {
    dev: Arc<Inner>,
    ptr: u64,
    /// `None` when a capture took them (the graph keeps them).
    words: Option<Box<[u32]>>,
}

impl Drop for UploadTemp {
    fn drop(&mut self) {
        let dev = CudaDevice(self.dev.clone());
        let freed = dev.bind().and_then(|_| {
            // SAFETY: `ptr` came from cuMemAllocAsync on this stream and is freed once; the
            // free is stream-ordered after the launch that reads it.
            drv("cuMemFreeAsync", unsafe { sys::cuMemFreeAsync(self.ptr, self.dev.raw.stream) })
        });
        if let Err(e) = freed {
            dev.defer(e);
        }
        if let Some(w) = self.words.take() {
            dev.retire(Box::new(w));
        }
    }
}

/// A device allocation from the caching allocator; returns to the pool on drop (to the
/// capturing graph if dropped during a capture). Not zeroed unless made by `alloc_zeroed`.
pub struct DeviceBuffer {
    block: Block,
    bytes: usize,
    dev: Arc<Inner>,
}

impl DeviceBuffer {
    /// Device address of the first byte.
    pub fn ptr(&self) -> u64 {
        self.block.ptr
    }

    /// Bytes requested (the block behind it may be larger).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn device(&self) -> CudaDevice {
        CudaDevice(self.dev.clone())
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        self.dev.pool.release(self.block);
    }
}

impl std::fmt::Debug for DeviceBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceBuffer({:#x}, {} bytes)", self.block.ptr, self.bytes)
    }
}

/// A module loaded with `CudaDevice::load_module`; unloaded on drop, so keep it alive while
/// kernels from it may run.
pub struct Module {
    module: sys::CUmodule,
    dev: CudaDevice,
}

// SAFETY: a CUmodule handle may be used from any thread once loaded; unloading happens once, in Drop.
unsafe impl Send for Module {}
// SAFETY: `function` only reads the handle; the driver serialises module lookups.
unsafe impl Sync for Module {}

impl Module {
    pub fn function(&self, name: &'static str) -> Result<Kernel, CudaError> {
        self.dev.bind()?;
        get_function(self.module, name)
    }
}

impl Drop for Module {
    fn drop(&mut self) {
        if self.dev.bind().is_ok() {
            // SAFETY: loaded by load_module_image, unloaded exactly once here.
            let _ = unsafe { sys::cuModuleUnload(self.module) };
        }
    }
}

fn get_function(module: sys::CUmodule, name: &'static str) -> Result<Kernel, CudaError> {
    let cname = CString::new(name)
        .map_err(|_| CudaError::Driver { call: "cuModuleGetFunction", msg: format!("bad name {name:?}") })?;
    let mut func = std::ptr::null_mut();
    // SAFETY: valid out-pointer, NUL-terminated name, module loaded and owned by the caller.
    drv("cuModuleGetFunction", unsafe { sys::cuModuleGetFunction(&mut func, module, cname.as_ptr()) })
        .map_err(|e| CudaError::Driver { call: "cuModuleGetFunction", msg: format!("{name}: {e}") })?;
    Ok(Kernel { func, name })
}

/// `cuModuleLoadData` on a 16-byte-aligned copy of `image` (`include_bytes!` data is only
/// byte-aligned; the loader reads the fatbin header in place).
fn load_module_image(image: &[u8]) -> Result<sys::CUmodule, CudaError> {
    let mut aligned = vec![0u128; image.len().div_ceil(16) + 1];
    // SAFETY: `aligned` has at least image.len() bytes; the regions do not overlap.
    unsafe { std::ptr::copy_nonoverlapping(image.as_ptr(), aligned.as_mut_ptr() as *mut u8, image.len()) };
    let mut module = std::ptr::null_mut();
    // SAFETY: the image is a complete fatbin/cubin/PTX (zero-padded, so a PTX string is
    // NUL-terminated) that outlives the call; the driver copies what it keeps.
    drv("cuModuleLoadData", unsafe { sys::cuModuleLoadData(&mut module, aligned.as_ptr() as *const c_void) })?;
    Ok(module)
}

fn device_name(dev: sys::CUdevice) -> Result<String, CudaError> {
    let mut buf = [0 as std::ffi::c_char; 256];
    // SAFETY: the driver writes at most `len` bytes, NUL-terminated.
    drv("cuDeviceGetName", unsafe { sys::cuDeviceGetName(buf.as_mut_ptr(), buf.len() as i32, dev) })?;
    // SAFETY: NUL-terminated by the driver within the buffer.
    Ok(unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned())
}

/// Upload-mode allocations come from the device's default memory pool; keep its memory
/// across synchronisations (release threshold = max) so eager upload mode measures the
/// per-launch alloc/copy/free calls, not the driver returning pages to the OS.
fn keep_default_pool_memory(dev: sys::CUdevice) -> Result<(), CudaError> {
    let mut pool = std::ptr::null_mut();
    // SAFETY: valid out-pointer and device handle.
    drv("cuDeviceGetDefaultMemPool", unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, dev) })?;
    let mut threshold = u64::MAX;
    // SAFETY: this attribute takes a pointer to a cuuint64_t, which `threshold` is.
    drv("cuMemPoolSetAttribute", unsafe {
        sys::cuMemPoolSetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            &mut threshold as *mut u64 as *mut c_void,
        )
    })
}

/// The ParamCache's way to the device: a stream-ordered HtoD copy into the arena (ordered
/// after every queued launch, as `ArenaUpload` requires, since eviction reuses blocks).
struct ArenaUploader(Weak<Inner>);

impl ArenaUpload for ArenaUploader {
    fn upload(&self, device_ptr: u64, bytes: &[u8]) -> Result<(), CudaError> {
        let inner = self.0.upgrade().ok_or_else(|| CudaError::Unavailable("the device was dropped".into()))?;
        CudaDevice(inner).htod_raw(device_ptr, bytes)
    }
}

// ---- owned driver resources -------------------------------------------------------------

/// The context, stream and main module; dropped last.
struct Raw {
    cu_device: sys::CUdevice,
    ctx: sys::CUcontext,
    stream: sys::CUstream,
    module: sys::CUmodule,
}

// SAFETY: driver handles may be used from any thread once the context is bound there (every
// entry point calls `bind`); the handles are never mutated after construction.
unsafe impl Send for Raw {}
// SAFETY: as above; the driver API is thread-safe for these handles.
unsafe impl Sync for Raw {}

impl Raw {
    fn bind(&self) -> Result<(), CudaError> {
        let mut cur = std::ptr::null_mut();
        // SAFETY: valid out-pointer.
        drv("cuCtxGetCurrent", unsafe { sys::cuCtxGetCurrent(&mut cur) })?;
        if cur != self.ctx {
            // SAFETY: `ctx` is our retained primary context, alive until Raw drops.
            drv("cuCtxSetCurrent", unsafe { sys::cuCtxSetCurrent(self.ctx) })?;
        }
        Ok(())
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        if self.ctx.is_null() {
            return;
        }
        let _ = self.bind();
        // SAFETY: each handle was created by us, is destroyed exactly once, and nothing else
        // uses it any more (Raw is the last field of Inner to drop); errors cannot be
        // reported from Drop and leave nothing to clean up.
        unsafe {
            if !self.stream.is_null() {
                let _ = sys::cuStreamSynchronize(self.stream);
            }
            if !self.module.is_null() {
                let _ = sys::cuModuleUnload(self.module);
            }
            if !self.stream.is_null() {
                let _ = sys::cuStreamDestroy_v2(self.stream);
            }
            let _ = sys::cuDevicePrimaryCtxRelease_v2(self.cu_device);
        }
    }
}

/// One raw `cuMemAlloc` (the ParamCache arena, the cuBLAS workspace), freed on drop.
pub(crate) struct RawDeviceMem {
    pub(crate) ptr: u64,
    pub(crate) bytes: usize,
}

impl RawDeviceMem {
    pub(crate) fn alloc(bytes: usize) -> Result<Self, CudaError> {
        let mut ptr = 0;
        // SAFETY: valid out-pointer; the caller's context is current.
        drv("cuMemAlloc_v2", unsafe { sys::cuMemAlloc_v2(&mut ptr, bytes) })?;
        Ok(RawDeviceMem { ptr, bytes })
    }
}

impl Drop for RawDeviceMem {
    fn drop(&mut self) {
        // SAFETY: allocated above, freed once; the owner (Inner) synced the stream first.
        let _ = unsafe { sys::cuMemFree_v2(self.ptr) };
    }
}

/// Two pinned host buffers, each guarded by an event recorded after its last copy.
struct Staging {
    bytes: usize,
    host: [*mut c_void; 2],
    done: [sys::CUevent; 2],
    busy: [bool; 2],
    next: usize,
}

// SAFETY: the pinned pointers and events are only used under the device's staging mutex.
unsafe impl Send for Staging {}

impl Staging {
    fn new(bytes: usize) -> Result<Self, CudaError> {
        let mut s = Staging {
            bytes,
            host: [std::ptr::null_mut(); 2],
            done: [std::ptr::null_mut(); 2],
            busy: [false; 2],
            next: 0,
        };
        for i in 0..2 {
            // SAFETY: valid out-pointers; the context is current (CudaDevice::with_config).
            // On error `s` drops and frees what was made so far.
            drv("cuMemHostAlloc", unsafe { sys::cuMemHostAlloc(&mut s.host[i], bytes, 0) })?;
            drv("cuEventCreate", unsafe {
                sys::cuEventCreate(&mut s.done[i], sys::CUevent_flags::CU_EVENT_DISABLE_TIMING as u32)
            })?;
        }
        Ok(s)
    }

    /// The next slot, waited until its previous copy is done.
    fn next_slot(&mut self) -> Result<usize, CudaError> {
        let i = self.next;
        self.next ^= 1;
        self.wait(i)?;
        Ok(i)
    }

    fn wait(&mut self, i: usize) -> Result<(), CudaError> {
        if self.busy[i] {
            // SAFETY: the event was created in `new` and recorded on our stream.
            drv("cuEventSynchronize", unsafe { sys::cuEventSynchronize(self.done[i]) })?;
            self.busy[i] = false;
        }
        Ok(())
    }

    fn record(&mut self, i: usize, stream: sys::CUstream) -> Result<(), CudaError> {
        // SAFETY: event and stream are alive; we are not capturing (copies refuse that).
        drv("cuEventRecord", unsafe { sys::cuEventRecord(self.done[i], stream) })?;
        self.busy[i] = true;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        for i in 0..2 {
            // SAFETY: created in `new` (null ones skipped), destroyed once; the stream was
            // synced by Inner::drop so no copy still uses the pinned buffers.
            unsafe {
                if !self.done[i].is_null() {
                    let _ = sys::cuEventSynchronize(self.done[i]);
                    let _ = sys::cuEventDestroy_v2(self.done[i]);
                }
                if !self.host[i].is_null() {
                    let _ = sys::cuMemFreeHost(self.host[i]);
                }
            }
        }
    }
}

/// Items waiting for the stream: an open batch, then sealed batches each behind an event.
#[derive(Default)]
struct Retired {
    batch: Vec<Keep>,
    sealed: VecDeque<(sys::CUevent, Vec<Keep>)>,
    spare: Vec<sys::CUevent>,
}

// SAFETY: events are only used under the device's retired mutex.
unsafe impl Send for Retired {}

impl Retired {
    /// Record an event after the work queued so far and put the open batch behind it.
    fn seal(&mut self, stream: sys::CUstream) -> Result<(), CudaError> {
        let ev = match self.spare.pop() {
            Some(ev) => ev,
            None => {
                let mut ev = std::ptr::null_mut();
                // SAFETY: valid out-pointer; the device context is current (retire callers bind).
                drv("cuEventCreate", unsafe {
                    sys::cuEventCreate(&mut ev, sys::CUevent_flags::CU_EVENT_DISABLE_TIMING as u32)
                })?;
                ev
            }
        };
        // SAFETY: event and stream alive; the caller checked we are not capturing.
        if let Err(e) = drv("cuEventRecord", unsafe { sys::cuEventRecord(ev, stream) }) {
            self.spare.push(ev);
            return Err(e);
        }
        let batch = std::mem::take(&mut self.batch);
        self.sealed.push_back((ev, batch));
        Ok(())
    }

    /// Batches whose event has completed (polled, never waited).
    fn collect_done(&mut self) -> Vec<Keep> {
        let mut done = Vec::new();
        while let Some((ev, _)) = self.sealed.front() {
            // SAFETY: the event is alive and was recorded; cuEventQuery does not block.
            if unsafe { sys::cuEventQuery(*ev) } != sys::CUresult::CUDA_SUCCESS {
                break;
            }
            let (ev, items) = self.sealed.pop_front().expect("front exists");
            self.spare.push(ev);
            done.extend(items);
        }
        done
    }

    /// Everything (the stream is known to be idle).
    fn collect_all(&mut self) -> Vec<Keep> {
        let mut done = std::mem::take(&mut self.batch);
        while let Some((ev, items)) = self.sealed.pop_front() {
            self.spare.push(ev);
            done.extend(items);
        }
        done
    }
}

impl Drop for Retired {
    fn drop(&mut self) {
        for ev in self.spare.drain(..).chain(self.sealed.drain(..).map(|(ev, _)| ev)) {
            // SAFETY: created by `seal`, destroyed once; Inner::drop synced the stream.
            let _ = unsafe { sys::cuEventDestroy_v2(ev) };
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.raw.bind();
        // SAFETY: the stream is alive until `raw` drops (last); waiting makes every retired
        // item, cached block and staging buffer unused before they are freed below.
        let _ = unsafe { sys::cuStreamSynchronize(self.raw.stream) };
        drop(lock(&self.retired).collect_all());
        self.pool.forget_graphs();
        let _ = self.pool.trim();
    }
}
