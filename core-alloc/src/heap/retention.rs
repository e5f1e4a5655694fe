//! Retention and decay of empty chunks, and purging inside partly used ones.
//!
//! An empty chunk goes to a cache of empty chunks, newest first. The cache keeps at most
//! `1 + chunks in use / RETAIN_DIVISOR` (and at most `RETAIN_MAX`); the oldest beyond that
//! go back to the provider at once. With a platform clock ([`Clock`]) a cached chunk also
//! goes back once it has stayed empty for the decay period (checked whenever a chunk
//! empties, on the arenas' periodic refill checks, and by `Allocator::decay`), so an idle
//! heap ends up holding no empty chunk.
//!
//! Purging (with a clock, and a provider that can purge: hosts): free pages that have
//! stayed free for the decay period are purged (`PageProvider::purge`: `MADV_DONTNEED` on
//! Linux), in chunks whose runs keep changing too. The pass marks each chunk's free pages
//! (`ChunkHeader::aged`; a carve or a run's growth unmarks the pages it takes); a period
//! later it purges the dirty pages still marked and marks the chunk again, so a page is
//! purged between one and two periods after it was freed. In a chunk backed by a huge page
//! that happens only while the chunk is at least half free (a purge splits the huge page,
//! worth it only for a chunk mostly unused). The pass runs from the decay checks at most
//! every quarter period, looks at the `PURGE_SCAN_CHUNKS` most-free chunks and makes at
//! most `PURGE_CALLS` provider calls, under the lock (short system calls, rarely); a chunk
//! purged through is left alone until its runs change.
//! An arena well into a bulk free has a chunk it leaves half free purged at once
//! ([`Heap::free_run_in_bulk`]), without the decay period, the pages inside the blocks it
//! frees ([`Heap::purge_freed_block`]) and, once, every mostly free chunk
//! ([`Heap::purge_mostly_free`]). A chunk backed by a huge page has every free page purged,
//! clean ones too (the huge page made them resident).
//! Kernels' providers do not purge: they return memory in whole 2 MiB frames only.

use core::ptr::{self, NonNull};

use page_provider::PageProvider;

use super::placement::BUCKETS;
use super::{Clock, Heap, Release};
use crate::chunk::{ChunkHeader, HEADER_PAGES, NOT_MARKED, Run, USABLE_PAGES, chunk_of};
use crate::chunk_map::ChunkMap;
use crate::config::{
    BULK_PURGE_FREE, BULK_PURGE_LIMITS, CHUNK_SIZE, PAGE, PAGES_PER_CHUNK, PURGE_CALLS, PURGE_SCAN_CHUNKS,
    RETAIN_DIVISOR, RETAIN_MAX,
};

impl Heap {
    /// Empty chunks to keep at most, given the chunks in use now (with a clock, those kept
    /// also go back once they have stayed unused for the decay period).
    pub(super) fn retain_limit(&self) -> usize {
        let in_use = self.counters.slab_chunks + self.counters.huge_live_bytes / CHUNK_SIZE;
        (1 + in_use / RETAIN_DIVISOR).min(RETAIN_MAX)
    }

