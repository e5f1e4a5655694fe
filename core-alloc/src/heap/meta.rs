//! Metadata memory (arenas, chunk-map nodes, checked builds' live bits), never freed:
//! bump-allocated from metadata runs (`RUN_META`) carved from slab chunks like any other
//! run, so that metadata takes pages rather than a 2 MiB chunk of its own (which a kernel's
//! heap or a bounded region would lose); and the chunk-map records of the heap's chunks,
//! whose nodes come from it.
//!
//! When no chunk has room for a run, a chunk is obtained under the lock and the run carved
//! from it before the chunk is recorded: the record's nodes then come from the run. A
//! record never needs a new chunk in the middle of a chunk-map write (which would record
//! that chunk inside the write): nodes are stocked before every write ([`Heap::record`]).

use core::ptr::{self, NonNull};

use page_provider::PageProvider;

use super::Heap;
use crate::chunk::{ChunkHeader, RUN_META, Run, USABLE_PAGES, chunk_of, page_address};
use crate::chunk_map::{ChunkMap, KIND_SLAB, NODE_BYTES, entry};
use crate::config::{CHUNK_SIZE, PAGE};

/// Pages of the first metadata run (arenas take about 10 KiB, chunk-map nodes 4 KiB); each
/// later run is twice as long as the one before, up to `META_RUN_MAX_PAGES`, so that a heap
/// with many arenas (a process with many threads) keeps its metadata in a few chunks, and a
/// small one (a kernel's) loses little to it.
pub(super) const META_RUN_PAGES: usize = 16;
/// Pages of a metadata run, at most (the requests may ask for more).
const META_RUN_MAX_PAGES: usize = 128;
/// Chunks holding metadata that a new metadata run tries first.
pub(super) const META_HOMES: usize = 8;
/// Chunk-map nodes one record may need (a path through the map's levels).
const NODES_PER_RECORD: usize = crate::chunk_map::NODE_LEVELS as usize;
/// Pages a new metadata run keeps beyond the request for the chunk-map nodes of its own
/// chunk's record.
const META_RESERVE_PAGES: usize = (NODES_PER_RECORD * NODE_BYTES).div_ceil(PAGE);
/// The largest metadata request.
pub(crate) const META_MAX: usize = (USABLE_PAGES - META_RESERVE_PAGES) * PAGE;

