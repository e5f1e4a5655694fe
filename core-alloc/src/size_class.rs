//! Size classes: which block size serves a request, and how big a slab of each class is.
//!
//! Classes are 8 bytes, then four per doubling from 16 bytes: 16, 20, 24, 28, 32, 40, 48,
//! 56, 64, 80, ... up to [`MAX_SMALL`] (32 KiB). A request just above a class boundary,
//! `4·2^k + 1` bytes, gets a block of `5·2^k`, so the unused tail of a block is always less
//! than a fifth of it for requests above 16 bytes (a quarter of the request at most).
//!
//! A block's alignment is the largest power of two dividing its size, capped at the page
//! (slabs start on page boundaries): 20- and 28-byte blocks are 4-aligned, 24 is 8-aligned,
//! 48 is 16-aligned. A request asking for more alignment than its class gives moves up to
//! the next class that gives enough.
//!
//! Each class has a slab size chosen so that blocks tile it with at most 1/64 of it left
//! over, and at least four blocks for the big classes.
#![forbid(unsafe_code)]

use crate::config::{MAX_SLAB_PAGES, MIN_SLAB_PAGES, PAGE, PAGE_SHIFT};

/// The largest request served by slabs; larger ones are page runs or whole chunks.
pub const MAX_SMALL: usize = 32 * 1024;

/// The number of size classes.
pub const CLASS_COUNT: usize = class_index(MAX_SMALL) + 1;

/// The index of the smallest class of at least `size` bytes (any `size` up to
/// [`MAX_SMALL`]; 0 counts as 1).
#[inline(always)]
pub const fn class_index(size: usize) -> usize {
    if size <= 8 {
        return 0;
    }
    if size <= 16 {
        return 1;
    }
    // `size` is in (2^b, 2^(b+1)]; classes there are m·2^(b-2) for m in 5..=8.
    let last = size - 1;
    let b = (usize::BITS - 1 - last.leading_zeros()) as usize;
    let m = (last >> (b - 2)) + 1;
    1 + (b - 4) * 4 + (m - 4)
}

/// The block size of class `index`.
#[inline(always)]
pub const fn class_size(index: usize) -> usize {
    if index == 0 {
        return 8;
    }
    let k = 2 + (index - 1) / 4;
    let m = 4 + (index - 1) % 4;
    m << k
}

/// The alignment every block of class `index` has.
#[inline(always)]
pub const fn class_align(index: usize) -> usize {
    let size = class_size(index);
    let lowest_bit = size & size.wrapping_neg();
    if lowest_bit < PAGE { lowest_bit } else { PAGE }
}

/// The class serving `size` bytes at alignment `align` (a power of two), or `None` when
/// the request is for the large path (above [`MAX_SMALL`], or aligned beyond a page).
#[inline(always)]
pub fn class_for(size: usize, align: usize) -> Option<usize> {
    if size > MAX_SMALL || align > PAGE {
        return None;
    }
    if align <= 16 {
        // The common case, without a search: every class above 1 KiB is at least 256-aligned,
        // and the tables below name classes aligned enough.
        return Some(if size <= LOOKUP_LIMIT {
            ALIGNED_CLASS[(align >> 3) & 3][size.div_ceil(4)] as usize
        } else {
            class_index(size)
        });
    }
    let size = if size > align { size } else { align };
    let mut index =
        if size <= LOOKUP_LIMIT { ALIGNED_CLASS[0][size.div_ceil(4)] as usize } else { class_index(size) };
    while (CLASS_ALIGN[index as u8 as usize] as usize) < align {
        // Terminates: the page-sized class (index < CLASS_COUNT) is page-aligned.
        index += 1;
    }
    Some(index)
}

/// The class of a request of at most [`LOOKUP_LIMIT`] bytes aligned to at most 16 (the
/// common case, one table load), or `None` for any other request.
#[inline(always)]
pub(crate) fn table_class(size: usize, align: usize) -> Option<usize> {
    if size <= LOOKUP_LIMIT && align <= 16 {
        Some(ALIGNED_CLASS[(align >> 3) & 3][size.div_ceil(4)] as usize)
    } else {
        None
    }
}

/// Sizes up to this many bytes find their class in a table rather than by arithmetic.
pub(crate) const LOOKUP_LIMIT: usize = 1024;

