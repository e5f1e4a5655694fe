//! The atomics and spin-loop hints the slot protocol (`OWNERS` and `SHARED`) is built from,
//! in one place so that the same protocol code runs in production and under the model
//! checker (`platform/tests/model_check.rs`).
//!
//! In production these are the `core` atomics and `core::hint::spin_loop` / `sched_yield`.
//! With the `shuttle` feature the atomics are the same atomics (same size and layout) with a
//! scheduling point of the [shuttle](https://docs.rs/shuttle) model checker before every
//! operation, and a spin loop yields to shuttle's scheduler, so that a waiting thread lets
//! the one it waits for run. Shuttle runs one thread at a time, so every operation is
//! sequentially consistent there: the checker explores interleavings, not weak orderings.
//! With the feature the slot table works only inside shuttle executions.

pub(crate) use core::sync::atomic::Ordering;

#[cfg(not(feature = "shuttle"))]
pub(crate) use core::sync::atomic::{AtomicBool, AtomicU64};

#[cfg(feature = "shuttle")]
pub(crate) use model::{AtomicBool, AtomicU64};

/// One turn of a spin loop that expects the value it waits for soon.
#[inline(always)]
pub(crate) fn spin_loop() {
    #[cfg(feature = "shuttle")]
    shuttle::hint::spin_loop();
    #[cfg(not(feature = "shuttle"))]
    core::hint::spin_loop();
}

/// One turn of a spin loop that spinning has not helped for a while: gives up the CPU.
#[inline]
pub(crate) fn yield_cpu() {
    #[cfg(feature = "shuttle")]
    shuttle::hint::spin_loop();
    #[cfg(not(feature = "shuttle"))]
    // SAFETY: sched_yield has no preconditions.
    unsafe {
        libc::sched_yield();
    }
}

/// The `core` atomics with a shuttle scheduling point before every operation.
#[cfg(feature = "shuttle")]
mod model {
    use super::Ordering;

    /// A scheduling point: shuttle may run another thread here. (`sleep` is a plain
    /// context switch in shuttle; `yield_now` would also lower the thread's priority, which
    /// is for spin loops only.)
    #[inline(always)]
    fn schedule() {
        shuttle::thread::sleep(core::time::Duration::ZERO);
    }

    macro_rules! scheduled_atomic {
        ($name:ident, $inner:ty, $value:ty) => {
            #[doc = concat!("`", stringify!($inner), "` with a scheduling point before each operation.")]
            #[repr(transparent)]
            pub(crate) struct $name($inner);

            // The same interface for every type, whether the protocol uses all of it or not.
            #[allow(dead_code)]
            impl $name {
                pub(crate) const fn new(value: $value) -> Self {
                    Self(<$inner>::new(value))
                }
                pub(crate) fn load(&self, order: Ordering) -> $value {
                    schedule();
                    self.0.load(order)
                }
                pub(crate) fn store(&self, value: $value, order: Ordering) {
                    schedule();
                    self.0.store(value, order)
                }
                pub(crate) fn compare_exchange(
                    &self,
                    current: $value,
                    new: $value,
                    success: Ordering,
                    failure: Ordering,
                ) -> Result<$value, $value> {
                    schedule();
                    self.0.compare_exchange(current, new, success, failure)
                }
                pub(crate) fn compare_exchange_weak(
                    &self,
                    current: $value,
                    new: $value,
                    success: Ordering,
                    failure: Ordering,
                ) -> Result<$value, $value> {
                    // The strong form: shuttle explores the interleavings, and a spurious
                    // failure adds nothing but schedules.
                    self.compare_exchange(current, new, success, failure)
                }
            }
        };
    }

    scheduled_atomic!(AtomicBool, core::sync::atomic::AtomicBool, bool);
    scheduled_atomic!(AtomicU64, core::sync::atomic::AtomicU64, u64);
}
