//! AArch64 kernel platform: the CPU index in TPIDR_EL1, interrupt masking through DAIF, the
//! cache-line size from CTR_EL0, and 2 MiB heap mappings in the kernel's translation tables
//! with any granule (4 KiB, 16 KiB or 64 KiB).
//!
//! The kernel using this module runs at EL1 and calls, in this order:
//!
//! 1. (once, before the heap's first allocation) [`HeapMapper::install`] with its top-level
//!    table ([`paging::current_tables`] reads it from TTBR0_EL1 and TCR_EL1 once the MMU is
//!    on), the RAM the heap may use, and a source of frames for the window's tables;
//! 2. (every CPU) [`init_cpu`] with the CPU's dense index (0 for the boot CPU) before
//!    anything uses a [`KernelPlatform`].
//!
//! The register values a kernel programs for its own MMU set-up are here too
//! ([`paging::MAIR_VALUE`], [`paging::tcr_value`]), and the table code ([`paging::Tables`])
//! can build its own mappings, so the descriptors [`HeapMapper`] writes and the attributes
//! the kernel programs cannot disagree.

mod cpu;
mod interrupts;
pub mod paging;

pub use cpu::{
    Atomics, KernelPlatform, LEVELS, MAX_CPUS, MaskingPlatform, allocator_depth, atomics, cache_line_size,
    cpu_has_lse, cpu_initialized, current_cpu_racy, init_cpu, now_ns,
};
pub use interrupts::{InterruptGuard, interrupts_masked};
pub use paging::{Granule, HeapMapper, PhysMap, Regime, Tables, TablesError, Translation};