/// The class of each size up to `LOOKUP_LIMIT`, by the size in 4-byte steps (rounded up),
/// for alignments of at most 4 (row 0), 8 (row 1) and 16 (rows 2 and 3): the smallest class
/// of at least that size (at least one byte) whose blocks have that alignment. Every class is
/// a multiple of 4 bytes, so rounding the size up to one changes no answer.
const ALIGNED_CLASS: [[u8; LOOKUP_LIMIT / 4 + 1]; 4] = {
    let mut table = [[0u8; LOOKUP_LIMIT / 4 + 1]; 4];
    let mut row = 0;
    while row < 4 {
        let align = [4, 8, 16, 16][row];
        let mut step = 0;
        while step < table[row].len() {
            let size = if step == 0 { 1 } else { step * 4 };
            let mut index = class_index(size);
            while class_align(index) < align {
                index += 1;
            }
            table[row][step] = index as u8;
            step += 1;
        }
        row += 1;
    }
    table
};

/// The alignment of every block of each class ([`class_align`] as a table), padded to 256
/// entries so that indexing it with a class number needs no bounds check.
const CLASS_ALIGN: [u16; 256] = {
    let mut table = [u16::MAX; 256];
    let mut index = 0;
    while index < CLASS_COUNT {
        table[index] = class_align(index) as u16;
        index += 1;
    }
    table
};

/// Pages in a slab of class `index`.
pub const fn slab_pages(index: usize) -> usize {
    SLAB_PAGES[index] as usize
}

/// Blocks in a slab of class `index`.
pub const fn slab_capacity(index: usize) -> usize {
    (slab_pages(index) << PAGE_SHIFT) / class_size(index)
}

/// Pages in the first slab of class `index` an arena takes: the fewest that hold at least
/// four blocks with at most an eighth unused (at most [`slab_pages`]), so that a class a
/// program uses a little costs a page or a few, not a whole slab.
pub const fn first_slab_pages(index: usize) -> usize {
    FIRST_SLAB_PAGES[index] as usize
}

const FIRST_SLAB_PAGES: [u16; CLASS_COUNT] = {
    let mut table = [0u16; CLASS_COUNT];
    let mut index = 0;
    while index < CLASS_COUNT {
        let size = class_size(index);
        let mut pages = 1;
        while pages < slab_pages(index) {
            let bytes = pages << PAGE_SHIFT;
            if bytes / size >= 4 && bytes % size * 8 <= bytes {
                break;
            }
            pages += 1;
        }
        table[index] = pages as u16;
        index += 1;
    }
    table
};

/// The slab size of every class: the fewest pages from `MIN_SLAB_PAGES` on that hold at
/// least four blocks and leave at most 1/64 unused; failing that, the least waste.
const SLAB_PAGES: [u16; CLASS_COUNT] = {
    let mut table = [0u16; CLASS_COUNT];
    let mut index = 0;
    while index < CLASS_COUNT {
        let size = class_size(index);
        let mut best = MIN_SLAB_PAGES;
        let mut best_waste = usize::MAX;
        let mut pages = MIN_SLAB_PAGES;
        while pages <= MAX_SLAB_PAGES {
            let bytes = pages << PAGE_SHIFT;
            let waste = bytes % size;
            if bytes / size >= 4 {
                if waste * 64 <= bytes {
                    best = pages;
                    break;
                }
                // Compare waste fractions: waste / bytes < best_waste / best_bytes.
                if best_waste == usize::MAX || waste * (best << PAGE_SHIFT) < best_waste * bytes {
                    best = pages;
                    best_waste = waste;
                }
            }
            pages += 1;
        }
        table[index] = best as u16;
        index += 1;
    }
    table
};

// Every class tiles its slab with at most 1/64 unused and at least four blocks.
const _: () = {
    let mut index = 0;
    while index < CLASS_COUNT {
        let bytes = slab_pages(index) << PAGE_SHIFT;
        assert!(bytes % class_size(index) * 64 <= bytes);
        assert!(slab_capacity(index) >= 4);
        assert!(slab_capacity(index) < 1 << 16);
        index += 1;
    }
};
static_assertions::const_assert_eq!(class_size(CLASS_COUNT - 1), MAX_SMALL);
static_assertions::const_assert_eq!(CLASS_COUNT, 46);

#[cfg(test)]
mod tests;
