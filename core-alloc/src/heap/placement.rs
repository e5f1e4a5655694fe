//! Where runs go: slab chunks sit in buckets by the length of their longest free run;
//! bucket 0 holds the full ones and is never searched. A run request scans from the bucket
//! of its own size upwards for the chunk whose longest free run holds it most tightly (best
//! fit, among the first `SCAN_LIMIT` chunks), and in that chunk takes the shortest free run
//! that holds it: long free runs stay for long runs, new slabs pack into the fullest
//! chunks, and lightly used chunks drain until they are empty.
//! Runs are carved, freed and resized here; a chunk that empties goes to the retention of
//! empty chunks (`retention`).
//!
//! Huge pages as a policy: in a small heap (fewer than `HUGE_HEAP_CHUNKS` slab chunks) a
//! new chunk is backed by small pages until `HUGIFY_PAGES` of its pages are in runs; then
//! [`Heap::becomes_dense`] tells the caller to ask the provider for a huge page
//! (`PageProvider::hugify`, outside the lock), which collapses the pages in use. A small
//! heap's few chunks so cost only what they touch. A big heap's new chunks are asked for
//! one before anything touches them (see [`Heap::adopt`]): packing into the
//! fullest chunks makes them dense soon, and a collapse per new chunk would copy what a
//! huge-page fault gets for nothing. A purge of a hugified chunk splits its huge page
//! (counted; see `retention`); it may be asked again once dense.

use core::ptr;

use page_provider::PageProvider;

use super::{Clock, Heap, Release};
use crate::chunk::{ChunkHeader, RUN_LARGE, RUN_SLAB, Run, RunKind, USABLE_PAGES, chunk_of};
use crate::chunk_map::{ChunkMap, KIND_SLAB, entry};
use crate::config::{HUGIFY_PAGES, PAGE};

/// Buckets by longest free run: 0 (full), then 1, 2-3, 4-7, ... 256-510 pages.
pub(super) const BUCKETS: usize = 10;
/// Chunks a run request looks at for the tightest fit (more only while none fits).
const SCAN_LIMIT: usize = 64;

/// How short a slab may be carved to fill a gap (see [`Heap::alloc_slab_in_gap`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct SlabFit {
    /// The fewest pages.
    pub(crate) min_pages: usize,
    /// The block size the slab's pages must tile.
    pub(crate) block_size: usize,
}

/// Whether runs other than metadata may go to `chunk` now: a chunk holding metadata keeps
/// its room for metadata unless `everywhere` (the provider has no chunk left; see `meta`).
///
/// # Safety
///
/// `chunk` is a formatted slab chunk; the lock is held.
unsafe fn open_to_runs(chunk: *const ChunkHeader, everywhere: bool) -> bool {
    // SAFETY: the caller's promise.
    everywhere || !unsafe { (*chunk).holds_meta }
}

/// The bucket of a chunk whose longest free run is `longest_free` pages.
pub(super) fn bucket_of(longest_free: usize) -> usize {
    if longest_free == 0 { 0 } else { (1 + longest_free.ilog2() as usize).min(BUCKETS - 1) }
}

