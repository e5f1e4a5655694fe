//! A slab's blocks: free lists, lazy carving, and frees from other CPUs.
//!
//! Free blocks are linked through their first four bytes, which hold the *chunk offset* of
//! the next free block (0 ends the list: no block starts at offset 0). Offsets rather than
//! pointers let 4-byte-aligned blocks (20 and 28 bytes) hold links on strict-alignment
//! targets, and keep a corrupted link inside its chunk.
//!
//! The owner arena allocates from `free`, pushes its own frees on `local_free`, and refills
//! `free` from `local_free`, then from the remote list, then by carving never-used blocks
//! from `bump` a page at a time (memory is touched only as it is handed out).
//!
//! Other CPUs free into the `remote` word with one compare-exchange:
//!
//! ```text
//! bits 0..32   chunk offset of the first block of the remote list (0: empty)
//! bits 32..62  ACTIVE: blocks in the remote list; FULL: the owner's slot;
//!              ABANDONED: blocks still live
//! bits 62..64  state
//! ```
//!
//! - ACTIVE: the owner will find the blocks when it next refills from this slab.
//! - FULL: the owner had no free block here and stopped looking at the slab. The first
//!   remote free turns it ACTIVE and hands its block to the owner arena's delayed list
//!   instead (see `arena`), which tells the owner the slab has space again. The owner to
//!   tell is read from the FULL word itself, the same word the freer's exchange checks:
//!   the slab's `owner` field may have changed since the freer read it (the slab can be
//!   abandoned, adopted by another slot and filled in between), but a FULL word names the
//!   slot that marked it, and the exchange succeeds only while that word is current.
//!   (Deterministic test: `tests/races.rs`, `stale_owner_in_a_remote_free`; model:
//!   `tests/model_check.rs`.)
//! - ABANDONED: no arena owns the slab (its thread exited); the count is the number of live
//!   blocks, freed blocks are still linked on the list, and whoever frees the last one
//!   releases the slab, unless an arena adopts it first (turning it ACTIVE again).
//!
//! Orderings: a push publishes the block's link with release; the owner takes the list with
//! acquire. A state change by the owner (to FULL or ABANDONED) is a compare-exchange that
//! fails if a push got in first, so no push is lost. The FULL mark is a release and the
//! push that takes it an acquire, so that the freer then finds the arena of the slot the word
//! names (published before that slot owned anything).

use crate::sync::Ordering;
use core::ptr;

use crate::chunk::{LIST_NONE, NO_OWNER, RUN_SLAB, Run};
use crate::config::{CHUNK_MASK, PAGE, PAGE_SHIFT};
use crate::size_class::{class_align, class_size};

/// The owner will collect remote frees on its own.
pub(crate) const ACTIVE: u64 = 0;
/// The owner stopped looking: the first remote free must tell it.
pub(crate) const FULL: u64 = 1;
/// No owner: the count is of live blocks.
pub(crate) const ABANDONED: u64 = 2;

const HEAD_MASK: u64 = 0xFFFF_FFFF;
static_assertions::const_assert!((crate::chunk::NO_OWNER as u64) < COUNT_MASK);
const COUNT_SHIFT: u32 = 32;
const COUNT_MASK: u64 = (1 << 30) - 1;
const STATE_SHIFT: u32 = 62;

#[inline(always)]
const fn pack(head: u32, count: u64, state: u64) -> u64 {
    head as u64 | (count & COUNT_MASK) << COUNT_SHIFT | state << STATE_SHIFT
}
#[inline(always)]
const fn head_of(word: u64) -> u32 {
    (word & HEAD_MASK) as u32
}
#[inline(always)]
const fn count_of(word: u64) -> u64 {
    (word >> COUNT_SHIFT) & COUNT_MASK
}
#[inline(always)]
const fn state_of(word: u64) -> u64 {
    word >> STATE_SHIFT
}

/// The chunk base of the chunk holding `run` (or any address in it).
#[inline(always)]
fn base_of<T>(address: *const T) -> usize {
    address as usize & !CHUNK_MASK
}

