//! ParamCache: a bounded, content-addressed cache of immutable device buffers holding kernel
//! launch metadata (`StridedMeta::info_words`, i.e. `[dims, strides...]` as `u32`), used by the
//! `cached` launch-parameter mode. Pure Rust: the device side is reached only through the
//! [`ArenaUpload`] trait, so every line here is tested on the CPU.
//!
//! What it is: one cache per device. The runtime allocates one device arena up front and
//! hands its address to [`ParamCache::new`]; entries are 16-byte-aligned blocks of that
//! arena, keyed by the metadata words. It is not an allocator for anything else, and it
//! never talks to the driver itself.
//!
//! # Protocol (compatible with candle's parameter cache)
//!
//! 1. **Enable**: [`ParamCache::enable`] returns a nestable [`CacheGuard`]; the device uses
//!    cached metadata while any guard lives ([`ParamCache::is_enabled`]).
//! 2. **Warm up**: run one eager step. Every distinct metadata is a miss: a block is
//!    allocated in the arena, [`ArenaUpload::upload`] copies the words, the entry is inserted.
//! 3. **Capture**: open a [`PinScope`] ([`ParamCache::begin_pin_scope`]) around the capture
//!    and look up with `capturing = true`. Every lookup is now a hit (one kernel node per op,
//!    no memcpy node); a miss is a hard [`CudaError::CaptureViolation`], never a silent
//!    upload. [`PinScope::finish`] turns the recorded entries into [`Pins`], which the
//!    graph keeps: pinned entries are never evicted nor cleared while the graph lives.
//!
//! # Cost model
//!
//! - A hit hashes the words (FxHash-style, then a 64-bit finaliser), copies them into an
//!   inline key on the stack (at most [`MAX_KEY_WORDS`]), takes the READ lock of one of
//!   [`SHARDS`] shards and bumps that shard's own hit counter. No allocation and no global
//!   lock. The one shared word it may write is the recency clock (below).
//! - A miss takes the arena mutex (the only global lock), so misses are serialised; they
//!   happen during warm-up only.
//! - While a [`PinScope`] is open (during a capture), each lookup also records its entry in
//!   the open scopes (a host-side set insert); outside captures this costs one atomic load.
//!   A scope records lookups from every thread: over-pinning is harmless, under-pinning
//!   would let a live graph read a reused block.
//!
//! # Eviction
//!
//! When the arena has no free block big enough, unpinned entries are evicted in
//! least-recently-used order until one fits; if even evicting every unpinned entry cannot
//! make room, the miss fails with [`CudaError::CacheFull`] and nothing is evicted. Recency
//! is exact: each entry holds the value of a global clock at its last use, and a hit
//! advances the clock (one atomic add) only when its entry is not already the most recently
//! used one, so repeated hits of one entry write nothing shared.
//!
//! An evicted block is reused by the next miss, whose upload overwrites it. Two rules keep
//! that safe: the upload must be ordered on the device stream after all previously queued
//! work (see [`ArenaUpload`]), and a pointer returned for an unpinned entry must be used
//! (launched with) before the same device looks up again, which a single-stream device
//! does naturally. Pinned entries are never reused.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use encore_tensor::{MAX_OPERANDS, MAX_RANK};

use crate::CudaError;

/// Longest key: dims plus one stride array per operand, at the maximum rank.
pub const MAX_KEY_WORDS: usize = MAX_RANK * (1 + MAX_OPERANDS);

/// Number of independently locked shards of the entry map (a power of two).
pub const SHARDS: usize = 16;

/// Alignment of every block in the arena (and of the arena base), in bytes.
pub const BLOCK_ALIGN: usize = 16;

/// Copies bytes into the device arena. Implemented by the runtime (an HtoD copy); by a
/// recording fake in tests.
///
/// Contract: the copy must be ordered after all work already queued on the device stream
/// (issue it on that stream), because `device_ptr` may be a block that eviction just took
/// from an entry that queued kernels still read. `bytes` is only borrowed for the call.
pub trait ArenaUpload: Send + Sync {
    fn upload(&self, device_ptr: u64, bytes: &[u8]) -> Result<(), CudaError>;
}

/// A snapshot of the cache counters. `hits + misses` is the number of lookups; a miss is a
/// lookup that found no entry, whether it then inserted one or failed (capture violation,
/// cache full, upload error). `evictions` counts capacity evictions, not [`ParamCache::clear`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    /// Live entries.
    pub entries: usize,
    /// Arena bytes held by live entries (block sizes, i.e. rounded up to 16).
    pub bytes_used: usize,
    /// Usable arena bytes.
    pub capacity: usize,
    /// Live entries pinned by at least one live graph (or open scope).
    pub pinned: usize,
}

/// The content-addressed metadata cache of one device. Cheap to clone (a handle); `Send + Sync`.
#[derive(Clone)]
pub struct ParamCache(Arc<Inner>);

struct Inner {
    device_ordinal: usize,
    /// Aligned arena base; block offsets are relative to it.
    arena_base: u64,
    capacity: usize,
    uploader: Arc<dyn ArenaUpload>,
    shards: [Shard; SHARDS],
    /// The only global lock: taken by misses, eviction and clear, never by a hit.
    /// Lock order: `arena` -> one shard -> `scopes` -> one scope's set.
    arena: Mutex<Arena>,
    /// Recency clock: the latest `last_use` handed out.
    clock: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
    entries: AtomicUsize,
    bytes_used: AtomicUsize,
    guards: AtomicUsize,
    /// `scopes.len()`, readable without a lock: lookups skip recording when it is 0.
    num_scopes: AtomicUsize,
    scopes: RwLock<Vec<Arc<ScopeState>>>,
}

