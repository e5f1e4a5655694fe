//! AArch64 kernel platform: the CPU index in TPIDR_EL1, interrupt masking through DAIF, the
//! cache-line size from CTR_EL0, and 2 MiB heap mappings in a TTBR0 window.
//!
//! The kernel using this module runs at EL1 with a 4 KiB granule and a 39-bit virtual address
//! space in TTBR0 (T0SZ = 25, so a walk starts at level 1), identity-maps its own image, and
//! calls, in this order on every CPU:
//!
//! 1. (boot CPU only, before enabling the MMU) [`HeapMapper::install`] to link the heap
//!    window's level-2 tables into its level-1 table;
//! 2. [`init_cpu`] with the CPU's dense index (0 for the boot CPU) before anything uses a
//!    [`KernelPlatform`].
//!
//! The register values it needs for its MMU set-up are here too ([`paging::MAIR_VALUE`],
//! [`paging::tcr_value`]), so the descriptors [`HeapMapper`] writes and the attributes the
//! kernel programs cannot disagree.

mod cpu;
mod interrupts;
pub mod paging;

pub use cpu::{KernelPlatform, MAX_CPUS, cache_line_size, current_cpu_racy, init_cpu};
pub use interrupts::{InterruptGuard, interrupts_masked};
pub use paging::{HeapMapper, VIRT_OFFSET};
