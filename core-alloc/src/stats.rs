//! Statistics: what is live, per size class, and what the heap holds and gave back.
//!
//! Each arena counts the blocks it hands out and the blocks freed from its slot (a block
//! freed on another CPU is counted there), per size class, with plain relaxed loads and
//! stores: no atomic read-modify-write on the fast path. A snapshot sums the arenas; while
//! other CPUs allocate it is approximate (a free may be seen before its allocation), and
//! exact when they are quiet.
#![forbid(unsafe_code)]

use core::fmt;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

pub use crate::heap::HeapCounters;
use crate::size_class::{CLASS_COUNT, class_size};

/// Adds one to a counter only its owner writes (a relaxed load and store, no locked
/// instruction).
#[inline(always)]
pub(crate) fn count_one(counter: &AtomicU64) {
    counter.store(counter.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
}

/// Counts of one size class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClassStats {
    /// The block size.
    pub block_size: usize,
    /// Blocks handed out since the start.
    pub allocations: u64,
    /// Blocks freed since the start.
    pub frees: u64,
    /// Freed blocks the arenas' front caches hold for their next allocations (counted in
    /// `frees`; their slabs count them as handed out until the caches give them back).
    pub cached: u64,
}

impl ClassStats {
    /// Blocks live now (0 if a racing snapshot saw more frees than allocations).
    pub fn live(&self) -> u64 {
        self.allocations.saturating_sub(self.frees)
    }
}

/// A snapshot of the allocator's statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Per size class, smallest first.
    pub classes: [ClassStats; CLASS_COUNT],
    /// The central heap's counters: large and huge allocations, chunks.
    pub heap: HeapCounters,
    /// Arenas created (slots that have allocated or freed).
    pub arenas: usize,
    /// Freed large runs the arenas keep for their next large allocations (not counted in
    /// `heap.large_live`).
    pub large_cached: usize,
    /// Bytes of those runs.
    pub large_cached_bytes: usize,
}

impl Stats {
    pub(crate) fn new() -> Self {
        let mut classes = [ClassStats::default(); CLASS_COUNT];
        for (index, class) in classes.iter_mut().enumerate() {
            class.block_size = class_size(index);
        }
        Self { classes, heap: HeapCounters::default(), arenas: 0, large_cached: 0, large_cached_bytes: 0 }
    }

    /// Bytes in live small blocks (whole blocks).
    pub fn small_live_bytes(&self) -> usize {
        self.classes.iter().map(|class| class.live() as usize * class.block_size).sum()
    }

    /// Bytes in live blocks of every kind: small blocks, large runs and huge allocations,
    /// each counted at its rounded-up size.
    pub fn live_bytes(&self) -> usize {
        self.small_live_bytes()
            + self.heap.large_live_bytes
            + self.heap.huge_live_bytes
            + self.heap.region.blocks_live_bytes
    }

    /// Live allocations of every kind.
    pub fn live_allocations(&self) -> u64 {
        let small: u64 = self.classes.iter().map(ClassStats::live).sum();
        small + (self.heap.large_live + self.heap.huge_live + self.heap.region.blocks_live) as u64
    }

    /// Chunks the allocator holds from its provider: slab chunks (metadata runs among
    /// them), cached empty chunks and huge allocations.
    pub fn chunks_held(&self) -> usize {
        self.heap.chunks_obtained - self.heap.chunks_returned
    }

    /// Whether nothing is in use but the allocator's own metadata: no slab, no large run or
    /// huge allocation, and no slab chunk but those holding metadata runs (empty chunks in
    /// the cache aside). What a heap with nothing live comes to once its arenas let go of
    /// what they keep (`Allocator::collect` on every CPU).
    pub fn holds_nothing_but_metadata(&self) -> bool {
        let heap = &self.heap;
        heap.slab_bytes == 0
            && heap.large_live == 0
            && heap.huge_live == 0
            && heap.slab_chunks + heap.live_bits_chunks == heap.meta_chunks
    }