impl Heap {
    /// Clears the chunk-map entries of `count` chunks from `base`.
    pub(super) fn forget_chunks(&mut self, base: usize, count: usize, map: &ChunkMap) {
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
    pub(super) unsafe fn attach_live_bits<P: PageProvider>(
        &mut self,
        chunk: *mut ChunkHeader,
        provider: &P,
        map: &ChunkMap,
    ) -> bool {
        #[cfg(feature = "checked")]
        {
            let spare = self.spare_live_bits;
            let bits = if spare.is_null() {
                match self.new_live_bits(provider) {
                    Some(bits) => bits,
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
        let _ = map;
        true
    }

    /// Checked builds: a new table of live bits, from chunks kept for these tables alone
    /// (a table per slab chunk the heap ever held at once, 1/64 of it: in metadata runs they
    /// would spread over the slab chunks and keep them from emptying).
    #[cfg(feature = "checked")]
    fn new_live_bits<P: PageProvider>(&mut self, provider: &P) -> Option<*mut u8> {
        use crate::chunk::LIVE_BITS_BYTES;
        if self.bits_cursor == 0 || self.bits_cursor + LIVE_BITS_BYTES > self.bits_end {
            let Some(fresh) = provider.alloc_chunks(1) else {
                self.counters.provider_refusals += 1;
                return None;
            };
            self.counters.chunks_obtained += 1;
            self.counters.meta_chunks += 1;
            self.counters.live_bits_chunks += 1;
            self.bits_cursor = fresh.base.as_ptr() as usize;
            self.bits_end = self.bits_cursor + CHUNK_SIZE;
        }
        let bits = self.bits_cursor as *mut u8;
        self.bits_cursor += LIVE_BITS_BYTES;
        Some(bits)
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
    pub(super) unsafe fn detach_live_bits(&mut self, chunk: *mut ChunkHeader) {
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
    /// Returns false, changing nothing, when out of metadata memory.
    pub(super) fn record<P: PageProvider>(
        &mut self,
        address: usize,
        value: u64,
        provider: &P,
        map: &ChunkMap,
    ) -> bool {
        // The nodes the write may need, stocked before it: a node made inside the write may
        // not need a new chunk, whose record would be a write inside this one (both could
        // make the same node, and the later would replace the other's).
        while self.spare_count < map.nodes_missing(address) {
            let Some(node) = self.meta_alloc(NODE_BYTES, PAGE, provider, map) else {
                return false;
            };
            // SAFETY: a zeroed node of NODE_BYTES that nobody uses.
            unsafe { self.push_spare_node(node.as_ptr()) };
        }
        let mut new_node = || self.pop_spare_node();
        // SAFETY: the lock is held; spare nodes are zeroed metadata memory, never freed.
        unsafe { map.set(address, value, &mut new_node) }
    }

    /// A zeroed chunk-map node: a spare one, or fresh metadata memory.
    pub(super) fn new_node<P: PageProvider>(&mut self, provider: &P, map: &ChunkMap) -> Option<NonNull<u8>> {
        self.pop_spare_node().or_else(|| self.meta_alloc(NODE_BYTES, PAGE, provider, map))
    }

    /// Takes a node off the spare list.
    fn pop_spare_node(&mut self) -> Option<NonNull<u8>> {
        let spare = NonNull::new(self.spare_nodes)?;
        // SAFETY: spare nodes are zeroed metadata nodes of NODE_BYTES linked through their
        // first word, which is cleared as the node leaves the list.
        unsafe {
            self.spare_nodes = spare.as_ptr().cast::<*mut u8>().read();
            spare.as_ptr().cast::<*mut u8>().write(ptr::null_mut());
        }
        self.spare_count -= 1;
        Some(spare)
    }

    /// Puts a node on the spare list.
    ///
    /// # Safety
    ///
    /// `node` is zeroed metadata memory of `NODE_BYTES` bytes that nobody uses.
    pub(super) unsafe fn push_spare_node(&mut self, node: *mut u8) {
        // SAFETY: the caller's promise; the first word becomes the link.
        unsafe { node.cast::<*mut u8>().write(self.spare_nodes) };
        self.spare_nodes = node;
        self.spare_count += 1;
    }

    /// Tests: uses up the current metadata run but for `left` bytes.
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
        map: &ChunkMap,
    ) -> Option<NonNull<u8>> {
        self.meta_alloc_zeroing(size, size, align, provider, map)
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
        map: &ChunkMap,
    ) -> Option<NonNull<u8>> {
        debug_assert!(zeroed <= size);
        debug_assert!(size <= META_MAX && align.is_power_of_two() && align <= PAGE);
        loop {
            let start = self.meta_cursor.next_multiple_of(align);
            if self.meta_cursor != 0 && start + size <= self.meta_end {
                self.meta_cursor = start + size;
                if !self.meta_zeroed {
                    // SAFETY: the bytes are fresh metadata memory inside the current run.
                    unsafe { ptr::write_bytes(start as *mut u8, 0, zeroed) };
                }
                return NonNull::new(start as *mut u8);
            }
            // A new run: recording a new chunk for it takes nodes from the run first, which
            // the reserve leaves room for.
            self.new_meta_run(size.div_ceil(PAGE) + META_RESERVE_PAGES, provider, map)?;
        }
    }

    /// Makes a run of at least `pages` pages (and the current `meta_run_pages`) the current
    /// metadata memory, from the first of these that has room: a chunk holding metadata
    /// already (other runs leave their room to metadata while the provider has chunks, so
    /// metadata gathers in one chunk as if it had its own); a new chunk from the provider;
    /// any of the heap's slab chunks (best fit); the chunk being taken in. The rest of the
    /// previous run, too short for the request, stays unused.
    fn new_meta_run<P: PageProvider>(&mut self, pages: usize, provider: &P, map: &ChunkMap) -> Option<()> {
        let pages = pages.max(self.meta_run_pages);
        for index in (0..META_HOMES).rev() {
            let home = self.meta_homes[index];
            if !home.is_null()
                && home != self.adopting
                // SAFETY: a chunk holding metadata is one of the heap's slab chunks for good,
                // filed in a bucket (unless being taken in, excluded above).
                && let Some((run, clean)) = unsafe { self.carve_in(home, pages, 1, RUN_META) }
            {
                // SAFETY: just carved; the lock is held.
                unsafe { self.use_meta_run(run, clean) };
                return Some(());
            }
        }
        if let Some(fresh) = provider.alloc_chunks(1) {
            let chunk = fresh.base.as_ptr().cast::<ChunkHeader>();
            // SAFETY: a fresh chunk from the provider, known to nobody else; formatted under
            // the lock, which is rare (the chunks holding metadata are full of it).
            unsafe {
                ChunkHeader::init(chunk, fresh.zeroed);
                (*chunk).hugified = false;
                if !self.attach_live_bits(chunk, provider, map) {
                    provider.free_chunks(fresh.base, 1);
                    return None;
                }
                self.counters.chunks_obtained += 1;
                // Carved before the chunk is recorded, so that the record's nodes come from
                // this run (which has room for them: META_RESERVE_PAGES). Neither can fail:
                // the chunk is empty and `pages` at most USABLE_PAGES.
                let (run, clean) = ChunkHeader::carve(chunk, pages, 1, RUN_META)?;
                self.use_meta_run(run, clean);
                let recorded = self.record(chunk as usize, entry(KIND_SLAB, 0), provider, map);
                debug_assert!(recorded, "a new metadata run could not record its own chunk");
                self.counters.slab_chunks += 1;
                self.link(chunk);
            }
            return Some(());
        }
        self.counters.provider_refusals += 1;
        let (run, clean) = self.alloc_run(pages, 1, RUN_META, true).or_else(|| {
            // The chunk being taken in lends the run (it is filed with it once recorded).
            // SAFETY: a formatted chunk known only to the heap's caller, under the lock.
            (!self.adopting.is_null())
                .then(|| unsafe { ChunkHeader::carve(self.adopting, pages, 1, RUN_META) })
                .flatten()
        })?;
        // SAFETY: a metadata run just carved; the lock is held.
        unsafe { self.use_meta_run(run, clean) };
        Some(())
    }

    /// Makes `run`, just carved, the current metadata memory.
    ///
    /// # Safety
    ///
    /// `run` is a metadata run just carved in a slab chunk; the lock is held.
    unsafe fn use_meta_run(&mut self, run: *mut Run, clean: bool) {
        // SAFETY: the caller's promise.
        unsafe {
            let pages = (*run).pages as usize;
            let chunk = chunk_of(run as usize);
            if !(*chunk).holds_meta {
                (*chunk).holds_meta = true;
                self.counters.meta_chunks += 1;
                if let Some(free) = self.meta_homes.iter_mut().find(|home| home.is_null()) {
                    *free = chunk;
                }
            }
            self.counters.meta_bytes += pages * PAGE;
            self.meta_run_pages = (pages * 2).clamp(META_RUN_PAGES, META_RUN_MAX_PAGES);
            self.meta_cursor = page_address(run, (*run).first_page as usize);
            self.meta_end = self.meta_cursor + pages * PAGE;
            self.meta_zeroed = clean;
        }
    }
}
