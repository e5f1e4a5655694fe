//! x86-64 kernel platform: the CPU index read through the GS base, interrupt masking as the
//! critical section, the cache-line size from CPUID, and 2 MiB heap mappings.
//!
//! What a kernel must do to use it (all of it in its own boot code):
//!
//! 1. On every CPU, before anything here is used on that CPU, call [`init_cpu`] with the
//!    CPU's dense index (0 for the boot CPU). It points `IA32_GS_BASE` at the CPU's record;
//!    [`KernelPlatform`], [`InterruptGuard`] and [`current_cpu_racy`] read and write that
//!    record through `gs:`. The kernel must not change the GS base afterwards. On a CPU that
//!    skipped it (GS base 0, as at reset), `KernelPlatform` panics with a message naming
//!    `init_cpu` at the first allocation, never a page fault.
//! 2. Once, before the heap is used, call [`HeapMapper::install`] on the mapper of the
//!    kernel's frame provider, with the kernel's physical-memory offset, the RAM range and a
//!    source of 4 KiB frames for page tables: it builds the heap window (frame `phys` at
//!    `phys + heap_offset`, an offset the kernel chooses) in the page tables of CR3, shared
//!    by every CPU (4-level paging).
//! 3. Mask interrupts only through [`InterruptGuard`] (or not at all) while a guard is
//!    alive: a raw `sti` inside one breaks the exclusivity it promises.
//! 4. With [`KernelPlatform`] (interrupts stay enabled on the allocator's fast path; an
//!    interrupt handler allocates on a slot of its own nesting level), do not switch tasks
//!    on a CPU while [`allocator_depth`] is above 0 there; a kernel that preempts anywhere
//!    uses [`MaskingPlatform`].
//!
//! A kernel that owns its RAM (PVH, multiboot, its own boot loader) puts the heap on it with
//! page-provider's `FrameProvider` over a [`HeapMapper`] (the x86-64 test kernel does this in
//! `qemu-tests/x86_64/src/memory.rs`):
//!
//! ```ignore
//! const HEAP_OFFSET: usize = 0xFFFF_C000_0000_0000; // heap address = physical + this (2 MiB multiple)
//! static FRAMES: FrameProvider<HeapMapper> = FrameProvider::new(HeapMapper::new(HEAP_OFFSET), 0, HEAP_OFFSET);
//! #[global_allocator]
//! static HEAP: Allocator<&FrameProvider<HeapMapper>, KernelPlatform> = Allocator::new(&FRAMES, KernelPlatform::new());
//!
//! // Boot CPU, before the first allocation (other CPUs: `init_cpu(index)` at bring-up):
//! unsafe {
//!     init_cpu(0);
//!     FRAMES.mapper().install(PHYS_OFFSET, 0..ram_end, || frames.allocate_4k()).expect("heap window");
//!     FRAMES.add_ram(start, len, &[kernel_image, boot_data, frames_ram], false);
//! }
//! ```
//!
//! A kernel that already manages paging with the `x86_64` crate (an `OffsetPageTable` and a
//! `FrameAllocator`, as in the tutorial kernels) uses page-provider's
//! `x86_paging::PagingProvider` instead (feature `x86_64`), and needs no `HeapMapper`.

mod cpu;
mod interrupts;
mod paging;

pub use cpu::{
    KernelPlatform, LEVELS, MAX_CPUS, MaskingPlatform, allocator_depth, cache_line_size, cpu_initialized,
    current_cpu_racy, init_cpu, now_ns, set_clock,
};
pub use interrupts::{InterruptGuard, interrupts_enabled};
pub use paging::{HeapMapper, InstallError};