/// Reads the link in a free block.
///
/// # Safety
///
/// `block` is a free block of a slab (at least 4 bytes, 4-aligned) owned by the caller.
#[inline(always)]
unsafe fn read_link(block: usize) -> u32 {
    // SAFETY: the caller owns the free block, whose first 4 bytes hold its link.
    unsafe { (block as *const u32).read() }
}

/// Writes the link of a free block.
///
/// # Safety
///
/// As for [`read_link`].
#[inline(always)]
unsafe fn write_link(block: usize, next: u32) {
    // SAFETY: as for `read_link`.
    unsafe { (block as *mut u32).write(next) }
}

/// Links `block` to `next` (null: the end), as remote batches chain blocks of one slab.
///
/// # Safety
///
/// Both are blocks of the same slab, `block` is being freed by the caller.
pub(crate) unsafe fn link_to(block: *mut u8, next: *mut u8) {
    let next = if next.is_null() { 0 } else { (next as usize & CHUNK_MASK) as u32 };
    // SAFETY: the caller's block, being freed, is at least 4 bytes and 4-aligned.
    unsafe { write_link(block as usize, next) }
}

/// The chunk offset of a slab's first block and the number of blocks it holds: its pages
/// past its head, tiled by blocks of `class` from the first boundary of the class's
/// alignment.
///
/// # Safety
///
/// `run` is a slab descriptor whose first page, pages and head are set and stable.
pub(crate) unsafe fn blocks_of(run: *const Run, class: usize) -> (usize, usize) {
    // SAFETY: the caller's promise.
    let (first_page, pages, head) = unsafe { ((*run).first_page, (*run).pages, (*run).head) };
    let start = (first_page as usize) << PAGE_SHIFT;
    if head == 0 {
        // Slabs differ in size (an arena's first slab of a class is small: see
        // `size_class::first_slab_pages`).
        return (start, ((pages as usize) << PAGE_SHIFT) / class_size(class));
    }
    let first = (start + head as usize).next_multiple_of(class_align(class));
    let end = start + ((pages as usize) << PAGE_SHIFT);
    (first, end.saturating_sub(first) / class_size(class))
}

/// Sets up `run` (freshly carved, `RUN_SLAB`) as a slab of `class` owned by `owner`.
///
/// # Safety
///
/// The caller has exclusive use of the descriptor, whose kind, first page and pages are set.
pub(crate) unsafe fn init(run: *mut Run, class: usize, owner: usize) {
    // SAFETY: exclusive use of the descriptor (caller).
    unsafe {
        debug_assert_eq!((*run).kind, RUN_SLAB);
        let (start, capacity) = blocks_of(run, class);
        let size = class_size(class);
        (*run).class = class as u8;
        (*run).block_size = size as u32;
        (*run).free = 0;
        (*run).local_free = 0;
        (*run).used = 0;
        (*run).bump = start as u32;
        (*run).end = (start + capacity * size) as u32;
        (*run).list = LIST_NONE;
        (*run).owner.store(owner as u16, Ordering::Relaxed);
        (*run).remote.store(pack(0, 0, ACTIVE), Ordering::Relaxed);
        (*run).next = ptr::null_mut();
        (*run).prev = ptr::null_mut();
    }
}

/// Takes a block from the allocation list, or returns null when it is empty.
///
/// # Safety
///
/// The caller owns the slab (its arena's slot is held).
#[inline(always)]
pub(crate) unsafe fn pop(run: *mut Run) -> *mut u8 {
    // SAFETY: the owner alone uses `free` and `used`; blocks on the list are free blocks of
    // this slab, in the chunk holding the descriptor.
    unsafe {
        let offset = (*run).free;
        if offset == 0 {
            return ptr::null_mut();
        }
        let block = base_of(run) + offset as usize;
        (*run).free = read_link(block);
        (*run).used += 1;
        block as *mut u8
    }
}

