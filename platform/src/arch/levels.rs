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

/// Restores the level a closure raised, even if the closure unwinds.
struct Restore<'a, W: LevelWord> {
    word: &'a W,
    level: usize,
}

impl<W: LevelWord> Drop for Restore<'_, W> {
    #[inline(always)]
    fn drop(&mut self) {
        compiler_fence(Ordering::SeqCst);
        self.word.store(self.level);
    }
}

/// Runs `f(level)` on the CPU's next level; when only the last level is left, runs
/// `f(levels - 1)` holding the guard `mask()` returns, which must keep interrupts masked
/// until it drops.
#[inline(always)]
pub(crate) fn with_level<W: LevelWord, G, R>(
    word: &W,
    levels: usize,
    mask: impl FnOnce() -> G,
    f: impl FnOnce(usize) -> R,
) -> R {
    let level = word.load();
    if level >= levels - 1 {
        let _masked = mask();
        return f(levels - 1);
    }
    word.store(level + 1);
    compiler_fence(Ordering::SeqCst);
    let _restore = Restore { word, level };
    f(level)
}

#[cfg(test)]
mod tests;
