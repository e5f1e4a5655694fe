//! Masking IRQs and FIQs on the current CPU through PSTATE.DAIF, as a nesting guard that
//! survives out-of-order drops: [`InterruptGuard`].
//!
//! Each CPU counts its live guards (a record per CPU index, `cpu.rs`); the guard that
//! raises the count from 0 saves DAIF, and the one that brings it back to 0, whichever it
//! is, restores the I and F bits. So dropping an outer guard inside an inner one's scope
//! (possible in safe code, for example inside a [`KernelPlatform::with_slot`] closure)
//! cannot unmask interrupts early: the same promise as the x86-64 guard. The counting rule
//! is portable (`arch/nesting.rs`) and tested on the host over a fake register.
//!
//! Masking is per CPU and needs no lock: while a guard lives, nothing else runs on this CPU
//! (the kernel does not preempt with interrupts masked), which is what [`KernelPlatform`]
//! builds its exclusive slots on.
//!
//! [`KernelPlatform`]: super::KernelPlatform
//! [`KernelPlatform::with_slot`]: super::KernelPlatform

use core::arch::asm;

use super::cpu::current_mask_depth;
use crate::arch::nesting::{MaskDepth, MaskRegister, NestedGuard};

/// DAIF bit masking IRQs (PSTATE.I).
const DAIF_IRQ: u64 = 1 << 7;
/// DAIF bit masking FIQs (PSTATE.F).
const DAIF_FIQ: u64 = 1 << 6;

/// PSTATE.DAIF of the current CPU, driven by the nesting rule.
#[derive(Debug)]
struct Daif;

impl MaskRegister for Daif {
    #[inline(always)]
    fn save_and_mask() -> u64 {
        let saved: u64;
        // SAFETY: reading DAIF and setting its I and F bits only masks interrupts on this
        // CPU, which cannot break any invariant: code that must run with interrupts unmasked
        // does not exist in a kernel that uses this guard.
        unsafe {
            // Reads DAIF, then sets I and F (daifset immediate: D=8, A=4, I=2, F=1). No
            // `nomem`: the block is a compiler barrier, so memory accesses of the critical
            // section cannot be hoisted above the masking. MSR DAIFSet leaves NZCV alone and
            // touches no stack.
            asm!(
                "mrs {saved}, daif",
                "msr daifset, #3",
                saved = out(reg) saved,
                options(nostack, preserves_flags),
            );
        }
        saved
    }

    #[inline(always)]
    fn restore(state: u64) {
        // SAFETY: puts back the I and F bits this CPU had before its outermost live guard
        // (the nesting rule calls this only when the CPU's last guard drops), leaving D and
        // A as they are now. An exception taken between the read and the write returns
        // with DAIF as it found it, so the write does not undo anything.
        unsafe {
            // Reads DAIF, replaces I and F with the saved ones, writes it back. No `nomem`:
            // a compiler barrier, so the critical section's memory accesses cannot sink
            // below the unmasking. MRS/MSR and BIC/ORR leave NZCV alone and use no stack.
            asm!(
                "mrs {now}, daif",
                "bic {now}, {now}, {mask}",
                "orr {now}, {now}, {saved}",
                "msr daif, {now}",
                now = out(reg) _,
                mask = in(reg) DAIF_IRQ | DAIF_FIQ,
                saved = in(reg) state & (DAIF_IRQ | DAIF_FIQ),
                options(nostack, preserves_flags),
            );
        }
    }

    #[inline(always)]
    fn depth() -> &'static MaskDepth {
        current_mask_depth()
    }
}

/// Masks IRQs and FIQs on the current CPU while it lives (FIQs too, so that a machine
/// routing its timer to FIQ cannot enter the critical section either). The last live guard
/// of a CPU to drop restores the mask the first one found, whatever the drop order; guards
/// nest.
///
/// `!Send`: a guard belongs to the CPU that made it. The kernel must have run
/// [`init_cpu`](super::init_cpu) on the CPU first (the boot CPU may use guards before, while
/// it is the only CPU running; see `init_cpu`).
#[must_use = "interrupts are unmasked again as soon as the guard is dropped"]
#[derive(Debug)]
pub struct InterruptGuard {
    _nested: NestedGuard<Daif>,
}

impl InterruptGuard {
    /// Masks IRQs and FIQs (if they were not masked already) until the last live guard of
    /// this CPU drops.
    #[inline(always)]
    pub fn new() -> Self {
        Self { _nested: NestedGuard::new() }
    }

    /// Does what dropping a guard does, for a guard that `mem::forget` dropped without it
    /// (inline, where a drop in cold code may become a call).
    ///
    /// # Safety
    ///
    /// One call per forgotten guard, on the CPU that made it, in the order guards drop.
    #[inline(always)]
    pub(crate) unsafe fn drop_forgotten() {
        // SAFETY: the caller's promise.
        unsafe { NestedGuard::<Daif>::drop_forgotten() }
    }
}

impl Default for InterruptGuard {
    fn default() -> Self {
        Self::new()
    }
}

/// Masks IRQs and FIQs and returns DAIF as it was: a critical section's token for
/// [`unmask_as_before`] (no guard count: sections that use it nest strictly).
#[inline(always)]
pub(super) fn mask_saving() -> u64 {
    Daif::save_and_mask()
}

/// Puts back the I and F bits `token` (from [`mask_saving`]) recorded.
#[inline(always)]
pub(super) fn unmask_as_before(token: u64) {
    Daif::restore(token);
}

/// Whether IRQs are masked on the current CPU now.
#[inline(always)]
pub fn interrupts_masked() -> bool {
    daif() & DAIF_IRQ != 0
}

/// PSTATE.DAIF of the current CPU.
#[inline(always)]
fn daif() -> u64 {
    let value: u64;
    // SAFETY: reading DAIF has no side effects.
    unsafe {
        // A register read: no memory, no stack, flags untouched.
        asm!("mrs {value}, daif", value = out(reg) value, options(nomem, nostack, preserves_flags));
    }
    value
}
