//! The heap window: 2 MiB mappings at an offset from physical memory that the kernel
//! chooses, for the bare-metal chunk provider ([`HugeMapper`]).
//!
//! A [`HeapMapper`] maps frame `phys` only at `phys + heap_offset`, for the physical RAM range
//! given to [`HeapMapper::install`]. `install` builds the page-directory-pointer tables and
//! page directories the window needs in the kernel's own page tables (CR3), from frames the
//! kernel hands over through a closure (its frame allocator, or a range of RAM it set aside),
//! and reaches every table through the kernel's map of physical memory (`phys_offset`, 0 for
//! an identity-mapped kernel), the way the `x86_64` crate's `OffsetPageTable` does. After
//! that, mapping a frame writes one page-directory entry and unmapping clears one and runs
//! `invlpg`. Nothing depends on where the kernel image or this crate's statics lie.
//!
//! No TLB shootdown: because a frame only ever maps at its one fixed address, a stale TLB
//! entry left on another CPU after an unmap can only translate that address to the same
//! frame, which is what the [`HugeMapper`] contract allows. Mapping changes an entry from
//! not present to present, which processors never cache, so it needs no invalidation either.
//!
//! Concurrency: the window's state is written once by `install` and published by the leaf
//! flags (release); entries are atomics, one per frame; the provider serialises calls for a
//! frame (its own lock), and the page walker reads an entry with one aligned 8-byte load.

use core::arch::asm;
use core::ops::Range;
use core::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};

pub use super::super::x86_tables::InstallError;
use super::super::x86_tables::{self as tables, HUGE, HUGE_PAGE, NO_EXECUTE, PRESENT, PhysMap, WRITABLE};
use crate::HugeMapper;

const IA32_EFER: u32 = 0xC000_0080;
const EFER_NXE: u64 = 1 << 11;
const CR4_LA57: u64 = 1 << 12;
/// CR3 bits 51:12: the top-level table's physical address.
const CR3_ADDRESS: u64 = 0x000F_FFFF_FFFF_F000;

/// `HeapMapper::state`: not installed.
const IDLE: u8 = 0;
/// `HeapMapper::state`: `install` is running.
const INSTALLING: u8 = 1;
/// `HeapMapper::state`: installed; the fields below are fixed.
const INSTALLED: u8 = 2;

/// Maps 2 MiB frames at `physical address + heap_offset` in the kernel's page tables; see
/// the module documentation. One mapper serves one provider: give it to
/// `FrameProvider::new` with the same offset and reach it through `FrameProvider::mapper`.
#[derive(Debug)]
pub struct HeapMapper {
    heap_offset: usize,
    state: AtomicU8,
    /// The top-level table's physical address.
    pml4: AtomicU64,
    /// Where the kernel maps physical memory.
    phys_offset: AtomicUsize,
    /// The physical range the window covers.
    phys_start: AtomicU64,
    phys_end: AtomicU64,
    /// The flags of a leaf entry; 0 until `install` has run.
    leaf_flags: AtomicU64,
}

impl HeapMapper {
    /// A mapper that will map frame `phys` at `phys + heap_offset` (wrapping, so a
    /// higher-half window is `0xFFFF_C000_0000_0000`, say). It maps nothing until
    /// [`install`](Self::install) has run.
    ///
    /// # Panics
    ///
    /// If `heap_offset` is not a multiple of 2 MiB (at compile time in a `static`).
    pub const fn new(heap_offset: usize) -> Self {
        assert!(heap_offset.is_multiple_of(HUGE_PAGE as usize), "the heap offset must be 2 MiB aligned");
        Self {
            heap_offset,
            state: AtomicU8::new(IDLE),
            pml4: AtomicU64::new(0),
            phys_offset: AtomicUsize::new(0),
            phys_start: AtomicU64::new(0),
            phys_end: AtomicU64::new(0),
            leaf_flags: AtomicU64::new(0),
        }
    }

    /// The offset from a frame's physical address to its heap address.
    pub const fn heap_offset(&self) -> usize {
        self.heap_offset
    }

