//! A provider over a caller-given span of memory: a static array in firmware without an
//! MMU, or a region carved out in tests. Chunks are handed out from the 2 MiB-aligned part
//! of the span (align the span to 2 MiB to use all of it) and taken back for reuse; nothing
//! is ever returned to a system, and purging is not supported.
//!
//! Concurrency: one spin lock around the chunk bitmap; the allocator calls providers only on
//! its slow paths.

use core::ptr::NonNull;

use crate::bitmap::ChunkBitmap;
use crate::{CHUNK_SIZE, Capabilities, Chunks, PageProvider};

/// Chunks out of a fixed span; tracks up to `WORDS * 64` chunks (the default, 64 words,
/// covers 8 GiB; a larger span is used up to that).
#[derive(Debug)]
pub struct FixedRegion<const WORDS: usize = 64> {
    state: spin::Mutex<State<WORDS>>,
}

#[derive(Debug)]
struct State<const WORDS: usize> {
    start: *mut u8,
    len: usize,
    zeroed: bool,
    /// Address of chunk 0, once the span has been measured (on first use, as `new` is const).
    base: Option<usize>,
    chunks: ChunkBitmap<WORDS>,
}

// SAFETY: `start` is only a record of the span the provider owns (see `FixedRegion::new`);
// all access to the state goes through the mutex.
unsafe impl<const WORDS: usize> Send for State<WORDS> {}

impl<const WORDS: usize> FixedRegion<WORDS> {
    /// A provider handing out the 2 MiB-aligned chunks inside `len` bytes at `start`.
    ///
    /// # Safety
    ///
    /// The span is valid for reads and writes, used by nothing else for as long as the
    /// provider or memory from it is in use, and all zero if `zeroed` is true.
    pub const unsafe fn new(start: *mut u8, len: usize, zeroed: bool) -> Self {
        Self { state: spin::Mutex::new(State { start, len, zeroed, base: None, chunks: ChunkBitmap::new() }) }
    }

    /// The number of chunks not handed out.
    pub fn available_chunks(&self) -> usize {
        let mut state = self.state.lock();
        state.measure();
        state.chunks.available()
    }
}

impl<const WORDS: usize> State<WORDS> {
    fn measure(&mut self) -> usize {
        if let Some(base) = self.base {
            return base;
        }
        let start = self.start as usize;
        let end = start.saturating_add(self.len);
        let base = start.next_multiple_of(CHUNK_SIZE);
        let count =
            if end > base { ((end - base) / CHUNK_SIZE).min(ChunkBitmap::<WORDS>::CAPACITY) } else { 0 };
        self.chunks.add(0, count, self.zeroed);
        self.base = Some(base);
        base
    }
}

// SAFETY: chunks are 2 MiB-aligned pieces of the span that `new`'s caller gave to the
// provider alone; the bitmap hands each out once until it is given back, and reports a run
// clean only if no byte of it was handed out since the span was declared zeroed.
unsafe impl<const WORDS: usize> PageProvider for FixedRegion<WORDS> {
    fn capabilities(&self) -> Capabilities {
        Capabilities::empty()
    }

    fn page_size(&self) -> usize {
        4096
    }

    fn alloc_chunks(&self, count: usize) -> Option<Chunks> {
        let mut state = self.state.lock();
        let base = state.measure();
        let (index, zeroed) = state.chunks.take(count)?;
        let address = base + index * CHUNK_SIZE;
        Some(Chunks { base: NonNull::new(address as *mut u8)?, zeroed })
    }

    unsafe fn free_chunks(&self, base: NonNull<u8>, count: usize) {
        let mut state = self.state.lock();
        let region_base = state.measure();
        let offset = (base.as_ptr() as usize).wrapping_sub(region_base);
        let accepted =
            offset.is_multiple_of(CHUNK_SIZE) && state.chunks.give_back(offset / CHUNK_SIZE, count);
        debug_assert!(accepted, "chunks given back that this region did not hand out");
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec;

    #[test]
    fn hands_out_aligned_disjoint_chunks_and_reuses_given_back_ones() {
        let mut backing = vec![0u8; 9 * CHUNK_SIZE];
        // SAFETY: the vector outlives the region and nothing else touches it.
        let region: FixedRegion<1> = unsafe { FixedRegion::new(backing.as_mut_ptr(), backing.len(), true) };
        let total = region.available_chunks();
        assert!(total >= 8, "a 9-chunk span must hold 8 aligned chunks, got {total}");
        let first = region.alloc_chunks(3).unwrap();
        let second = region.alloc_chunks(2).unwrap();
        for run in [first, second] {
            assert_eq!(run.base.as_ptr() as usize % CHUNK_SIZE, 0);
            assert!(run.zeroed);
        }
        let (a, b) = (first.base.as_ptr() as usize, second.base.as_ptr() as usize);
        assert!(b >= a + 3 * CHUNK_SIZE || a >= b + 2 * CHUNK_SIZE, "runs overlap");
        assert!(region.alloc_chunks(total).is_none(), "handed out more than it has");
        // SAFETY: the run came from this region and is not used.
        unsafe { region.free_chunks(first.base, 3) };
        let again = region.alloc_chunks(3).unwrap();
        assert_eq!(again.base, first.base);
        assert!(!again.zeroed);
        assert_eq!(region.available_chunks(), total - 5);
    }
}
