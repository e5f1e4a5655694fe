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
//! go back to the provider at once. Whole chunks are the only unit returned, so huge pages
//! are never split by a purge.
//!
//! Huge allocations are whole chunks from the provider, recorded in the chunk map; a
//! single-chunk one may reuse a cached empty chunk, and a freed single-chunk one may become
//! a cached empty chunk.
//!
//! Concurrency: everything here runs under the one central lock, taken inside the
//! platform's slot closure (interrupts masked on kernels), never while holding another
//! allocator lock, and it calls only the provider.

use core::ptr::{self, NonNull};

use page_provider::PageProvider;

use crate::chunk::{ChunkHeader, HEADER_PAGES, Run, USABLE_PAGES, chunk_of};
use crate::chunk_map::{
    ChunkMap, KIND_HUGE, KIND_HUGE_TAIL, KIND_SLAB, NODE_BYTES, count_of, entry, kind_of,
};
use crate::config::{CHUNK_MASK, CHUNK_SIZE, PAGE, RETAIN_DIVISOR, RETAIN_MAX};

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
    /// Chunks obtained from the provider since the start.
    pub chunks_obtained: usize,
    /// Chunks given back to the provider since the start.
    pub chunks_returned: usize,
    /// Requests the provider refused.
    pub provider_refusals: usize,
}

/// The central heap's state; see the module documentation.
pub(crate) struct Heap {
    buckets: [*mut ChunkHeader; BUCKETS],
    /// Empty slab chunks, newest at the head, oldest at the tail.
    empty_head: *mut ChunkHeader,
    empty_tail: *mut ChunkHeader,
    meta_cursor: usize,
    meta_end: usize,
    meta_zeroed: bool,
    /// Checked builds: side tables of chunks given back, kept for reuse (linked through
    /// their first word).
    #[cfg(feature = "checked")]
    spare_live_bits: *mut u8,
    pub(crate) counters: HeapCounters,
}

// SAFETY: the raw pointers are chunk headers owned by the heap; the heap is only used
// under its lock, from whichever CPU holds it.
unsafe impl Send for Heap {}