    /// Builds the window's tables in the page tables the calling CPU runs on (CR3) for the
    /// physical RAM `ram` (rounded out to 2 MiB), so that frames in it can be mapped at
    /// `phys + heap_offset`, and decides the leaf flags (no-execute if EFER.NXE is on).
    /// `table_frame` returns the physical address of an unused 4 KiB frame each time it is
    /// called (at most 1 per 512 GiB plus 1 per GiB of the window, plus 2; the returned
    /// count says how many it took); the frames need not be zeroed. A kernel without a frame
    /// allocator can set a few KiB of RAM aside and pass
    /// `|| frames.next()` over `let mut frames = (start..end).step_by(4096)`. Present
    /// upper-level tables on the way are reused, so the window may share a PML4 entry with
    /// the kernel.
    ///
    /// # Errors
    ///
    /// [`InstallError`] says why nothing can be mapped yet: 5-level paging, a second call, a
    /// window that is not canonical, a frame source that ran dry, or an address of the window
    /// that is mapped already.
    ///
    /// # Safety
    ///
    /// - The CPU's CR3 points at the 4-level top-level table that every CPU which may touch
    ///   the heap uses, and nothing else maps or creates tables in the window meanwhile or
    ///   later;
    /// - every physical address of a page table (the existing ones, and the frames
    ///   `table_frame` returns) is readable and writable at `phys + phys_offset`, for as long
    ///   as the mapper is used;
    /// - the frames `table_frame` returns are unused RAM, and become page tables for good.
    pub unsafe fn install(
        &self,
        phys_offset: usize,
        ram: Range<u64>,
        mut table_frame: impl FnMut() -> Option<u64>,
    ) -> Result<usize, InstallError> {
        if self.state.compare_exchange(IDLE, INSTALLING, Ordering::Acquire, Ordering::Relaxed).is_err() {
            return Err(InstallError::AlreadyInstalled);
        }
        let result = self.build(phys_offset, ram, &mut table_frame);
        self.state.store(if result.is_ok() { INSTALLED } else { IDLE }, Ordering::Release);
        result
    }

    /// `install`'s work, with the state claimed.
    fn build(
        &self,
        phys_offset: usize,
        ram: Range<u64>,
        table_frame: &mut dyn FnMut() -> Option<u64>,
    ) -> Result<usize, InstallError> {
        let (cr3, cr4): (u64, u64);
        // SAFETY: reading CR3 and CR4 has no side effects; ring 0 is implied by being a
        // kernel that edits page tables. No memory, stack or flags involved.
        unsafe {
            asm!("mov {}, cr3", out(reg) cr3, options(nomem, nostack, preserves_flags));
            asm!("mov {}, cr4", out(reg) cr4, options(nomem, nostack, preserves_flags));
        }
        if cr4 & CR4_LA57 != 0 {
            return Err(InstallError::FiveLevelPaging);
        }
        let (low, high): (u32, u32);
        // SAFETY: IA32_EFER exists on every x86-64 CPU; `rdmsr` reads the MSR in ecx into
        // edx:eax and touches no memory, stack or flags.
        unsafe {
            asm!("rdmsr", in("ecx") IA32_EFER, out("eax") low, out("edx") high,
                 options(nomem, nostack, preserves_flags));
        }
        let efer = (u64::from(high) << 32) | u64::from(low);
        let no_execute = if efer & EFER_NXE != 0 { NO_EXECUTE } else { 0 };

        let phys_start = ram.start & !(HUGE_PAGE - 1);
        let phys_end = ram.end.checked_next_multiple_of(HUGE_PAGE).ok_or(InstallError::BadWindow)?;
        let virt = |phys: u64| (phys as usize).wrapping_add(self.heap_offset);
        let window = virt(phys_start)..virt(phys_end);
        if window.start > window.end || phys_end > usize::MAX as u64 {
            return Err(InstallError::BadWindow);
        }
        let pml4 = cr3 & CR3_ADDRESS;
        let map = PhysMap { offset: phys_offset };
        // SAFETY: CR3 holds the live top-level table every CPU uses, and the caller vouches
        // that `phys_offset` reaches it, every table below it and every frame the source
        // returns, which are unused RAM handed over for tables.
        let taken = unsafe { tables::prepare(map, pml4, window, table_frame)? };
        self.pml4.store(pml4, Ordering::Relaxed);
        self.phys_offset.store(phys_offset, Ordering::Relaxed);
        self.phys_start.store(phys_start, Ordering::Relaxed);
        self.phys_end.store(phys_end, Ordering::Relaxed);
        // Release: whoever sees the leaf flags sees the fields above and the tables.
        self.leaf_flags.store(PRESENT | WRITABLE | HUGE | no_execute, Ordering::Release);
        Ok(taken)
    }

