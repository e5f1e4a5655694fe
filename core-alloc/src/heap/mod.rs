//! The central heap: every chunk the allocator holds, page runs carved from slab chunks,
//! huge allocations, the retention of empty chunks, and metadata memory, under one lock.
//! Split by concern:
//!
//! - `placement`: slab chunks in buckets by their longest free run; runs carved, freed and
//!   resized in the fullest chunk that fits;
//! - `retention`: the cache of empty chunks, its decay on the platform clock, and purging
//!   inside partly used chunks;
//! - `orphans`: slabs with live blocks given up by their arena, waiting for adoption;
//! - `huge`: whole-chunk allocations and their chunk-map records;
//! - `meta`: metadata memory (runs carved from slab chunks) and the chunk-map records of
//!   the heap's chunks.
//!
//! Concurrency: everything here runs under the one central lock, taken inside the
//! platform's slot closure (interrupts masked on kernels), never while holding another
//! allocator lock. The provider is called outside the lock wherever it can take long: new
//! chunks are obtained and their headers first touched (a huge-page fault) by the caller
//! before [`Heap::adopt`]; chunks let go come back as a [`Release`] to give back after the
//! lock is dropped. Only a chunk for metadata is obtained under the lock, when no chunk has
//! room for a metadata run (rarely: a run holds several arenas and chunk-map nodes).

use core::ptr;

use crate::chunk::{ChunkHeader, HEADER_PAGES, LIST_ORPHAN, Run, USABLE_PAGES};
use crate::config::{CHUNK_SIZE, PAGE};
use crate::size_class::CLASS_COUNT;

mod huge;
mod meta;
mod orphans;
mod placement;
mod retention;

pub(crate) use huge::MAX_REMAP_CHUNKS;
pub(crate) use placement::SlabFit;
use placement::{BUCKETS, bucket_of};

/// Counters kept by the central heap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeapCounters {
    /// Large runs live.
    pub large_live: usize,
    /// Bytes in live large runs (whole pages).
    pub large_live_bytes: usize,
    /// Bytes in slabs (whole pages; their blocks, live, cached or free, are the small
    /// allocations): what small blocks take from the chunks.
    pub slab_bytes: usize,
    /// Huge allocations live.
    pub huge_live: usize,
    /// Bytes in live huge allocations (whole chunks).
    pub huge_live_bytes: usize,
    /// Slab chunks holding at least one run.
    pub slab_chunks: usize,
    /// Empty chunks kept for reuse.
    pub cached_chunks: usize,
    /// Chunks kept for the allocator's metadata: slab chunks holding metadata runs (arenas,
    /// chunk-map nodes), which they keep for good, and in checked builds the chunks of
    /// live-bit tables (`live_bits_chunks`).
    pub meta_chunks: usize,
    /// Checked builds: chunks of live-bit tables (a table per slab chunk), among
    /// `meta_chunks`.
    pub live_bits_chunks: usize,
    /// Bytes in those metadata runs (whole pages).
    pub meta_bytes: usize,
    /// Abandoned slabs (of exited threads) with live blocks, waiting for adoption.
    pub orphan_slabs: usize,
    /// Chunks obtained from the provider since the start.
    pub chunks_obtained: usize,
    /// Chunks given back to the provider since the start.
    pub chunks_returned: usize,
    /// Requests the provider refused.
    pub provider_refusals: usize,
    /// Of `chunks_returned`: empty chunks given back because they stayed cached for the
    /// decay period (with a platform clock; see `Allocator::with_decay`).
    pub decayed_chunks: usize,
    /// Purges of free pages inside partly used chunks (provider calls; see `heap`).
    pub purges: usize,
    /// Bytes those purges covered.
    pub purged_bytes: usize,
    /// Chunks purged: each purge of a chunk splits the huge page backing it, where one did.
    pub purged_chunks: usize,
    /// Purges of the pages inside slab blocks freed in bulk (provider calls; see
    /// `Heap::purge_freed_block`): pages of partly used slabs.
    pub block_purges: usize,
    /// Bytes those purges covered.
    pub block_purged_bytes: usize,
    /// Passes over the mostly free chunks made by arenas well into a bulk free (see
    /// `Heap::purge_mostly_free`) ...
    pub bulk_passes: usize,
    /// ... and the chunks they purged (counted in `purged_chunks` too).
    pub bulk_pass_chunks: usize,
    /// Slab chunks that became dense enough to be backed by huge pages, since the start
    /// (each asked the provider once; see `HUGIFY_PAGES`).
    pub hugified_chunks: usize,
    /// Of those, purges that split the huge page of one (it may be asked again once dense).
    pub huge_page_splits: usize,
    /// Slab chunks backed by huge pages now, as far as the heap asked: hugified, not split
    /// since, and not given back.
    pub huge_slab_chunks: usize,
    /// Compact mode: the span and what is in it (all zero in the usual mode).
    pub region: crate::region::RegionCounters,
    /// Allocations that returned null, by reason, and the last one.
    pub failures: crate::region::FailureCounters,
}