/// Puts a block the owner frees on the local free list; returns true when the slab has no
/// block out any more.
///
/// # Safety
///
/// The caller owns the slab, and `block` is a live block of it that nobody uses any more.
#[inline(always)]
pub(crate) unsafe fn push_local(run: *mut Run, block: *mut u8) -> bool {
    // SAFETY: as for `pop`; the block is now free and the owner's.
    unsafe {
        let block = block as usize;
        write_link(block, (*run).local_free);
        (*run).local_free = (block & CHUNK_MASK) as u32;
        (*run).used -= 1;
        (*run).used == 0
    }
}

/// Makes the allocation list non-empty if the slab has any free block: from the local free
/// list, then the remote list, then by carving never-used blocks. Returns whether it did.
///
/// # Safety
///
/// The caller owns the slab.
pub(crate) unsafe fn refill(run: *mut Run) -> bool {
    // SAFETY: owner-only fields, and blocks of this slab (caller owns the slab).
    unsafe {
        if (*run).free != 0 {
            return true;
        }
        if (*run).local_free != 0 {
            (*run).free = (*run).local_free;
            (*run).local_free = 0;
            return true;
        }
        if collect_remote(run) > 0 {
            return true;
        }
        carve(run)
    }
}

/// Links never-used blocks onto the allocation list, up to the end of the page the next
/// one starts in (at least one block). Returns false when none are left.
///
/// # Safety
///
/// The caller owns the slab, and the allocation list is empty.
unsafe fn carve(run: *mut Run) -> bool {
    // SAFETY: owner-only fields; the carved blocks lie between `bump` and `end`, inside the
    // slab's pages, never handed out.
    unsafe {
        let (bump, end, size) = ((*run).bump as usize, (*run).end as usize, (*run).block_size as usize);
        if bump >= end {
            return false;
        }
        let page_end = (bump & !(PAGE - 1)) + PAGE;
        let mut stop = bump + size;
        while stop + size <= end && stop + size <= page_end.max(bump + size) {
            stop += size;
        }
        let base = base_of(run);
        let mut offset = bump;
        while offset + size < stop {
            write_link(base + offset, (offset + size) as u32);
            offset += size;
        }
        write_link(base + offset, 0);
        (*run).free = bump as u32;
        (*run).bump = stop as u32;
        true
    }
}

/// Moves the remote list onto the allocation list; returns how many blocks it held.
///
/// # Safety
///
/// The caller owns the slab (ACTIVE or FULL).
pub(crate) unsafe fn collect_remote(run: *mut Run) -> u32 {
    // SAFETY: the remote word is atomic; the owner alone touches the lists it merges into.
    unsafe {
        let remote = &(*run).remote;
        let mut word = remote.load(Ordering::Relaxed);
        loop {
            if head_of(word) == 0 {
                return 0;
            }
            let emptied = pack(0, 0, state_of(word));
            match remote.compare_exchange_weak(word, emptied, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => break,
                Err(current) => word = current,
            }
        }
        let (head, count) = (head_of(word), count_of(word) as u32);
        (*run).used -= count;
        let base = base_of(run);
        if (*run).free != 0 {
            let mut last = base + head as usize;
            for _ in 1..count {
                last = base + read_link(last) as usize;
            }
            write_link(last, (*run).free);
        }
        (*run).free = head;
        count
    }
}

/// Marks a slab the owner (`slot`) has no free block in as FULL; returns false (changing
/// nothing) when remote frees arrived and should be collected instead. The FULL word names
/// `slot`: the first remote free wakes that slot's arena.
///
/// # Safety
///
/// The caller holds `slot`, which owns the slab.
pub(crate) unsafe fn mark_full(run: *mut Run, slot: usize) -> bool {
    // SAFETY: the remote word is atomic.
    let remote = unsafe { &(*run).remote };
    debug_assert!(slot < crate::chunk::NO_OWNER as usize);
    // Release: a freer whose exchange takes the FULL word (acquire) then reads the arena
    // pointer of the slot it names, which this slot published (release) before it owned any
    // slab; without this edge nothing orders that load after the publication, and the freer
    // may read the slot's arena as not made yet (Miri found it: `tests/miri_threads.rs`,
    // `abandoned_slabs_are_freed_remotely_and_adopted`, seed 2).
    remote.compare_exchange(pack(0, 0, ACTIVE), full_word(slot), Ordering::Release, Ordering::Relaxed).is_ok()
}

