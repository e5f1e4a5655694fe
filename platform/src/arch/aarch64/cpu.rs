//! The CPU index (kept in TPIDR_EL1), each CPU's count of live interrupt guards, the
//! [`KernelPlatform`] built on them, and the cache-line size read from CTR_EL0.
//!
//! Concurrency: TPIDR_EL1 is private to each CPU and written once at bring-up; a CPU's
//! guard count is touched only by that CPU with interrupts masked; a slot is made exclusive
//! by masking interrupts on its CPU, so the fast path takes no lock and does no atomic
//! read-modify-write.

use core::arch::asm;

use super::InterruptGuard;
use crate::Platform;
use crate::arch::nesting::MaskDepth;

/// CPUs a [`KernelPlatform`] can index: every index given to [`init_cpu`] is below it.
pub const MAX_CPUS: usize = 64;
const _: () = assert!(MAX_CPUS <= crate::MAX_SLOTS);

/// Each CPU's count of live [`InterruptGuard`]s, by CPU index; the last entry serves a CPU
/// whose TPIDR_EL1 is not a valid index yet (the boot CPU before [`init_cpu`]).
static MASK_DEPTHS: [MaskDepth; MAX_CPUS + 1] = [const { MaskDepth::new() }; MAX_CPUS + 1];

/// The calling CPU's guard count. Called with interrupts masked, so that the CPU (and the
/// index read) cannot change before the count is used.
#[inline(always)]
pub(super) fn current_mask_depth() -> &'static MaskDepth {
    &MASK_DEPTHS[current_cpu_racy().min(MAX_CPUS)]
}

/// Records `index` as the calling CPU's dense index, in TPIDR_EL1, and starts its count of
/// live interrupt guards at 0.
///
/// # Safety
///
/// Every CPU that runs code using a [`KernelPlatform`] or an [`InterruptGuard`] calls this
/// once at bring-up, before that code, with no guard alive, each CPU with a different
/// `index` below [`MAX_CPUS`] (0 for the boot CPU), and nothing else writes TPIDR_EL1
/// afterwards. The platform's promise of exclusive slots and the guards' nesting rest on
/// this. The one exception: the boot CPU may use guards before calling it (their counts go
/// to whatever record its reset TPIDR_EL1 selects) while no other CPU runs.
///
/// # Panics
///
/// If `index` is not below [`MAX_CPUS`].
pub unsafe fn init_cpu(index: usize) {
    assert!(index < MAX_CPUS, "CPU index {index} is not below MAX_CPUS ({MAX_CPUS})");
    MASK_DEPTHS[index].reset();
    // SAFETY: TPIDR_EL1 is a software-only register that the caller hands over to us.
    unsafe {
        // A system register write: no memory, no stack, flags untouched.
        asm!("msr tpidr_el1, {index}", index = in(reg) index, options(nomem, nostack, preserves_flags));
    }
}

/// The calling CPU's index as given to [`init_cpu`]. Racy in name only for a kernel that
/// never moves running code between CPUs; a kernel that does must read it with interrupts
/// masked (as [`KernelPlatform::with_slot`] does) for the answer to stay true.
#[inline(always)]
pub fn current_cpu_racy() -> usize {
    let index: usize;
    // SAFETY: reading TPIDR_EL1 has no side effects.
    unsafe {
        // A system register read: no memory, no stack, flags untouched. Not `pure`: the
        // value changes when `init_cpu` runs, and reads must not be merged across that.
        asm!("mrs {index}, tpidr_el1", index = out(reg) index, options(nomem, nostack, preserves_flags));
    }
    index
}

/// Bytes that two CPUs should not both write to avoid false sharing, from CTR_EL0: the larger
/// of the smallest data cache line (DminLine) and the cache write-back granule (CWG, the
/// largest line any cache in the system writes back). When CWG is not reported (0) the
/// architecture allows up to 2 KiB; like Linux we then use at least 128 bytes.
pub fn cache_line_size() -> usize {
    let ctr: u64;
    // SAFETY: reading CTR_EL0 has no side effects (EL1 may always read it).
    unsafe {
        // A system register read: no memory, no stack, flags untouched; the value is fixed
        // for the system, so `pure` lets repeated reads merge.
        asm!("mrs {ctr}, ctr_el0", ctr = out(reg) ctr, options(pure, nomem, nostack, preserves_flags));
    }
    // Both fields are log2 of a number of 4-byte words.
    let dmin_line = 4usize << ((ctr >> 16) & 0xF);
    let write_back_granule = (ctr >> 24) & 0xF;
    if write_back_granule == 0 { dmin_line.max(128) } else { dmin_line.max(4 << write_back_granule) }
}

/// The kernel [`Platform`]: the slot is the CPU's dense index (0 = boot CPU) and a slot is
/// held by masking IRQs and FIQs on its CPU.
#[derive(Debug, Clone, Copy, Default)]
pub struct KernelPlatform {
    _private: (),
}

impl KernelPlatform {
    /// The platform; every CPU using it must have called [`init_cpu`] first.
    pub const fn new() -> Self {
        Self { _private: () }
    }
}

// SAFETY: `init_cpu`'s callers give each CPU a distinct index below MAX_CPUS (the assert in
// `with_slot` catches a CPU that skipped it and holds garbage). A closure for an index runs
// on that index's CPU with IRQs and FIQs masked by an `InterruptGuard`, whose per-CPU count
// keeps them masked until the closure's guard is gone whatever order other guards drop in,
// so no other closure can start with the same index until it returns: not on another CPU
// (the index is that CPU's alone), not in an interrupt handler on this one (masked).
// Consecutive closures for an index run on the same CPU, in program order, which orders
// them.
unsafe impl Platform for KernelPlatform {
    fn slot_count(&self) -> usize {
        MAX_CPUS
    }

    #[inline(always)]
    fn with_slot<R>(&self, f: impl FnOnce(usize) -> R) -> R {
        let _masked = InterruptGuard::new();
        let index = current_cpu_racy();
        assert!(index < MAX_CPUS, "this CPU never called init_cpu");
        f(index)
    }

    fn cache_line_size(&self) -> usize {
        cache_line_size()
    }
}
