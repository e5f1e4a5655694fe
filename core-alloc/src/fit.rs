//! A best-fit heap over one span of memory: in compact mode (see `region`) it holds every
//! block above the small classes, the small classes' slab pages and the arenas.
//!
//! Two-level segregated fit (M. Masmano, I. Ripoll, A. Crespo, J. Real, "TLSF: a new
//! dynamic memory allocator for real-time systems", ECRTS 2004): free blocks sit in lists
//! by size, 16 lists per power of two (16 bytes apart below 256 bytes), and two levels of
//! bitmaps find in constant time the first non-empty list whose blocks all fit a request.
//! Every block, used or free, starts with a 16-byte header giving its size and its physical
//! predecessor, so a freed block merges with its free neighbours at once and no two free
//! blocks are ever side by side.
//!
//! ```text
//! span: | Fit | list heads | block | block | ... | block | end marker |
//!                           ^ header (16 bytes) then payload (16-aligned)
//! ```
//!
//! Offsets from the span's start (u32) rather than pointers keep the header at 16 bytes
//! and a free block's links at 8 on every target, so the smallest block is 32 bytes. Each
//! header carries a check word, so freeing a pointer that does not start a used block is
//! refused rather than followed.
//!
//! Concurrency: none; the allocator uses it under its central lock.

use core::mem::size_of;

/// Payload alignment and the granule of block sizes.
pub(crate) const GRANULE: usize = 16;
/// Bytes of header in front of every payload.
pub(crate) const HEADER: usize = 16;
/// The smallest block: a header and a free block's two links, rounded to the granule.
const MIN_BLOCK: usize = 32;
/// log2 of the second-level lists per power of two.
const SL_BITS: u32 = 4;
const SL_COUNT: usize = 1 << SL_BITS;
/// Blocks below this size sit in first-level list 0, one list per granule.
const SMALL_LIMIT: usize = SL_COUNT * GRANULE;
/// First-level lists for spans of up to 4 GiB (offsets are u32).
const MAX_LEVELS: usize = 32 - SMALL_LIMIT.ilog2() as usize + 1;
/// No block (a list's end, the first block's predecessor).
const NONE: u32 = u32::MAX;

/// Block states, kept in the header next to a check word.
const FREE: u32 = 0x4652_4545;
const USED: u32 = 0x5553_4544;
const END: u32 = 0x454e_4421;
const CHECK_KEY: u32 = 0x9e37_79b9;

#[repr(C)]
struct Header {
    /// Offset of the physical predecessor's header, or `NONE` for the first block.
    prev: u32,
    /// Bytes in the block, header included; a multiple of the granule (0 for the end).
    size: u32,
    /// `FREE`, `USED` or `END`.
    state: u32,
    /// `offset ^ size ^ state ^ CHECK_KEY`: a header the heap wrote itself.
    check: u32,
}

static_assertions::const_assert_eq!(size_of::<Header>(), HEADER);

/// A free block's list links, in its payload.
#[repr(C)]
struct Links {
    next: u32,
    prev: u32,
}

/// Why a pointer was refused by [`Fit::free`] or [`Fit::used_size`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// It starts no block of this heap.
    NotABlock,
    /// It starts a block that is free already.
    AlreadyFree,
}

/// Counters of a fit heap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FitCounters {
    /// Bytes the heap manages (blocks, headers included).
    pub capacity: usize,
    /// Bytes in free blocks, headers included.
    pub free_bytes: usize,
    /// Used blocks.
    pub used_blocks: usize,
    /// Bytes of the largest free block, header included.
    pub largest_free: usize,
}

/// The control block at the start of the span; list heads follow it.
pub(crate) struct Fit {
    /// Address of offset 0: the control block itself.
    base: usize,
    /// Offset of the first block's header.
    first: u32,
    /// Offset of the end marker's header.
    end: u32,
    /// First-level lists this span needs.
    levels: usize,
    fl_bitmap: u32,
    sl_bitmap: [u16; MAX_LEVELS],
    free_bytes: usize,
    used_blocks: usize,
}

/// Which list holds free blocks of `size` bytes.
fn list_of(size: usize) -> (usize, usize) {
    if size < SMALL_LIMIT {
        (0, size / GRANULE)
    } else {
        let f = size.ilog2();
        let sl = (size >> (f - SL_BITS)) - SL_COUNT;
        ((f - SMALL_LIMIT.ilog2() + 1) as usize, sl)
    }
}

