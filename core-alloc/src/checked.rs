//! Checked builds (feature `checked`): every free is validated before it touches the heap,
//! and a double free, a foreign pointer or a wrong-size deallocation is reported through
//! the misuse hook instead (the block is then left alone).
//!
//! Each slab chunk has a side table with one bit per 8-byte granule, set where a live block
//! starts (no two blocks start in one granule: blocks are at least 8 bytes). Allocation sets
//! the bit; free clears it, and finding it clear is a double free. A pointer is only
//! followed into a chunk header after the chunk map says the chunk is ours.
//!
//! Concurrency: bits of one word belong to different blocks, so they are set and cleared
//! with atomic or/and; each block's bit is changed by whoever holds the block.

use crate::sync::{AtomicU64, Ordering};

use page_provider::PageProvider;
use platform::Platform;

use crate::allocator::{Allocator, Misuse};
use crate::chunk::{RUN_LARGE, RUN_META, RUN_SLAB, chunk_of, page_address, run_of};
use crate::chunk_map::{KIND_SLAB, kind_of};
use crate::config::{CHUNK_MASK, LARGE_GROWTH_SLACK, MAX_LARGE, PAGE};
use crate::size_class::class_for;

/// The word and bit of the live-block table for a block at `address` in a slab chunk.
///
/// # Safety
///
/// `address` lies in a formatted slab chunk of this allocator.
unsafe fn live_bit(address: usize) -> (&'static AtomicU64, u64) {
    let granule = (address & CHUNK_MASK) >> 3;
    // SAFETY: formatted slab chunks carry a table of CHUNK_SIZE / 8 bits, never freed while
    // the chunk is formatted.
    let word = unsafe { &*(*chunk_of(address)).live_bits.add(granule / 64) };
    (word, 1 << (granule % 64))
}

impl<P: PageProvider, Pl: Platform> Allocator<P, Pl> {
    /// Records a block handed out of a slab chunk as live.
    pub(crate) fn mark_live(&self, block: *mut u8) {
        let address = block as usize;
        if P::MAY_CLAIM_SPAN && self.mode.compact() {
            return self.mark_compact_live(address);
        }
        if address & CHUNK_MASK != 0 {
            // SAFETY: a block just handed out, in a slab chunk of this allocator.
            let (word, bit) = unsafe { live_bit(address) };
            word.fetch_or(bit, Ordering::Relaxed);
        }
    }

    /// Validates a free of a block in a slab chunk; reports and returns false if it is not
    /// a live block (or `layout` does not fit it).
    pub(crate) fn check_free(&self, address: usize, layout: Option<(usize, usize)>) -> bool {
        if kind_of(self.map.get(address)) != KIND_SLAB {
            self.report(Misuse::ForeignPointer, address);
            return false;
        }
        // SAFETY: the chunk map says the chunk is one of our formatted slab chunks, so its
        // header and page map can be read; the run descriptor fields read are stable for
        // live runs and plain bytes otherwise.
        unsafe {
            let run = run_of(address);
            let start = page_address(run, (*run).first_page as usize);
            let kind = (*run).kind;
            let boundary = match kind {
                RUN_SLAB => {
                    let size = (*run).block_size as usize;
                    let (first, capacity) = crate::slab::blocks_of(run, (*run).class as usize);
                    let offset = address & CHUNK_MASK;
                    offset >= first
                        && (offset - first).is_multiple_of(size)
                        && offset - first < size * capacity
                }
                RUN_LARGE => address == start,
                _ => false,
            };
            if !boundary {
                let misuse = if kind == RUN_SLAB || kind == RUN_LARGE || kind == RUN_META {
                    Misuse::ForeignPointer
                } else {
                    Misuse::DoubleFree
                };
                self.report(misuse, address);
                return false;
            }
            if let Some((size, align)) = layout {
                let fits = if kind == RUN_SLAB {
                    // A block shrunk in place by reallocation keeps its class (see
                    // `shrinks_in_place`).
                    let class = (*run).class as usize;
                    class_for(size, align) == Some(class)
                        || address.is_multiple_of(align) && crate::front_cache::shrinks_in_place(class, size)
                } else {
                    // Page runs also hold blocks of small sizes that reallocation grew (see
                    // LARGE_GROWTH_MIN), and a run from an arena's large cache may have up to
                    // LARGE_GROWTH_SLACK times the pages the size needs (see `large_cache`).
                    let (needed, pages) = (size.div_ceil(PAGE).max(1), (*run).pages as usize);
                    size <= MAX_LARGE
                        && needed <= pages
                        && pages <= needed * LARGE_GROWTH_SLACK
                        && start.is_multiple_of(align)
                };
                if !fits {
                    self.report(Misuse::WrongLayout, address);
                    return false;
                }
            }
            crate::sync::pause(crate::sync::PausePoint::CheckedFreeBeforeBit);
            let (word, bit) = live_bit(address);
            if word.fetch_and(!bit, Ordering::Relaxed) & bit == 0 {
                self.report(Misuse::DoubleFree, address);
                return false;
            }
        }
        true
    }
}
