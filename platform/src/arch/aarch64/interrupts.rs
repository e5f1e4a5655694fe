//! Masking IRQs and FIQs on the current CPU through PSTATE.DAIF, as a nesting guard.
//!
//! Masking is per CPU and needs no lock: while a guard lives, nothing else runs on this CPU
//! (the kernel does not preempt with interrupts masked), which is what [`KernelPlatform`]
//! builds its exclusive slots on.
//!
//! [`KernelPlatform`]: super::KernelPlatform

use core::arch::asm;
use core::marker::PhantomData;

/// DAIF bit masking IRQs (PSTATE.I).
const DAIF_IRQ: u64 = 1 << 7;

/// Masks IRQs and FIQs on the current CPU while it lives (FIQs too, so that a machine
/// routing its timer to FIQ cannot enter the critical section either); dropping it restores the state
/// found at creation, so guards nest (drop them in reverse order of creation, as scopes do).
///
/// `!Send`: the saved state belongs to the CPU that made the guard.
#[must_use = "interrupts are unmasked again as soon as the guard is dropped"]
#[derive(Debug)]
pub struct InterruptGuard {
    saved_daif: u64,
    _not_send: PhantomData<*mut ()>,
}

impl InterruptGuard {
    /// Masks IRQs and FIQs, remembering whether they were masked before.
    #[inline(always)]
    pub fn new() -> Self {
        let saved_daif: u64;
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
                saved = out(reg) saved_daif,
                options(nostack, preserves_flags),
            );
        }
        Self { saved_daif, _not_send: PhantomData }
    }
}

impl Default for InterruptGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for InterruptGuard {
    #[inline(always)]
    fn drop(&mut self) {
        // SAFETY: restores the DAIF value this CPU had when the guard was made (the guard is
        // !Send, so this is the same CPU); any inner guard has already restored its own.
        unsafe {
            // Writes DAIF back whole. No `nomem`: a compiler barrier, so the critical
            // section's memory accesses cannot sink below the unmasking. MSR DAIF does not
            // change NZCV and uses no stack.
            asm!("msr daif, {saved}", saved = in(reg) self.saved_daif, options(nostack, preserves_flags));
        }
    }
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
