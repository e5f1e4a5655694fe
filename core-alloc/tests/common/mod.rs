//! Helpers shared by the integration tests: a provider wrapper that counts chunks at the
//! provider boundary and can refuse after a limit, and allocator constructors.
#![allow(dead_code)] // each test binary uses a different subset
#![allow(unreachable_pub)] // a test module: `pub` is how the test files reach it

use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};

use core_alloc::Allocator;
use page_provider::fixed::FixedRegion;
use page_provider::linux::MmapProvider;
use page_provider::{CHUNK_SIZE, Capabilities, Chunks, PageProvider, Supply};
use platform::host::HostPlatform;

/// Wraps a provider: counts the chunks it hands out and takes back, and refuses every
/// request once `limit` chunks would be outstanding.
pub struct Metered<P> {
    inner: P,
    obtained: AtomicUsize,
    returned: AtomicUsize,
    refused: AtomicUsize,
    remapped: AtomicUsize,
    hugified: AtomicUsize,
    hugified_fresh: AtomicUsize,
    unhugified: AtomicUsize,
    limit: AtomicUsize,
}

impl<P: PageProvider> Metered<P> {
    pub const fn new(inner: P) -> Self {
        Self {
            inner,
            obtained: AtomicUsize::new(0),
            returned: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
            remapped: AtomicUsize::new(0),
            hugified: AtomicUsize::new(0),
            hugified_fresh: AtomicUsize::new(0),
            unhugified: AtomicUsize::new(0),
            limit: AtomicUsize::new(usize::MAX),
        }
    }

    /// Refuse requests that would take more than `chunks` chunks out at once.
    pub fn set_limit(&self, chunks: usize) {
        self.limit.store(chunks, Ordering::SeqCst);
    }

    /// Chunks handed out and not taken back. `returned` is read first: a chunk is counted
    /// obtained before it can be returned, so reading `obtained` later never finds fewer than
    /// were returned (the other order underflowed when other threads returned chunks in
    /// between).
    pub fn outstanding(&self) -> usize {
        let returned = self.returned.load(Ordering::SeqCst);
        self.obtained.load(Ordering::SeqCst) - returned
    }

    pub fn obtained(&self) -> usize {
        self.obtained.load(Ordering::SeqCst)
    }

    pub fn returned(&self) -> usize {
        self.returned.load(Ordering::SeqCst)
    }

    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }

    /// Runs grown by remapping.
    pub fn remapped(&self) -> usize {
        self.remapped.load(Ordering::SeqCst)
    }

    /// Chunks the allocator asked to back with huge pages while in use (`hugify` with
    /// `populated`), whatever the wrapped provider did.
    pub fn hugified(&self) -> usize {
        self.hugified.load(Ordering::SeqCst)
    }

    /// Chunks the allocator asked to back with huge pages before touching them (`hugify`
    /// without `populated`: new chunks of a big heap, huge allocations).
    pub fn hugified_fresh(&self) -> usize {
        self.hugified_fresh.load(Ordering::SeqCst)
    }

    /// Chunks whose huge-page request the allocator withdrew (`unhugify`: purged inside).
    pub fn unhugified(&self) -> usize {
        self.unhugified.load(Ordering::SeqCst)
    }
}

// SAFETY: forwards to the wrapped provider, refusing some requests; refusing is always
// allowed.
unsafe impl<P: PageProvider> PageProvider for Metered<P> {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn page_size(&self) -> usize {
        self.inner.page_size()
    }
    fn huge_page_size(&self) -> Option<usize> {
        self.inner.huge_page_size()
    }
    fn alloc_chunks(&self, count: usize) -> Option<Chunks> {
        if self.outstanding() + count > self.limit.load(Ordering::SeqCst) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return None;
        }
        let chunks = self.inner.alloc_chunks(count)?;
        self.obtained.fetch_add(count, Ordering::SeqCst);
        Some(chunks)
    }
    /// The wrapped provider's supply, bounded by the limit when there is one.
    fn supply(&self) -> Option<Supply> {
        let limit = self.limit.load(Ordering::SeqCst);
        let inner = self.inner.supply();
        if limit == usize::MAX {
            return inner;
        }
        let left = limit.saturating_sub(self.outstanding());
        Some(match inner {
            Some(inner) => Supply { available: inner.available.min(left), total: inner.total.min(limit) },
            None => Supply { available: left, total: limit },
        })
    }
    unsafe fn free_chunks(&self, base: NonNull<u8>, count: usize) {
        assert_eq!(base.as_ptr() as usize % CHUNK_SIZE, 0, "misaligned give-back");
        self.returned.fetch_add(count, Ordering::SeqCst);
        // SAFETY: forwarded promise.
        unsafe { self.inner.free_chunks(base, count) }
    }
    unsafe fn purge(&self, base: NonNull<u8>, len: usize) -> bool {
        // SAFETY: forwarded promise.
        unsafe { self.inner.purge(base, len) }
    }
    unsafe fn hugify(&self, base: NonNull<u8>, len: usize, populated: bool) -> bool {
        assert_eq!(base.as_ptr() as usize % CHUNK_SIZE, 0, "misaligned hugify");
        let count = if populated { &self.hugified } else { &self.hugified_fresh };
        count.fetch_add(len / CHUNK_SIZE, Ordering::SeqCst);
        // SAFETY: forwarded promise.
        unsafe { self.inner.hugify(base, len, populated) }
    }
    unsafe fn unhugify(&self, base: NonNull<u8>, len: usize) {
        assert_eq!(base.as_ptr() as usize % CHUNK_SIZE, 0, "misaligned unhugify");
        self.unhugified.fetch_add(len / CHUNK_SIZE, Ordering::SeqCst);
        // SAFETY: forwarded promise.
        unsafe { self.inner.unhugify(base, len) }
    }
    unsafe fn remap(&self, base: NonNull<u8>, old_count: usize, new_count: usize) -> Option<NonNull<u8>> {
        if self.outstanding() + new_count - old_count > self.limit.load(Ordering::SeqCst) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return None;
        }
        // SAFETY: forwarded promise.
        let moved = unsafe { self.inner.remap(base, old_count, new_count)? };
        self.obtained.fetch_add(new_count, Ordering::SeqCst);
        self.returned.fetch_add(old_count, Ordering::SeqCst);
        self.remapped.fetch_add(1, Ordering::SeqCst);
        Some(moved)
    }
}

