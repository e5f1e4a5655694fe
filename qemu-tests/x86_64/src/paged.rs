//! A second heap over the kernel's own paging, as a kernel that manages its page tables with
//! the `x86_64` crate would set it up: page-provider's `PagingProvider` over an
//! `OffsetPageTable` of the running page tables (reached through the physical-memory map)
//! and the kernel's frame allocators, and another core-alloc `Allocator` instance over it.
//! Its chunks live in their own PML4 entry, which nothing else in the kernel maps; the first
//! ones get 2 MiB frames, the rest 512 frames of 4 KiB each, once the kernel's 2 MiB frames
//! run out.

use core::arch::asm;

use core_alloc::Allocator;
use page_provider::x86_paging::{PagingProvider, PagingStats};
use platform::arch::x86_64::KernelPlatform;
use qemu_suite::{HeapUnderTest, Machine, Outcome};
use x86_64::VirtAddr;
use x86_64::structures::paging::{OffsetPageTable, PageTable, Translate};

use crate::boot::PHYS_OFFSET;
use crate::frames::{HugeFrames, SmallFrames};

/// The second heap's virtual window: PML4 entry 288.
const WINDOW: usize = 0xFFFF_9000_0000_0000;
/// Chunks in the window: 4 GiB, more than the kernel's frames can back on up to 16 GiB of
/// RAM.
const CHUNKS: usize = 2048;

/// The provider: tracks 32 words of 64 chunks.
pub(crate) type PagedProvider = PagingProvider<OffsetPageTable<'static>, SmallFrames, HugeFrames, 32>;

/// Chunks of [`WINDOW`], mapped through the kernel's paging.
pub(crate) static PAGED: PagedProvider = PagingProvider::new(WINDOW, CHUNKS);

/// The second heap.
pub(crate) static PAGED_HEAP: Allocator<&PagedProvider, KernelPlatform> =
    Allocator::new(&PAGED, KernelPlatform::new());

/// Hands the kernel's paging to [`PAGED`]. Boot CPU, once, after the physical-memory map.
pub(crate) fn init() {
    let cr3: u64;
    // SAFETY: reading CR3 has no side effects; no memory, stack or flags involved.
    unsafe { asm!("mov {}, cr3", out(reg) cr3, options(nomem, nostack, preserves_flags)) };
    let pml4 = ((cr3 & 0x000F_FFFF_FFFF_F000) as usize + PHYS_OFFSET) as *mut PageTable;
    // SAFETY: CR3's table is the PML4 every CPU uses, readable and writable through the
    // physical-memory map, as is every table under it. The mapper only walks and writes the
    // entries of the window (PML4 entry 288, which nothing else in the kernel touches), and
    // the PML4 lives as long as the kernel.
    let mapper = unsafe { OffsetPageTable::new(&mut *pml4, VirtAddr::new(PHYS_OFFSET as u64)) };
    // SAFETY: the mapper edits the tables every CPU uses; nothing maps the window; the frame
    // allocators hand out RAM set aside for them, each frame once.
    unsafe { PAGED.init(mapper, SmallFrames, HugeFrames) };
}

/// The machine as the second heap's tests see it: at most [`SECOND_HEAP_CPUS`] CPUs, so
/// that the memory they keep in flight (about 300 MiB on 4 CPUs; the cross-CPU stress grows
/// with the CPU count) fits the kernel's frames on a machine of any size.
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
/// then: both kinds of chunk were used, and each mapped chunk translates, in the kernel's
/// tables, to frames of the kernel's frame allocator.
pub(crate) fn test(machine: &dyn Machine) -> Outcome {
    let free_chunks = || PAGED.stats().free_chunks;
    let few = FewCpus(machine);
    qemu_suite::second_heap(&few, &HeapUnderTest { allocator: &PAGED_HEAP, free_frames: &free_chunks })
        .map_err(|why| alloc::format!("{why} ({:?})", PAGED.stats()))?;
    let PagingStats { backed_chunks, huge_chunks, .. } = PAGED.stats();
    if huge_chunks == 0 || backed_chunks <= huge_chunks {
        return Err(alloc::format!(
            "{backed_chunks} chunks backed, {huge_chunks} with 2 MiB pages: a path went unused"
        ));
    }
    let unmapped = PAGED.with_paging(|paging| {
        (0..backed_chunks)
            .flat_map(|chunk| [0, 4096, (2 << 20) - 8].map(|offset| WINDOW + chunk * (2 << 20) + offset))
            .filter(|&virt| paging.mapper.translate_addr(VirtAddr::new(virt as u64)).is_none())
            .count()
    });
    if unmapped != Some(0) {
        return Err(alloc::format!("{unmapped:?} addresses of backed chunks do not translate"));
    }
    crate::console::println!(
        "x86_64: second heap over the x86_64 crate's OffsetPageTable: {backed_chunks} chunks backed, {huge_chunks} with 2 MiB pages"
    );
    Ok(())
}
