//! A second heap over the kernel's own `aarch64-paging` tables, as a kernel built on that
//! crate would set it up: page-provider's `aarch64_paging::PagingProvider` over the upper
//! range's [`Mapping`] (TTBR1, 4 KiB granule, tables from the kernel's table pool) and a frame
//! allocator over RAM set aside for it, and another core-alloc `Allocator` instance over it.
//! Its chunks live at the bottom of the upper range, which nothing else in the kernel maps;
//! the first ones get 2 MiB frames (one block each), the rest 512 frames of 4 KiB each, once
//! the 2 MiB frames run out. Whatever granule TTBR0 uses, this heap uses 4 KiB pages.
//!
//! The `readme-heap` configuration leaves this heap out and keeps only [`frames_region`].
#![cfg_attr(feature = "readme-heap", allow(dead_code))]

use aarch64_paging::Mapping;
use aarch64_paging::paging::{El1And0, MemoryRegion};
use core_alloc::Allocator;
use page_provider::aarch64_paging::{HeapFrames, Paging, PagingProvider, PagingStats, heap_attributes};
use platform::arch::aarch64::KernelPlatform;
use platform::arch::aarch64::paging::MAIR_NORMAL;
use qemu_suite::{HeapUnderTest, Machine, Outcome};

use crate::dtb::{BootInfo, Region};
use crate::mmu::PoolTables;

/// The second heap's virtual window: the start of TTBR1's 512 GiB.
const WINDOW: usize = 0xFFFF_FF80_0000_0000;
/// Chunks in the window: 4 GiB, more than its frames can back.
const CHUNKS: usize = 2048;
/// RAM set aside for the second heap, at the top of RAM: 64 MiB of 2 MiB frames, then
/// 960 MiB of 4 KiB frames. The suite's stress test keeps more or less memory in flight with
/// the host's load (frees handed between CPUs wait for the next collect): 512 MiB ran out
/// once (256 chunks backed, 9 allocations refused), as on x86-64, which sets aside up to
/// 1 GiB too.
pub(crate) const FRAMES_BYTES: u64 = 1 << 30;
const HUGE_BYTES: u64 = 64 << 20;
const HUGE: u64 = 2 << 20;
const PAGE: u64 = 4096;

/// The kernel's frame allocator for the second heap: two bump allocators over the set-aside
/// RAM (only the provider calls it, under its lock).
#[derive(Debug)]
pub(crate) struct KernelFrames {
    huge: core::ops::Range<u64>,
    small: core::ops::Range<u64>,
}

// SAFETY: the frames come from RAM that `main` leaves out of every other use (the first heap,
// the image, the table pool), each handed out once, aligned to its size.
unsafe impl HeapFrames for KernelFrames {
    fn allocate_2m(&mut self) -> Option<u64> {
        let frame = self.huge.start;
        (frame + HUGE <= self.huge.end).then(|| {
            self.huge.start += HUGE;
            frame
        })
    }

    fn allocate_4k(&mut self) -> Option<u64> {
        let frame = self.small.start;
        (frame + PAGE <= self.small.end).then(|| {
            self.small.start += PAGE;
            frame
        })
    }
}

/// The provider: tracks 32 words of 64 chunks.
pub(crate) type PagedProvider = PagingProvider<PoolTables, KernelFrames, 32>;

/// Chunks of [`WINDOW`], mapped through the kernel's `aarch64-paging` tables.
pub(crate) static PAGED: PagedProvider = PagingProvider::new(WINDOW, CHUNKS);

/// The second heap.
pub(crate) static PAGED_HEAP: Allocator<&PagedProvider, KernelPlatform> =
    Allocator::new(&PAGED, KernelPlatform::new());

/// The RAM set aside for the second heap: [`FRAMES_BYTES`] at the top of the highest RAM
/// region, 2 MiB aligned.
pub(crate) fn frames_region(info: &BootInfo) -> Region {
    let end = info.memory.as_slice().iter().map(|region| region.start + region.len).max().unwrap_or(0);
    Region { start: (end - FRAMES_BYTES) & !(HUGE - 1), len: FRAMES_BYTES }
}