    /// Puts an empty formatted chunk at the head of the empty cache, empty since `since`
    /// (the clock's time; no earlier than the head's, so the cache stays ordered by age).
    ///
    /// # Safety
    ///
    /// `chunk` is a formatted slab chunk with no run, in no list.
    pub(super) unsafe fn push_empty(&mut self, chunk: *mut ChunkHeader, since: u64) {
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
    pub(super) fn take_empty(&mut self) -> Option<*mut ChunkHeader> {
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

    /// Purges the free dirty pages that have stayed free for the decay period (see the
    /// module documentation); at most every quarter period.
    pub(crate) fn purge_idle<P: PageProvider>(&mut self, clock: Clock, provider: &P) {
        if clock.now >= self.next_purge {
            self.next_purge = clock.now.saturating_add(clock.decay / 4);
            self.purge_pass(clock, provider, false);
        }
    }

    /// For an arena well into a bulk free (`Allocator::note_bulk_free`): purges the free
    /// dirty pages of mostly free slab chunks at once, without waiting for the decay period.
    /// Chunks that became mostly free before the bulk free
    /// began may see no run released now, so [`free_run_in_bulk`](Self::free_run_in_bulk)
    /// would not purge them, and a program that then idles makes no call that would.
    pub(crate) fn purge_mostly_free<P: PageProvider>(&mut self, clock: Clock, provider: &P) {
        self.purge_pass(clock, provider, true);
    }

    /// One pass of [`purge_idle`](Self::purge_idle) (`bulk` false: pages free for the decay
    /// period) or [`purge_mostly_free`](Self::purge_mostly_free) (`bulk`: every free page of
    /// a mostly free chunk).
    fn purge_pass<P: PageProvider>(&mut self, clock: Clock, provider: &P, bulk: bool) {
        let Some((granule, zeroes)) = purge_mode(provider) else { return };
        let (scan, budget) = if bulk { BULK_PURGE_LIMITS } else { (PURGE_SCAN_CHUNKS, PURGE_CALLS) };
        let (mut visited, mut calls) = (0, 0);
        let purged_before = self.counters.purged_chunks;
        for bucket in (1..BUCKETS).rev() {
            let mut chunk = self.buckets[bucket];
            while !chunk.is_null() && visited < scan && calls < budget {
                visited += 1;
                // SAFETY: chunks in the buckets are formatted slab chunks of this heap, and
                // the lock is held; free pages hold nothing anybody uses.
                unsafe {
                    let next = (*chunk).next;
                    let mostly_free = (*chunk).free_count as usize * 2 >= USABLE_PAGES;
                    if bulk {
                        if !(*chunk).purged && mostly_free {
                            let (made, finished) =
                                self.purge_chunk(chunk, provider, granule, zeroes, budget - calls, false);
                            calls += made;
                            // Left unfinished by the call budget: the next pass goes on.
                            (*chunk).purged = finished;
                        }
                    } else if (*chunk).aged_at == NOT_MARKED {
                        (*chunk).aged.clone_from(&(*chunk).free_pages);
                        (*chunk).aged_at = clock.now;
                    } else if clock.now.saturating_sub((*chunk).aged_at) >= clock.decay {
                        // Pages free since the mark, a decay period ago: purged, unless that
                        // would split the huge page of a chunk mostly in use, or nothing
                        // changed since the last purge. Then the chunk is marked again.
                        let mut finished = true;
                        if !(*chunk).purged && (mostly_free || !(*chunk).hugified) {
                            let made;
                            (made, finished) =
                                self.purge_chunk(chunk, provider, granule, zeroes, budget - calls, true);
                            calls += made;
                            // Purged through, if every free page was aged.
                            (*chunk).purged = finished && (*chunk).aged == (*chunk).free_pages;
                        }
                        // Left unfinished by the call budget: the next pass goes on.
                        if finished {
                            (*chunk).aged.clone_from(&(*chunk).free_pages);
                            (*chunk).aged_at = clock.now;
                        }
                    }
                    chunk = next;
                }
            }
        }
        if bulk {
            self.counters.bulk_passes += 1;
            self.counters.bulk_pass_chunks += self.counters.purged_chunks - purged_before;
        }
    }

    /// [`free_run`](Heap::free_run) for an arena freeing in bulk (`Arena::bulk_free`): a
    /// chunk the run's release leaves with at least `BULK_PURGE_FREE` free pages, not purged
    /// since it last changed, has its free dirty pages purged at once (at most `PURGE_CALLS`
    /// provider calls), since that program is unlikely to use them again soon and, if it
    /// idles, makes no call that would purge them after the decay period. That includes a
    /// chunk the release empties and the empty-chunk cache keeps: it stays cached (its
    /// address range and header ready for reuse) but holds no memory (an idle program's
    /// cached chunks were most of what it kept after freeing in bulk). Without `bulk`, just
    /// `free_run`.
    ///
    /// # Safety
    ///
    /// As for `free_run`; the lock is held (the purge runs under it, so no run is carved
    /// from the pages meanwhile).
    pub(crate) unsafe fn free_run_in_bulk<P: PageProvider>(
        &mut self,
        run: *mut Run,
        map: &ChunkMap,
        clock: Option<Clock>,
        provider: &P,
        bulk: bool,
    ) -> Release {
        let chunk = chunk_of(run as usize);
        // SAFETY: the caller's promise. The chunk's header stays valid until the lock drops
        // (an emptied chunk is given back only after that), and is ours to read under it.
        unsafe {
            let release = self.free_run(run, map, clock);
            if bulk
                && !(*chunk).purged
                && (*chunk).free_count as usize >= BULK_PURGE_FREE
                && !release.holds(chunk)
                && let Some((granule, zeroes)) = purge_mode(provider)
            {
                let (_, finished) = self.purge_chunk(chunk, provider, granule, zeroes, PURGE_CALLS, false);
                (*chunk).purged = finished;
            }
            release
        }
    }

    /// Purges the free dirty pages of `chunk` (only its aged ones with `aged`: see
    /// `ChunkHeader::aged`) in ranges of whole provider pages (`granule` of ours), with at
    /// most `budget` calls; returns the calls made and whether it got through the whole
    /// chunk.
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
        aged: bool,
    ) -> (usize, bool) {
        let (mut calls, mut purged) = (0, false);
        let mut page = HEADER_PAGES;
        // SAFETY: the caller's promise: the header is ours to read and update, and free pages
        // are in no run, so nobody uses their bytes.
        unsafe {
            // A huge page makes every page of the chunk resident, clean ones too: all free
            // pages are purged then (a chunk backed by one from the start holds 2 MiB for
            // its first slab).
            let resident = (*chunk).hugified;
            loop {
                // The next dirty range inside a free range, widened to whole provider pages
                // without leaving the free range.
                let candidates = if aged { &(*chunk).aged } else { &(*chunk).free_pages };
                let Some(start) = candidates.next_set(page) else { return (calls, true) };
                let end = candidates.next_clear(start).unwrap_or(PAGES_PER_CHUNK);
                let (low, high) = (start.next_multiple_of(granule), end / granule * granule);
                let dirty = if resident { Some(low) } else { (*chunk).dirty_pages.next_set(low) };
                let Some(dirty) = dirty.filter(|&dirty| dirty < high) else {
                    page = end;
                    continue;
                };
                let clean = match resident {
                    true => high,
                    false => (*chunk).dirty_pages.next_clear(dirty).map_or(high, |clean| clean.min(high)),
                };
                let (first, last) = (dirty / granule * granule, clean.next_multiple_of(granule).min(high));
                page = if last >= high { end } else { last };
                if calls == budget {
                    return (calls, false);
                }
                let base = NonNull::new_unchecked((chunk as usize + first * PAGE) as *mut u8);
                calls += 1;
                if provider.purge(base, (last - first) * PAGE) {
                    if !purged {
                        self.counters.purged_chunks += 1;
                        purged = true;
                        self.split_huge_page(chunk, provider);
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

    /// A purge in `chunk` splits the huge page backing it, if it has one: withdrawing the
    /// request keeps the purged pages from being collapsed back in the background.
    ///
    /// # Safety
    ///
    /// `chunk` is a formatted slab chunk of this heap; the lock is held.
    unsafe fn split_huge_page<P: PageProvider>(&mut self, chunk: *mut ChunkHeader, provider: &P) {
        // SAFETY: the caller's promise: the chunk is handed out, its header ours to update.
        unsafe {
            if (*chunk).hugified {
                (*chunk).hugified = false;
                self.counters.huge_page_splits += 1;
                self.counters.huge_slab_chunks -= 1;
                provider.unhugify(NonNull::new_unchecked(chunk.cast()), CHUNK_SIZE);
            }
        }
    }

    /// For an arena freeing in bulk: purges the whole provider pages inside a slab block
    /// being freed, after its first page (which keeps the block's free-list link). A slab
    /// with a live block or two holds the rest of its pages otherwise, and a block of two
    /// pages or more has pages of its own. Returns whether anything was purged.
    ///
    /// # Safety
    ///
    /// The lock is held; `block` is a live block of `size` bytes of a slab in a slab chunk
    /// of this heap, being freed by the caller (nobody uses its bytes, and it goes on a
    /// free list only after this returns).
    pub(crate) unsafe fn purge_freed_block<P: PageProvider>(
        &mut self,
        block: usize,
        size: usize,
        provider: &P,
    ) -> bool {
        let Some((granule, _)) = purge_mode(provider) else { return false };
        let granule = granule * PAGE;
        let (first, end) = ((block + 4).next_multiple_of(granule), (block + size) / granule * granule);
        if end <= first {
            return false;
        }
        // SAFETY: the caller's promises: the range lies in a live block nobody uses, in a
        // chunk handed out.
        unsafe {
            if !provider.purge(NonNull::new_unchecked(first as *mut u8), end - first) {
                return false;
            }
            self.split_huge_page(chunk_of(block), provider);
        }
        self.counters.block_purges += 1;
        self.counters.block_purged_bytes += end - first;
        true
    }

    /// A slab chunk leaves the heap's slab chunks (given back, or a huge allocation now):
    /// no longer counted among those backed by huge pages.
    ///
    /// # Safety
    ///
    /// `chunk` is a formatted slab chunk of this heap; the lock is held.
    pub(super) unsafe fn forget_huge_page(&mut self, chunk: *mut ChunkHeader) {
        // SAFETY: the caller's promise.
        unsafe {
            if (*chunk).hugified {
                (*chunk).hugified = false;
                self.counters.huge_slab_chunks -= 1;
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
            self.forget_huge_page(chunk);
            (*chunk).next = release.chunks;
        }
        release.chunks = chunk;
        self.counters.cached_chunks -= 1;
        self.counters.chunks_returned += 1;
    }
}

/// How `provider` purges: `None` if it cannot, else the purge granule in our pages (its page
/// size) and whether purged pages read as zero.
fn purge_mode<P: PageProvider>(provider: &P) -> Option<(usize, bool)> {
    let capabilities = provider.capabilities();
    capabilities.contains(page_provider::Capabilities::PURGE).then(|| {
        let zeroes = capabilities.contains(page_provider::Capabilities::PURGE_ZEROES);
        ((provider.page_size() / PAGE).max(1), zeroes)
    })
}
