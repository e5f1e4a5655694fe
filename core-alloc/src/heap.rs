//! The central heap: every chunk the allocator holds, page runs carved from slab chunks,
//! huge allocations, the retention of empty chunks, and metadata memory.
//!
//! Slab chunks (chunks with a header, holding slabs and large runs) sit in buckets by the
//! length of their longest free run; bucket 0 holds the full ones and is never searched. A
//! run request scans from the bucket of its own size upwards, so it lands in a chunk with
//! the shortest free run that fits: new slabs pack into the fullest chunks, and lightly used
//! chunks drain until they are empty.
//!
//! An empty chunk goes to a cache of empty chunks, newest first. The cache keeps at most
//! `1 + chunks in use / RETAIN_DIVISOR` (and at most `RETAIN_MAX`); the oldest beyond that
//! go back to the provider at once. With a platform clock ([`Clock`]) a cached chunk also
//! goes back once it has stayed empty for the decay period (checked whenever a chunk
//! empties, on the arenas' periodic refill checks, and by `Allocator::decay`), so an idle
//! heap ends up holding no empty chunk.
//!
//! Purging (with a clock, and a provider that can purge: hosts): a slab chunk that is at
//! least half free and whose runs have not changed for the decay period has its free dirty
//! pages purged (`PageProvider::purge`: `MADV_DONTNEED` on Linux), which splits the huge
//! page backing it; the pass runs from the decay checks at most every quarter period, looks
//! at the `PURGE_SCAN_CHUNKS` most-free chunks and makes at most `PURGE_CALLS` provider
//! calls, under the lock (short system calls, rarely). A chunk is purged once per change.
//! Kernels' providers do not purge: they return memory in whole 2 MiB frames only.
//!
//! Huge allocations are whole chunks from the provider, recorded in the chunk map; a
//! single-chunk one may reuse a cached empty chunk, and a freed single-chunk one may become
//! a cached empty chunk.
//!
//! Concurrency: everything here runs under the one central lock, taken inside the
//! platform's slot closure (interrupts masked on kernels), never while holding another
//! allocator lock. The provider is called outside the lock wherever it can take long: new
//! chunks are obtained and their headers first touched (a huge-page fault) by the caller
//! before [`Heap::adopt`]; chunks let go come back as a [`Release`] to give back after the
//! lock is dropped. Only metadata chunks are obtained under the lock (rarely: one per 2 MiB
//! of arenas and chunk-map nodes).

use core::ptr::{self, NonNull};

use page_provider::PageProvider;

use crate::chunk::{
    ChunkHeader, HEADER_PAGES, LIST_NONE, LIST_ORPHAN, RUN_LARGE, RUN_SLAB, Run, RunKind, USABLE_PAGES,
    chunk_of,
};
use crate::chunk_map::{
    ChunkMap, KIND_HUGE, KIND_HUGE_TAIL, KIND_SLAB, NODE_BYTES, count_of, entry, kind_of,
};
use crate::config::{
    CHUNK_MASK, CHUNK_SIZE, PAGE, PAGES_PER_CHUNK, PURGE_CALLS, PURGE_SCAN_CHUNKS, RETAIN_DIVISOR, RETAIN_MAX,
};
use crate::size_class::CLASS_COUNT;
use crate::slab;

/// The largest huge allocation grown by remapping rather than copying, in chunks (4 GiB):
/// its records fit in the metadata reserved before the move.
pub(crate) const MAX_REMAP_CHUNKS: usize = 2048;
/// Chunk-map nodes set aside before a remap: a run of up to `MAX_REMAP_CHUNKS` chunks spans
/// at most `MAX_REMAP_CHUNKS / 512 + 1` leaves (512 entries each) and two nodes of each of the
/// three interior levels above them (each covers far more than the run).
pub(crate) const REMAP_NODES: usize = MAX_REMAP_CHUNKS / (1 << crate::chunk_map::LEVEL_BITS) + 1 + 3 * 2;

/// Zeroed chunk-map nodes taken out of the heap for one caller's records, so that nobody
/// else can use them while the caller works without the lock (a remap). What the caller
/// does not use goes back with [`Heap::return_nodes`].
#[must_use]
pub(crate) struct NodeReserve {
    nodes: [*mut u8; REMAP_NODES],
    count: usize,
}

impl NodeReserve {
    /// Hands out one of the reserved nodes.
    fn take(&mut self) -> Option<NonNull<u8>> {
        self.count = self.count.checked_sub(1)?;
        NonNull::new(self.nodes[self.count])
    }
}

/// Records the chunk-map entries of a huge allocation of `count` chunks at `base`, with
/// nodes from `new_node` where the map needs them; returns how many it recorded (all of
/// them, or the first ones until `new_node` had none). Call with the central lock held;
/// `new_node` gives zeroed metadata memory that is never freed.
fn record_huge_entries(
    map: &ChunkMap,
    base: usize,
    count: usize,
    new_node: &mut dyn FnMut() -> Option<NonNull<u8>>,
) -> usize {
    (0..count)
        .take_while(|&index| {
            let value = if index == 0 { entry(KIND_HUGE, count) } else { entry(KIND_HUGE_TAIL, index) };
            // SAFETY: the caller holds the lock; `new_node` gives zeroed, never-freed nodes.
            unsafe { map.set(base + index * CHUNK_SIZE, value, new_node) }
        })
        .count()
}

