//! Metadata memory (arenas, chunk-map nodes, checked builds' live bits): carved from
//! metadata chunks obtained under the lock (rarely: one per 2 MiB), never freed; and the
//! chunk-map records of the heap's chunks, whose nodes come from it.

use core::ptr::{self, NonNull};

use page_provider::PageProvider;

use super::Heap;
use crate::chunk::ChunkHeader;
use crate::chunk_map::{ChunkMap, NODE_BYTES};
use crate::config::{CHUNK_SIZE, PAGE};

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
    ) -> bool {
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
    pub(super) fn record<P: PageProvider>(
        &mut self,
        address: usize,
        value: u64,
        provider: &P,
        map: &ChunkMap,
    ) -> bool {
        let mut new_node = || self.new_node(provider);
        // SAFETY: the lock is held; metadata memory is zeroed, aligned and never freed.
        unsafe { map.set(address, value, &mut new_node) }
    }

    /// A zeroed chunk-map node: a spare one, or fresh metadata memory.
    pub(super) fn new_node<P: PageProvider>(&mut self, provider: &P) -> Option<NonNull<u8>> {
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
}