pub type MmapHeap = Allocator<Metered<MmapProvider>, HostPlatform>;
pub type RegionHeap = Allocator<Metered<FixedRegion>, HostPlatform>;

/// A fresh allocator over anonymous mmap, leaked so that threads can share it.
pub fn mmap_heap() -> &'static MmapHeap {
    Box::leak(Box::new(Allocator::new(Metered::new(MmapProvider::new()), HostPlatform::new())))
}

/// A fresh allocator over a fixed region of `chunks` chunks (leaked, zeroed).
pub fn region_heap(chunks: usize) -> &'static RegionHeap {
    let bytes = vec![0u8; (chunks + 1) * CHUNK_SIZE].leak();
    // SAFETY: the leaked, zeroed vector is used by nothing else.
    let region = unsafe { FixedRegion::new(bytes.as_mut_ptr(), bytes.len(), true) };
    Box::leak(Box::new(Allocator::new(Metered::new(region), HostPlatform::new())))
}

pub type CompactHeap = Allocator<FixedRegion, HostPlatform>;

/// A fresh allocator over a span of `bytes` bytes starting `offset` bytes past a 16-byte
/// boundary (leaked, zeroed): compact mode when the span holds few whole chunks.
pub fn compact_heap(bytes: usize, offset: usize) -> &'static CompactHeap {
    let span = vec![0u128; (bytes + offset).div_ceil(16)].leak();
    let start = span.as_mut_ptr().cast::<u8>().wrapping_add(offset);
    // SAFETY: the leaked, zeroed vector is used by nothing else.
    let region = unsafe { FixedRegion::new(start, bytes, true) };
    Box::leak(Box::new(Allocator::new(region, HostPlatform::new())))
}

/// A field of `/proc/self/smaps_rollup` in KiB (`Rss:`, `AnonHugePages:`), if present.
pub fn smaps_rollup_kib(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/smaps_rollup").expect("smaps_rollup");
    text.lines()
        .find(|line| line.starts_with(field))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|value| value.parse().ok())
}

/// Blocks of `size` bytes scattered over a heap's chunks: `count` allocated, each filled with
/// its own byte (`index as u8 | 1`), the process's resident memory taken, then all but every
/// `keep_every`-th freed. Returns the kept blocks with their indices, and the resident KiB at
/// the peak.
pub fn scatter<P: PageProvider>(
    heap: &Allocator<P, HostPlatform>,
    size: usize,
    count: usize,
    keep_every: usize,
) -> (Vec<(usize, NonNull<u8>)>, u64) {
    let blocks: Vec<NonNull<u8>> = (0..count)
        .map(|index| {
            let block = heap.allocate(size, 8).expect("out of memory");
            // SAFETY: a live block of `size` bytes.
            unsafe { block.as_ptr().write_bytes(index as u8 | 1, size) };
            block
        })
        .collect();
    let peak = resident_kib();
    let mut kept = Vec::new();
    for (index, block) in blocks.into_iter().enumerate() {
        if index % keep_every == 0 {
            kept.push((index, block));
        } else {
            // SAFETY: allocated above with this size, freed once.
            unsafe { heap.deallocate(block, size, 8) };
        }
    }
    (kept, peak)
}

/// Checks that each block [`scatter`] kept still holds its byte, frees it, and checks the
/// heap.
pub fn free_scattered<P: PageProvider>(
    heap: &Allocator<P, HostPlatform>,
    size: usize,
    kept: Vec<(usize, NonNull<u8>)>,
) {
    for (index, block) in kept {
        // SAFETY: a live block of `size` bytes.
        let bytes = unsafe { std::slice::from_raw_parts(block.as_ptr(), size) };
        assert!(bytes.iter().all(|&byte| byte == index as u8 | 1), "a purge reached a live block");
        // SAFETY: allocated by `scatter` with this size, freed once.
        unsafe { heap.deallocate(block, size, 8) };
    }
    heap.check_invariants().unwrap();
}

/// The process's resident memory in KiB.
pub fn resident_kib() -> u64 {
    smaps_rollup_kib("Rss:").expect("an Rss line in smaps_rollup")
}

/// xorshift64*: deterministic test inputs.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }
}