    /// The heap's virtual addresses: `ram + heap_offset` of [`install`](Self::install)
    /// rounded out to 2 MiB; empty before it ran.
    pub fn window(&self) -> Range<usize> {
        if self.leaf_flags.load(Ordering::Acquire) == 0 {
            return 0..0;
        }
        let virt = |phys: &AtomicU64| (phys.load(Ordering::Relaxed) as usize).wrapping_add(self.heap_offset);
        virt(&self.phys_start)..virt(&self.phys_end)
    }

    /// The physical address `virt` translates to in the page tables the mapper installed
    /// into (any address, in the window or not: 4 KiB, 2 MiB and 1 GiB pages are followed),
    /// or `None` if it is not mapped or `install` has not run. Lets a kernel check what the
    /// heap mapped, and look up the frames of a heap block (for DMA, say).
    pub fn translate(&self, virt: usize) -> Option<u64> {
        if self.leaf_flags.load(Ordering::Acquire) == 0 {
            return None;
        }
        let map = PhysMap { offset: self.phys_offset.load(Ordering::Relaxed) };
        // SAFETY: `install` succeeded (the acquire above), so its caller vouched that the
        // map reaches the live top-level table and every table below it.
        unsafe { tables::translate(map, self.pml4.load(Ordering::Relaxed), virt) }
    }

    /// The installed leaf flags and the entry that maps `virt` to `phys`, if the window can
    /// hold that mapping.
    fn entry(&self, virt: usize, phys: u64) -> Option<(u64, &'static AtomicU64)> {
        let leaf = self.leaf_flags.load(Ordering::Acquire);
        let in_window = phys >= self.phys_start.load(Ordering::Relaxed)
            && phys < self.phys_end.load(Ordering::Relaxed)
            && phys.is_multiple_of(HUGE_PAGE)
            && virt == (phys as usize).wrapping_add(self.heap_offset);
        if leaf == 0 || !in_window {
            return None;
        }
        let map = PhysMap { offset: self.phys_offset.load(Ordering::Relaxed) };
        // SAFETY: `install` succeeded and built a page directory for every 2 MiB of the
        // window (checked above), reachable through the map its caller vouched for.
        let entry = unsafe { tables::directory_entry(map, self.pml4.load(Ordering::Relaxed), virt)? };
        Some((leaf, entry))
    }
}

// SAFETY: a leaf entry maps the 2 MiB at `phys` as present, writable, write-back cacheable
// memory (PWT, PCD and PAT clear: PAT entry 0, write-back unless the kernel reprograms the
// PAT) in the tables every CPU walks (`install`'s contract). Unmapping clears the entry and
// invalidates the local TLB; other CPUs may keep a stale entry, but it maps `virt` to the
// frame it always maps to (frames map only at `phys + heap_offset`). Nothing allocates: the
// tables were all built by `install`.
unsafe impl HugeMapper for HeapMapper {
    unsafe fn map_2m(&self, virt: usize, phys: u64) -> bool {
        let Some((leaf, entry)) = self.entry(virt, phys) else { return false };
        debug_assert_eq!(entry.load(Ordering::Relaxed), 0, "{virt:#x} is already mapped");
        entry.store(phys | leaf, Ordering::Release);
        true
    }

    unsafe fn unmap_2m(&self, virt: usize) {
        let phys = virt.wrapping_sub(self.heap_offset) as u64;
        let Some((_, entry)) = self.entry(virt, phys) else {
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
