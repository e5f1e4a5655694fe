//! The level rule of the kernel platforms' slots, kept apart from the registers so that it
//! can be tested on the host: a CPU has `levels` slots; a slot closure reads the CPU's
//! level word L, raises it to L + 1, runs on slot level L and restores L. On one CPU,
//! closures nest strictly (an interrupt handler returns before the code it interrupted
//! resumes), so every open closure holds a different level: a handler that arrives between
//! the read and the raise runs to completion at level L first and leaves the word at L. At
//! the last level the caller masks interrupts instead (nothing can then interrupt it).
//!
//! The word encodes level L as `base + L * step`. Both platforms keep the slot itself in it
//! (`base` the CPU index, `step` `MAX_CPUS`), so a closure uses the value it read as its slot
//! with no arithmetic: one load, a compare and one store in, one store out; a CPU that never
//! ran `init_cpu` reads a word at or past `last` (its platform's record of no CPU) and so
//! reaches the masked path, where the platform checks the CPU: the fast path pays nothing
//! for that check. (AArch64 kept the bare level, `base` 0 and `step` 1, and added the CPU
//! index itself until its pair was measured again: with the slot in the word it takes 78
//! instructions rather than 83 and 69-71 ns rather than 71-75 under QEMU; an earlier
//! measurement had found it 10% slower.)
//!
//! Concurrency: a CPU's word is touched only by that CPU, with single loads and stores; the
//! compiler fences keep the closure's accesses between the raise and the restore (the CPU
//! keeps program order for its own interrupt handlers). The tests below inject interrupts
//! at every load, store and point inside closures, nested up to past the last level, and
//! check that no two open closures ever hold one level.
//!
//! x86-64 reaches its word through `gs:`, AArch64 through a table offset by TPIDR_EL1.

use core::sync::atomic::{Ordering, compiler_fence};

/// A CPU's level word: only that CPU reads and writes it.
pub(crate) trait LevelWord {
    /// The slot the next closure on this CPU takes.
    fn load(&self) -> usize;
    /// Sets the slot the next closure on this CPU takes.
    fn store(&self, value: usize);
}

impl<W: LevelWord> LevelWord for &W {
    #[inline(always)]
    fn load(&self) -> usize {
        (**self).load()
    }

    #[inline(always)]
    fn store(&self, value: usize) {
        (**self).store(value);
    }
}

/// Runs `f` on the calling CPU's next level: reads the word's value (see the module
/// documentation), raises it by `step` and calls `f` with the value read and `false`. A
/// value at or past `last` (the last level's, or a CPU the platform does not know) instead
/// calls `mask()`, which must mask interrupts and leave them masked (no guard), and then
/// `f` with the value and `true`, without raising the word; a word past the last level's
/// (`last + step` or more: only an unknown CPU's) is the platform's to refuse in `mask` (a
/// panic), since the value `f` gets is capped at the last level's.
///
/// The end of the closure is `f`'s: once done with the slot, on every path (also when it
/// unwinds: the platforms' `SlotExit` does it on drop), possibly in a function it hands
/// them to, `f` calls [`restore`] with the value if not masked, and undoes what `mask()`
/// did if masked. So `f` can end in a tail call on either path, and the fast path keeps no
/// register for after it.
///
/// `f` is called from two places, both inline (pass an `#[inline(always)]` closure): each
/// copy then knows which way it came in, so the fast path's end is one store with no test,
/// and the closure's captures stay in registers. (A cold function taking `f` makes the fast
/// path store the captures to the stack.)
#[inline(always)]
pub(crate) fn with_level<W: LevelWord, R>(
    word: W,
    last: usize,
    step: usize,
    mask: impl FnOnce(),
    f: impl FnOnce(usize, bool) -> R,
) -> R {
    let value = word.load();
    if value >= last {
        core::hint::cold_path();
        mask();
        // The last level's value is below `last + step` (its base is below `step`), and
        // `mask` refused a word past it: saying so spares callers a bounds check.
        return f(value.min(last + step - 1), true);
    }
    word.store(value + step);
    compiler_fence(Ordering::SeqCst);
    f(value, false)
}

/// Puts back the word's `value` at the end of a closure of [`with_level`] (not masked),
/// after the closure's accesses (a compiler fence keeps them before the store).
#[inline(always)]
pub(crate) fn restore<W: LevelWord>(word: W, value: usize) {
    compiler_fence(Ordering::SeqCst);
    word.store(value);
}

#[cfg(test)]
mod tests;
