//! The heap window: 2 MiB mappings at a fixed offset from physical memory, for the
//! bare-metal chunk provider ([`HugeMapper`]).
//!
//! Frame `phys` maps only at `phys + VIRT_OFFSET`, for `phys` below [`WINDOW_BYTES`]. The
//! page-directory-pointer table and the page directories of the whole window are static,
//! page-aligned arrays linked into the kernel image and hooked into the kernel's top-level
//! table once by [`HeapMapper::install`]; after that, mapping a frame writes one
//! page-directory entry and unmapping clears one and runs `invlpg`.
//!
//! No TLB shootdown: because a frame only ever maps at its one fixed address, a stale TLB
//! entry left on another CPU after an unmap can only translate that address to the same
//! frame, which is what the [`HugeMapper`] contract allows. Mapping changes an entry from
//! not present to present, which processors never cache, so it needs no invalidation either.
//!
//! Concurrency: entries are atomics, one per frame; the provider serialises calls for a
//! frame (its own lock), and the page walker reads an entry with one aligned 8-byte load.

use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::HugeMapper;

/// Where the window starts: physical address 0 maps here. PML4 entry 1 (512 GiB), outside
/// the low half a kernel usually identity-maps.
pub const VIRT_OFFSET: usize = 1 << 39;
/// Physical address space the window covers: RAM below this can back the heap.
pub const WINDOW_BYTES: u64 = 16 << 30;

const HUGE_PAGE: u64 = 2 << 20;
const ENTRIES: usize = 512;
/// Page directories in the window, one per GiB.
const DIRECTORIES: usize = (WINDOW_BYTES >> 30) as usize;
const PML4_SLOT: usize = (VIRT_OFFSET >> 39) & (ENTRIES - 1);
const _: () = assert!(VIRT_OFFSET.is_multiple_of(1 << 39) && DIRECTORIES <= ENTRIES);

/// Present.
const PRESENT: u64 = 1 << 0;
/// Writable.
const WRITABLE: u64 = 1 << 1;
/// Page size: the page-directory entry maps a 2 MiB page (no page table below).
const HUGE: u64 = 1 << 7;
/// No execute; a reserved bit unless EFER.NXE is set.
const NO_EXECUTE: u64 = 1 << 63;

const IA32_EFER: u32 = 0xC000_0080;
const EFER_NXE: u64 = 1 << 11;
const CR4_LA57: u64 = 1 << 12;

/// A 4 KiB paging structure.
#[repr(C, align(4096))]
struct Table([AtomicU64; ENTRIES]);

impl Table {
    const fn new() -> Self {
        Self([const { AtomicU64::new(0) }; ENTRIES])
    }
}

static WINDOW_PDPT: Table = Table::new();
static WINDOW_DIRECTORIES: [Table; DIRECTORIES] = [const { Table::new() }; DIRECTORIES];
/// The flags of a leaf entry; 0 until `install` has run.
static LEAF_FLAGS: AtomicU64 = AtomicU64::new(0);

/// Maps 2 MiB frames in the heap window; see the module documentation.
#[derive(Debug, Clone, Copy, Default)]
pub struct HeapMapper {
    _private: (),
}

impl HeapMapper {
    /// The mapper. It maps nothing until [`install`](Self::install) has run.
    pub const fn new() -> Self {
        Self { _private: () }
    }

