//! The nesting rule of interrupt guards, kept apart from the registers so that it can be
//! tested on the host: each CPU counts its live guards; the guard that raises the count from
//! 0 saves the interrupt mask state, and the one that brings it back to 0, whichever it is,
//! restores it. So dropping an outer guard inside an inner one's scope (possible in safe
//! code) leaves interrupts masked until the last guard of the CPU is gone.
//!
//! Concurrency: a CPU's [`MaskDepth`] is touched only by that CPU, with interrupts masked
//! (after [`MaskRegister::save_and_mask`], before [`MaskRegister::restore`]). A handler that
//! still runs then (AArch64: SError, debug and synchronous exceptions, whose handlers run
//! to completion before the interrupted code continues) and uses guards leaves the count and
//! the saved state as it found them, given the order of the steps below; the compiler
//! fences keep that order in the generated code (the CPU keeps program order for its own
//! exception handlers).
//!
//! x86-64 implements the same rule in assembly (`x86_64/interrupts.rs`), with `gs:`-relative
//! single instructions; AArch64 uses this module.

use core::marker::PhantomData;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering, compiler_fence};

/// One CPU's count of live guards and the state its outermost live guard found.
#[derive(Debug)]
pub(crate) struct MaskDepth {
    depth: AtomicUsize,
    saved: AtomicU64,
}

impl MaskDepth {
    /// A CPU with no live guard.
    pub(crate) const fn new() -> Self {
        Self { depth: AtomicUsize::new(0), saved: AtomicU64::new(0) }
    }

    /// Forgets any count: for CPU bring-up, with no guard alive on the CPU.
    // Called by AArch64's `init_cpu`, which host tests do not build.
    #[cfg_attr(test, allow(dead_code))]
    pub(crate) fn reset(&self) {
        self.depth.store(0, Ordering::Relaxed);
        self.saved.store(0, Ordering::Relaxed);
    }

    /// Records a new guard; `state` is the mask state before it masked interrupts.
    fn enter(&self, state: u64) {
        // Raise the count before saving: a handler running in between sees count >= 1 and
        // saves nothing, or (before the raise) leaves count 0 and is overwritten below.
        let depth = self.depth.load(Ordering::Relaxed);
        self.depth.store(depth + 1, Ordering::Relaxed);
        compiler_fence(Ordering::SeqCst);
        if depth == 0 {
            self.saved.store(state, Ordering::Relaxed);
        }
    }

    /// Forgets a guard; returns the state to restore if it was the CPU's last one.
    fn exit(&self) -> Option<u64> {
        // Read the saved state before lowering the count: once it is 0, a handler may
        // overwrite it.
        let saved = self.saved.load(Ordering::Relaxed);
        compiler_fence(Ordering::SeqCst);
        let depth = self.depth.load(Ordering::Relaxed);
        debug_assert!(depth > 0, "an interrupt guard dropped on a CPU with no live guard");
        self.depth.store(depth - 1, Ordering::Relaxed);
        (depth == 1).then_some(saved)
    }
}

/// The hardware under a [`NestedGuard`]: how to mask interrupts on the current CPU, how to
/// put the old state back, and where the current CPU's count is.
pub(crate) trait MaskRegister {
    /// Masks interrupts on the current CPU and returns the mask state from before. Must be
    /// a compiler barrier: the critical section's memory accesses stay after it.
    fn save_and_mask() -> u64;
    /// Puts back the interrupt mask of `state` (a value `save_and_mask` returned). Must be
    /// a compiler barrier: the critical section's memory accesses stay before it.
    fn restore(state: u64);
    /// The current CPU's count. Called with interrupts masked, so the CPU cannot change.
    fn depth() -> &'static MaskDepth;
}

/// Keeps interrupts masked on its CPU while alive; the last live guard of a CPU to drop
/// restores the state the first one found. `!Send`: it belongs to its CPU.
#[derive(Debug)]
pub(crate) struct NestedGuard<R: MaskRegister> {
    _not_send: PhantomData<*const ()>,
    _register: PhantomData<fn() -> R>,
}

impl<R: MaskRegister> NestedGuard<R> {
    /// Masks interrupts on the current CPU until the guard drops.
    #[inline(always)]
    pub(crate) fn new() -> Self {
        let state = R::save_and_mask();
        R::depth().enter(state);
        Self { _not_send: PhantomData, _register: PhantomData }
    }

    /// Does what dropping a guard does, for a guard that `mem::forget` dropped without it.
    ///
    /// # Safety
    ///
    /// One call per forgotten guard, on the CPU that made it, in the order guards drop.
    #[inline(always)]
    pub(crate) unsafe fn drop_forgotten() {
        if let Some(state) = R::depth().exit() {
            R::restore(state);
        }
    }
}

impl<R: MaskRegister> Drop for NestedGuard<R> {
    #[inline(always)]
    fn drop(&mut self) {
        // SAFETY: this guard's `new` raised the count; it drops once.
        unsafe { Self::drop_forgotten() }
    }
}

#[cfg(test)]
mod tests;
