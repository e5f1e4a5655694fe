//! x86-64 4-level page tables reached through the kernel's map of physical memory (physical
//! address `p` readable and writable at virtual `p + offset`, the way `OffsetPageTable` of
//! the `x86_64` crate reaches them): building the upper levels of a heap window from frames
//! the kernel hands over, finding the page-directory entry of a 2 MiB page, and translating
//! any address. No instructions here, so host tests run it over simulated physical memory;
//! `x86_64/paging.rs` adds the registers and TLB invalidation.
//!
//! Concurrency: entries are read and written with single aligned 8-byte atomic accesses (as
//! the page walker reads them). A new table is zeroed before the entry that points at it is
//! stored with release ordering, so a walker (or another CPU's `translate`) never follows an
//! entry into a table with stale contents. Only [`prepare`] adds tables, once, before any
//! leaf is written.

// On hosts only the tests use this module, and the error type is public only through the
// bare-metal x86-64 module.
#![cfg_attr(not(target_os = "none"), allow(dead_code, unreachable_pub))]

use core::fmt;
use core::ops::Range;
use core::sync::atomic::{AtomicU64, Ordering};

/// Entries in a table.
pub(crate) const ENTRIES: usize = 512;
/// Bytes in a table (and in a frame of the kernel's 4 KiB frame allocator).
pub(crate) const TABLE_BYTES: u64 = 4096;
/// Bytes mapped by one page-directory entry with [`HUGE`].
pub(crate) const HUGE_PAGE: u64 = 2 << 20;

/// Present.
pub(crate) const PRESENT: u64 = 1 << 0;
/// Writable.
pub(crate) const WRITABLE: u64 = 1 << 1;
/// Page size: a page-directory entry maps 2 MiB, a PDPT entry 1 GiB (no table below).
pub(crate) const HUGE: u64 = 1 << 7;
/// No execute; a reserved bit unless EFER.NXE is set.
pub(crate) const NO_EXECUTE: u64 = 1 << 63;
/// Bits 51:12 of an entry: the physical address of the next table or of the page.
const ADDRESS: u64 = 0x000F_FFFF_FFFF_F000;

/// Why a heap window could not be installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstallError {
    /// [`install`](super::x86_64::HeapMapper::install) already ran for this mapper.
    AlreadyInstalled,
    /// The CPU uses 5-level paging (CR4.LA57); the mapper walks 4 levels.
    FiveLevelPaging,
    /// The window `heap offset + RAM range` is empty, wraps, is not 2 MiB aligned, or
    /// leaves the canonical lower or upper half of the 48-bit address space.
    BadWindow,
    /// The frame source returned `None` before every table was built. Tables built so far
    /// stay linked in (a later call reuses them).
    OutOfTableFrames,
    /// The frame source returned an address that is not 4 KiB aligned.
    MisalignedTableFrame(u64),
    /// Something is mapped at this address of the window already (a present page-directory
    /// entry, or a 1 GiB page above it), or an upper-level entry on its path is read-only.
    InUse(usize),
}

impl fmt::Display for InstallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AlreadyInstalled => write!(f, "the heap window is installed already"),
            Self::FiveLevelPaging => write!(f, "the heap mapper needs 4-level paging (CR4.LA57 is set)"),
            Self::BadWindow => {
                write!(f, "the heap window is empty, unaligned, wraps, or is not canonical")
            }
            Self::OutOfTableFrames => write!(f, "the frame source ran out of frames for page tables"),
            Self::MisalignedTableFrame(phys) => {
                write!(f, "the frame source returned {phys:#x}, not 4 KiB aligned")
            }
            Self::InUse(virt) => write!(f, "{virt:#x} in the heap window is mapped or read-only already"),
        }
    }
}

/// The kernel's map of physical memory: physical address `p` at virtual `p + offset`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PhysMap {
    pub(crate) offset: usize,
}

impl PhysMap {
    /// The table at physical address `phys`.
    ///
    /// # Safety
    ///
    /// `phys` is the address of a page table (or a frame handed over for one) that the map
    /// covers and that stays a page table for `'a`.
    unsafe fn table<'a>(self, phys: u64) -> &'a [AtomicU64; ENTRIES] {
        let virt = (phys as usize).wrapping_add(self.offset);
        // SAFETY: the caller vouches that a 4 KiB table lies at `virt`; `AtomicU64` has
        // the layout of `u64`, and every access to the table is atomic.
        unsafe { &*(virt as *const [AtomicU64; ENTRIES]) }
    }
}

/// The index into the table of `level` (4: PML4 ... 1: page table) that `virt` selects.
fn index(virt: usize, level: u32) -> usize {
    (virt >> (12 + 9 * (level - 1))) & (ENTRIES - 1)
}

/// Whether `virt` is canonical with 48-bit virtual addresses.
fn canonical(virt: usize) -> bool {
    let top = virt >> 47;
    top == 0 || top == (usize::MAX >> 47)
}

