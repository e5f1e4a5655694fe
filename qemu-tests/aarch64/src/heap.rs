//! The kernel's global allocator: core-alloc's `Allocator` over the heap frame provider and
//! [`KernelPlatform`] (the CPU index as the slot, interrupts masked while it is held).
//! Kept in this one file so that the allocator under test can be swapped in one place.

use core_alloc::{Allocator, MisuseReport};
use page_provider::bare_metal::FrameProvider;
use platform::arch::aarch64::{HeapMapper, KernelPlatform};

/// The global allocator's type.
pub(crate) type KernelHeap = Allocator<&'static FrameProvider<HeapMapper>, KernelPlatform>;

/// The global allocator. It takes chunks from [`FRAMES`](crate::FRAMES) on demand, so RAM
/// must be added there before the first allocation, and every CPU must have called
/// `init_cpu` before it allocates.
#[global_allocator]
pub(crate) static HEAP: KernelHeap =
    Allocator::new(&crate::FRAMES, KernelPlatform::new()).with_misuse_hook(report_misuse);

/// Name of the allocator, for the boot line.
pub(crate) const NAME: &str = "core-alloc";

/// A misuse the allocator noticed (double free, foreign pointer, wrong layout) fails the
/// run: printed without allocating, then QEMU exits with 1.
fn report_misuse(report: &MisuseReport) {
    crate::console::emergency_print(format_args!(
        "aarch64: allocator misuse: {:?} at {:#x}\n",
        report.kind, report.address
    ));
    crate::semihosting::exit(1);
}