/// `size` rounded up so that every block of its list is at least `size` bytes.
fn search_size(size: usize) -> usize {
    if size < SMALL_LIMIT { size } else { size + (1 << (size.ilog2() - SL_BITS)) - 1 }
}

/// The block size serving a payload of `size` bytes.
pub(crate) fn block_size(size: usize) -> Option<usize> {
    let need = size.max(1).checked_add(HEADER + GRANULE - 1)? & !(GRANULE - 1);
    Some(need.max(MIN_BLOCK))
}

impl Fit {
    /// Sets up a heap over `len` bytes at `start`; returns its control block, or `None` if
    /// the span is too small for one block or too big for u32 offsets.
    ///
    /// # Safety
    ///
    /// The span is valid for reads and writes and used by nothing else while the heap is.
    pub(crate) unsafe fn format(start: usize, len: usize) -> Option<*mut Fit> {
        let base = start.checked_next_multiple_of(GRANULE)?;
        let len = len.checked_sub(base - start)? & !(GRANULE - 1);
        if len > u32::MAX as usize {
            return None;
        }
        let levels = list_of(len).0 + 1;
        let control = (size_of::<Fit>() + levels * SL_COUNT * size_of::<u32>()).next_multiple_of(GRANULE);
        let first = control;
        let end = len.checked_sub(HEADER)?;
        if end < first + MIN_BLOCK {
            return None;
        }
        let fit = base as *mut Fit;
        // SAFETY: the span is ours (caller) and long enough for the control block, the list
        // heads, one block and the end marker (checked above); `base` is 16-aligned.
        unsafe {
            fit.write(Fit {
                base,
                first: first as u32,
                end: end as u32,
                levels,
                fl_bitmap: 0,
                sl_bitmap: [0; MAX_LEVELS],
                free_bytes: 0,
                used_blocks: 0,
            });
            for list in 0..levels * SL_COUNT {
                (*fit).heads().add(list).write(NONE);
            }
            (*fit).write_header(first as u32, NONE, (end - first) as u32, FREE);
            (*fit).write_header(end as u32, first as u32, 0, END);
            (*fit).insert(first as u32);
        }
        Some(fit)
    }

    /// The list heads, right after the control block.
    fn heads(&mut self) -> *mut u32 {
        (self.base + size_of::<Fit>()) as *mut u32
    }

    fn head(&mut self, fl: usize, sl: usize) -> *mut u32 {
        debug_assert!(fl < self.levels && sl < SL_COUNT);
        // SAFETY: `format` laid out `levels * SL_COUNT` heads after the control block.
        unsafe { self.heads().add(fl * SL_COUNT + sl) }
    }

    fn header(&self, offset: u32) -> *mut Header {
        (self.base + offset as usize) as *mut Header
    }

    fn links(&self, offset: u32) -> *mut Links {
        (self.base + offset as usize + HEADER) as *mut Links
    }

    /// # Safety
    ///
    /// `offset` is where a block's header belongs in this heap.
    unsafe fn write_header(&mut self, offset: u32, prev: u32, size: u32, state: u32) {
        let check = offset ^ size ^ state ^ CHECK_KEY;
        // SAFETY: the caller's promise: the header lies inside the span, 16-aligned.
        unsafe { self.header(offset).write(Header { prev, size, state, check }) };
    }

    /// # Safety
    ///
    /// `offset` is a block's header (or the end marker's).
    unsafe fn set_prev(&mut self, offset: u32, prev: u32) {
        // SAFETY: the caller's promise.
        unsafe { (*self.header(offset)).prev = prev };
    }

    /// # Safety
    ///
    /// `offset` is a block's header.
    unsafe fn set_size_state(&mut self, offset: u32, size: u32, state: u32) {
        // SAFETY: the caller's promise.
        unsafe {
            let prev = (*self.header(offset)).prev;
            self.write_header(offset, prev, size, state);
        }
    }

    /// Unseals the header of a block merged into its neighbour, so that a stale pointer to
    /// it is no longer taken for a block.
    ///
    /// # Safety
    ///
    /// `offset` was a block's header and now lies inside another block.
    unsafe fn forget(&mut self, offset: u32) {
        // SAFETY: the caller's promise: the bytes are inside the span, ours to write.
        unsafe {
            let header = self.header(offset);
            (*header).state = 0;
            (*header).check = !(offset ^ (*header).size ^ CHECK_KEY);
        }
    }