/// The remote word of a slab `slot` marked FULL.
fn full_word(slot: usize) -> u64 {
    pack(0, slot as u64, FULL)
}

/// Marks a slab on its way back from the full list ACTIVE again (a free that came first
/// may already have done it).
///
/// # Safety
///
/// The caller holds `slot`, which owns the slab.
pub(crate) unsafe fn unmark_full(run: *mut Run, slot: usize) {
    // SAFETY: the remote word is atomic.
    let remote = unsafe { &(*run).remote };
    let _ =
        remote.compare_exchange(full_word(slot), pack(0, 0, ACTIVE), Ordering::Relaxed, Ordering::Relaxed);
}

/// Gives up ownership of a slab that still has live blocks: it becomes ABANDONED with its
/// live-block count, and the free of its last block releases it. Returns false if the slab
/// turned out to be empty after collecting remote frees: the caller releases it then.
///
/// The order matters. First a FULL slab is made ACTIVE, so that no free arriving later tries
/// to reach the owner arena. Then the owner is cleared, while the slab cannot be released
/// (it still has live blocks and is not ABANDONED). Last, the ABANDONED word is published with
/// release ordering: from then on the free of the last block may release and reuse the slab,
/// so nothing here touches it after that.
///
/// # Safety
///
/// The caller owns the slab, and will drain its arena's delayed list afterwards (a free that
/// found the slab FULL may have handed a block to it).
pub(crate) unsafe fn abandon(run: *mut Run) -> bool {
    // SAFETY: owner-only fields and the atomic remote word.
    unsafe {
        let remote = &(*run).remote;
        // A FULL word has an empty list; if the exchange fails a free already made it ACTIVE.
        let owner = (*run).owner.load(Ordering::Relaxed) as usize;
        let _ = remote.compare_exchange(
            full_word(owner),
            pack(0, 0, ACTIVE),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        (*run).owner.store(NO_OWNER, Ordering::Relaxed);
        (*run).list = LIST_NONE;
        loop {
            collect_remote(run);
            let used = (*run).used as u64;
            if used == 0 {
                return false;
            }
            let idle = pack(0, 0, ACTIVE);
            if remote
                .compare_exchange(idle, pack(0, used, ABANDONED), Ordering::Release, Ordering::Relaxed)
                .is_ok()
            {
                return true;
            }
        }
    }
}

/// Takes ownership of an abandoned slab that still has live blocks, for `slot`: the
/// blocks freed since it was abandoned join its local free list. Returns false, changing
/// nothing, if its last block has been freed (whoever freed it releases the slab).
///
/// # Safety
///
/// The caller holds `slot` and the central lock, and `run` is on an orphan list.
pub(crate) unsafe fn adopt(run: *mut Run, slot: usize) -> bool {
    // SAFETY: the orphan list (under the caller's lock) keeps the slab from being released;
    // the acquire exchange orders the abandoning owner's and the freers' writes before ours.
    unsafe {
        let remote = &(*run).remote;
        let mut word = remote.load(Ordering::Relaxed);
        loop {
            if state_of(word) != ABANDONED || count_of(word) == 0 {
                return false;
            }
            match remote.compare_exchange_weak(word, pack(0, 0, ACTIVE), Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(current) => word = current,
            }
        }
        let head = head_of(word);
        if head != 0 {
            let base = base_of(run);
            let mut last = base + head as usize;
            loop {
                let next = read_link(last);
                if next == 0 {
                    break;
                }
                last = base + next as usize;
            }
            write_link(last, (*run).local_free);
            (*run).local_free = head;
        }
        (*run).used = count_of(word) as u32;
        (*run).owner.store(slot as u16, Ordering::Relaxed);
        true
    }
}

/// What a free from another CPU did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RemoteFree {
    /// The block is on the slab's remote list.
    Queued,
    /// The slab was FULL and is ACTIVE now; the caller must hand the block to the owner
    /// arena's delayed list (the slot named by the FULL word the exchange replaced).
    WasFull(u16),
    /// The slab was abandoned and this was its last live block: the caller releases it.
    LastOfAbandoned,
    /// The block was counted out of an abandoned slab that still has live blocks.
    CountedOut,
}

