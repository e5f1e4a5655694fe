//! The atomics and spin-loop hints the slot and fork-hook protocols (`OWNERS`, `SHARED`,
//! `FORK_HOOKS`, `EXIT_HOOKS`) are built from, in one place so that the same protocol code
//! runs in production and under the model checker (`platform/tests/model_check.rs`).
//!
//! The atomics and `spin_loop` are the crate's (`crate::sync`: the `core` ones, or with the
//! `shuttle` feature the same with a scheduling point before each operation); `yield_cpu` is
//! `sched_yield` in production and a yield to shuttle's scheduler under the model checker.
//! With the feature the slot and hook tables work only inside shuttle executions.

pub(crate) use crate::sync::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering, spin_loop};

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