    /// The header at `offset`, if the heap wrote it (within the span, check word right).
    fn valid(&self, offset: usize) -> Option<&Header> {
        if offset < self.first as usize || offset > self.end as usize || !offset.is_multiple_of(GRANULE) {
            return None;
        }
        // SAFETY: the offset lies inside the span, 16-aligned; any bytes there are
        // initialised (the span was formatted block by block).
        let header = unsafe { &*self.header(offset as u32) };
        let sealed = header.check == (offset as u32) ^ header.size ^ header.state ^ CHECK_KEY;
        sealed.then_some(header)
    }

    /// Puts a free block (header written) in its list.
    ///
    /// # Safety
    ///
    /// `offset` is a free block in no list.
    unsafe fn insert(&mut self, offset: u32) {
        // SAFETY: a free block's header and payload (at least 16 bytes) are ours.
        unsafe {
            let size = (*self.header(offset)).size as usize;
            let (fl, sl) = list_of(size);
            let head = self.head(fl, sl);
            let next = *head;
            self.links(offset).write(Links { next, prev: NONE });
            if next != NONE {
                (*self.links(next)).prev = offset;
            }
            *head = offset;
            self.fl_bitmap |= 1 << fl;
            self.sl_bitmap[fl] |= 1 << sl;
            self.free_bytes += size;
        }
    }

    /// Takes a free block out of its list.
    ///
    /// # Safety
    ///
    /// `offset` is a free block in its list.
    unsafe fn remove(&mut self, offset: u32) {
        // SAFETY: as for `insert`.
        unsafe {
            let size = (*self.header(offset)).size as usize;
            let (fl, sl) = list_of(size);
            let Links { next, prev } = self.links(offset).read();
            if next != NONE {
                (*self.links(next)).prev = prev;
            }
            if prev != NONE {
                (*self.links(prev)).next = next;
            } else {
                *self.head(fl, sl) = next;
                if next == NONE {
                    self.sl_bitmap[fl] &= !(1 << sl);
                    if self.sl_bitmap[fl] == 0 {
                        self.fl_bitmap &= !(1 << fl);
                    }
                }
            }
            self.free_bytes -= size;
        }
    }

    /// Takes a free block of at least `size` bytes out of its list.
    fn find(&mut self, size: usize) -> Option<u32> {
        let (mut fl, sl) = list_of(search_size(size));
        if fl >= self.levels {
            return None;
        }
        let mut sl_map = u32::from(self.sl_bitmap[fl]) & (u32::MAX << sl);
        if sl_map == 0 {
            let fl_map = self.fl_bitmap & u32::MAX.checked_shl(fl as u32 + 1).unwrap_or(0);
            if fl_map == 0 {
                return None;
            }
            fl = fl_map.trailing_zeros() as usize;
            sl_map = u32::from(self.sl_bitmap[fl]);
        }
        let sl = sl_map.trailing_zeros() as usize;
        // SAFETY: a set bit means a non-empty list, whose head is a free block.
        unsafe {
            let offset = *self.head(fl, sl);
            self.remove(offset);
            Some(offset)
        }
    }

    /// Cuts the block at `offset` (out of every list) down to `size` bytes when the rest
    /// makes a block, which goes free (merged with a free successor).
    ///
    /// # Safety
    ///
    /// `offset` is a block in no list, at least `size` bytes, `size` a multiple of the
    /// granule and at least `MIN_BLOCK`.
    unsafe fn trim_to(&mut self, offset: u32, size: usize, state: u32) {
        // SAFETY: the block and its successor's header are ours under the caller's promise.
        unsafe {
            let total = (*self.header(offset)).size as usize;
            if total - size < MIN_BLOCK {
                self.set_size_state(offset, total as u32, state);
                return;
            }
            self.set_size_state(offset, size as u32, state);
            let rest = offset + size as u32;
            let mut rest_size = total - size;
            let mut after = offset + total as u32;
            if (*self.header(after)).state == FREE {
                self.remove(after);
                rest_size += (*self.header(after)).size as usize;
                self.forget(after);
                after = rest + rest_size as u32;
            }
            self.write_header(rest, offset, rest_size as u32, FREE);
            self.set_prev(after, rest);
            self.insert(rest);
        }
    }

