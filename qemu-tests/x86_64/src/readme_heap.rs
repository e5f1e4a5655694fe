//! The kernel's `#[global_allocator]` in its `readme-heap` configuration: the README's
//! shortest route, as a tutorial kernel takes it. The kernel maps a 1 MiB heap at a virtual
//! address of its choice with 4 KiB pages ([`map_heap`], through the `x86_64` crate, frames
//! from its own frame allocator), and the allocator is core-alloc over that span, which runs
//! in compact mode. Its only dependency line is `core-alloc` (every path below goes through
//! its re-exports of `platform` and `page_provider`).
//!
//! The lines between the `README snippet` markers in [`init_heap_cpu`] are the README's
//! kernel snippet, word for word (less their indentation): `qemu-runner`'s test
//! `readme_contains_the_kernel_snippet` checks it.
//!
//! Built with `cargo build --release --features readme-heap`; `cargo qemu x86_64` builds and
//! boots it after the main configuration, and it runs the suite's small-heap set
//! (`qemu_suite::run_small_global_with`).

use core::arch::asm;

use core_alloc::Allocator;
use core_alloc::page_provider::fixed::FixedRegion;
use core_alloc::platform::arch::x86_64::KernelPlatform;
use x86_64::VirtAddr;
use x86_64::structures::paging::{FrameAllocator, Mapper, OffsetPageTable, Page, PageTable, PageTableFlags};

use crate::boot::PHYS_OFFSET;
use crate::frames::SmallFrames;

/// Where the heap lives: a virtual address nothing else in the kernel maps (PML4 entry 136),
/// the tutorial kernels' choice.
pub(crate) const HEAP_START: usize = 0x_4444_4444_0000;
/// The heap's size: 1 MiB, a tutorial kernel's order of size (compact mode: below 16 MiB).
pub(crate) const HEAP_SIZE: usize = 1024 * 1024;

/// The allocator's name, for the boot log.
pub(crate) const NAME: &str = "core-alloc over a 1 MiB FixedRegion (the README's kernel snippet)";

/// Makes the calling CPU ready to allocate and returns the global allocator (for the tests).
/// The code between the markers is the README's kernel snippet.
///
/// # Safety
///
/// As `init_cpu`'s: every CPU calls it once, first thing at bring-up with interrupts masked,
/// the boot CPU first with 0 and each other CPU with its own index below `MAX_CPUS`; nothing
/// else writes `IA32_GS_BASE`. [`map_heap`] runs before the first allocation.
pub(crate) unsafe fn init_heap_cpu(cpu: usize) -> &'static Allocator<FixedRegion, KernelPlatform> {
    // README snippet begin
    use core_alloc::Allocator;
    use core_alloc::page_provider::fixed::FixedRegion;
    use core_alloc::platform::arch::x86_64::{KernelPlatform, init_cpu}; // AArch64: arch::aarch64

    #[global_allocator]
    static HEAP: Allocator<FixedRegion, KernelPlatform> = Allocator::new(
        // SAFETY: HEAP_SIZE bytes at HEAP_START are RAM the kernel mapped for the heap alone.
        unsafe { FixedRegion::new(HEAP_START as *mut u8, HEAP_SIZE, false) },
        KernelPlatform::new(),
    );

    // On every CPU before its first allocation: CPU 0 first, each CPU with its own index.
    // SAFETY: once per CPU, first thing at bring-up, interrupts masked; the index is unique.
    unsafe { init_cpu(cpu) };
    // README snippet end
    &HEAP
}

/// Maps [`HEAP_SIZE`] bytes at [`HEAP_START`], read-write, with 4 KiB frames from the
/// kernel's frame allocator, through an `OffsetPageTable` over the running page tables (as
/// a tutorial kernel's `init_heap` does). Boot CPU, once, after the physical-memory map and
/// the kernel's frames, before the first allocation and before the secondaries start (they
/// share the top-level table, so they see the new entry).
pub(crate) fn map_heap() {
    let cr3: u64;
    // SAFETY: reading CR3 has no side effects; no memory, stack or flags involved.
    unsafe { asm!("mov {}, cr3", out(reg) cr3, options(nomem, nostack, preserves_flags)) };
    let pml4 = ((cr3 & 0x000F_FFFF_FFFF_F000) as usize + PHYS_OFFSET) as *mut PageTable;
    // SAFETY: CR3's table is the PML4 every CPU uses, readable and writable through the
    // physical-memory map, as is every table under it; this mapper is the only one alive
    // (the second heap, which keeps another, is left out of this configuration, and the
    // secondaries have not started), and it writes only the entries of the heap's range,
    // which nothing else maps.
    let mut mapper = unsafe { OffsetPageTable::new(&mut *pml4, VirtAddr::new(PHYS_OFFSET as u64)) };
    let first = Page::containing_address(VirtAddr::new(HEAP_START as u64));
    let last = Page::containing_address(VirtAddr::new((HEAP_START + HEAP_SIZE - 1) as u64));
    // No NO_EXECUTE: the boot code turns no-execute on only when the CPU has it.
    let flags = PageTableFlags::PRESENT | PageTableFlags::WRITABLE;
    for page in Page::range_inclusive(first, last) {
        let frame = SmallFrames.allocate_frame().expect("no kernel frame for the heap");
        // SAFETY: the frame is RAM the kernel's frame allocator hands out once, used by
        // nothing else; the page is in the heap's range, unmapped until now.
        let mapped = unsafe { mapper.map_to(page, frame, flags, &mut SmallFrames) };
        // A page that was not present needs no TLB invalidation.
        mapped.unwrap_or_else(|why| panic!("mapping the heap page {page:?}: {why:?}")).ignore();
    }
}
