//! Retention and decay of empty chunks, and purging inside partly used ones.
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
//! An arena freeing in bulk has a chunk it leaves three quarters free purged at once
//! ([`Heap::free_run_in_bulk`]), without the decay period.
//! Kernels' providers do not purge: they return memory in whole 2 MiB frames only.

use core::ptr::{self, NonNull};

use page_provider::PageProvider;

use super::placement::BUCKETS;
use super::{Clock, Heap, Release};
use crate::chunk::{ChunkHeader, HEADER_PAGES, Run, USABLE_PAGES, chunk_of};
use crate::chunk_map::ChunkMap;
use crate::config::{
    BULK_PURGE_FREE, CHUNK_SIZE, PAGE, PAGES_PER_CHUNK, PURGE_CALLS, PURGE_SCAN_CHUNKS, RETAIN_DIVISOR,
    RETAIN_MAX,
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

    /// Purges the free dirty pages of mostly free slab chunks unchanged for the decay period
    /// (see the module documentation); at most every quarter period.
    pub(crate) fn purge_idle<P: PageProvider>(&mut self, clock: Clock, provider: &P) {
        let Some((granule, zeroes)) = purge_mode(provider).filter(|_| clock.now >= self.next_purge) else {
            return;
        };
        self.next_purge = clock.now.saturating_add(clock.decay / 4);
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

    /// [`free_run`](Heap::free_run) for an arena freeing in bulk (`Arena::bulk_free`): a
    /// chunk the run's release leaves with at least `BULK_PURGE_FREE` free pages, not purged
    /// since it last changed, has its free dirty pages purged at once (at most `PURGE_CALLS`
    /// provider calls), since that program is unlikely to use them again soon and, if it
    /// idles, makes no call that would purge them after the decay period. An emptied chunk
    /// is left to the empty-chunk cache and its decay. Without `bulk`, just `free_run`.
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
            let free = (*chunk).free_count as usize;
            if bulk
                && !(*chunk).purged
                && free != USABLE_PAGES
                && free >= BULK_PURGE_FREE
                && let Some((granule, zeroes)) = purge_mode(provider)
            {
                let (_, finished) = self.purge_chunk(chunk, provider, granule, zeroes, PURGE_CALLS);
                (*chunk).purged = finished;
            }
            release
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
                // The next dirty range inside a free range, widened to whole provider pages
                // without leaving the free range.
                let Some(start) = (*chunk).free_pages.next_set(page) else { return (calls, true) };
                let end = (*chunk).free_pages.next_clear(start).unwrap_or(PAGES_PER_CHUNK);
                let (low, high) = (start.next_multiple_of(granule), end / granule * granule);
                let dirty = (*chunk).dirty_pages.next_set(low).filter(|&dirty| dirty < high);
                let Some(dirty) = dirty else {
                    page = end;
                    continue;
                };
                let clean = (*chunk).dirty_pages.next_clear(dirty).map_or(high, |clean| clean.min(high));
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
                        if (*chunk).hugified {
                            // The purge splits the huge page; withdrawing the request keeps
                            // the purged pages from being collapsed back in the background.
                            (*chunk).hugified = false;
                            self.counters.huge_page_splits += 1;
                            self.counters.huge_slab_chunks -= 1;
                            provider.unhugify(NonNull::new_unchecked(chunk.cast()), CHUNK_SIZE);
                        }
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