/// Buckets by longest free run: 0 (full), then 1, 2-3, 4-7, ... 256-510 pages.
const BUCKETS: usize = 10;
/// Chunks looked at in the first bucket, whose runs may be a little short, before moving on.
const SCAN_LIMIT: usize = 8;

fn bucket_of(longest_free: usize) -> usize {
    if longest_free == 0 { 0 } else { (1 + longest_free.ilog2() as usize).min(BUCKETS - 1) }
}

/// Counters kept by the central heap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeapCounters {
    /// Large runs live.
    pub large_live: usize,
    /// Bytes in live large runs (whole pages).
    pub large_live_bytes: usize,
    /// Huge allocations live.
    pub huge_live: usize,
    /// Bytes in live huge allocations (whole chunks).
    pub huge_live_bytes: usize,
    /// Slab chunks holding at least one run.
    pub slab_chunks: usize,
    /// Empty chunks kept for reuse.
    pub cached_chunks: usize,
    /// Chunks of allocator metadata.
    pub meta_chunks: usize,
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
    /// Checked builds: side tables of chunks given back, kept for reuse (linked through
    /// their first word).
    #[cfg(feature = "checked")]
    spare_live_bits: *mut u8,
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
            #[cfg(feature = "checked")]
            spare_live_bits: ptr::null_mut(),
            counters: HeapCounters {
                large_live: 0,
                large_live_bytes: 0,
                huge_live: 0,
                huge_live_bytes: 0,
                slab_chunks: 0,
                cached_chunks: 0,
                meta_chunks: 0,
                orphan_slabs: 0,
                chunks_obtained: 0,
                chunks_returned: 0,
                provider_refusals: 0,
                decayed_chunks: 0,
                purges: 0,
                purged_bytes: 0,
                purged_chunks: 0,
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

    /// Empty chunks to keep at most, given the chunks in use now (with a clock, those kept
    /// also go back once they have stayed unused for the decay period).
    fn retain_limit(&self) -> usize {
        let in_use = self.counters.slab_chunks + self.counters.huge_live_bytes / CHUNK_SIZE;
        (1 + in_use / RETAIN_DIVISOR).min(RETAIN_MAX)
    }

    /// Puts a slab chunk in the bucket of its longest free run.
    ///
    /// # Safety
    ///
    /// `chunk` is a formatted slab chunk in no list.
    unsafe fn link(&mut self, chunk: *mut ChunkHeader) {
        // SAFETY: the heap lock (held by `&mut self`) guards the list fields.
        unsafe {
            let bucket = bucket_of((*chunk).longest_free as usize);
            (*chunk).bucket = bucket as u16;
            (*chunk).prev = ptr::null_mut();
            (*chunk).next = self.buckets[bucket];
            if !self.buckets[bucket].is_null() {
                (*self.buckets[bucket]).prev = chunk;
            }
            self.buckets[bucket] = chunk;
        }
    }

    /// Takes a slab chunk out of its bucket.
    ///
    /// # Safety
    ///
    /// `chunk` is in the bucket its `bucket` field names.
    unsafe fn unlink(&mut self, chunk: *mut ChunkHeader) {
        // SAFETY: as for `link`.
        unsafe {
            let (prev, next) = ((*chunk).prev, (*chunk).next);
            if prev.is_null() {
                self.buckets[(*chunk).bucket as usize] = next;
            } else {
                (*prev).next = next;
            }
            if !next.is_null() {
                (*next).prev = prev;
            }
        }
    }

    /// Moves a chunk to the bucket its longest free run now calls for.
    ///
    /// # Safety
    ///
    /// As for [`unlink`](Self::unlink).
    unsafe fn rebucket(&mut self, chunk: *mut ChunkHeader) {
        // SAFETY: as for `link`.
        unsafe {
            if bucket_of((*chunk).longest_free as usize) != (*chunk).bucket as usize {
                self.unlink(chunk);
                self.link(chunk);
            }
        }
    }

    /// Carves a run of `pages` pages aligned to `align_pages` pages from the fullest chunk
    /// that fits, or from a cached empty chunk. Returns the descriptor (kind, first page and
    /// pages set) and whether its pages are all clean; `None` when no chunk the heap holds
    /// has room: the caller then makes a chunk outside the lock and calls [`adopt`](Self::adopt).
    pub(crate) fn alloc_run(
        &mut self,
        pages: usize,
        align_pages: usize,
        kind: RunKind,
    ) -> Option<(*mut Run, bool)> {
        debug_assert!((1..=USABLE_PAGES).contains(&pages) && align_pages.is_power_of_two());
        for bucket in bucket_of(pages)..BUCKETS {
            let mut chunk = self.buckets[bucket];
            let mut scanned = 0;
            while !chunk.is_null() && (scanned < SCAN_LIMIT || bucket > bucket_of(pages)) {
                // SAFETY: chunks in buckets are formatted slab chunks; the lock is held.
                unsafe {
                    if let Some(found) = ChunkHeader::carve(chunk, pages, align_pages, kind) {
                        self.rebucket(chunk);
                        self.count_carved(kind, pages);
                        return Some(found);
                    }
                    chunk = (*chunk).next;
                }
                scanned += 1;
            }
        }
        let chunk = self.take_empty()?;
        // SAFETY: a formatted empty slab chunk in no list; the lock is held.
        unsafe { self.carve_from_empty(chunk, pages, align_pages, kind) }
    }

    /// Carves from an empty chunk just taken out of the cache (or adopted), and files it.
    ///
    /// # Safety
    ///
    /// `chunk` is a formatted empty slab chunk in no list, recorded in the chunk map.
    unsafe fn carve_from_empty(
        &mut self,
        chunk: *mut ChunkHeader,
        pages: usize,
        align_pages: usize,
        kind: RunKind,
    ) -> Option<(*mut Run, bool)> {
        // SAFETY: the caller's promise; the lock is held.
        unsafe {
            match ChunkHeader::carve(chunk, pages, align_pages, kind) {
                Some(found) => {
                    self.counters.slab_chunks += 1;
                    self.link(chunk);
                    self.count_carved(kind, pages);
                    Some(found)
                }
                None => {
                    // A request no chunk can hold (alignment beyond what fits): keep the chunk
                    // (a fresh one counts as empty since the clock's origin).
                    self.push_empty(chunk, (*chunk).empty_since);
                    None
                }
            }
        }
    }

    /// Counts a run just carved: large runs are live allocations in the statistics.
    fn count_carved(&mut self, kind: RunKind, pages: usize) {
        if kind == RUN_LARGE {
            self.counters.large_live += 1;
            self.counters.large_live_bytes += pages * PAGE;
        }
    }

    /// Takes in a chunk the caller got from the provider and formatted outside the lock,
    /// and carves the run from it. `Err(())` when the chunk could not be recorded (no
    /// metadata memory): the caller gives it back. `Ok(None)` when even an empty chunk
    /// cannot hold the request (it stays cached).
    ///
    /// # Safety
    ///
    /// `chunk` came from the provider, is formatted by `ChunkHeader::init`, and is known to
    /// nobody else.
    pub(crate) unsafe fn adopt<P: PageProvider>(
        &mut self,
        chunk: *mut ChunkHeader,
        pages: usize,
        align_pages: usize,
        kind: RunKind,
        provider: &P,
        map: &ChunkMap,
    ) -> Result<Option<(*mut Run, bool)>, ()> {
        self.counters.chunks_obtained += 1;
        // SAFETY: the caller's promise; the lock is held.
        if !unsafe { self.take_in_slab_chunk(chunk, provider, map) } {
            return Err(());
        }
        // SAFETY: formatted, recorded, in no list.
        Ok(unsafe { self.carve_from_empty(chunk, pages, align_pages, kind) })
    }

    /// Makes a formatted chunk one of the heap's slab chunks: its checked-build bits and its
    /// chunk-map record. Returns false, undoing both and counting the chunk as given back,
    /// when out of metadata memory: the caller then gives it back to the provider.
    ///
    /// # Safety
    ///
    /// `chunk` is ours, formatted by `ChunkHeader::init`, and known to nobody else.
    unsafe fn take_in_slab_chunk<P: PageProvider>(
        &mut self,
        chunk: *mut ChunkHeader,
        provider: &P,
        map: &ChunkMap,
    ) -> bool {
        // SAFETY: the caller's promise; the lock is held.
        if unsafe { self.attach_live_bits(chunk, provider) } {
            if self.record(chunk as usize, entry(KIND_SLAB, 0), provider, map) {
                return true;
            }
            // SAFETY: attached just above; the chunk holds nothing.
            unsafe { self.detach_live_bits(chunk) };
        }
        self.counters.chunks_returned += 1;
        false
    }

    /// Gives a run's pages back to its chunk; an emptied chunk goes to the empty cache, and
    /// cached chunks beyond the retention limit are returned for the caller to give back to
    /// the provider once the lock is dropped.
    ///
    /// # Safety
    ///
    /// `run` is a live run of a slab chunk of this heap, with nothing in it live.
    pub(crate) unsafe fn free_run(&mut self, run: *mut Run, map: &ChunkMap, clock: Option<Clock>) -> Release {
        let chunk = chunk_of(run as usize);
        // SAFETY: the caller's promise; the lock is held.
        unsafe {
            // An abandoned slab whose last block was just freed leaves its orphan list.
            self.unlink_orphan(run);
            if (*run).kind == RUN_LARGE {
                self.counters.large_live -= 1;
                self.counters.large_live_bytes -= ((*run).pages as usize) * PAGE;
            }
            ChunkHeader::uncarve(run);
            self.rebucket(chunk);
            if (*chunk).free_count as usize != USABLE_PAGES {
                return Release::NOTHING;
            }
            self.unlink(chunk);
            self.counters.slab_chunks -= 1;
            self.push_empty(chunk, clock.map_or(0, |clock| clock.now));
        }
        let release = self.trim(self.retain_limit(), map);
        match clock {
            Some(clock) => release.and(self.trim_decayed(clock, map)),
            None => release,
        }
    }

    /// Files an abandoned slab on the orphan list of its class.
    ///
    /// # Safety
    ///
    /// `run` was just abandoned by a caller who held this lock since before it published
    /// the abandonment, so no free of its last block can have released it yet.
    pub(crate) unsafe fn push_orphan(&mut self, run: *mut Run) {
        // SAFETY: the lock guards orphan lists; the slab is on no other list.
        unsafe {
            let head = ptr::addr_of_mut!(self.orphans[(*run).class as usize]);
            (*run).prev = ptr::null_mut();
            (*run).next = *head;
            if !(*head).is_null() {
                (**head).prev = run;
            }
            *head = run;
            (*run).list = LIST_ORPHAN;
        }
        self.counters.orphan_slabs += 1;
    }

    /// Takes a slab off the orphan list it is on, if it is on one.
    ///
    /// # Safety
    ///
    /// `run` is a live run of this heap.
    pub(crate) unsafe fn unlink_orphan(&mut self, run: *mut Run) {
        // SAFETY: the lock guards orphan lists and their tags; only slabs carry list tags.
        unsafe {
            if (*run).kind != RUN_SLAB || (*run).list != LIST_ORPHAN {
                return;
            }
            let (prev, next) = ((*run).prev, (*run).next);
            if prev.is_null() {
                self.orphans[(*run).class as usize] = next;
            } else {
                (*prev).next = next;
            }
            if !next.is_null() {
                (*next).prev = prev;
            }
            (*run).list = LIST_NONE;
        }
        self.counters.orphan_slabs -= 1;
    }

    /// Adopts an orphan of `class` for `slot`: its free blocks become the slot's to
    /// allocate. Orphans whose last block is being freed are left for their freer.
    ///
    /// # Safety
    ///
    /// The caller holds `slot`.
    pub(crate) unsafe fn adopt_orphan(&mut self, class: usize, slot: usize) -> Option<*mut Run> {
        let mut run = self.orphans[class];
        while !run.is_null() {
            // SAFETY: listed orphans are live slabs kept by the list; the lock is held.
            unsafe {
                if slab::adopt(run, slot) {
                    self.unlink_orphan(run);
                    return Some(run);
                }
                run = (*run).next;
            }
        }
        None
    }

    /// Resizes a live large run in place; returns false when it cannot grow there.
    ///
    /// # Safety
    ///
    /// `run` is a live large run of this heap owned by the caller.
    pub(crate) unsafe fn resize_run(&mut self, run: *mut Run, pages: usize) -> bool {
        // SAFETY: the caller's promise; the lock is held.
        unsafe {
            let old_pages = (*run).pages as usize;
            let resized = ChunkHeader::resize_in_place(run, pages);
            if resized {
                self.rebucket(chunk_of(run as usize));
                self.counters.large_live_bytes =
                    self.counters.large_live_bytes - old_pages * PAGE + pages * PAGE;
            }
            resized
        }
    }

    /// Puts an empty formatted chunk at the head of the empty cache, empty since `since`
    /// (the clock's time; no earlier than the head's, so the cache stays ordered by age).
    ///
    /// # Safety
    ///
    /// `chunk` is a formatted slab chunk with no run, in no list.
    unsafe fn push_empty(&mut self, chunk: *mut ChunkHeader, since: u64) {
        // SAFETY: the lock is held; the chunk is in no list.
        unsafe {
            let newest = if self.empty_head.is_null() { 0 } else { (*self.empty_head).empty_since };
            (*chunk).empty_since = since.max(newest);
            (*chunk).bucket = u16::MAX;
            (*chunk).prev = ptr::null_mut();
            (*chunk).next = self.empty_head;
            if self.empty_head.is_null() {
                self.empty_tail = chunk;
            } else {
                (*self.empty_head).prev = chunk;
            }
        }
        self.empty_head = chunk;
        self.counters.cached_chunks += 1;
    }

    /// Takes the newest chunk from the empty cache.
    fn take_empty(&mut self) -> Option<*mut ChunkHeader> {
        let chunk = self.empty_head;
        if chunk.is_null() {
            return None;
        }
        // SAFETY: cached chunks are formatted slab chunks linked through their headers.
        unsafe {
            self.empty_head = (*chunk).next;
            if self.empty_head.is_null() {
                self.empty_tail = ptr::null_mut();
            } else {
                (*self.empty_head).prev = ptr::null_mut();
            }
            (*chunk).next = ptr::null_mut();
        }
        self.counters.cached_chunks -= 1;
        Some(chunk)
    }

    /// Takes the oldest cached empty chunks out until at most `keep` remain, and returns
    /// them for the caller to give back to the provider once the lock is dropped.
    pub(crate) fn trim(&mut self, keep: usize, map: &ChunkMap) -> Release {
        let mut release = Release::NOTHING;
        while self.counters.cached_chunks > keep {
            self.release_oldest(&mut release, map);
        }
        release
    }

    /// Takes out the cached empty chunks that have stayed there for the decay period, and
    /// returns them for the caller to give back once the lock is dropped.
    pub(crate) fn trim_decayed(&mut self, clock: Clock, map: &ChunkMap) -> Release {
        let mut release = Release::NOTHING;
        while !self.empty_tail.is_null() {
            // SAFETY: the tail is a cached chunk's formatted header (the lock is held).
            let since = unsafe { (*self.empty_tail).empty_since };
            if since.saturating_add(clock.decay) > clock.now {
                break;
            }
            self.release_oldest(&mut release, map);
            self.counters.decayed_chunks += 1;
        }
        release
    }

    /// Purges the free dirty pages of mostly free slab chunks unchanged for the decay period
    /// (see the module documentation); at most every quarter period.
    pub(crate) fn purge_idle<P: PageProvider>(&mut self, clock: Clock, provider: &P) {
        let capabilities = provider.capabilities();
        if !capabilities.contains(page_provider::Capabilities::PURGE) || clock.now < self.next_purge {
            return;
        }
        self.next_purge = clock.now.saturating_add(clock.decay / 4);
        let zeroes = capabilities.contains(page_provider::Capabilities::PURGE_ZEROES);
        let granule = (provider.page_size() / PAGE).max(1);
        let (mut visited, mut calls) = (0, 0);
        for bucket in (1..BUCKETS).rev() {
            let mut chunk = self.buckets[bucket];
            while !chunk.is_null() && visited < PURGE_SCAN_CHUNKS && calls < PURGE_CALLS {
                visited += 1;
                // SAFETY: chunks in the buckets are formatted slab chunks of this heap, and
                // the lock is held; free pages hold nothing anybody uses.
                unsafe {
                    let next = (*chunk).next;
                    if (*chunk).changed {
                        (*chunk).changed = false;
                        (*chunk).unchanged_since = clock.now;
                    } else if !(*chunk).purged
                        && clock.now.saturating_sub((*chunk).unchanged_since) >= clock.decay
                        && (*chunk).free_count as usize * 2 >= USABLE_PAGES
                    {
                        let (made, finished) =
                            self.purge_chunk(chunk, provider, granule, zeroes, PURGE_CALLS - calls);
                        calls += made;
                        // Left unfinished by the call budget: the next pass goes on.
                        (*chunk).purged = finished;
                    }
                    chunk = next;
                }
            }
        }
    }

    /// Purges the free dirty pages of `chunk` in ranges of whole provider pages (`granule`
    /// of ours), with at most `budget` calls; returns the calls made and whether it got
    /// through the whole chunk.
    ///
    /// # Safety
    ///
    /// The lock is held and `chunk` is a formatted slab chunk of this heap.
    unsafe fn purge_chunk<P: PageProvider>(
        &mut self,
        chunk: *mut ChunkHeader,
        provider: &P,
        granule: usize,
        zeroes: bool,
        budget: usize,
    ) -> (usize, bool) {
        let (mut calls, mut purged) = (0, false);
        let mut page = HEADER_PAGES;
        // SAFETY: the caller's promise: the header is ours to read and update, and free pages
        // are in no run, so nobody uses their bytes.
        unsafe {
            loop {
                let Some(start) = (*chunk).free_pages.next_set(page) else { return (calls, true) };
                let end = (*chunk).free_pages.next_clear(start).unwrap_or(PAGES_PER_CHUNK);
                page = end;
                let (first, last) = (start.next_multiple_of(granule), end / granule * granule);
                if last <= first || (*chunk).dirty_pages.count_in_range(first, last - first) == 0 {
                    continue;
                }
                if calls == budget {
                    return (calls, false);
                }
                let base = NonNull::new_unchecked((chunk as usize + first * PAGE) as *mut u8);
                calls += 1;
                if provider.purge(base, (last - first) * PAGE) {
                    if !purged {
                        self.counters.purged_chunks += 1;
                        purged = true;
                    }
                    self.counters.purges += 1;
                    self.counters.purged_bytes += (last - first) * PAGE;
                    if zeroes {
                        (*chunk).dirty_pages.set_range(first, last - first, false);
                    }
                }
            }
        }
    }

    /// Moves the oldest cached empty chunk (the cache is not empty) to `release`.
    fn release_oldest(&mut self, release: &mut Release, map: &ChunkMap) {
        let chunk = self.empty_tail;
        // SAFETY: a non-empty cache has a tail, a formatted slab chunk of this heap.
        unsafe {
            self.empty_tail = (*chunk).prev;
            if self.empty_tail.is_null() {
                self.empty_head = ptr::null_mut();
            } else {
                (*self.empty_tail).next = ptr::null_mut();
            }
            // Forgotten first: a checked build's misuse-free that looks the chunk up from
            // now on is told it is not ours, before its table is recycled.
            self.forget_chunks(chunk as usize, 1, map);
            self.detach_live_bits(chunk);
            (*chunk).next = release.chunks;
        }
        release.chunks = chunk;
        self.counters.cached_chunks -= 1;
        self.counters.chunks_returned += 1;
    }

    /// Clears the chunk-map entries of `count` chunks from `base`.
    fn forget_chunks(&mut self, base: usize, count: usize, map: &ChunkMap) {
        for index in 0..count {
            // SAFETY: the lock is held; clearing an entry needs no new node.
            unsafe { map.set(base + index * CHUNK_SIZE, 0, &mut || None) };
        }
    }

    /// Checked builds: gives a slab chunk a cleared table of live-block bits. Returns
    /// false when out of metadata memory.
    ///
    /// # Safety
    ///
    /// `chunk` is a formatted slab chunk with nothing live, known only to the caller.
    unsafe fn attach_live_bits<P: PageProvider>(&mut self, chunk: *mut ChunkHeader, provider: &P) -> bool {
        #[cfg(feature = "checked")]
        {
            let spare = self.spare_live_bits;
            let bits = if spare.is_null() {
                match self.meta_alloc(crate::chunk::LIVE_BITS_BYTES, 8, provider) {
                    Some(bits) => bits.as_ptr(),
                    None => return false,
                }
            } else {
                // SAFETY: spare tables are linked through their first word.
                self.spare_live_bits = unsafe { spare.cast::<*mut u8>().read() };
                spare
            };
            // SAFETY: a table of LIVE_BITS_BYTES bytes nobody else uses, and the caller's
            // chunk.
            unsafe {
                ptr::write_bytes(bits, 0, crate::chunk::LIVE_BITS_BYTES);
                (*chunk).live_bits = bits.cast();
            }
        }
        #[cfg(not(feature = "checked"))]
        let _ = (chunk, provider);
        true
    }

    /// Checked builds: takes a slab chunk's table of live-block bits back for reuse, as the
    /// chunk stops being a slab chunk. The spare list links through the table's first word,
    /// the bits of the chunk's first 512 bytes: header bytes, where no block starts, so no
    /// free (not even a misuse-free racing with this after its chunk-map lookup) ever
    /// changes it.
    ///
    /// # Safety
    ///
    /// `chunk` is an empty formatted slab chunk in no list.
    unsafe fn detach_live_bits(&mut self, chunk: *mut ChunkHeader) {
        static_assertions::const_assert!(crate::chunk::HEADER_PAGES * PAGE >= 64 * 8);
        #[cfg(feature = "checked")]
        // SAFETY: the table belongs to the chunk, which has nothing live.
        unsafe {
            let bits = (*chunk).live_bits.cast::<u8>();
            bits.cast::<*mut u8>().write(self.spare_live_bits);
            self.spare_live_bits = bits;
        }
        #[cfg(not(feature = "checked"))]
        let _ = chunk;
    }

    /// Records `value` for the chunk at `address`, making map nodes from metadata memory.
    fn record<P: PageProvider>(&mut self, address: usize, value: u64, provider: &P, map: &ChunkMap) -> bool {
        let mut new_node = || self.new_node(provider);
        // SAFETY: the lock is held; metadata memory is zeroed, aligned and never freed.
        unsafe { map.set(address, value, &mut new_node) }
    }

    /// A zeroed chunk-map node: a spare one, or fresh metadata memory.
    fn new_node<P: PageProvider>(&mut self, provider: &P) -> Option<NonNull<u8>> {
        let spare = self.spare_nodes;
        if spare.is_null() {
            return self.meta_alloc(NODE_BYTES, PAGE, provider);
        }
        // SAFETY: spare nodes are zeroed metadata nodes of NODE_BYTES linked through their
        // first word, which is cleared as the node leaves the list.
        unsafe {
            self.spare_nodes = spare.cast::<*mut u8>().read();
            spare.cast::<*mut u8>().write(ptr::null_mut());
        }
        NonNull::new(spare)
    }

    /// Takes [`REMAP_NODES`] zeroed chunk-map nodes out of the heap for a caller that will
    /// record chunks after dropping and retaking the lock; `None` (taking nothing) when the
    /// provider refuses metadata memory.
    pub(crate) fn reserve_nodes<P: PageProvider>(&mut self, provider: &P) -> Option<NodeReserve> {
        let mut reserve = NodeReserve { nodes: [ptr::null_mut(); REMAP_NODES], count: 0 };
        while reserve.count < REMAP_NODES {
            let Some(node) = self.new_node(provider) else {
                self.return_nodes(reserve);
                return None;
            };
            reserve.nodes[reserve.count] = node.as_ptr();
            reserve.count += 1;
        }
        Some(reserve)
    }

    /// Takes back the nodes of a reserve its holder did not use (still zeroed).
    pub(crate) fn return_nodes(&mut self, mut reserve: NodeReserve) {
        while let Some(node) = reserve.take() {
            // SAFETY: a zeroed node of NODE_BYTES that nobody uses; its first word becomes
            // the spare-list link.
            unsafe { node.as_ptr().cast::<*mut u8>().write(self.spare_nodes) };
            self.spare_nodes = node.as_ptr();
        }
    }

    /// A single-chunk huge allocation from the empty cache, if it has a chunk.
    pub(crate) fn huge_from_cache<P: PageProvider>(
        &mut self,
        provider: &P,
        map: &ChunkMap,
    ) -> Option<NonNull<u8>> {
        let chunk = self.take_empty()?;
        if !self.record(chunk as usize, entry(KIND_HUGE, 1), provider, map) {
            // SAFETY: it was cached a moment ago and is unchanged.
            unsafe { self.push_empty(chunk, (*chunk).empty_since) };
            return None;
        }
        // SAFETY: an empty cached chunk, out of the cache now.
        unsafe { self.detach_live_bits(chunk) };
        self.counters.huge_live += 1;
        self.counters.huge_live_bytes += CHUNK_SIZE;
        NonNull::new(chunk.cast())
    }

    /// Records a huge allocation of `count` chunks at `base`, which the caller got from the
    /// provider (`obtained` chunks in all, `returned` of them already given back). Returns
    /// false, recording nothing, when out of metadata memory: the caller gives it back.
    pub(crate) fn record_huge<P: PageProvider>(
        &mut self,
        base: usize,
        count: usize,
        obtained: usize,
        returned: usize,
        provider: &P,
        map: &ChunkMap,
    ) -> bool {
        self.counters.chunks_obtained += obtained;
        self.counters.chunks_returned += returned;
        let recorded = record_huge_entries(map, base, count, &mut || self.new_node(provider));
        if recorded < count {
            self.forget_chunks(base, recorded, map);
            self.counters.chunks_returned += count;
            return false;
        }
        self.counters.huge_live += 1;
        self.counters.huge_live_bytes += count * CHUNK_SIZE;
        true
    }

    /// The number of chunks of the huge allocation starting at `address`, or `None` if no
    /// huge allocation starts there.
    pub(crate) fn huge_chunks(address: usize, map: &ChunkMap) -> Option<usize> {
        let found = map.get(address);
        (address & CHUNK_MASK == 0 && kind_of(found) == KIND_HUGE).then(|| count_of(found))
    }

    /// Forgets the huge allocation of `count` chunks at `base`. Returns true when the empty
    /// cache wants the (single) chunk: the caller formats it outside the lock and hands it
    /// to [`cache_chunk`](Self::cache_chunk); otherwise the caller gives the chunks back.
    ///
    /// # Safety
    ///
    /// A live huge allocation of `count` chunks starts at `base` and nothing uses it.
    pub(crate) unsafe fn free_huge(&mut self, base: usize, count: usize, map: &ChunkMap) -> bool {
        self.forget_chunks(base, count, map);
        self.counters.huge_live -= 1;
        self.counters.huge_live_bytes -= count * CHUNK_SIZE;
        let keep = count == 1 && self.counters.cached_chunks < self.retain_limit();
        if !keep {
            self.counters.chunks_returned += count;
        }
        keep
    }

    /// Caches an empty chunk formatted by the caller (a freed single-chunk huge allocation).
    /// Returns false when it could not be recorded: the caller gives it back.
    ///
    /// # Safety
    ///
    /// `chunk` is ours, formatted by `ChunkHeader::init`, and known to nobody else.
    pub(crate) unsafe fn cache_chunk<P: PageProvider>(
        &mut self,
        chunk: *mut ChunkHeader,
        provider: &P,
        map: &ChunkMap,
        clock: Option<Clock>,
    ) -> bool {
        // SAFETY: the caller's promise; the lock is held.
        let recorded = unsafe { self.take_in_slab_chunk(chunk, provider, map) };
        if recorded {
            // SAFETY: formatted, recorded, in no list.
            unsafe { self.push_empty(chunk, clock.map_or(0, |clock| clock.now)) };
        }
        recorded
    }

    /// Shrinks the records of the huge allocation at `base` from `count` to `keep` chunks
    /// (at least one); the caller gives the spare chunks back.
    ///
    /// # Safety
    ///
    /// A live huge allocation of `count` chunks starts at `base`; its chunks from `keep` on
    /// are not used any more.
    pub(crate) unsafe fn shrink_huge<P: PageProvider>(
        &mut self,
        base: usize,
        count: usize,
        keep: usize,
        provider: &P,
        map: &ChunkMap,
    ) {
        debug_assert!(keep >= 1 && keep < count);
        self.forget_chunks(base + keep * CHUNK_SIZE, count - keep, map);
        // The head entry already has its node: rewriting it cannot fail.
        self.record(base, entry(KIND_HUGE, keep), provider, map);
        self.counters.chunks_returned += count - keep;
        self.counters.huge_live_bytes -= (count - keep) * CHUNK_SIZE;
    }

    /// Forgets the records of the huge allocation of `count` chunks at `base`, which is
    /// about to be moved by the provider (outside the lock). Forgetting comes first, as on
    /// every path that gives address space back: once the provider has moved the pages,
    /// another CPU may be handed the old addresses and record them, and a forget after that
    /// would erase its records. The allocation stays counted as live.
    ///
    /// # Safety
    ///
    /// A live huge allocation of `count` chunks starts at `base`, and its holder is the
    /// caller, who records it again with [`rehome_huge`](Self::rehome_huge).
    pub(crate) unsafe fn unrecord_huge(&mut self, base: usize, count: usize, map: &ChunkMap) {
        self.forget_chunks(base, count, map);
    }

    /// Records a huge allocation taken out of the map by
    /// [`unrecord_huge`](Self::unrecord_huge) again, now `new_count` chunks at `new` (where
    /// the provider moved it, or where it was if the move failed), with nodes from
    /// `reserve` where the map needs new ones. Cannot fail: the reserve holds enough nodes
    /// for any run of up to [`MAX_REMAP_CHUNKS`] chunks.
    ///
    /// # Safety
    ///
    /// The allocation was unrecorded from `old_count` chunks at `old`, and now lives at
    /// `new`; `new_count <= MAX_REMAP_CHUNKS`.
    pub(crate) unsafe fn rehome_huge(
        &mut self,
        (old, old_count): (usize, usize),
        (new, new_count): (usize, usize),
        reserve: &mut NodeReserve,
        map: &ChunkMap,
    ) {
        debug_assert!(new_count <= MAX_REMAP_CHUNKS);
        if (new, new_count) != (old, old_count) {
            self.counters.chunks_returned += old_count;
            self.counters.chunks_obtained += new_count;
            self.counters.huge_live_bytes =
                self.counters.huge_live_bytes - old_count * CHUNK_SIZE + new_count * CHUNK_SIZE;
        }
        let recorded = record_huge_entries(map, new, new_count, &mut || reserve.take());
        // Two leaves and their two interior nodes per level cover any run of at most
        // MAX_REMAP_CHUNKS chunks, so the reserve cannot run out.
        debug_assert_eq!(recorded, new_count, "a node reserve ran out");
    }

    /// Tests: uses up the current metadata chunk but for `left` bytes.
    #[cfg(test)]
    pub(crate) fn use_up_meta(&mut self, left: usize) {
        self.meta_cursor = self.meta_end - left;
    }

    /// Bump-allocates zeroed metadata memory (chunk-map nodes, live bits), never freed.
    pub(crate) fn meta_alloc<P: PageProvider>(
        &mut self,
        size: usize,
        align: usize,
        provider: &P,
    ) -> Option<NonNull<u8>> {
        self.meta_alloc_zeroing(size, size, align, provider)
    }

    /// Bump-allocates metadata memory, never freed, of which the first `zeroed` bytes are
    /// zero (the rest may hold anything: storage nothing reads before writing it, such as an
    /// arena's front-cache stacks, is not written twice).
    pub(crate) fn meta_alloc_zeroing<P: PageProvider>(
        &mut self,
        size: usize,
        zeroed: usize,
        align: usize,
        provider: &P,
    ) -> Option<NonNull<u8>> {
        debug_assert!(zeroed <= size);
        debug_assert!(size <= CHUNK_SIZE && align.is_power_of_two() && align <= PAGE);
        let mut start = self.meta_cursor.next_multiple_of(align);
        if self.meta_cursor == 0 || start + size > self.meta_end {
            let Some(fresh) = provider.alloc_chunks(1) else {
                self.counters.provider_refusals += 1;
                return None;
            };
            self.counters.chunks_obtained += 1;
            self.counters.meta_chunks += 1;
            self.meta_cursor = fresh.base.as_ptr() as usize;
            self.meta_end = self.meta_cursor + CHUNK_SIZE;
            self.meta_zeroed = fresh.zeroed;
            start = self.meta_cursor;
        }
        self.meta_cursor = start + size;
        if !self.meta_zeroed {
            // SAFETY: the bytes are fresh metadata memory inside the current meta chunk.
            unsafe { ptr::write_bytes(start as *mut u8, 0, zeroed) };
        }
        NonNull::new(start as *mut u8)
    }

    /// Checks every chunk's header and the lists against the counters; returns a description
    /// of the first inconsistency.
    pub(crate) fn check_invariants(&self) -> Result<(), &'static str> {
        let mut slab_chunks = 0;
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
                    prev = chunk;
                    chunk = (*chunk).next;
                }
                slab_chunks += 1;
            }
        }
        if slab_chunks != self.counters.slab_chunks {
            return Err("slab chunk count disagrees with the buckets");
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