    /// Hooks the window's tables into the top-level page table `pml4` (entry 1) and
    /// decides the leaf flags (no-execute if EFER.NXE is on).
    ///
    /// # Panics
    ///
    /// If it already ran, if 5-level paging is on, or if entry 1 of `pml4` is present.
    ///
    /// # Safety
    ///
    /// - `pml4` is the writable virtual address of the 4-level top-level table that every
    ///   CPU which may touch the heap uses (CR3), and nothing else uses its entry 1;
    /// - this crate's statics lie at physical address `virtual - image_offset` (0 for a
    ///   kernel that identity-maps its image), in RAM that stays reserved for them.
    pub unsafe fn install(pml4: *mut u64, image_offset: usize) {
        let cr4: u64;
        // SAFETY: reading CR4 has no side effects; ring 0 is implied by being a kernel that
        // edits page tables. No memory, stack or flags involved.
        unsafe { asm!("mov {}, cr4", out(reg) cr4, options(nomem, nostack, preserves_flags)) };
        assert!(cr4 & CR4_LA57 == 0, "the heap window needs 4-level paging");
        let (low, high): (u32, u32);
        // SAFETY: IA32_EFER exists on every x86-64 CPU; `rdmsr` reads the MSR in ecx into
        // edx:eax and touches no memory, stack or flags.
        unsafe {
            asm!("rdmsr", in("ecx") IA32_EFER, out("eax") low, out("edx") high,
                 options(nomem, nostack, preserves_flags));
        }
        let efer = (u64::from(high) << 32) | u64::from(low);
        let no_execute = if efer & EFER_NXE != 0 { NO_EXECUTE } else { 0 };

        let phys = |table: &'static Table| (table as *const Table as usize - image_offset) as u64;
        for (gib, directory) in WINDOW_DIRECTORIES.iter().enumerate() {
            WINDOW_PDPT.0[gib].store(phys(directory) | PRESENT | WRITABLE, Ordering::Relaxed);
        }
        let leaf = PRESENT | WRITABLE | HUGE | no_execute;
        let claimed = LEAF_FLAGS.compare_exchange(0, leaf, Ordering::AcqRel, Ordering::Acquire);
        assert!(claimed.is_ok(), "HeapMapper::install called twice");
        // SAFETY: the caller vouches that `pml4` is the live top-level table and entry 1 is
        // ours. One aligned 8-byte volatile store, so the page walker sees the old or the
        // new entry; going from not present to present needs no TLB invalidation.
        unsafe {
            let slot = pml4.add(PML4_SLOT);
            assert!(slot.read_volatile() & PRESENT == 0, "PML4 entry {PML4_SLOT} is in use");
            slot.write_volatile(phys(&WINDOW_PDPT) | PRESENT | WRITABLE);
        }
    }

    /// The entry that maps `virt` to `phys`, if the window can hold that mapping.
    fn entry(virt: usize, phys: u64) -> Option<&'static AtomicU64> {
        let offset = virt.checked_sub(VIRT_OFFSET)? as u64;
        if offset != phys || offset >= WINDOW_BYTES || !offset.is_multiple_of(HUGE_PAGE) {
            return None;
        }
        let frame = (offset / HUGE_PAGE) as usize;
        Some(&WINDOW_DIRECTORIES[frame / ENTRIES].0[frame % ENTRIES])
    }
}

// SAFETY: a leaf entry maps the 2 MiB at `phys` as present, writable, write-back cacheable
// memory (PWT, PCD and PAT clear: PAT entry 0, write-back unless the kernel reprograms the
// PAT) in the tables every CPU walks (`install`'s contract). Unmapping clears the entry and
// invalidates the local TLB; other CPUs may keep a stale entry, but it maps `virt` to the
// frame it always maps to (frames map only at `phys + VIRT_OFFSET`). Nothing allocates.
unsafe impl HugeMapper for HeapMapper {
    unsafe fn map_2m(&self, virt: usize, phys: u64) -> bool {
        let leaf = LEAF_FLAGS.load(Ordering::Acquire);
        let Some(entry) = Self::entry(virt, phys) else { return false };
        if leaf == 0 {
            return false;
        }
        debug_assert_eq!(entry.load(Ordering::Relaxed), 0, "{virt:#x} is already mapped");
        entry.store(phys | leaf, Ordering::Release);
        true
    }

    unsafe fn unmap_2m(&self, virt: usize) {
        let phys = virt.wrapping_sub(VIRT_OFFSET) as u64;
        let Some(entry) = Self::entry(virt, phys) else {
            debug_assert!(false, "{virt:#x} is outside the heap window");
            return;
        };
        entry.store(0, Ordering::Release);
        // SAFETY: `invlpg` only drops cached translations of `virt` on this CPU. Not
        // `nomem`: it must stay after the store above (a compiler barrier). No stack use,
        // no flags changed.
        unsafe { asm!("invlpg [{}]", in(reg) virt, options(nostack, preserves_flags)) };
    }
}
