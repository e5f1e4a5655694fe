//! The level rule of the kernel platforms' slots, kept apart from the registers so that it
//! can be tested on the host: a CPU has `levels` slots; a slot closure reads the CPU's
//! level word L, raises it to L + 1, runs on slot level L and restores L. On one CPU,
//! closures nest strictly (an interrupt handler returns before the code it interrupted
//! resumes), so every open closure holds a different level: a handler that arrives between
//! the read and the raise runs to completion at level L first and leaves the word at L. At
//! the last level the caller masks interrupts instead (nothing can then interrupt it).
//!
//! Concurrency: a CPU's word is touched only by that CPU, with single loads and stores; the
//! compiler fences keep the closure's accesses between the raise and the restore (the CPU
//! keeps program order for its own interrupt handlers). The tests below inject interrupts
//! at every load, store and point inside closures, nested up to past the last level, and
//! check that no two open closures ever hold one level.
//!
//! x86-64 reaches its word through `gs:`, AArch64 through an array indexed by TPIDR_EL1.

use core::sync::atomic::{Ordering, compiler_fence};

/// A CPU's level word: only that CPU reads and writes it.
pub(crate) trait LevelWord {
    /// The closures open on this CPU.
    fn load(&self) -> usize;
    /// Sets the closures open on this CPU.
    fn store(&self, level: usize);
}

impl<W: LevelWord> LevelWord for &W {
    #[inline(always)]
    fn load(&self) -> usize {
        (**self).load()
    }

    #[inline(always)]
    fn store(&self, level: usize) {
        (**self).store(level);
    }
}

/// What a slot closure holds while it runs: its raised level (restored on drop, even if
/// the closure unwinds), or the mask guard of the last level.
pub(crate) enum Held<W: LevelWord, G> {
    /// The level word was raised from `level`; dropping this restores it.
    Level { word: W, level: usize },
    /// The last level, with interrupts masked until the guard drops.
    Masked(G),
}

impl<W: LevelWord, G> Drop for Held<W, G> {
    #[inline(always)]
    fn drop(&mut self) {
        if let Held::Level { word, level } = self {
            compiler_fence(Ordering::SeqCst);
            word.store(*level);
        }
    }
}

/// Takes the calling CPU's next level: returns it and what to hold while using its slot.
/// When only the last level is left, returns it with the guard `mask()` gives, which must
/// keep interrupts masked until it drops. One call site for the closure that follows keeps
/// it inlined without spilling its captures.
#[inline(always)]
pub(crate) fn enter<W: LevelWord, G>(
    word: W,
    levels: usize,
    mask: impl FnOnce() -> G,
) -> (usize, Held<W, G>) {
    let level = word.load();
    if level >= levels - 1 {
        core::hint::cold_path();
        return (levels - 1, Held::Masked(mask()));
    }
    word.store(level + 1);
    compiler_fence(Ordering::SeqCst);
    (level, Held::Level { word, level })
}

#[cfg(test)]
mod tests;