/// One shard, on its own cache lines so that hits in different shards do not false-share.
#[repr(align(128))]
struct Shard {
    map: RwLock<HashMap<Key, Arc<CacheEntry>, BuildHasherDefault<KeyHasher>>>,
    hits: AtomicU64,
}

struct CacheEntry {
    ptr: u64,
    block_bytes: usize,
    /// Clock value of the last use; unique among entries (each comes from one clock tick).
    last_use: AtomicU64,
    /// Live scopes and [`Pins`] holding this entry. Incremented only under a shard lock, so
    /// an evictor holding that shard's write lock sees a consistent count.
    pins: AtomicUsize,
}

/// The metadata words inline (no heap), with their hash computed once.
#[derive(Clone, Copy)]
struct Key {
    hash: u64,
    len: u32,
    words: [u32; MAX_KEY_WORDS],
}

impl Key {
    fn new(words: &[u32]) -> Option<Self> {
        if words.len() > MAX_KEY_WORDS {
            return None;
        }
        let mut inline = [0u32; MAX_KEY_WORDS];
        inline[..words.len()].copy_from_slice(words);
        Some(Key { hash: hash_words(words), len: words.len() as u32, words: inline })
    }

    fn words(&self) -> &[u32] {
        &self.words[..self.len as usize]
    }

    /// Middle bits: hashbrown uses the low bits (bucket) and the top 7 (tag) inside a shard.
    fn shard(&self) -> usize {
        (self.hash >> 32) as usize & (SHARDS - 1)
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && self.words() == other.words()
    }
}

impl Eq for Key {}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

const FX_K: u64 = 0xf135_7aea_2e62_a9c5;