impl Heap {
    /// Puts a slab chunk in the bucket of its longest free run.
    ///
    /// # Safety
    ///
    /// `chunk` is a formatted slab chunk in no list.
    pub(super) unsafe fn link(&mut self, chunk: *mut ChunkHeader) {
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

    /// Carves a run of `pages` pages aligned to `align_pages` pages from the chunk that fits
    /// it most tightly (see [`tightest_fit`](Self::tightest_fit)), or from a cached empty
    /// chunk. Returns the descriptor (kind, first page and pages set) and whether its pages
    /// are all clean; `None` when no chunk the heap holds has room: the caller then makes a
    /// chunk outside the lock and calls [`adopt`](Self::adopt).
    ///
    /// Chunks holding metadata are left out unless `everywhere`: they keep their room for
    /// metadata (which then gathers in one chunk, the way a chunk of its own kept it), and
    /// other runs take it only when the provider has no chunk left (see `meta`).
    pub(crate) fn alloc_run(
        &mut self,
        pages: usize,
        align_pages: usize,
        kind: RunKind,
        everywhere: bool,
    ) -> Option<(*mut Run, bool)> {
        debug_assert!((1..=USABLE_PAGES).contains(&pages) && align_pages.is_power_of_two());
        let tightest = self.tightest_fit(pages, everywhere);
        if let Some(chunk) = tightest
            // SAFETY: a chunk from a bucket, a formatted slab chunk; the lock is held.
            && let Some(found) = unsafe { self.carve_in(chunk, pages, align_pages, kind) }
        {
            return Some(found);
        }
        // The tightest did not fit after all (an alignment its free ranges cannot give, or
        // no run descriptor left): the first chunk that does.
        for bucket in bucket_of(pages)..BUCKETS {
            let mut chunk = self.buckets[bucket];
            while !chunk.is_null() {
                // SAFETY: as above.
                unsafe {
                    let next = (*chunk).next;
                    if Some(chunk) != tightest
                        && open_to_runs(chunk, everywhere)
                        && let Some(found) = self.carve_in(chunk, pages, align_pages, kind)
                    {
                        return Some(found);
                    }
                    chunk = next;
                }
            }
        }
        let chunk = self.take_empty()?;
        // SAFETY: a formatted empty slab chunk in no list; the lock is held.
        unsafe { self.carve_from_empty(chunk, pages, align_pages, kind) }
    }

    /// The chunk whose longest free range is the shortest that holds `pages` pages, among
    /// the first `SCAN_LIMIT` chunks from the bucket of `pages` up (a chunk of a higher
    /// bucket is never tighter than one found in a lower). Best fit across chunks: a run
    /// does not cut into a long free range another chunk's shorter one could hold, so long
    /// ranges stay for long runs (in workload 8's steady phases, with runs of 16-256 pages,
    /// the heap needed 64 chunks for 36 chunks' worth of runs with the first chunk of the
    /// lowest bucket that fits, 49 with this).
    fn tightest_fit(&self, pages: usize, everywhere: bool) -> Option<*mut ChunkHeader> {
        let mut best: Option<*mut ChunkHeader> = None;
        let mut scanned = 0;
        for bucket in bucket_of(pages)..BUCKETS {
            let mut chunk = self.buckets[bucket];
            while !chunk.is_null() && (scanned < SCAN_LIMIT || best.is_none()) {
                // SAFETY: chunks in buckets are formatted slab chunks; the lock is held.
                unsafe {
                    let longest = (*chunk).longest_free;
                    if longest as usize >= pages
                        && (*chunk).free_runs != 0
                        && open_to_runs(chunk, everywhere)
                        && best.is_none_or(|best| longest < (*best).longest_free)
                    {
                        best = Some(chunk);
                        if longest as usize == pages {
                            return best;
                        }
                    }
                    chunk = (*chunk).next;
                }
                scanned += 1;
            }
            if best.is_some() {
                break;
            }
        }
        best
    }

    /// Carves a run in `chunk` and files the chunk again.
    ///
    /// # Safety
    ///
    /// `chunk` is a formatted slab chunk in a bucket; the lock is held.
    pub(super) unsafe fn carve_in(
        &mut self,
        chunk: *mut ChunkHeader,
        pages: usize,
        align_pages: usize,
        kind: RunKind,
    ) -> Option<(*mut Run, bool)> {
        // SAFETY: the caller's promise.
        unsafe {
            let found = ChunkHeader::carve(chunk, pages, align_pages, kind)?;
            self.rebucket(chunk);
            self.count_carved(kind, pages);
            Some(found)
        }
    }

    /// Carves a slab shorter than its class's nominal `pages` to fill a gap: the longest free
    /// range of a chunk with none as long as `pages`, when it is at least `fit.min_pages`
    /// long and tiles `fit.block_size` blocks with at most an eighth of it left over. Slabs
    /// are 16 pages or more and a chunk has 511 usable pages, so without this each chunk
    /// full of slabs keeps up to 15 pages nobody can use (a chunk backed by a huge page holds
    /// them resident all the same). `None` when no chunk has such a gap (the caller then
    /// carves a whole slab with [`alloc_run`](Self::alloc_run)).
    pub(crate) fn alloc_slab_in_gap(
        &mut self,
        pages: usize,
        fit: SlabFit,
        everywhere: bool,
    ) -> Option<(*mut Run, bool)> {
        if fit.min_pages >= pages {
            return None;
        }
        for bucket in bucket_of(fit.min_pages)..=bucket_of(pages - 1) {
            let mut chunk = self.buckets[bucket];
            let mut scanned = 0;
            while !chunk.is_null() && scanned < SCAN_LIMIT {
                // SAFETY: chunks in buckets are formatted slab chunks; the lock is held.
                unsafe {
                    let gap = (*chunk).longest_free as usize;
                    let bytes = gap * PAGE;
                    if (fit.min_pages..pages).contains(&gap)
                        && bytes % fit.block_size * 8 <= bytes
                        && open_to_runs(chunk, everywhere)
                        && let Some(found) = self.carve_in(chunk, gap, 1, RUN_SLAB)
                    {
                        return Some(found);
                    }
                    chunk = (*chunk).next;
                }
                scanned += 1;
            }
        }
        None
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
                None if (*chunk).holds_meta => {
                    // A request the rest of a chunk that lent a metadata run cannot hold
                    // (none can: the largest run, 256 pages aligned to 256, fits beside it).
                    self.counters.slab_chunks += 1;
                    self.link(chunk);
                    None
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

    /// Counts a run just carved: large runs are live allocations in the statistics, slabs
    /// the bytes small blocks take.
    fn count_carved(&mut self, kind: RunKind, pages: usize) {
        if kind == RUN_LARGE {
            self.counters.large_live += 1;
            self.counters.large_live_bytes += pages * PAGE;
        } else if kind == RUN_SLAB {
            self.counters.slab_bytes += pages * PAGE;
        }
    }

    /// Takes in a chunk the caller got from the provider and formatted outside the lock,
    /// and carves the run from it (its `hugified` set if the caller asked the provider to
    /// back it with a huge page). `Err(())` when the chunk could not be recorded (no metadata memory): the
    /// caller gives it back. `Ok(None)` when even an empty chunk cannot hold the request (it
    /// stays cached).
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
        if !unsafe { self.take_in_slab_chunk(chunk, true, provider, map) } {
            return Err(());
        }
        // SAFETY: the caller's promise.
        if unsafe { (*chunk).hugified } {
            self.counters.hugified_chunks += 1;
            self.counters.huge_slab_chunks += 1;
        }
        // SAFETY: formatted, recorded, in no list.
        Ok(unsafe { self.carve_from_empty(chunk, pages, align_pages, kind) })
    }

    /// Makes a formatted chunk one of the heap's slab chunks: its checked-build bits and its
    /// chunk-map record. With `lend`, a new metadata run the record needs may come from the
    /// chunk itself (when no other chunk has room: a heap's first chunk, or a bounded
    /// region's last), which it then keeps for good. Returns false, undoing both and
    /// counting the chunk as given back, when out of metadata memory: the caller then gives
    /// it back to the provider (the chunk holds no metadata then).
    ///
    /// # Safety
    ///
    /// `chunk` is ours, formatted by `ChunkHeader::init`, and known to nobody else.
    pub(super) unsafe fn take_in_slab_chunk<P: PageProvider>(
        &mut self,
        chunk: *mut ChunkHeader,
        lend: bool,
        provider: &P,
        map: &ChunkMap,
    ) -> bool {
        if lend {
            self.adopting = chunk;
        }
        // SAFETY: the caller's promise; the lock is held.
        let attached = unsafe { self.attach_live_bits(chunk, provider, map) };
        let recorded = attached && self.record(chunk as usize, entry(KIND_SLAB, 0), provider, map);
        self.adopting = ptr::null_mut();
        if recorded {
            return true;
        }
        if attached {
            // SAFETY: attached just above; the chunk holds nothing.
            unsafe { self.detach_live_bits(chunk) };
        }
        // A chunk that lent a metadata run has room for the record's nodes: it cannot fail.
        // SAFETY: the caller's chunk.
        debug_assert!(!unsafe { (*chunk).holds_meta });
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
            } else if (*run).kind == RUN_SLAB {
                self.counters.slab_bytes -= ((*run).pages as usize) * PAGE;
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

    /// Whether `chunk` just became dense enough to be backed by a huge page (at least
    /// `HUGIFY_PAGES` pages in runs, not asked for since it was last split): marks and counts
    /// it, and the caller asks the provider ([`PageProvider::hugify`]) outside the lock.
    ///
    /// # Safety
    ///
    /// `chunk` is a formatted slab chunk of this heap.
    pub(crate) unsafe fn becomes_dense(&mut self, chunk: *mut ChunkHeader) -> bool {
        // SAFETY: the caller's promise; the lock is held.
        unsafe {
            if (*chunk).hugified || USABLE_PAGES - ((*chunk).free_count as usize) < HUGIFY_PAGES {
                return false;
            }
            (*chunk).hugified = true;
        }
        self.counters.hugified_chunks += 1;
        self.counters.huge_slab_chunks += 1;
        true
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
}