    /// Bytes given back to the provider since the start.
    pub fn bytes_returned(&self) -> usize {
        self.heap.chunks_returned * crate::config::CHUNK_SIZE
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MIB: f64 = (1 << 20) as f64;
        writeln!(
            f,
            "live: {} allocations, {:.2} MiB (small {:.2} in {:.2} of slabs, large {} runs {:.2}, huge {} {:.2})",
            self.live_allocations(),
            self.live_bytes() as f64 / MIB,
            self.small_live_bytes() as f64 / MIB,
            self.heap.slab_bytes as f64 / MIB,
            self.heap.large_live,
            self.heap.large_live_bytes as f64 / MIB,
            self.heap.huge_live,
            self.heap.huge_live_bytes as f64 / MIB,
        )?;
        writeln!(
            f,
            "chunks: {} held ({} slab, {} of them with metadata ({} KiB), {} cached empty), {} obtained, {} returned ({} after the decay period); {} arenas; {} orphan slabs; {} refusals; {} large runs cached ({} KiB)",
            self.chunks_held(),
            self.heap.slab_chunks,
            self.heap.meta_chunks - self.heap.live_bits_chunks,
            self.heap.meta_bytes / 1024,
            self.heap.cached_chunks,
            self.heap.chunks_obtained,
            self.heap.chunks_returned,
            self.heap.decayed_chunks,
            self.arenas,
            self.heap.orphan_slabs,
            self.heap.provider_refusals,
            self.large_cached,
            self.large_cached_bytes / 1024,
        )?;
        if self.heap.hugified_chunks > 0 {
            writeln!(
                f,
                "huge pages: {} of {} slab chunks dense enough for one ({} asked since the start, {} split by purges)",
                self.heap.huge_slab_chunks,
                self.heap.slab_chunks + self.heap.cached_chunks,
                self.heap.hugified_chunks,
                self.heap.huge_page_splits,
            )?;
        }
        if self.heap.purges > 0 {
            writeln!(
                f,
                "purged: {:.2} MiB of free pages in partly used chunks ({} calls, {} chunks)",
                self.heap.purged_bytes as f64 / MIB,
                self.heap.purges,
                self.heap.purged_chunks,
            )?;
        }
        if self.heap.block_purges > 0 {
            writeln!(
                f,
                "purged: {:.2} MiB inside slab blocks freed in bulk ({} calls)",
                self.heap.block_purged_bytes as f64 / MIB,
                self.heap.block_purges,
            )?;
        }
        if self.heap.bulk_passes > 0 {
            writeln!(
                f,
                "bulk frees: {} passes over mostly free chunks, purging {} chunks",
                self.heap.bulk_passes, self.heap.bulk_pass_chunks,
            )?;
        }
        let region = &self.heap.region;
        if region.span_bytes > 0 {
            writeln!(
                f,
                "compact span: {} KiB, {} KiB free (largest piece {} KiB), {} slab pages, {} fit blocks live ({} KiB)",
                region.span_bytes / 1024,
                region.fit.free_bytes / 1024,
                region.fit.largest_free / 1024,
                region.slab_pages,
                region.blocks_live,
                region.blocks_live_bytes / 1024,
            )?;
        }
        let failures = &self.heap.failures;
        if let Some(last) = failures.last {
            writeln!(
                f,
                "failed allocations: {} out of memory, {} fragmented, {} too big; last: {:?}, {} bytes aligned to {}",
                failures.out_of_memory,
                failures.fragmented,
                failures.too_big,
                last.reason,
                last.size,
                last.align,
            )?;
        }
        // One row per size class used so far: block size, blocks live now, blocks handed out
        // since the start, the bytes the live ones take, and freed blocks in front caches.
        write!(
            f,
            "{:>10} {:>12} {:>14} {:>12} {:>8}",
            "size class", "live", "allocated", "live KiB", "cached"
        )?;
        for class in self.classes.iter().filter(|class| class.allocations > 0) {
            write!(
                f,
                "\n{:>8} B {:>12} {:>14} {:>12} {:>8}",
                class.block_size,
                class.live(),
                class.allocations,
                class.live() * class.block_size as u64 / 1024,
                class.cached,
            )?;
        }
        Ok(())
    }
}

/// Per-class counters of one arena, written by the slot holder only (relaxed loads and
/// stores). The fast paths count one thing a pair: a free (onto the front cache or not);
/// an allocation served by the front cache is not counted but derived, since the stack
/// gains a block only by a counted free and loses one only by such an allocation or by a
/// counted flush: served = frees - frees_to_slabs - flushed - blocks on the stack now.
/// (Counting both cost the kernel's pair one read-modify-write on x86-64, three
/// instructions on AArch64.)
pub(crate) struct ArenaCounters {
    /// Allocations not served by the front cache.
    pub allocations: [AtomicU64; CLASS_COUNT],
    /// Every free, pushed on the front cache or not.
    pub frees: [AtomicU64; CLASS_COUNT],
    /// Frees that did not end on the front cache (its stack for the class absent or turned
    /// off, or a flush that began a bulk free).
    pub frees_to_slabs: [AtomicU64; CLASS_COUNT],
    /// Blocks the front cache gave to their slabs (flushes).
    pub flushed: [AtomicU64; CLASS_COUNT],
    /// Runs in the arena's large cache, and their pages.
    large_cached: AtomicUsize,
    large_cached_pages: AtomicUsize,
}

impl ArenaCounters {
    /// Adds this arena's counts to a snapshot; `cached(class)` is the blocks on the class's
    /// stack now. Read while the holder works (relaxed loads of counts it stores one after
    /// another), a class's derived allocations may be off by the blocks of its operation in
    /// flight: one for a push or a pop, up to half a stack for a flush whose new length is
    /// seen before its `flushed` count; never below zero (`miri_threads`,
    /// `statistics_read_while_caches_change`, checks the bound).
    pub(crate) fn add_to(&self, stats: &mut Stats, cached: impl Fn(usize) -> u64) {
        for (index, class) in stats.classes.iter_mut().enumerate() {
            let cached = cached(index);
            let served = self.served_by_cache(index, cached).unwrap_or(0);
            class.allocations += self.allocations[index].load(Ordering::Relaxed) + served;
            class.frees += self.frees[index].load(Ordering::Relaxed);
            class.cached += cached;
        }
        stats.large_cached += self.large_cached.load(Ordering::Relaxed);
        stats.large_cached_bytes += self.large_cached_pages.load(Ordering::Relaxed) * crate::config::PAGE;
    }

    /// The allocations of `class` the front cache served, with `cached` blocks on its stack
    /// now: the blocks it took in (frees but those that went to slabs), less those it gave to
    /// slabs and those on it. `None` when the counts do not cover the stack, which
    /// `check_invariants` reports (a snapshot racing the holder reads 0 instead).
    pub(crate) fn served_by_cache(&self, class: usize, cached: u64) -> Option<u64> {
        self.frees[class]
            .load(Ordering::Relaxed)
            .checked_sub(self.frees_to_slabs[class].load(Ordering::Relaxed))?
            .checked_sub(self.flushed[class].load(Ordering::Relaxed))?
            .checked_sub(cached)
    }

    /// Records what the arena's large cache holds now (owner only).
    pub(crate) fn note_large_cache(&self, runs: usize, pages: usize) {
        self.large_cached.store(runs, Ordering::Relaxed);
        self.large_cached_pages.store(pages, Ordering::Relaxed);
    }
}