/// The platform clock's reading and the decay period, for the empty cache's retention.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    /// Now, in the platform clock's nanoseconds.
    pub(crate) now: u64,
    /// How long a chunk stays cached empty before it goes back, in nanoseconds.
    pub(crate) decay: u64,
}

/// Chunks the heap let go of, to be given back to the provider by the caller once the
/// heap lock is dropped (a provider call can be a system call, and must not hold up other
/// CPUs waiting for the lock).
#[must_use]
pub(crate) struct Release {
    /// Single chunks, linked through their headers' `next`.
    pub(crate) chunks: *mut ChunkHeader,
}

impl Release {
    /// Nothing to give back.
    pub(crate) const NOTHING: Self = Self { chunks: ptr::null_mut() };

    /// Whether `chunk` is among the chunks to give back.
    pub(crate) fn holds(&self, chunk: *mut ChunkHeader) -> bool {
        let mut next = self.chunks;
        while !next.is_null() {
            if next == chunk {
                return true;
            }
            // SAFETY: released chunks are ours, linked through their headers' `next`.
            next = unsafe { (*next).next };
        }
        false
    }

    /// Both lists of chunks as one.
    pub(crate) fn and(self, other: Release) -> Release {
        if self.chunks.is_null() {
            return other;
        }
        let mut last = self.chunks;
        // SAFETY: released chunks are ours, linked through their headers' `next`, and
        // belong to one list each.
        unsafe {
            while !(*last).next.is_null() {
                last = (*last).next;
            }
            (*last).next = other.chunks;
        }
        self
    }
}

/// The central heap's state; see the module documentation.
pub(crate) struct Heap {
    buckets: [*mut ChunkHeader; BUCKETS],
    /// Abandoned slabs with live blocks, per size class, waiting for adoption (doubly
    /// linked through `Run::next`/`prev`, tagged `LIST_ORPHAN`).
    orphans: [*mut Run; CLASS_COUNT],
    /// Empty slab chunks, newest at the head, oldest at the tail.
    empty_head: *mut ChunkHeader,
    empty_tail: *mut ChunkHeader,
    /// The clock's time before which the purge pass does not run again.
    next_purge: u64,
    meta_cursor: usize,
    meta_end: usize,
    meta_zeroed: bool,
    /// Zeroed chunk-map nodes a [`NodeReserve`] gave back, linked through their first word
    /// (cleared again when handed out).
    spare_nodes: *mut u8,
    /// The number of nodes on `spare_nodes`.
    spare_count: usize,
    /// A chunk being taken in for a run ([`Heap::adopt`]), formatted and empty, which a new
    /// metadata run may come from while the chunk is recorded (null otherwise).
    adopting: *mut ChunkHeader,
    /// The chunks holding metadata runs, newest last (the first `META_HOMES`), where a new
    /// run goes if one has room, so that metadata gathers in few chunks.
    meta_homes: [*mut ChunkHeader; meta::META_HOMES],
    /// Pages of the next metadata run, at least (see `meta`).
    meta_run_pages: usize,
    /// Checked builds: side tables of chunks given back, kept for reuse (linked through
    /// their first word).
    #[cfg(feature = "checked")]
    spare_live_bits: *mut u8,
    /// Checked builds: where the next live-bit table goes, and the end of its chunk.
    #[cfg(feature = "checked")]
    bits_cursor: usize,
    #[cfg(feature = "checked")]
    bits_end: usize,
    pub(crate) counters: HeapCounters,
    /// Compact mode's span (see `region`).
    pub(crate) region: Option<crate::region::Region>,
}

// SAFETY: the raw pointers are chunk headers owned by the heap; the heap is only used
// under its lock, from whichever CPU holds it.
unsafe impl Send for Heap {}
impl Heap {
    pub(crate) const fn new() -> Self {
        Self {
            buckets: [ptr::null_mut(); BUCKETS],
            orphans: [ptr::null_mut(); CLASS_COUNT],
            empty_head: ptr::null_mut(),
            empty_tail: ptr::null_mut(),
            next_purge: 0,
            meta_cursor: 0,
            meta_end: 0,
            meta_zeroed: false,
            spare_nodes: ptr::null_mut(),
            spare_count: 0,
            adopting: ptr::null_mut(),
            meta_homes: [ptr::null_mut(); meta::META_HOMES],
            meta_run_pages: meta::META_RUN_PAGES,
            #[cfg(feature = "checked")]
            spare_live_bits: ptr::null_mut(),
            #[cfg(feature = "checked")]
            bits_cursor: 0,
            #[cfg(feature = "checked")]
            bits_end: 0,
            counters: HeapCounters {
                large_live: 0,
                large_live_bytes: 0,
                slab_bytes: 0,
                huge_live: 0,
                huge_live_bytes: 0,
                slab_chunks: 0,
                cached_chunks: 0,
                meta_chunks: 0,
                meta_bytes: 0,
                live_bits_chunks: 0,
                orphan_slabs: 0,
                chunks_obtained: 0,
                chunks_returned: 0,
                provider_refusals: 0,
                decayed_chunks: 0,
                purges: 0,
                purged_bytes: 0,
                purged_chunks: 0,
                block_purges: 0,
                block_purged_bytes: 0,
                bulk_passes: 0,
                bulk_pass_chunks: 0,
                hugified_chunks: 0,
                huge_page_splits: 0,
                huge_slab_chunks: 0,
                region: crate::region::RegionCounters {
                    span_bytes: 0,
                    fit: crate::fit::FitCounters {
                        capacity: 0,
                        free_bytes: 0,
                        used_blocks: 0,
                        largest_free: 0,
                    },
                    slab_pages: 0,
                    blocks_live: 0,
                    blocks_live_bytes: 0,
                },
                failures: crate::region::FailureCounters {
                    out_of_memory: 0,
                    fragmented: 0,
                    too_big: 0,
                    last: None,
                },
            },
            region: None,
        }
    }