/// Checks that `window` is a usable heap window: non-empty, 2 MiB aligned, within one
/// canonical half.
pub(crate) fn check_window(window: &Range<usize>) -> Result<(), InstallError> {
    let aligned =
        window.start.is_multiple_of(HUGE_PAGE as usize) && window.end.is_multiple_of(HUGE_PAGE as usize);
    let last = window.end.wrapping_sub(1);
    if window.start >= window.end || !aligned || !canonical(window.start) || !canonical(last) {
        return Err(InstallError::BadWindow);
    }
    if (window.start >> 47) != (last >> 47) {
        return Err(InstallError::BadWindow);
    }
    Ok(())
}

/// Makes sure that a page directory exists for every 2 MiB page of `window` under the PML4
/// at `pml4`, taking a frame from `frames` for each missing PDPT or page directory (zeroed
/// through `map` before it is linked), and that no page of the window is mapped. Present
/// upper-level entries on the way are reused if they are writable tables. Returns the number
/// of frames taken.
///
/// # Safety
///
/// `pml4` is a live 4-level top-level table and `map` covers it, every table below it and
/// every frame `frames` returns; those frames are unused RAM that becomes page tables for
/// good. Nobody else adds tables for the window's addresses meanwhile.
pub(crate) unsafe fn prepare(
    map: PhysMap,
    pml4: u64,
    window: Range<usize>,
    frames: &mut dyn FnMut() -> Option<u64>,
) -> Result<usize, InstallError> {
    check_window(&window)?;
    let mut taken = 0;
    let mut next_table = |entry: &AtomicU64, virt: usize| -> Result<u64, InstallError> {
        let current = entry.load(Ordering::Acquire);
        if current & PRESENT != 0 {
            if current & HUGE != 0 || current & WRITABLE == 0 {
                return Err(InstallError::InUse(virt));
            }
            return Ok(current & ADDRESS);
        }
        let frame = frames().ok_or(InstallError::OutOfTableFrames)?;
        if !frame.is_multiple_of(TABLE_BYTES) {
            return Err(InstallError::MisalignedTableFrame(frame));
        }
        // SAFETY: the caller hands the frame over for a page table, inside the map.
        let table = unsafe { map.table(frame) };
        for slot in table {
            slot.store(0, Ordering::Relaxed);
        }
        // Release: the zeroes above are visible before the entry that leads to them.
        entry.store(frame | PRESENT | WRITABLE, Ordering::Release);
        taken += 1;
        Ok(frame)
    };
    let mut virt = window.start;
    while virt < window.end {
        // SAFETY: `pml4` is the live top-level table (the caller's promise).
        let level4 = unsafe { map.table(pml4) };
        let pdpt = next_table(&level4[index(virt, 4)], virt)?;
        // SAFETY: `pdpt` came from a present, non-huge PML4 entry or was just linked.
        let level3 = unsafe { map.table(pdpt) };
        let directory = next_table(&level3[index(virt, 3)], virt)?;
        // SAFETY: as above, one level down.
        let level2 = unsafe { map.table(directory) };
        // The rest of this page directory's span that lies in the window.
        let span_end = (virt | ((1 << 30) - 1)).saturating_add(1).min(window.end);
        while virt < span_end {
            if level2[index(virt, 2)].load(Ordering::Acquire) & PRESENT != 0 {
                return Err(InstallError::InUse(virt));
            }
            virt += HUGE_PAGE as usize;
        }
    }
    Ok(taken)
}

/// The page-directory entry that maps the 2 MiB page at `virt`, if its PDPT and page
/// directory exist (and are tables, not pages).
///
/// # Safety
///
/// As for [`prepare`]: `pml4` is a live top-level table that `map` covers with every table
/// below it.
pub(crate) unsafe fn directory_entry<'a>(map: PhysMap, pml4: u64, virt: usize) -> Option<&'a AtomicU64> {
    let mut table = pml4;
    for level in [4, 3] {
        // SAFETY: `table` is the top-level table or came from a present non-huge entry.
        let entry = unsafe { map.table(table) }[index(virt, level)].load(Ordering::Acquire);
        if entry & PRESENT == 0 || entry & HUGE != 0 {
            return None;
        }
        table = entry & ADDRESS;
    }
    // SAFETY: a page directory, reached through present table entries.
    Some(&unsafe { map.table(table) }[index(virt, 2)])
}

/// The physical address `virt` translates to under the PML4 at `pml4`: 1 GiB, 2 MiB and
/// 4 KiB pages are followed; `None` if it is not mapped or not canonical.
///
/// # Safety
///
/// As for [`directory_entry`].
pub(crate) unsafe fn translate(map: PhysMap, pml4: u64, virt: usize) -> Option<u64> {
    if !canonical(virt) {
        return None;
    }
    let mut table = pml4;
    for level in [4u32, 3, 2, 1] {
        // SAFETY: `table` is the top-level table or came from a present non-huge entry.
        let entry = unsafe { map.table(table) }[index(virt, level)].load(Ordering::Acquire);
        if entry & PRESENT == 0 {
            return None;
        }
        let page_bits = 12 + 9 * (level - 1);
        if level == 1 || (level < 4 && entry & HUGE != 0) {
            let page_mask = (1u64 << page_bits) - 1;
            return Some((entry & ADDRESS & !page_mask) | (virt as u64 & page_mask));
        }
        table = entry & ADDRESS;
    }
    None
}

#[cfg(test)]
mod tests;
