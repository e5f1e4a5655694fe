//! The kernel's `#[global_allocator]` in its `readme-heap` configuration: the README's
//! shortest route. The kernel maps a 2 MiB heap at a virtual address of its choice in the
//! upper range ([`map_heap`]: 4 KiB pages through its `aarch64-paging` mapping of TTBR1,
//! over RAM it set aside), and the allocator is core-alloc over that span, which runs in
//! compact mode. Its only dependency line is `core-alloc` (every path below goes through its
//! re-exports of `platform` and `page_provider`).
//!
//! The lines between the `README snippet` markers in [`init_heap_cpu`] are the README's
//! kernel snippet, word for word (less their indentation), but for the architecture in the
//! `use` line: `qemu-runner`'s tests check it against the x86-64 kernel's copy.
//!
//! Built with `cargo build --release --features readme-heap`; `cargo qemu aarch64` builds
//! and boots it after the main configuration and its variants, and it runs the suite's
//! small-heap set (`qemu_suite::run_small_global_with`).

use aarch64_paging::Mapping;
use aarch64_paging::descriptor::PhysicalAddress;
use aarch64_paging::paging::{Constraints, El1And0, MemoryRegion};
use core_alloc::Allocator;
use core_alloc::page_provider::aarch64_paging::heap_attributes;
use core_alloc::page_provider::fixed::FixedRegion;
use core_alloc::platform::arch::aarch64::KernelPlatform;
use core_alloc::platform::arch::aarch64::paging::MAIR_NORMAL;

use crate::dtb::Region;
use crate::mmu::PoolTables;

/// Where the heap lives: in the upper range (TTBR1), which nothing else maps in this
/// configuration (the second heap, its other user, is left out).
pub(crate) const HEAP_START: usize = 0xFFFF_FF80_4444_0000;
/// The heap's size: 2 MiB, still a small heap (compact mode: below 16 MiB). The secondaries'
/// stacks (128 KiB each) come from it too; with 1 MiB and 4 CPUs, the 600 KiB left were too
/// fragmented by per-arena slab pages for the suite's interrupt test (a 4.6 KB request failed
/// with 279 KiB free, the largest piece 4.5 KiB).
pub(crate) const HEAP_SIZE: usize = 2 * 1024 * 1024;

/// The allocator's name, for the boot log.
pub(crate) const NAME: &str = "core-alloc over a 2 MiB FixedRegion (the README's kernel snippet)";

/// Makes the calling CPU ready to allocate and returns the global allocator (for the tests).
/// The code between the markers is the README's kernel snippet.
///
/// # Safety
///
/// As `init_cpu`'s: every CPU calls it once, first thing at bring-up with no interrupt
/// guard alive, the boot CPU first with 0 and each other CPU with its own index below
/// `MAX_CPUS`; nothing else writes TPIDR_EL1. [`map_heap`] runs before the first allocation.
pub(crate) unsafe fn init_heap_cpu(cpu: usize) -> &'static Allocator<FixedRegion, KernelPlatform> {
    // README snippet begin
    use core_alloc::Allocator;
    use core_alloc::page_provider::fixed::FixedRegion;
    use core_alloc::platform::arch::aarch64::{KernelPlatform, init_cpu}; // x86-64: arch::x86_64

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

/// Maps [`HEAP_SIZE`] bytes at [`HEAP_START`] to the first bytes of `ram`, as the kernel's
/// normal memory, through the upper range's `aarch64-paging` mapping, which then stays
/// TTBR1's for good. Boot CPU, once, after the MMU is on, before the first allocation and
/// before the secondaries start (they load the same TTBR1).
pub(crate) fn map_heap(mut mapping: Mapping<PoolTables, El1And0>, ram: Region) {
    assert!(ram.len >= HEAP_SIZE as u64, "{} bytes of RAM for the heap", ram.len);
    let heap = MemoryRegion::new(HEAP_START, HEAP_START + HEAP_SIZE);
    let attributes = heap_attributes(MAIR_NORMAL as usize);
    let mapped =
        mapping.map_range(&heap, PhysicalAddress(ram.start as usize), attributes, Constraints::empty());
    mapped.unwrap_or_else(|why| panic!("mapping the heap at {HEAP_START:#x}: {why:?}"));
    // The mapping is active (TTBR1 on every CPU) for the kernel's lifetime: it must never be
    // dropped (an active `Mapping` panics when dropped).
    core::mem::forget(mapping);
}
