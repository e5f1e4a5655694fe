//! The kernel's `#[global_allocator]`: core-alloc's `Allocator` over the heap frames
//! ([`FRAMES`]) and `KernelPlatform` (the CPU index as the slot, interrupts masked while
//! it is held). The one place to change to put another allocator under test.

use core_alloc::{Allocator, MisuseReport};
use platform::arch::x86_64::KernelPlatform;

use crate::console::println;
use crate::cpu::{ExitCode, exit};
use crate::memory::{FRAMES, Frames};

/// The global allocator's type.
pub(crate) type KernelHeap = Allocator<&'static Frames, KernelPlatform>;

/// The global allocator. It takes chunks from [`FRAMES`] on demand, so RAM must be added
/// there before the first allocation, and every CPU must have run `init_cpu` before it
/// allocates.
#[global_allocator]
pub(crate) static HEAP: KernelHeap =
    Allocator::new(&FRAMES, KernelPlatform::new()).with_misuse_hook(report_misuse);

/// The allocator's name, for the boot log.
pub(crate) const NAME: &str = "core-alloc";

/// A misuse the allocator noticed (double free, foreign pointer, wrong layout) fails the
/// run. Runs inside the allocator: prints without allocating.
fn report_misuse(report: &MisuseReport) {
    println!("x86_64: allocator misuse: {:?} at {:#x}", report.kind, report.address);
    exit(ExitCode::Failure)
}