    /// Checks every chunk's header and the lists against the counters; returns a description
    /// of the first inconsistency.
    pub(crate) fn check_invariants(&self) -> Result<(), &'static str> {
        let mut slab_chunks = 0;
        let mut meta_chunks = 0;
        for (bucket, &head) in self.buckets.iter().enumerate() {
            let mut chunk = head;
            let mut prev = ptr::null_mut();
            while !chunk.is_null() {
                // SAFETY: listed chunks are formatted slab chunks; the lock is held.
                unsafe {
                    ChunkHeader::check_invariants(chunk)?;
                    if (*chunk).bucket as usize != bucket
                        || bucket_of((*chunk).longest_free as usize) != bucket
                    {
                        return Err("a chunk is in the wrong bucket");
                    }
                    if (*chunk).prev != prev {
                        return Err("broken back link in a bucket");
                    }
                    if (*chunk).free_count as usize == USABLE_PAGES {
                        return Err("an empty chunk is still in a bucket");
                    }
                    meta_chunks += usize::from((*chunk).holds_meta);
                    prev = chunk;
                    chunk = (*chunk).next;
                }
                slab_chunks += 1;
            }
        }
        if slab_chunks != self.counters.slab_chunks {
            return Err("slab chunk count disagrees with the buckets");
        }
        // Chunks holding metadata stay slab chunks, filed in buckets, for good (new metadata
        // runs are carved in them by `carve_in`, which needs them filed).
        if meta_chunks + self.counters.live_bits_chunks != self.counters.meta_chunks {
            return Err("metadata chunk count disagrees with the buckets' chunks holding metadata");
        }
        let mut spares = 0;
        let mut node = self.spare_nodes;
        while !node.is_null() {
            // SAFETY: spare nodes are linked through their first word; the lock is held.
            node = unsafe { node.cast::<*mut u8>().read() };
            spares += 1;
        }
        if spares != self.spare_count {
            return Err("spare node count disagrees with the spare list");
        }
        for &home in self.meta_homes.iter().filter(|home| !home.is_null()) {
            // SAFETY: homes are chunks holding metadata; the lock is held.
            if !unsafe { (*home).holds_meta } {
                return Err("a metadata home holds no metadata");
            }
        }
        let mut cached = 0;
        let mut chunk = self.empty_head;
        while !chunk.is_null() {
            // SAFETY: as above.
            unsafe {
                ChunkHeader::check_invariants(chunk)?;
                if (*chunk).free_count as usize != USABLE_PAGES
                    || (*chunk).free_runs.count_ones() as usize + 1 != 64
                {
                    return Err("a cached chunk is not empty");
                }
                if (*chunk).next.is_null() && chunk != self.empty_tail {
                    return Err("the empty cache's tail is wrong");
                }
                // Oldest last: decay takes chunks from the tail while they are due.
                if !(*chunk).next.is_null() && (*(*chunk).next).empty_since > (*chunk).empty_since {
                    return Err("the empty cache is not ordered newest first");
                }
                chunk = (*chunk).next;
            }
            cached += 1;
        }
        if cached != self.counters.cached_chunks {
            return Err("cached chunk count disagrees with the cache");
        }
        let mut orphans = 0;
        for (class, &head) in self.orphans.iter().enumerate() {
            let mut run = head;
            while !run.is_null() {
                // SAFETY: listed orphans are live slabs; the lock is held.
                unsafe {
                    if (*run).list != LIST_ORPHAN || (*run).class as usize != class {
                        return Err("an orphan list holds a slab not tagged as its orphan");
                    }
                    run = (*run).next;
                }
                orphans += 1;
            }
        }
        if orphans != self.counters.orphan_slabs {
            return Err("orphan count disagrees with the orphan lists");
        }
        if HEADER_PAGES * PAGE > CHUNK_SIZE {
            return Err("header larger than a chunk");
        }
        Ok(())
    }
}