    /// A used block whose payload of at least `size` bytes starts at a multiple of `align`;
    /// returns the payload's address.
    pub(crate) fn alloc(&mut self, size: usize, align: usize) -> Option<usize> {
        self.alloc_with_room(size, align, 1)
    }

    /// As [`alloc`](Self::alloc), for a block likely to grow (reallocation growth moving
    /// it): taken from the start of a free block of `room` times the bytes it needs when one
    /// exists (the rest stays free right after it, for its next growth in place), else as
    /// `alloc` would. A `Vec` doubling from 512 bytes no longer lands in a hole that holds
    /// it once and moves again at the next doubling.
    pub(crate) fn alloc_with_room(&mut self, size: usize, align: usize, room: usize) -> Option<usize> {
        let need = block_size(size)?;
        if align <= GRANULE {
            let roomy =
                if room > 1 { need.checked_mul(room).and_then(|bytes| self.find(bytes)) } else { None };
            let offset = match roomy {
                Some(offset) => offset,
                None => self.find(need)?,
            };
            // SAFETY: a free block of at least `need` bytes, out of its list.
            unsafe { self.trim_to(offset, need, USED) };
            self.used_blocks += 1;
            return Some(self.base + offset as usize + HEADER);
        }
        // Room for the payload wherever the alignment puts it, and for a free block in
        // front of it.
        let search = need.checked_add(align)?.checked_add(MIN_BLOCK)?;
        let mut offset = self.find(search)?;
        let payload = self.base + offset as usize + HEADER;
        let mut aligned = payload.next_multiple_of(align);
        if aligned != payload && aligned - payload < MIN_BLOCK {
            aligned += align;
        }
        // SAFETY: the block is out of every list and holds `search` bytes, enough for the
        // front piece (less than MIN_BLOCK + align bytes) and `need` bytes after it.
        unsafe {
            if aligned != payload {
                let gap = (aligned - payload) as u32;
                let total = (*self.header(offset)).size;
                let prev = (*self.header(offset)).prev;
                let front = offset;
                offset += gap;
                self.write_header(front, prev, gap, FREE);
                self.write_header(offset, front, total - gap, USED);
                self.set_prev(offset + (total - gap), offset);
                self.insert(front);
            }
            self.trim_to(offset, need, USED);
        }
        self.used_blocks += 1;
        Some(aligned)
    }

    /// The header offset of the used block whose payload starts at `address`.
    fn used_block(&self, address: usize) -> Result<u32, Refused> {
        let offset = address.wrapping_sub(self.base).wrapping_sub(HEADER);
        match self.valid(offset) {
            Some(header) if header.state == USED => Ok(offset as u32),
            Some(header) if header.state == FREE => Err(Refused::AlreadyFree),
            _ => Err(Refused::NotABlock),
        }
    }

    /// The payload bytes of the used block at `address`.
    pub(crate) fn used_size(&self, address: usize) -> Result<usize, Refused> {
        let offset = self.used_block(address)?;
        // SAFETY: a valid used block's header.
        Ok(unsafe { (*self.header(offset)).size as usize } - HEADER)
    }

    /// Frees the used block whose payload starts at `address`; returns its size in bytes
    /// (header included).
    ///
    /// # Safety
    ///
    /// If `address` starts a used block, nothing uses the block any more.
    pub(crate) unsafe fn free(&mut self, address: usize) -> Result<usize, Refused> {
        let mut offset = self.used_block(address)?;
        // SAFETY: a used block of this heap, whose neighbours' headers are valid.
        unsafe {
            let freed = (*self.header(offset)).size as usize;
            let mut size = freed;
            let next = offset + size as u32;
            if (*self.header(next)).state == FREE {
                self.remove(next);
                size += (*self.header(next)).size as usize;
                self.forget(next);
            }
            let prev = (*self.header(offset)).prev;
            if prev != NONE && (*self.header(prev)).state == FREE {
                self.remove(prev);
                size += (*self.header(prev)).size as usize;
                self.forget(offset);
                offset = prev;
            }
            let prev = (*self.header(offset)).prev;
            self.write_header(offset, prev, size as u32, FREE);
            self.set_prev(offset + size as u32, offset);
            self.insert(offset);
            self.used_blocks -= 1;
            Ok(freed)
        }
    }