impl Heap {
    pub(crate) const fn new() -> Self {
        Self {
            buckets: [ptr::null_mut(); BUCKETS],
            empty_head: ptr::null_mut(),
            empty_tail: ptr::null_mut(),
            meta_cursor: 0,
            meta_end: 0,
            meta_zeroed: false,
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
                chunks_obtained: 0,
                chunks_returned: 0,
                provider_refusals: 0,
            },
        }
    }

    /// Empty chunks to keep at most, given the chunks in use now.
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

    /// Carves a run of `pages` pages aligned to `align_pages` pages, from the fullest chunk
    /// that fits, or from a new chunk. Returns the descriptor (kind, first page and pages
    /// set) and whether its pages are all clean.
    pub(crate) fn alloc_run<P: PageProvider>(
        &mut self,
        pages: usize,
        align_pages: usize,
        kind: u8,
        provider: &P,
        map: &ChunkMap,
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
                        return Some(found);
                    }
                    chunk = (*chunk).next;
                }
                scanned += 1;
            }
        }
        let chunk = match self.take_empty() {
            Some(chunk) => chunk,
            None => self.new_slab_chunk(provider, map)?,
        };
        // SAFETY: a formatted slab chunk in no list; the lock is held.
        unsafe {
            let found = ChunkHeader::carve(chunk, pages, align_pages, kind);
            self.counters.slab_chunks += 1;
            self.link(chunk);
            if found.is_none() {
                // A request no chunk can hold (alignment beyond what fits): undo.
                self.release_if_empty(chunk, provider, map);
            }
            found
        }
    }

    /// Gives a run's pages back to its chunk; an emptied chunk goes to the empty cache.
    ///
    /// # Safety
    ///
    /// `run` is a live run of a slab chunk of this heap, with nothing in it live.
    pub(crate) unsafe fn free_run<P: PageProvider>(&mut self, run: *mut Run, provider: &P, map: &ChunkMap) {
        let chunk = chunk_of(run as usize);
        // SAFETY: the caller's promise; the lock is held.
        unsafe {
            ChunkHeader::uncarve(run);
            self.rebucket(chunk);
            self.release_if_empty(chunk, provider, map);
        }
    }

    /// Resizes a live large run in place; returns false when it cannot grow there.
    ///
    /// # Safety
    ///
    /// `run` is a live large run of this heap owned by the caller.
    pub(crate) unsafe fn resize_run(&mut self, run: *mut Run, pages: usize) -> bool {
        // SAFETY: the caller's promise; the lock is held.
        unsafe {
            let resized = ChunkHeader::resize_in_place(run, pages);
            if resized {
                self.rebucket(chunk_of(run as usize));
            }
            resized
        }
    }

    /// Moves a chunk with no run left from its bucket to the empty cache, and trims the
    /// cache to its limit.
    ///
    /// # Safety
    ///
    /// `chunk` is a formatted slab chunk in its bucket.
    unsafe fn release_if_empty<P: PageProvider>(
        &mut self,
        chunk: *mut ChunkHeader,
        provider: &P,
        map: &ChunkMap,
    ) {
        // SAFETY: the lock is held; the chunk is in its bucket (caller).
        unsafe {
            if (*chunk).free_count as usize != USABLE_PAGES {
                return;
            }
            self.unlink(chunk);
            self.counters.slab_chunks -= 1;
            self.push_empty(chunk);
        }
        self.trim(self.retain_limit(), provider, map);
    }

    /// Puts an empty formatted chunk at the head of the empty cache.
    ///
    /// # Safety
    ///
    /// `chunk` is a formatted slab chunk with no run, in no list.
    unsafe fn push_empty(&mut self, chunk: *mut ChunkHeader) {
        // SAFETY: the lock is held; the chunk is in no list.
        unsafe {
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

    /// Gives the oldest cached empty chunks back to the provider until at most `keep` remain.
    pub(crate) fn trim<P: PageProvider>(&mut self, keep: usize, provider: &P, map: &ChunkMap) {
        while self.counters.cached_chunks > keep {
            let chunk = self.empty_tail;
            // SAFETY: a non-empty cache has a tail, a formatted slab chunk of this heap.
            unsafe {
                self.empty_tail = (*chunk).prev;
                if self.empty_tail.is_null() {
                    self.empty_head = ptr::null_mut();
                } else {
                    (*self.empty_tail).next = ptr::null_mut();
                }
            }
            self.counters.cached_chunks -= 1;
            self.forget_chunks(chunk as usize, 1, map);
            // SAFETY: the chunk came from the provider and nothing in it is live.
            unsafe {
                self.unformat_slab_chunk(chunk);
                provider.free_chunks(NonNull::new_unchecked(chunk.cast()), 1);
            }
            self.counters.chunks_returned += 1;
        }
    }

    /// Clears the chunk-map entries of `count` chunks from `base`.
    fn forget_chunks(&mut self, base: usize, count: usize, map: &ChunkMap) {
        for index in 0..count {
            // SAFETY: the lock is held; clearing an entry needs no new node.
            unsafe { map.set(base + index * CHUNK_SIZE, 0, &mut || None) };
        }
    }

    /// Gets a chunk from the provider, formats it as a slab chunk and records it.
    fn new_slab_chunk<P: PageProvider>(&mut self, provider: &P, map: &ChunkMap) -> Option<*mut ChunkHeader> {
        let Some(fresh) = provider.alloc_chunks(1) else {
            self.counters.provider_refusals += 1;
            return None;
        };
        self.counters.chunks_obtained += 1;
        let chunk = fresh.base.as_ptr().cast::<ChunkHeader>();
        if !self.record(chunk as usize, entry(KIND_SLAB, 0), provider, map) {
            // SAFETY: just obtained and unused.
            unsafe { provider.free_chunks(fresh.base, 1) };
            self.counters.chunks_returned += 1;
            return None;
        }
        // SAFETY: a fresh chunk, ours alone.
        if !unsafe { self.format_slab_chunk(chunk, fresh.zeroed, provider) } {
            self.forget_chunks(chunk as usize, 1, map);
            // SAFETY: just obtained and unused.
            unsafe { provider.free_chunks(fresh.base, 1) };
            self.counters.chunks_returned += 1;
            return None;
        }
        Some(chunk)
    }

    /// Formats `chunk` as an empty slab chunk (and, in checked builds, gives it a cleared
    /// table of live-block bits). Returns false, changing nothing, when out of metadata.
    ///
    /// # Safety
    ///
    /// The caller owns `chunk`, and nothing in it is live.
    unsafe fn format_slab_chunk<P: PageProvider>(
        &mut self,
        chunk: *mut ChunkHeader,
        zeroed: bool,
        provider: &P,
    ) -> bool {
        #[cfg(feature = "checked")]
        let bits = {
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
            // SAFETY: a table of LIVE_BITS_BYTES bytes nobody else uses.
            unsafe { ptr::write_bytes(bits, 0, crate::chunk::LIVE_BITS_BYTES) };
            bits
        };
        #[cfg(not(feature = "checked"))]
        let _ = provider;
        // SAFETY: the caller owns the chunk.
        unsafe {
            ChunkHeader::init(chunk, zeroed);
            #[cfg(feature = "checked")]
            {
                (*chunk).live_bits = bits.cast();
            }
        }
        true
    }

    /// Takes a slab chunk's checked-build side table back for reuse, as the chunk stops
    /// being a slab chunk.
    ///
    /// # Safety
    ///
    /// `chunk` is an empty formatted slab chunk in no list.
    unsafe fn unformat_slab_chunk(&mut self, chunk: *mut ChunkHeader) {
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
        let mut new_node = || self.meta_alloc(NODE_BYTES, PAGE, provider);
        // SAFETY: the lock is held; metadata memory is zeroed, aligned and never freed.
        unsafe { map.set(address, value, &mut new_node) }
    }

    /// Allocates `count` whole chunks aligned to `align` bytes for a huge allocation;
    /// returns the first byte and whether the memory is zeroed.
    pub(crate) fn alloc_huge<P: PageProvider>(
        &mut self,
        count: usize,
        align: usize,
        provider: &P,
        map: &ChunkMap,
    ) -> Option<(NonNull<u8>, bool)> {
        let align_chunks = align.div_ceil(CHUNK_SIZE).max(1);
        if count == 1
            && align_chunks == 1
            && let Some(chunk) = self.take_empty()
        {
            if self.record(chunk as usize, entry(KIND_HUGE, 1), provider, map) {
                // SAFETY: an empty cached chunk, taken out of the cache.
                unsafe { self.unformat_slab_chunk(chunk) };
                self.counters.huge_live += 1;
                self.counters.huge_live_bytes += CHUNK_SIZE;
                return NonNull::new(chunk.cast()).map(|base| (base, false));
            }
            // SAFETY: it was cached a moment ago and is unchanged.
            unsafe { self.push_empty(chunk) };
        }
        let extra = align_chunks - 1;
        let Some(fresh) = count.checked_add(extra).and_then(|total| provider.alloc_chunks(total)) else {
            self.counters.provider_refusals += 1;
            return None;
        };
        self.counters.chunks_obtained += count + extra;
        let base = fresh.base.as_ptr() as usize;
        let aligned = base.next_multiple_of(align_chunks * CHUNK_SIZE);
        let head = (aligned - base) / CHUNK_SIZE;
        let tail = extra - head;
        // SAFETY: the head and tail chunks are parts of the fresh run nobody uses.
        unsafe {
            if head > 0 {
                provider.free_chunks(fresh.base, head);
            }
            if tail > 0 {
                provider.free_chunks(NonNull::new_unchecked((aligned + count * CHUNK_SIZE) as *mut u8), tail);
            }
        }
        self.counters.chunks_returned += extra;
        for index in 0..count {
            let value = if index == 0 { entry(KIND_HUGE, count) } else { entry(KIND_HUGE_TAIL, index) };
            if !self.record(aligned + index * CHUNK_SIZE, value, provider, map) {
                self.forget_chunks(aligned, index, map);
                // SAFETY: the run is unused.
                unsafe { provider.free_chunks(NonNull::new_unchecked(aligned as *mut u8), count) };
                self.counters.chunks_returned += count;
                return None;
            }
        }
        self.counters.huge_live += 1;
        self.counters.huge_live_bytes += count * CHUNK_SIZE;
        NonNull::new(aligned as *mut u8).map(|first| (first, fresh.zeroed))
    }

    /// The number of chunks of the huge allocation starting at `address`, or `None` if no
    /// huge allocation starts there.
    pub(crate) fn huge_chunks(address: usize, map: &ChunkMap) -> Option<usize> {
        let found = map.get(address);
        (address & CHUNK_MASK == 0 && kind_of(found) == KIND_HUGE).then(|| count_of(found))
    }

    /// Frees the huge allocation of `count` chunks at `base`.
    ///
    /// # Safety
    ///
    /// A live huge allocation of `count` chunks starts at `base` and nothing uses it.
    pub(crate) unsafe fn free_huge<P: PageProvider>(
        &mut self,
        base: usize,
        count: usize,
        provider: &P,
        map: &ChunkMap,
    ) {
        self.forget_chunks(base, count, map);
        self.counters.huge_live -= 1;
        self.counters.huge_live_bytes -= count * CHUNK_SIZE;
        if count == 1 && self.counters.cached_chunks < self.retain_limit() {
            let chunk = base as *mut ChunkHeader;
            // SAFETY: the chunk is ours and unused (caller).
            if unsafe { self.format_slab_chunk(chunk, false, provider) } {
                if self.record(base, entry(KIND_SLAB, 0), provider, map) {
                    // SAFETY: formatted just above, in no list.
                    unsafe { self.push_empty(chunk) };
                    return;
                }
                // SAFETY: formatted just above, in no list.
                unsafe { self.unformat_slab_chunk(chunk) };
            }
        }
        // SAFETY: the chunks came from the provider and nothing uses them (caller).
        unsafe { provider.free_chunks(NonNull::new_unchecked(base as *mut u8), count) };
        self.counters.chunks_returned += count;
    }

    /// Shrinks the huge allocation at `base` from `count` to `keep` chunks (at least one).
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
        let spare = base + keep * CHUNK_SIZE;
        self.forget_chunks(spare, count - keep, map);
        // The head entry already has its node: rewriting it cannot fail.
        self.record(base, entry(KIND_HUGE, keep), provider, map);
        // SAFETY: the spare chunks are unused (caller).
        unsafe { provider.free_chunks(NonNull::new_unchecked(spare as *mut u8), count - keep) };
        self.counters.chunks_returned += count - keep;
        self.counters.huge_live_bytes -= (count - keep) * CHUNK_SIZE;
    }

    /// Bump-allocates zeroed metadata memory (arenas, chunk-map nodes), never freed.
    pub(crate) fn meta_alloc<P: PageProvider>(
        &mut self,
        size: usize,
        align: usize,
        provider: &P,
    ) -> Option<NonNull<u8>> {
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
            unsafe { ptr::write_bytes(start as *mut u8, 0, size) };
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
                chunk = (*chunk).next;
            }
            cached += 1;
        }
        if cached != self.counters.cached_chunks {
            return Err("cached chunk count disagrees with the cache");
        }
        if HEADER_PAGES * PAGE > CHUNK_SIZE {
            return Err("header larger than a chunk");
        }
        Ok(())
    }
}