/// FxHash over word pairs, then the murmur3 finaliser so that every bit is usable.
fn hash_words(words: &[u32]) -> u64 {
    let mut h = words.len() as u64;
    let mut pairs = words.chunks_exact(2);
    for p in &mut pairs {
        h = (h.rotate_left(5) ^ (p[0] as u64 | (p[1] as u64) << 32)).wrapping_mul(FX_K);
    }
    if let [w] = pairs.remainder() {
        h = (h.rotate_left(5) ^ *w as u64).wrapping_mul(FX_K);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Passes [`Key::hash`] through, so a lookup hashes the words once.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used by `Key`; fold anything else rather than panic.
        for b in bytes {
            self.0 = (self.0.rotate_left(5) ^ *b as u64).wrapping_mul(FX_K);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// First-fit free list over `[0, capacity)` with coalescing; offsets and sizes are multiples
/// of [`BLOCK_ALIGN`].
struct Arena {
    /// offset -> length of each free range, never adjacent (always coalesced).
    free: BTreeMap<usize, usize>,
    free_bytes: usize,
}

impl Arena {
    fn new(capacity: usize) -> Self {
        let mut free = BTreeMap::new();
        if capacity > 0 {
            free.insert(0, capacity);
        }
        Arena { free, free_bytes: capacity }
    }

    fn alloc(&mut self, size: usize) -> Option<usize> {
        let (&off, &len) = self.free.iter().find(|(_, &len)| len >= size)?;
        self.free.remove(&off);
        if len > size {
            self.free.insert(off + size, len - size);
        }
        self.free_bytes -= size;
        Some(off)
    }

    fn release(&mut self, off: usize, size: usize) {
        let (mut start, mut len) = (off, size);
        if let Some((&prev, &prev_len)) = self.free.range(..off).next_back() {
            debug_assert!(prev + prev_len <= off, "double free in the param arena");
            if prev + prev_len == off {
                self.free.remove(&prev);
                start = prev;
                len += prev_len;
            }
        }
        if let Some(&next_len) = self.free.get(&(off + size)) {
            self.free.remove(&(off + size));
            len += next_len;
        }
        self.free.insert(start, len);
        self.free_bytes += size;
    }
}

/// Arena bytes of an entry of `n` words: at least one block, rounded up to the alignment.
fn block_size(n: usize) -> usize {
    (n * 4).max(1).next_multiple_of(BLOCK_ALIGN)
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

fn lock<T>(l: &Mutex<T>) -> MutexGuard<'_, T> {
    l.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ParamCache {
    /// A cache over the arena `[arena_base, arena_base + capacity_bytes)` of device
    /// `device_ordinal`. A base that is not 16-byte aligned is rounded up (and the capacity
    /// shrunk to match); the capacity is rounded down to a multiple of 16.
    pub fn new(device_ordinal: usize, arena_base: u64, capacity_bytes: usize, uploader: Arc<dyn ArenaUpload>) -> Self {
        let align = BLOCK_ALIGN as u64;
        let base = arena_base.next_multiple_of(align);
        let skipped = (base - arena_base) as usize;
        let capacity = capacity_bytes.saturating_sub(skipped) / BLOCK_ALIGN * BLOCK_ALIGN;
        ParamCache(Arc::new(Inner {
            device_ordinal,
            arena_base: base,
            capacity,
            uploader,
            shards: std::array::from_fn(|_| Shard { map: RwLock::default(), hits: AtomicU64::new(0) }),
            arena: Mutex::new(Arena::new(capacity)),
            clock: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            entries: AtomicUsize::new(0),
            bytes_used: AtomicUsize::new(0),
            guards: AtomicUsize::new(0),
            num_scopes: AtomicUsize::new(0),
            scopes: RwLock::default(),
        }))
    }

    pub fn device_ordinal(&self) -> usize {
        self.0.device_ordinal
    }

    /// The (aligned) device address of the arena.
    pub fn arena_base(&self) -> u64 {
        self.0.arena_base
    }

    /// Usable arena bytes.
    pub fn capacity(&self) -> usize {
        self.0.capacity
    }

    /// The device address of an immutable copy of `words`, uploading it on a miss.
    ///
    /// Errors: a miss while `capturing` is `CaptureViolation { op: "param cache miss" }` (no
    /// upload); a miss that cannot fit even after evicting every unpinned entry is
    /// `CacheFull`; more than [`MAX_KEY_WORDS`] words is an invalid argument; an upload
    /// error is returned as is (the block is freed, the next lookup retries).
    pub fn get_or_insert(&self, words: &[u32], capturing: bool) -> Result<u64, CudaError> {
        let Some(key) = Key::new(words) else {
            return Err(CudaError::Tensor(encore_tensor::Error::InvalidArgument {
                op: "param cache",
                msg: format!("{} metadata words, the limit is {MAX_KEY_WORDS}", words.len()),
            }));
        };
        if let Some(ptr) = self.0.lookup(&key) {
            return Ok(ptr);
        }
        if capturing {
            self.0.misses.fetch_add(1, Ordering::Relaxed);
            return Err(CudaError::capture("param cache miss"));
        }
        self.0.insert(&key)
    }

    /// Start recording every entry returned (by any thread) until the scope is finished or
    /// dropped; recorded entries are pinned. Scopes may overlap; each records independently.
    pub fn begin_pin_scope(&self) -> PinScope {
        let state = Arc::new(ScopeState::default());
        let mut scopes = write(&self.0.scopes);
        scopes.push(state.clone());
        self.0.num_scopes.store(scopes.len(), Ordering::Release);
        PinScope { inner: self.0.clone(), state }
    }

    /// Drops every unpinned entry and returns how many. Pinned entries stay.
    pub fn clear(&self) -> usize {
        let inner = &*self.0;
        let mut arena = lock(&inner.arena);
        let mut removed = 0;
        for shard in &inner.shards {
            write(&shard.map).retain(|_, e| {
                if e.pins.load(Ordering::Acquire) > 0 {
                    return true;
                }
                inner.release_block(&mut arena, e);
                removed += 1;
                false
            });
        }
        removed
    }

    pub fn stats(&self) -> CacheStats {
        let inner = &*self.0;
        let mut hits = 0;
        let mut pinned = 0;
        for shard in &inner.shards {
            hits += shard.hits.load(Ordering::Relaxed);
            pinned += read(&shard.map).values().filter(|e| e.pins.load(Ordering::Acquire) > 0).count();
        }
        CacheStats {
            hits,
            misses: inner.misses.load(Ordering::Relaxed),
            evictions: inner.evictions.load(Ordering::Relaxed),
            entries: inner.entries.load(Ordering::Relaxed),
            bytes_used: inner.bytes_used.load(Ordering::Relaxed),
            capacity: inner.capacity,
            pinned,
        }
    }

    /// Turn cached launch metadata on until the returned guard drops. Guards nest.
    pub fn enable(&self) -> CacheGuard {
        self.0.guards.fetch_add(1, Ordering::AcqRel);
        CacheGuard { inner: self.0.clone() }
    }

    /// Whether any [`CacheGuard`] is alive.
    pub fn is_enabled(&self) -> bool {
        self.0.guards.load(Ordering::Acquire) > 0
    }
}

impl std::fmt::Debug for ParamCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParamCache")
            .field("device_ordinal", &self.0.device_ordinal)
            .field("arena_base", &format_args!("{:#x}", self.0.arena_base))
            .field("stats", &self.stats())
            .finish()
    }
}

impl Inner {
    /// The hit path: one shard read lock, no allocation.
    fn lookup(&self, key: &Key) -> Option<u64> {
        let shard = &self.shards[key.shard()];
        let map = read(&shard.map);
        let e = map.get(key)?;
        // Already the most recently used entry: nothing to write (the common repeated hit).
        if e.last_use.load(Ordering::Relaxed) != self.clock.load(Ordering::Relaxed) {
            e.last_use.store(self.clock.fetch_add(1, Ordering::Relaxed) + 1, Ordering::Relaxed);
        }
        shard.hits.fetch_add(1, Ordering::Relaxed);
        if self.num_scopes.load(Ordering::Acquire) > 0 {
            self.record(e);
        }
        Some(e.ptr)
    }

    /// The miss path, serialised by the arena lock.
    fn insert(&self, key: &Key) -> Result<u64, CudaError> {
        let mut arena = lock(&self.arena);
        // Inserts happen only under the arena lock: re-check for one that raced ahead of us.
        if let Some(ptr) = self.lookup(key) {
            return Ok(ptr);
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let size = block_size(key.len as usize);
        let off = match arena.alloc(size) {
            Some(off) => off,
            None => self.evict_for(&mut arena, size)?,
        };
        let ptr = self.arena_base + off as u64;
        if let Err(e) = self.uploader.upload(ptr, bytemuck::cast_slice(key.words())) {
            arena.release(off, size);
            return Err(e);
        }
        let tick = self.clock.fetch_add(1, Ordering::Relaxed) + 1;
        let entry =
            Arc::new(CacheEntry { ptr, block_bytes: size, last_use: AtomicU64::new(tick), pins: AtomicUsize::new(0) });
        let mut map = write(&self.shards[key.shard()].map);
        if self.num_scopes.load(Ordering::Acquire) > 0 {
            self.record(&entry);
        }
        let replaced = map.insert(*key, entry);
        debug_assert!(replaced.is_none(), "param cache key inserted twice");
        self.entries.fetch_add(1, Ordering::Relaxed);
        self.bytes_used.fetch_add(size, Ordering::Relaxed);
        Ok(ptr)
    }

    /// Evict unpinned entries, least recently used first, until `size` bytes fit. Evicts
    /// nothing when even all of them would not make enough room.
    fn evict_for(&self, arena: &mut Arena, size: usize) -> Result<usize, CudaError> {
        let full = CudaError::CacheFull { capacity: self.capacity };
        let mut candidates = Vec::new();
        let mut reclaimable = arena.free_bytes;
        for (i, shard) in self.shards.iter().enumerate() {
            for (key, e) in read(&shard.map).iter() {
                if e.pins.load(Ordering::Acquire) == 0 {
                    candidates.push((e.last_use.load(Ordering::Relaxed), i, *key));
                    reclaimable += e.block_bytes;
                }
            }
        }
        if reclaimable < size {
            return Err(full);
        }
        candidates.sort_unstable_by_key(|&(last_use, _, _)| last_use);
        for (_, i, key) in candidates {
            let mut map = write(&self.shards[i].map);
            // Pinned since the scan (a capture started): skip it.
            if map.get(&key).is_none_or(|e| e.pins.load(Ordering::Acquire) > 0) {
                continue;
            }
            if let Some(e) = map.remove(&key) {
                drop(map);
                self.release_block(arena, &e);
                self.evictions.fetch_add(1, Ordering::Relaxed);
                if let Some(off) = arena.alloc(size) {
                    return Ok(off);
                }
            }
        }
        // Fragmentation between pinned blocks left no contiguous range.
        Err(full)
    }

    /// Return a removed entry's block to the arena (caller holds the arena lock).
    fn release_block(&self, arena: &mut Arena, e: &CacheEntry) {
        arena.release((e.ptr - self.arena_base) as usize, e.block_bytes);
        self.entries.fetch_sub(1, Ordering::Relaxed);
        self.bytes_used.fetch_sub(e.block_bytes, Ordering::Relaxed);
    }

    /// Pin `e` in every open scope that has not recorded it yet. Called under e's shard lock.
    fn record(&self, e: &Arc<CacheEntry>) {
        for scope in read(&self.scopes).iter() {
            let mut set = lock(&scope.entries);
            if let std::collections::hash_map::Entry::Vacant(slot) = set.entry(e.ptr) {
                e.pins.fetch_add(1, Ordering::AcqRel);
                slot.insert(e.clone());
            }
        }
    }
}

#[derive(Default)]
struct ScopeState {
    /// device ptr -> entry; each entry pinned once per scope.
    entries: Mutex<HashMap<u64, Arc<CacheEntry>>>,
}

/// Records (and pins) every entry the cache returns while it is open. Open one around a
/// graph capture; [`PinScope::finish`] gives the graph its [`Pins`]. Dropping an unfinished
/// scope (a failed capture) releases what it recorded.
#[must_use = "a pin scope records only while it is alive"]
pub struct PinScope {
    inner: Arc<Inner>,
    state: Arc<ScopeState>,
}

impl PinScope {
    /// Entries recorded so far.
    pub fn len(&self) -> usize {
        lock(&self.state.entries).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stop recording and hand the pins over (to the captured graph).
    pub fn finish(self) -> Pins {
        self.close()
    }

    fn close(&self) -> Pins {
        let mut scopes = write(&self.inner.scopes);
        scopes.retain(|s| !Arc::ptr_eq(s, &self.state));
        self.inner.num_scopes.store(scopes.len(), Ordering::Release);
        drop(scopes);
        Pins { entries: lock(&self.state.entries).drain().map(|(_, e)| e).collect() }
    }
}

impl Drop for PinScope {
    fn drop(&mut self) {
        drop(self.close());
    }
}

impl std::fmt::Debug for PinScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinScope").field("entries", &self.len()).finish()
    }
}

/// Pins on the cache entries a graph references; dropping it (with the graph) makes them
/// evictable again. `Pins::default()` pins nothing.
#[derive(Default)]
pub struct Pins {
    entries: Vec<Arc<CacheEntry>>,
}

impl Pins {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Device addresses of the pinned entries.
    pub fn ptrs(&self) -> impl Iterator<Item = u64> + '_ {
        self.entries.iter().map(|e| e.ptr)
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        for e in &self.entries {
            e.pins.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl std::fmt::Debug for Pins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pins").field("entries", &self.entries.len()).finish()
    }
}

/// Keeps cached launch metadata enabled while alive ([`ParamCache::enable`]).
#[must_use = "the cache is enabled only while the guard is alive"]
pub struct CacheGuard {
    inner: Arc<Inner>,
}

impl Drop for CacheGuard {
    fn drop(&mut self) {
        self.inner.guards.fetch_sub(1, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for CacheGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheGuard").field("live_guards", &self.inner.guards.load(Ordering::Relaxed)).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::sync::atomic::AtomicBool;

    const BASE: u64 = 0x7f00_0000_1000;

    /// Records every upload: the device bytes at each address, and how many uploads ran.
    #[derive(Default)]
    struct FakeDevice {
        mem: Mutex<HashMap<u64, Vec<u8>>>,
        uploads: AtomicUsize,
        fail: AtomicBool,
        /// When set, `(arena_base, capacity)`: uploads must land inside it.
        bounds: Mutex<Option<(u64, usize)>>,
    }

    impl ArenaUpload for FakeDevice {
        fn upload(&self, device_ptr: u64, bytes: &[u8]) -> Result<(), CudaError> {
            if self.fail.load(Ordering::SeqCst) {
                return Err(CudaError::Driver { call: "cuMemcpyHtoDAsync", msg: "injected".into() });
            }
            if let Some((base, cap)) = *lock(&self.bounds) {
                assert!(device_ptr >= base && device_ptr + bytes.len() as u64 <= base + cap as u64);
            }
            self.uploads.fetch_add(1, Ordering::SeqCst);
            lock(&self.mem).insert(device_ptr, bytes.to_vec());
            Ok(())
        }
    }

    impl FakeDevice {
        fn uploads(&self) -> usize {
            self.uploads.load(Ordering::SeqCst)
        }

        fn words_at(&self, ptr: u64) -> Vec<u32> {
            let mem = lock(&self.mem);
            let bytes = mem.get(&ptr).expect("nothing uploaded at this address");
            bytes.chunks_exact(4).map(|c| u32::from_ne_bytes(c.try_into().unwrap())).collect()
        }
    }

    fn cache(capacity: usize) -> (ParamCache, Arc<FakeDevice>) {
        let dev = Arc::new(FakeDevice::default());
        *lock(&dev.bounds) = Some((BASE, capacity));
        (ParamCache::new(3, BASE, capacity, dev.clone()), dev)
    }

    /// Random non-zero words, `len` of them.
    fn words(rng: &mut StdRng, len: usize) -> Vec<u32> {
        (0..len).map(|_| rng.random_range(1..=u32::MAX)).collect()
    }

    /// Four distinct random words: exactly one 16-byte block each.
    fn distinct_keys(rng: &mut StdRng, n: usize) -> Vec<Vec<u32>> {
        let mut keys: Vec<Vec<u32>> = Vec::new();
        while keys.len() < n {
            let k = words(rng, 4);
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        keys
    }

    fn present(c: &ParamCache, w: &[u32]) -> bool {
        c.get_or_insert(w, true).is_ok()
    }

    impl ParamCache {
        /// (ptr, block bytes) of every live entry, sorted by address.
        fn live_blocks(&self) -> Vec<(u64, usize)> {
            let mut v: Vec<_> = self
                .0
                .shards
                .iter()
                .flat_map(|s| read(&s.map).values().map(|e| (e.ptr, e.block_bytes)).collect::<Vec<_>>())
                .collect();
            v.sort_unstable();
            v
        }
    }

    fn assert_disjoint_in_arena(c: &ParamCache) {
        let blocks = c.live_blocks();
        for &(ptr, len) in &blocks {
            assert_eq!(ptr % BLOCK_ALIGN as u64, 0, "block {ptr:#x} is not 16-byte aligned");
            assert!(ptr >= c.arena_base() && ptr + len as u64 <= c.arena_base() + c.capacity() as u64);
        }
        for w in blocks.windows(2) {
            assert!(w[0].0 + w[0].1 as u64 <= w[1].0, "blocks {:x?} and {:x?} overlap", w[0], w[1]);
        }
        assert_eq!(blocks.iter().map(|b| b.1).sum::<usize>(), c.stats().bytes_used);
    }

    #[test]
    fn same_words_give_same_pointer_and_one_upload() {
        let mut rng = StdRng::seed_from_u64(1);
        let (c, dev) = cache(4096);
        let w = words(&mut rng, 12);
        let p1 = c.get_or_insert(&w, false).unwrap();
        let p2 = c.get_or_insert(&w, false).unwrap();
        let p3 = c.get_or_insert(&w.clone(), true).unwrap();
        assert_eq!((p1, p2), (p3, p3));
        assert_eq!(dev.uploads(), 1);
        assert_eq!(dev.words_at(p1), w);
    }

    #[test]
    fn different_words_get_disjoint_aligned_blocks_holding_their_bytes() {
        let mut rng = StdRng::seed_from_u64(2);
        let (c, dev) = cache(64 * 1024);
        let mut seen = HashMap::new();
        for _ in 0..200 {
            let len = rng.random_range(1..=MAX_KEY_WORDS);
            let w = words(&mut rng, len);
            let p = c.get_or_insert(&w, false).unwrap();
            assert!(seen.insert(p, w).is_none(), "two keys share {p:#x}");
        }
        assert_eq!(dev.uploads(), 200);
        assert_disjoint_in_arena(&c);
        for (p, w) in &seen {
            assert_eq!(&dev.words_at(*p), w);
            assert_eq!(c.get_or_insert(w, true).unwrap(), *p);
        }
        // A prefix of a key is a different key.
        let (p, w) = seen.iter().find(|(_, w)| w.len() > 1).unwrap();
        assert_ne!(c.get_or_insert(&w[..w.len() - 1], false).unwrap(), *p);
    }

    #[test]
    fn unaligned_arena_base_is_rounded_up() {
        let dev = Arc::new(FakeDevice::default());
        let c = ParamCache::new(0, BASE + 5, 100, dev.clone());
        assert_eq!((c.arena_base(), c.capacity()), (BASE + 16, 80));
        let p = c.get_or_insert(&[7, 9, 11], false).unwrap();
        assert_eq!(p, BASE + 16);
    }

    #[test]
    fn miss_while_capturing_is_a_capture_violation_without_upload() {
        let mut rng = StdRng::seed_from_u64(3);
        let (c, dev) = cache(4096);
        let w = words(&mut rng, 6);
        let err = c.get_or_insert(&w, true).unwrap_err();
        assert!(matches!(&err, CudaError::CaptureViolation { op } if op == "param cache miss"), "{err:?}");
        assert_eq!(dev.uploads(), 0);
        assert_eq!(c.stats().entries, 0);
        // Warm-up fills it; the same lookup under capture then succeeds.
        let p = c.get_or_insert(&w, false).unwrap();
        assert_eq!(c.get_or_insert(&w, true).unwrap(), p);
        assert_eq!(dev.uploads(), 1);
    }

    #[test]
    fn too_many_words_is_rejected() {
        let mut rng = StdRng::seed_from_u64(4);
        let (c, dev) = cache(4096);
        let err = c.get_or_insert(&words(&mut rng, MAX_KEY_WORDS + 1), false).unwrap_err();
        assert!(matches!(err, CudaError::Tensor(encore_tensor::Error::InvalidArgument { .. })), "{err:?}");
        assert_eq!(dev.uploads(), 0);
        assert!(c.get_or_insert(&words(&mut rng, MAX_KEY_WORDS), false).is_ok());
    }

    #[test]
    fn full_cache_evicts_the_least_recently_used_unpinned_entry() {
        let mut rng = StdRng::seed_from_u64(5);
        let (c, dev) = cache(3 * 16);
        let k = distinct_keys(&mut rng, 5);
        let pa = c.get_or_insert(&k[0], false).unwrap();
        let pb = c.get_or_insert(&k[1], false).unwrap();
        let pc = c.get_or_insert(&k[2], false).unwrap();
        // A is used again, so B is now the least recently used.
        assert_eq!(c.get_or_insert(&k[0], false).unwrap(), pa);
        let pd = c.get_or_insert(&k[3], false).unwrap();
        assert_eq!(pd, pb, "D should take B's block");
        assert_eq!(dev.words_at(pd), k[3]);
        assert!(!present(&c, &k[1]));
        assert!(present(&c, &k[0]) && present(&c, &k[2]) && present(&c, &k[3]));
        assert_eq!(c.stats().evictions, 1);
        // Now C was used before A and D were touched: C goes next.
        c.get_or_insert(&k[0], false).unwrap();
        c.get_or_insert(&k[3], false).unwrap();
        assert_eq!(c.get_or_insert(&k[4], false).unwrap(), pc);
        assert!(!present(&c, &k[2]));
        assert_eq!(c.stats().evictions, 2);
        assert_disjoint_in_arena(&c);
    }

    #[test]
    fn eviction_frees_enough_contiguous_room_for_a_bigger_entry() {
        let mut rng = StdRng::seed_from_u64(6);
        let (c, dev) = cache(4 * 16);
        let k = distinct_keys(&mut rng, 4);
        let ptrs: Vec<u64> = k.iter().map(|w| c.get_or_insert(w, false).unwrap()).collect();
        // 12 words = 48 bytes: three adjacent blocks must go, the LRU ones first.
        c.get_or_insert(&k[3], false).unwrap();
        let big = words(&mut rng, 12);
        assert_eq!(c.get_or_insert(&big, false).unwrap(), ptrs[0]);
        assert_eq!(dev.words_at(ptrs[0]), big);
        assert_eq!(c.stats().evictions, 3);
        assert!(present(&c, &k[3]));
        assert_disjoint_in_arena(&c);
    }

    #[test]
    fn pinned_entries_survive_clear_and_eviction_until_the_pins_drop() {
        let mut rng = StdRng::seed_from_u64(7);
        let (c, _dev) = cache(4 * 16);
        let k = distinct_keys(&mut rng, 12);
        let pa = c.get_or_insert(&k[0], false).unwrap();
        c.get_or_insert(&k[1], false).unwrap();
        // "Capture" that references A only.
        let scope = c.begin_pin_scope();
        assert_eq!(c.get_or_insert(&k[0], true).unwrap(), pa);
        assert_eq!(c.get_or_insert(&k[0], true).unwrap(), pa);
        let pins = scope.finish();
        assert_eq!((pins.len(), pins.ptrs().collect::<Vec<_>>()), (1, vec![pa]));
        assert_eq!(c.stats().pinned, 1);
        // Lookups after the scope finished pin nothing more.
        c.get_or_insert(&k[1], false).unwrap();
        assert_eq!(c.stats().pinned, 1);

        assert_eq!(c.clear(), 1);
        assert!(present(&c, &k[0]) && !present(&c, &k[1]));
        // Churn far more keys than fit: A is the least recently used, yet stays.
        for w in &k[2..] {
            c.get_or_insert(w, false).unwrap();
        }
        assert!(c.stats().evictions >= 7);
        assert_eq!(c.get_or_insert(&k[0], true).unwrap(), pa);
        assert_disjoint_in_arena(&c);

        drop(pins);
        assert_eq!(c.stats().pinned, 0);
        for w in &k[2..] {
            c.get_or_insert(w, false).unwrap();
        }
        assert!(!present(&c, &k[0]), "A should be evictable once unpinned");
        assert_eq!(c.clear(), 4);
        assert_eq!(c.stats().bytes_used, 0);
    }

    #[test]
    fn dropping_an_unfinished_scope_releases_its_pins() {
        let mut rng = StdRng::seed_from_u64(8);
        let (c, _dev) = cache(4096);
        let k = distinct_keys(&mut rng, 2);
        let scope = c.begin_pin_scope();
        c.get_or_insert(&k[0], false).unwrap(); // a miss inside the scope is recorded too
        c.get_or_insert(&k[1], false).unwrap();
        assert_eq!(scope.len(), 2);
        assert_eq!(c.stats().pinned, 2);
        drop(scope); // the capture failed: no graph keeps the pins
        assert_eq!(c.stats().pinned, 0);
        assert_eq!(c.clear(), 2);
    }

    #[test]
    fn overlapping_scopes_pin_independently() {
        let mut rng = StdRng::seed_from_u64(9);
        let (c, _dev) = cache(4096);
        let k = distinct_keys(&mut rng, 3);
        for w in &k {
            c.get_or_insert(w, false).unwrap();
        }
        let outer = c.begin_pin_scope();
        c.get_or_insert(&k[0], true).unwrap();
        let inner = c.begin_pin_scope();
        c.get_or_insert(&k[0], true).unwrap();
        c.get_or_insert(&k[1], true).unwrap();
        let inner_pins = inner.finish();
        c.get_or_insert(&k[2], true).unwrap();
        let outer_pins = outer.finish();
        assert_eq!((outer_pins.len(), inner_pins.len()), (3, 2));
        assert_eq!(c.stats().pinned, 3);
        drop(outer_pins);
        assert_eq!(c.stats().pinned, 2);
        assert_eq!(c.clear(), 1);
        drop(inner_pins);
        assert_eq!(c.clear(), 2);
    }

    #[test]
    fn cache_full_when_every_entry_is_pinned() {
        let mut rng = StdRng::seed_from_u64(10);
        let (c, dev) = cache(2 * 16);
        let k = distinct_keys(&mut rng, 3);
        let scope = c.begin_pin_scope();
        c.get_or_insert(&k[0], false).unwrap();
        c.get_or_insert(&k[1], false).unwrap();
        let pins = scope.finish();
        let err = c.get_or_insert(&k[2], false).unwrap_err();
        assert!(matches!(err, CudaError::CacheFull { capacity: 32 }), "{err:?}");
        assert_eq!(dev.uploads(), 2);
        assert!(present(&c, &k[0]) && present(&c, &k[1]));
        assert_eq!(c.stats().evictions, 0);
        drop(pins);
        assert!(c.get_or_insert(&k[2], false).is_ok());
    }

    #[test]
    fn an_entry_that_cannot_fit_evicts_nothing() {
        let mut rng = StdRng::seed_from_u64(11);
        let (c, _dev) = cache(2 * 16);
        let k = distinct_keys(&mut rng, 2);
        let scope = c.begin_pin_scope();
        c.get_or_insert(&k[0], false).unwrap();
        let _pins = scope.finish();
        c.get_or_insert(&k[1], false).unwrap();
        // 8 words = 32 bytes: only possible by evicting everything, and k[0] is pinned.
        let err = c.get_or_insert(&words(&mut rng, 8), false).unwrap_err();
        assert!(matches!(err, CudaError::CacheFull { .. }), "{err:?}");
        assert!(present(&c, &k[1]), "an unpinned entry was evicted for nothing");
        assert_eq!(c.stats().evictions, 0);
        // Bigger than the whole arena.
        let err = c.get_or_insert(&words(&mut rng, 9), false).unwrap_err();
        assert!(matches!(err, CudaError::CacheFull { capacity: 32 }), "{err:?}");
    }

    #[test]
    fn failed_upload_frees_its_block_and_is_retried() {
        let mut rng = StdRng::seed_from_u64(12);
        let (c, dev) = cache(16);
        let w = words(&mut rng, 4);
        dev.fail.store(true, Ordering::SeqCst);
        assert!(matches!(c.get_or_insert(&w, false), Err(CudaError::Driver { .. })));
        assert_eq!((c.stats().entries, c.stats().bytes_used), (0, 0));
        dev.fail.store(false, Ordering::SeqCst);
        assert_eq!(c.get_or_insert(&w, false).unwrap(), BASE);
        assert_eq!(dev.words_at(BASE), w);
    }

    #[test]
    fn stats_count_exactly() {
        let mut rng = StdRng::seed_from_u64(13);
        let (c, _dev) = cache(3 * 16);
        let k = distinct_keys(&mut rng, 4);
        c.get_or_insert(&k[0], true).unwrap_err(); // miss (violation)
        c.get_or_insert(&k[0], false).unwrap(); // miss
        c.get_or_insert(&k[0], false).unwrap(); // hit
        c.get_or_insert(&k[1], false).unwrap(); // miss
        c.get_or_insert(&k[2], false).unwrap(); // miss
        c.get_or_insert(&k[1], false).unwrap(); // hit
        c.get_or_insert(&k[3], false).unwrap(); // miss, evicts k[0]
        c.get_or_insert(&k[1], true).unwrap(); // hit
        let scope = c.begin_pin_scope();
        c.get_or_insert(&k[1], true).unwrap(); // hit, pinned
        let pins = scope.finish();
        let expect =
            CacheStats { hits: 4, misses: 5, evictions: 1, entries: 3, bytes_used: 48, capacity: 48, pinned: 1 };
        assert_eq!(c.stats(), expect);
        assert_eq!(c.clear(), 2);
        drop(pins);
        assert_eq!(c.stats(), CacheStats { entries: 1, bytes_used: 16, pinned: 0, ..expect });
    }

    #[test]
    fn guards_nest() {
        let (c, _dev) = cache(64);
        assert!(!c.is_enabled());
        let g1 = c.enable();
        let g2 = c.clone().enable();
        assert!(c.is_enabled());
        drop(g1);
        assert!(c.is_enabled(), "the inner guard still lives");
        drop(g2);
        assert!(!c.is_enabled());
    }

    #[test]
    fn cache_and_handles_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<ParamCache>();
        check::<Pins>();
        check::<PinScope>();
        check::<CacheGuard>();
    }

    #[test]
    fn hash_spreads_keys_over_shards() {
        let mut rng = StdRng::seed_from_u64(14);
        let mut per_shard = [0usize; SHARDS];
        for _ in 0..SHARDS * 200 {
            let len = rng.random_range(1..=8);
            per_shard[Key::new(&words(&mut rng, len)).unwrap().shard()] += 1;
        }
        assert!(per_shard.iter().all(|&n| (100..=300).contains(&n)), "{per_shard:?}");
    }

    #[test]
    fn eight_threads_agree_on_every_pointer() {
        const THREADS: usize = 8;
        const LOOKUPS: usize = 20_000;
        let mut rng = StdRng::seed_from_u64(15);
        let keys: Arc<Vec<Vec<u32>>> = Arc::new(
            (0..64)
                .map(|i| {
                    let mut w = words(&mut rng, 1 + i % MAX_KEY_WORDS);
                    w[0] = i as u32 + 1; // distinct by construction
                    w
                })
                .collect(),
        );
        let (c, dev) = cache(64 * 1024);
        let start = std::sync::Barrier::new(THREADS);
        let seen: Vec<HashMap<usize, u64>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..THREADS)
                .map(|t| {
                    let (c, keys, start) = (c.clone(), keys.clone(), &start);
                    s.spawn(move || {
                        let mut rng = StdRng::seed_from_u64(100 + t as u64);
                        let mut mine = HashMap::new();
                        start.wait();
                        for n in 0..LOOKUPS {
                            // Overlapping subsets: each thread draws from 48 of the 64 keys; the
                            // first pass walks them in the same order so that misses race.
                            let i = if n < 48 { n } else { (t * 2 + rng.random_range(0..48)) % keys.len() };
                            let p = c.get_or_insert(&keys[i], false).unwrap();
                            assert_eq!(*mine.entry(i).or_insert(p), p, "key {i} moved within a thread");
                        }
                        mine
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut all = HashMap::new();
        for mine in &seen {
            for (&i, &p) in mine {
                assert_eq!(*all.entry(i).or_insert(p), p, "threads disagree on key {i}");
            }
        }
        let s = c.stats();
        assert_eq!(dev.uploads(), all.len());
        assert_eq!((s.misses as usize, s.entries), (all.len(), all.len()));
        assert_eq!(s.hits + s.misses, (THREADS * LOOKUPS) as u64);
        for (&i, &p) in &all {
            assert_eq!(dev.words_at(p), keys[i]);
        }
        assert_disjoint_in_arena(&c);
    }

    #[test]
    fn threads_churning_a_small_cache_never_touch_pinned_entries() {
        const THREADS: usize = 8;
        const LOOKUPS: usize = 5_000;
        let mut rng = StdRng::seed_from_u64(16);
        let keys = Arc::new(distinct_keys(&mut rng, 64));
        // Room for 16 of the 64 keys, 4 of which get pinned.
        let (c, dev) = cache(16 * 16);
        let scope = c.begin_pin_scope();
        let pinned: Vec<u64> = keys[..4].iter().map(|w| c.get_or_insert(w, false).unwrap()).collect();
        let pins = scope.finish();
        let uploads_before = dev.uploads();
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let (c, keys, pinned) = (c.clone(), keys.clone(), &pinned);
                s.spawn(move || {
                    let mut rng = StdRng::seed_from_u64(200 + t as u64);
                    for _ in 0..LOOKUPS {
                        let i = rng.random_range(0..keys.len());
                        let p = c.get_or_insert(&keys[i], false).unwrap();
                        if i < 4 {
                            assert_eq!(p, pinned[i], "a pinned entry moved");
                        }
                    }
                });
            }
        });
        let s = c.stats();
        let uploads = dev.uploads() - uploads_before;
        assert_eq!(s.hits + s.misses, (THREADS * LOOKUPS + 4) as u64);
        assert_eq!(s.misses as usize, uploads + 4);
        assert_eq!(s.evictions as usize + s.entries, dev.uploads(), "every upload is live or evicted");
        assert_eq!((s.entries, s.bytes_used, s.pinned), (16, 256, 4));
        for (i, &p) in pinned.iter().enumerate() {
            assert_eq!(dev.words_at(p), keys[i], "a pinned block was overwritten");
        }
        assert_disjoint_in_arena(&c);
        drop(pins);
        assert_eq!(c.clear(), 16);
    }
}
