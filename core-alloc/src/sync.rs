//! The synchronisation the allocator's concurrent protocols are built from, in one place so
//! that the same protocol code runs in production and under the model checker.
//!
//! - Atomics: `platform::sync`'s: the `core` atomics in production. With the `shuttle`
//!   feature they are the same atomics (same size and layout, so chunk headers keep their
//!   geometry) with a scheduling point of the [shuttle](https://docs.rs/shuttle) model
//!   checker before every operation: shuttle then explores the interleavings of every atomic
//!   access of the real code. Shuttle runs one thread at a time, so each operation is
//!   sequentially consistent there; weaker orderings are checked by Miri and
//!   ThreadSanitizer (see the README).
//! - `SpinLock`: the central heap's lock. A spin lock needs no OS; under shuttle its spin
//!   loop yields to the scheduler, so a waiting thread lets the holder run.
//! - `pause`: named points inside the allocator where a test can stop a thread (feature
//!   `pause-points`) to replay a race deterministically; under shuttle each is one more
//!   scheduling point. In other builds it compiles to nothing.

use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};

pub(crate) use platform::sync::{
    AtomicBool, AtomicPtr, AtomicU8, AtomicU16, AtomicU64, AtomicUsize, Ordering,
};

/// Named points where a test can pause a thread inside the allocator (see `pause`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PausePoint {
    /// A remote free has read the slab's owner field and not yet its remote word.
    RemoteFreeOwnerRead,
    /// A remote free found its slab FULL and won the exchange that makes it ACTIVE, and has
    /// not yet handed its block to the owner arena's delayed list.
    RemoteFreeWonFull,
    /// A huge block is about to be moved by the provider's remap, outside the central lock.
    BeforeRemap,
    /// The provider's remap of a huge block returned; the central lock is not yet taken
    /// again.
    AfterRemap,
    /// Checked builds: a free has found its block's run and is about to clear the block's
    /// live bit.
    CheckedFreeBeforeBit,
}

/// The test hook `pause` calls (feature `pause-points`).
#[cfg(feature = "pause-points")]
pub type PauseHook = fn(PausePoint);

#[cfg(feature = "pause-points")]
static PAUSE_HOOK: core::sync::atomic::AtomicPtr<()> =
    core::sync::atomic::AtomicPtr::new(core::ptr::null_mut());

/// Installs `hook` to be called at every pause point of every allocator in the process
/// (tests only: feature `pause-points`); `None` removes it.
#[cfg(feature = "pause-points")]
pub fn set_pause_hook(hook: Option<PauseHook>) {
    let pointer = hook.map_or(core::ptr::null_mut(), |hook| hook as *mut ());
    PAUSE_HOOK.store(pointer, core::sync::atomic::Ordering::Release);
}

/// A point where a test may pause this thread; nothing in production builds.
#[inline(always)]
pub(crate) fn pause(point: PausePoint) {
    #[cfg(feature = "pause-points")]
    {
        let hook = PAUSE_HOOK.load(core::sync::atomic::Ordering::Acquire);
        if !hook.is_null() {
            // SAFETY: only `set_pause_hook` stores non-null values, each a `PauseHook` cast
            // to a data pointer; casting back gives the same function pointer.
            let hook: PauseHook = unsafe { core::mem::transmute::<*mut (), PauseHook>(hook) };
            hook(point);
        }
    }
    platform::sync::schedule();
    let _ = point;
}

/// A spin lock: the central heap's lock (see the module documentation).
pub(crate) struct SpinLock<T> {
    locked: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: the value is only reached through a guard, and a guard exists only while `locked`
// is held; acquiring uses acquire ordering and releasing release ordering, so each holder
// sees the previous holder's writes.
unsafe impl<T: Send> Sync for SpinLock<T> {}
// SAFETY: as for Sync: the lock owns its value.
unsafe impl<T: Send> Send for SpinLock<T> {}

impl<T> SpinLock<T> {
    pub(crate) const fn new(value: T) -> Self {
        Self { locked: AtomicBool::new(false), value: UnsafeCell::new(value) }
    }

    /// Takes the lock, spinning until it is free.
    #[inline]
    pub(crate) fn lock(&self) -> SpinGuard<'_, T> {
        while self.locked.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
            while self.locked.load(Ordering::Relaxed) {
                platform::sync::spin_loop();
            }
        }
        SpinGuard { lock: self }
    }

    /// Releases the lock without a guard (after `core::mem::forget` of one, across `fork`).
    ///
    /// # Safety
    ///
    /// The caller is the holder of the lock, whose guard was forgotten.
    pub(crate) unsafe fn force_unlock(&self) {
        self.locked.store(false, Ordering::Release);
    }
}

/// Access to a [`SpinLock`]'s value; releases the lock when dropped.
#[must_use]
pub(crate) struct SpinGuard<'a, T> {
    lock: &'a SpinLock<T>,
}

impl<T> Deref for SpinGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard holds the lock: nobody else reaches the value.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for SpinGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard holds the lock: nobody else reaches the value.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for SpinGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.locked.store(false, Ordering::Release);
    }
}