/// Hands the kernel's upper-range mapping and the set-aside RAM to [`PAGED`]. Boot CPU,
/// once, after the MMU is on.
pub(crate) fn init(mapping: Mapping<PoolTables, El1And0>, frames: Region) {
    let upper =
        platform::arch::aarch64::paging::current_upper_tables(platform::arch::aarch64::PhysMap { offset: 0 });
    assert_eq!(
        upper.map(|tables| (tables.root, tables.regime.granule.size(), tables.regime.va_bits)),
        Some((mapping.root_address().0 as u64, 4096, 39)),
        "TTBR1_EL1 and TCR_EL1 do not describe the upper range's aarch64-paging tables"
    );
    let split = frames.start + HUGE_BYTES;
    let frames = KernelFrames { huge: frames.start..split, small: split..frames.start + frames.len };
    let paging = Paging { mapping, frames, attributes: heap_attributes(MAIR_NORMAL as usize) };
    // SAFETY: the mapping is TTBR1's on every CPU (marked active), its translation reaches
    // every table (the identity-mapped pool); nothing else maps the window; the attributes
    // are the kernel's normal memory (MAIR index 1).
    let accepted = unsafe { PAGED.init(paging) };
    assert!(accepted, "the second heap's window lies outside TTBR1's range");
}

/// The machine as the second heap's tests see it: at most [`SECOND_HEAP_CPUS`] CPUs, so
/// that the memory they keep in flight fits the set-aside RAM on a machine of any size.
struct FewCpus<'a>(&'a dyn Machine);

/// CPUs the second heap's tests run on, at most.
const SECOND_HEAP_CPUS: usize = 4;

impl Machine for FewCpus<'_> {
    fn arch(&self) -> &'static str {
        self.0.arch()
    }
    fn cpu_count(&self) -> usize {
        self.0.cpu_count().min(SECOND_HEAP_CPUS)
    }
    fn current_cpu(&self) -> usize {
        self.0.current_cpu()
    }
    fn run_on_cpus(&self, cpus: usize, work: &(dyn Fn(usize) + Sync)) {
        self.0.run_on_cpus(cpus, work);
    }
    fn set_timer_handler(&self, handler: Option<fn(usize)>) {
        self.0.set_timer_handler(handler);
    }
    fn start_timer(&self, period_us: u32) {
        self.0.start_timer(period_us);
    }
    fn stop_timer(&self) {
        self.0.stop_timer();
    }
    fn now_ns(&self) -> u64 {
        self.0.now_ns()
    }
    fn write_str(&self, text: &str) {
        self.0.write_str(text);
    }
}

/// The suite's provider-independent allocator tests on the second heap (on up to 4 CPUs),
/// then: both kinds of chunk were used, and every page of every backed chunk translates, in
/// the kernel's `aarch64-paging` tables, to a frame of the set-aside RAM.
pub(crate) fn test(machine: &dyn Machine, frames: Region) -> Outcome {
    let free_chunks = || PAGED.stats().free_chunks;
    let few = FewCpus(machine);
    qemu_suite::second_heap(&few, &HeapUnderTest { allocator: &PAGED_HEAP, free_frames: &free_chunks })
        .map_err(|why| alloc::format!("{why} ({:?})", PAGED.stats()))?;
    let PagingStats { backed_chunks, block_chunks, .. } = PAGED.stats();
    if block_chunks == 0 || backed_chunks <= block_chunks {
        return Err(alloc::format!(
            "{backed_chunks} chunks backed, {block_chunks} with 2 MiB blocks: a path went unused"
        ));
    }
    let ram = frames.start as usize..(frames.start + frames.len) as usize;
    let (mut mapped, mut stray) = (0usize, 0usize);
    PAGED
        .with_paging(|paging| {
            let window = MemoryRegion::new(WINDOW, WINDOW + backed_chunks * (2 << 20));
            let walked = paging.mapping.walk_range(&window, &mut |region, descriptor, _level| {
                if descriptor.is_valid() {
                    mapped += region.len();
                    let phys = descriptor.output_address().0;
                    stray += usize::from(!ram.contains(&phys) || !ram.contains(&(phys + region.len() - 1)));
                }
                Ok(())
            });
            walked.map_err(|error| alloc::format!("walking the window: {error}"))
        })
        .unwrap_or_else(|| Err("the provider has no paging".into()))?;
    if mapped != backed_chunks * (2 << 20) || stray != 0 {
        return Err(alloc::format!(
            "{mapped} bytes of {backed_chunks} backed chunks map, {stray} mappings outside the set-aside RAM"
        ));
    }
    crate::console::println!(
        "aarch64: second heap over aarch64-paging tables (TTBR1): {backed_chunks} chunks backed, {block_chunks} with 2 MiB blocks"
    );
    Ok(())
}
