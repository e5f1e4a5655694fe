//! A provider over a caller-given span of memory: a kernel's heap region it has already
//! mapped, a static array in firmware without an MMU, or a region carved out in tests. Any
//! size from 64 KiB works, at any 16-byte alignment:
//!
//! - a span holding fewer than the allocator's threshold of whole 2 MiB chunks is claimed
//!   whole ([`PageProvider::claim_span`]): the allocator manages it itself, in its compact
//!   mode, with its metadata inside the span;
//! - a bigger span hands out chunks from its 2 MiB-aligned part (align it to 2 MiB to use
//!   all of it) and takes them back for reuse.
//!
//! Nothing is ever returned to a system, and purging is not supported.
//!
//! Concurrency: one spin lock around the chunk bitmap; the allocator calls providers only on
//! its slow paths.

use core::ptr::NonNull;

use crate::bitmap::ChunkBitmap;
use crate::{CHUNK_SIZE, Capabilities, Chunks, PageProvider, Span, Supply};

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
    /// The whole span was handed over by `claim_span`.
    claimed: bool,
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
        Self {
            state: spin::Mutex::new(State {
                start,
                len,
                zeroed,
                base: None,
                claimed: false,
                chunks: ChunkBitmap::new(),
            }),
        }
    }

    /// The span, as given to [`new`](Self::new): its first byte and its length.
    pub fn span(&self) -> (*mut u8, usize) {
        let state = self.state.lock();
        (state.start, state.len)
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
        let count = self.whole_chunks(base, end);
        self.chunks.add(0, count, self.zeroed);
        self.base = Some(base);
        base
    }

    /// The whole chunks between `base` (chunk-aligned) and `end` that the bitmap can track.
    fn whole_chunks(&self, base: usize, end: usize) -> usize {
        if end > base { ((end - base) / CHUNK_SIZE).min(ChunkBitmap::<WORDS>::CAPACITY) } else { 0 }
    }
}

// SAFETY: chunks are 2 MiB-aligned pieces of the span that `new`'s caller gave to the
// provider alone; the bitmap hands each out once until it is given back, and reports a run
// clean only if no byte of it was handed out since the span was declared zeroed. The span is
// claimed whole only before any chunk was handed out (`base` unset), and no chunk is handed
// out after a claim.
unsafe impl<const WORDS: usize> PageProvider for FixedRegion<WORDS> {
    fn capabilities(&self) -> Capabilities {
        Capabilities::empty()
    }

    fn page_size(&self) -> usize {
        4096
    }

    const MAY_CLAIM_SPAN: bool = true;

    fn claim_span(&self, max_chunks: usize) -> Option<Span> {
        let mut state = self.state.lock();
        if state.base.is_some() || state.claimed {
            return None; // chunks were handed out already, or the span is gone
        }
        let start = state.start as usize;
        let end = start.checked_add(state.len)?;
        if state.whole_chunks(start.next_multiple_of(CHUNK_SIZE), end) >= max_chunks {
            return None;
        }
        state.claimed = true;
        Some(Span { base: NonNull::new(state.start)?, len: state.len, zeroed: state.zeroed })
    }

    fn alloc_chunks(&self, count: usize) -> Option<Chunks> {
        let mut state = self.state.lock();
        if state.claimed {
            return None;
        }
        let base = state.measure();
        let (index, zeroed) = state.chunks.take(count)?;
        let address = base + index * CHUNK_SIZE;
        Some(Chunks { base: NonNull::new(address as *mut u8)?, zeroed })
    }

    fn supply(&self) -> Option<Supply> {
        let mut state = self.state.lock();
        if state.claimed {
            return None;
        }
        let base = state.measure();
        let total = state.whole_chunks(base, (state.start as usize).saturating_add(state.len));
        Some(Supply { available: state.chunks.available(), total })
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
        assert_eq!(region.supply(), Some(Supply { available: total - 5, total }));
        assert!(region.claim_span(usize::MAX).is_none(), "claimed a span with chunks handed out");
    }

    #[test]
    fn a_small_span_is_claimed_whole_once_and_then_hands_out_no_chunks() {
        let mut backing = vec![0u8; 3 * CHUNK_SIZE];
        // SAFETY: the vector outlives the regions and nothing else touches it.
        let region: FixedRegion<1> = unsafe { FixedRegion::new(backing.as_mut_ptr(), backing.len(), true) };
        assert!(region.claim_span(2).is_none(), "3 chunks' worth holds at least 2 whole chunks");
        let span = region.claim_span(4).unwrap();
        assert_eq!((span.base.as_ptr(), span.len, span.zeroed), (backing.as_mut_ptr(), 3 * CHUNK_SIZE, true));
        assert!(region.claim_span(4).is_none(), "claimed twice");
        assert_eq!(region.supply(), None, "a claimed span has no chunks to supply");
        assert!(region.alloc_chunks(1).is_none(), "handed out a chunk of a claimed span");
    }
}
