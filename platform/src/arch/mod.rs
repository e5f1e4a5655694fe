//! Kernel implementations of [`Platform`](crate::Platform) and [`HugeMapper`](crate::HugeMapper),
//! one module per architecture, each exposing the same set of items:
//!
//! - `KernelPlatform`: a slot per CPU and nesting level, interrupts left enabled on the
//!   fast path (masked only around the allocator's locks); `MaskingPlatform`: the CPU index
//!   as the slot, interrupts masked for the closure;
//! - `InterruptGuard`: masks interrupts; the last live guard of a CPU to drop restores the
//!   state the first one found, whatever the drop order (nests);
//! - `HeapMapper`: 2 MiB mappings in the kernel's page tables for the heap window;
//! - `cache_line_size()`: read from the CPU, never assumed.
//!
//! Only code for bare-metal targets (`target_os = "none"`) is built here, plus the portable
//! level rule of `KernelPlatform`'s slots (`levels`, both architectures), the portable
//! nesting rule of interrupt guards (`nesting`, used by AArch64) and the x86-64 page-table
//! walks (`x86_tables`, used by x86-64's `HeapMapper`) and the AArch64 translation tables of
//! every granule (`aarch64_tables`, used by AArch64's `HeapMapper`), which host tests check.

#[cfg(all(target_arch = "x86_64", target_os = "none"))]
pub mod x86_64;

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod aarch64;

#[cfg(any(test, all(target_arch = "aarch64", target_os = "none")))]
mod nesting;

#[cfg(any(test, target_os = "none"))]
mod levels;

#[cfg(any(test, all(target_arch = "x86_64", target_os = "none")))]
mod x86_tables;

#[cfg(any(test, all(target_arch = "aarch64", target_os = "none")))]
mod aarch64_tables;