/// Frees `count` blocks of one slab, linked `first` ... `last` through their links, from a
/// CPU that does not own the slab.
///
/// # Safety
///
/// The blocks are live blocks of `run`, unused by anybody, linked as described; the caller
/// does not own the slab.
pub(crate) unsafe fn push_remote(run: *mut Run, first: *mut u8, last: *mut u8, count: u32) -> RemoteFree {
    // SAFETY: the blocks are the caller's to link (they are being freed); the remote word and
    // owner are atomics; other fields are not touched.
    unsafe {
        let remote = &(*run).remote;
        crate::sync::pause(crate::sync::PausePoint::RemoteFreeOwnerRead);
        let first_offset = (first as usize & CHUNK_MASK) as u32;
        let mut word = remote.load(Ordering::Relaxed);
        loop {
            let (next, outcome) = match state_of(word) {
                ACTIVE => {
                    write_link(last as usize, head_of(word));
                    (pack(first_offset, count_of(word) + count as u64, ACTIVE), RemoteFree::Queued)
                }
                // The owner to wake is the one this FULL word names (see the module
                // documentation), never the `owner` field read at another moment.
                FULL if count == 1 => (pack(0, 0, ACTIVE), RemoteFree::WasFull(count_of(word) as u16)),
                FULL => {
                    // Queue all but the first block; the first goes to the owner's delayed
                    // list to wake the slab up.
                    let rest = read_link(first as usize);
                    write_link(last as usize, 0);
                    (pack(rest, count as u64 - 1, ACTIVE), RemoteFree::WasFull(count_of(word) as u16))
                }
                _ => {
                    // Linked too, so that a slab adopted later gets these blocks back.
                    write_link(last as usize, head_of(word));
                    let live = count_of(word) - count as u64;
                    let outcome =
                        if live == 0 { RemoteFree::LastOfAbandoned } else { RemoteFree::CountedOut };
                    (pack(first_offset, live, ABANDONED), outcome)
                }
            };
            match remote.compare_exchange_weak(word, next, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return outcome,
                Err(current) => word = current,
            }
        }
    }
}

/// Checks a slab's lists against its counters: walks `free` and `local_free`, checks each
/// block lies on a block boundary inside the carved part, and that counts add up. Returns a
/// description of the first problem.
///
/// # Safety
///
/// The caller owns the slab and no remote free is in flight.
pub(crate) unsafe fn check_invariants(run: *const Run) -> Result<(), &'static str> {
    // SAFETY: owner-only fields and free blocks of the owned slab.
    unsafe {
        let start = blocks_of(run, (*run).class as usize).0;
        let (bump, end, size) = ((*run).bump as usize, (*run).end as usize, (*run).block_size as usize);
        if !(start..=end).contains(&bump) || !(bump - start).is_multiple_of(size) {
            return Err("bump pointer outside the slab or off a block boundary");
        }
        let carved = (bump - start) / size;
        let base = base_of(run);
        let mut listed = 0usize;
        for head in [(*run).free, (*run).local_free] {
            let mut offset = head as usize;
            while offset != 0 {
                if offset < start || offset >= bump || !(offset - start).is_multiple_of(size) {
                    return Err("a free-list link points outside the carved blocks");
                }
                listed += 1;
                if listed > carved {
                    return Err("free lists are longer than the carved blocks (a cycle?)");
                }
                offset = read_link(base + offset) as usize;
            }
        }
        let word = (*run).remote.load(Ordering::Acquire);
        let pending = if state_of(word) == ACTIVE { count_of(word) as usize } else { 0 };
        if listed + (*run).used as usize != carved || pending > (*run).used as usize {
            return Err("used + free blocks do not add up to the carved blocks");
        }
        Ok(())
    }
}
