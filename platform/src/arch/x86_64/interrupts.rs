//! Interrupt masking that nests and survives out-of-order drops: [`InterruptGuard`].
//!
//! Each CPU counts its live guards in its per-CPU record. The guard that raises the count
//! from 0 saves RFLAGS there; the one that brings it back to 0 (whichever it is) restores
//! the interrupt flag. So dropping an outer guard inside an inner one's scope (possible in
//! safe code, for example inside a [`KernelPlatform::with_slot`] closure) cannot unmask
//! interrupts early. Only the owning CPU touches its count, with interrupts masked or with
//! single instructions, so no atomic read-modify-write is needed; an NMI handler that uses
//! guards leaves the count and the saved flags as it found them (see the assembly).
//!
//! [`KernelPlatform::with_slot`]: super::KernelPlatform

use core::arch::asm;
use core::marker::PhantomData;

use super::cpu::{DEPTH_OFFSET, FLAGS_OFFSET, UNINITIALIZED};

/// RFLAGS.IF: maskable interrupts are delivered.
const RFLAGS_IF: u64 = 1 << 9;

/// Whether maskable interrupts are enabled on the calling CPU (RFLAGS.IF).
#[inline]
pub fn interrupts_enabled() -> bool {
    let flags: u64;
    // SAFETY: reading RFLAGS has no precondition. `pushfq; pop` uses the stack (so no
    // `nostack`) and touches no other memory (nomem); it changes no flags.
    unsafe { asm!("pushfq", "pop {flags}", flags = out(reg) flags, options(nomem, preserves_flags)) };
    flags & RFLAGS_IF != 0
}

/// Masks maskable interrupts on the current CPU while alive; the last live guard on a CPU
/// to drop restores the interrupt flag saved by the first. Guards nest.
///
/// `!Send`: a guard belongs to the CPU that made it. The kernel must have run
/// [`init_cpu`](super::init_cpu) on the CPU first; on a CPU that did not (GS base 0), guards
/// mask interrupts and never unmask them.
#[must_use = "interrupts are unmasked again as soon as the guard is dropped"]
#[derive(Debug)]
pub struct InterruptGuard {
    _not_send: PhantomData<*const ()>,
}

impl InterruptGuard {
    /// Masks interrupts (if they were not masked already) until the guard drops.
    #[inline]
    pub fn new() -> Self {
        // SAFETY: the `gs:` accesses hit this CPU's depth count and saved flags (`init_cpu`
        // ran first, the module's contract), or, on a CPU that never ran it, the fields of
        // the uninitialised record, a static whose depth never drops to 0 (`cpu.rs`).
        // Order matters: RFLAGS is read before `cli`, the count is raised before the flags
        // are saved, and saved only if this guard raised it from 0; a nested handler (an
        // NMI) running between any two instructions sees either count 0 and finds the
        // state it would restore unchanged, or count >= 1 and saves nothing.
        // Not `nomem`: the block is a compiler barrier, so memory accesses of the critical
        // section cannot move above the `cli`. It pushes (no `nostack`) and `add`/`cmp`
        // change the status flags (no `preserves_flags`).
        unsafe {
            asm!(
                "pushfq",
                "pop {flags}",
                "cli",
                "add qword ptr gs:[rip + {record} + {depth}], 1",
                "cmp qword ptr gs:[rip + {record} + {depth}], 1",
                "jne 2f",
                "mov qword ptr gs:[rip + {record} + {saved}], {flags}",
                "2:",
                flags = out(reg) _,
                record = sym UNINITIALIZED,
                depth = const DEPTH_OFFSET,
                saved = const FLAGS_OFFSET,
            );
        }
        Self { _not_send: PhantomData }
    }

    /// Does what dropping a guard does, for a guard that `mem::forget` dropped without it
    /// (inline, where a drop in cold code may become a call).
    ///
    /// # Safety
    ///
    /// One call per forgotten guard, on the CPU that made it, in the order guards drop.
    #[inline(always)]
    pub(crate) unsafe fn drop_forgotten() {
        // SAFETY: as in `new`, `gs:` reaches this CPU's record, and the forgotten guard's
        // `new` raised the count (the caller's promise), so lowering it keeps it balanced.
        // The saved flags are read before the count drops: once it is 0 a nested handler may
        // overwrite them. Interrupts are enabled only when the count reaches 0 and the
        // outermost guard found them enabled. Not `nomem`: a compiler barrier, so the
        // critical section's accesses cannot sink below the `sti`. No stack use (nostack);
        // `sub`/`test` change the status flags.
        unsafe {
            asm!(
                "mov {saved}, qword ptr gs:[rip + {record} + {saved_offset}]",
                "sub qword ptr gs:[rip + {record} + {depth}], 1",
                "jne 2f",
                "test {saved}, {interrupt_flag}",
                "jz 2f",
                "sti",
                "2:",
                saved = out(reg) _,
                record = sym UNINITIALIZED,
                saved_offset = const FLAGS_OFFSET,
                depth = const DEPTH_OFFSET,
                interrupt_flag = const RFLAGS_IF,
                options(nostack),
            );
        }
    }
}

impl Default for InterruptGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for InterruptGuard {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: this guard's `new` raised the count; it drops once.
        unsafe { Self::drop_forgotten() }
    }
}