    /// Resizes the used block at `address` in place to hold `size` bytes, growing into a
    /// free successor; returns whether it did (the block is untouched when not).
    ///
    /// # Safety
    ///
    /// `address` starts a used block of this heap.
    pub(crate) unsafe fn resize(&mut self, address: usize, size: usize) -> bool {
        let (Ok(offset), Some(need)) = (self.used_block(address), block_size(size)) else {
            return false;
        };
        // SAFETY: a used block of this heap and its successor's header.
        unsafe {
            let current = (*self.header(offset)).size as usize;
            if need > current {
                let next = offset + current as u32;
                let header = self.header(next);
                if (*header).state != FREE || current + ((*header).size as usize) < need {
                    return false;
                }
                let merged = current + (*header).size as usize;
                self.remove(next);
                self.forget(next);
                self.set_size_state(offset, merged as u32, USED);
                self.set_prev(offset + merged as u32, offset);
            }
            self.trim_to(offset, need, USED);
        }
        true
    }

    /// The counters; `largest_free` walks the non-empty list of the largest sizes.
    pub(crate) fn counters(&mut self) -> FitCounters {
        let mut largest = 0;
        if self.fl_bitmap != 0 {
            let fl = self.fl_bitmap.ilog2() as usize;
            let sl = u32::from(self.sl_bitmap[fl]).ilog2() as usize;
            // SAFETY: a set bit means a non-empty list of free blocks.
            let mut offset = unsafe { *self.head(fl, sl) };
            while offset != NONE {
                // SAFETY: blocks of a list are free blocks with valid headers and links.
                unsafe {
                    largest = largest.max((*self.header(offset)).size as usize);
                    offset = (*self.links(offset)).next;
                }
            }
        }
        FitCounters {
            capacity: (self.end - self.first) as usize,
            free_bytes: self.free_bytes,
            used_blocks: self.used_blocks,
            largest_free: largest,
        }
    }

    /// Walks every block and list; returns the first inconsistency found.
    pub(crate) fn check_invariants(&mut self) -> Result<(), &'static str> {
        let (mut offset, mut prev, mut previous_free) = (self.first, NONE, false);
        let (mut free_bytes, mut used, mut free_blocks) = (0, 0, 0);
        while offset != self.end {
            let header = self.valid(offset as usize).ok_or("a block header was overwritten")?;
            let (size, state) = (header.size as usize, header.state);
            if header.prev != prev {
                return Err("a block's predecessor link is wrong");
            }
            if size < MIN_BLOCK || size % GRANULE != 0 || offset as usize + size > self.end as usize {
                return Err("a block's size is wrong");
            }
            match state {
                FREE if previous_free => return Err("two free blocks side by side"),
                FREE => {
                    free_bytes += size;
                    free_blocks += 1;
                }
                USED => used += 1,
                _ => return Err("a block's state is wrong"),
            }
            previous_free = state == FREE;
            prev = offset;
            offset += size as u32;
        }
        if self.valid(self.end as usize).is_none_or(|end| end.state != END || end.prev != prev) {
            return Err("the end marker is wrong");
        }
        if free_bytes != self.free_bytes || used != self.used_blocks {
            return Err("the counters disagree with the blocks");
        }
        let mut listed = 0;
        for fl in 0..self.levels {
            for sl in 0..SL_COUNT {
                // SAFETY: list heads lie after the control block.
                let mut block = unsafe { *self.head(fl, sl) };
                if (block != NONE) != (self.sl_bitmap[fl] & (1 << sl) != 0) {
                    return Err("a list's bitmap bit is wrong");
                }
                while block != NONE {
                    let header = self.valid(block as usize).ok_or("a listed block is not a block")?;
                    if header.state != FREE || list_of(header.size as usize) != (fl, sl) {
                        return Err("a block is in the wrong list");
                    }
                    listed += 1;
                    // SAFETY: a free block's links.
                    block = unsafe { (*self.links(block)).next };
                }
            }
            if (self.sl_bitmap[fl] != 0) != (self.fl_bitmap & (1 << fl) != 0) {
                return Err("a first-level bitmap bit is wrong");
            }
        }
        if listed != free_blocks {
            return Err("a free block is in no list");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
