//! The atomics the concurrent protocols of this workspace are built from (the host slot
//! table here, the allocator core's slabs, arenas, chunk map and central lock), in one place
//! so that the same protocol code runs in production and under the model checker.
//!
//! In production these are the `core` atomics. With the `shuttle` feature they are the same
//! atomics (same size and layout, so structures keep their geometry) with a scheduling point
//! of the [shuttle](https://docs.rs/shuttle) model checker before every operation, and
//! [`spin_loop`] yields to shuttle's scheduler so that a waiting thread lets the one it waits
//! for run. Shuttle runs one thread at a time, so every operation is sequentially consistent
//! there: the checker explores interleavings, not weak orderings (Miri and ThreadSanitizer
//! look at those). With the feature, code using these atomics works only inside shuttle
//! executions.

pub use core::sync::atomic::Ordering;

#[cfg(not(feature = "shuttle"))]
pub use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU8, AtomicU16, AtomicU64, AtomicUsize};

#[cfg(feature = "shuttle")]
pub use model::{AtomicBool, AtomicPtr, AtomicU8, AtomicU16, AtomicU64, AtomicUsize};

/// One turn of a spin loop (under shuttle: a yield to its scheduler).
#[inline(always)]
pub fn spin_loop() {
    #[cfg(feature = "shuttle")]
    shuttle::hint::spin_loop();
    #[cfg(not(feature = "shuttle"))]
    core::hint::spin_loop();
}

/// A scheduling point of the model checker (nothing without the `shuttle` feature): shuttle
/// may run another thread here. For named pause points in protocol code.
#[inline(always)]
pub fn schedule() {
    // `sleep` is a plain context switch in shuttle (time is not modelled); `yield_now` would
    // also lower the thread's priority, which is for spin loops only.
    #[cfg(feature = "shuttle")]
    shuttle::thread::sleep(core::time::Duration::ZERO);
}

/// The `core` atomics with a shuttle scheduling point before every operation.
#[cfg(feature = "shuttle")]
mod model {
    use super::{Ordering, schedule};

    macro_rules! scheduled_atomic {
        ($name:ident, $inner:ty, $value:ty $(, $generic:ident)?) => {
            #[doc = concat!("`", stringify!($inner), "` with a scheduling point before each operation.")]
            #[repr(transparent)]
            pub struct $name$(<$generic>)?($inner);

            // The `core` interface, documented there; each operation first lets the model
            // checker switch threads.
            #[allow(missing_docs)]
            impl$(<$generic>)? $name$(<$generic>)? {
                pub const fn new(value: $value) -> Self {
                    Self(<$inner>::new(value))
                }
                pub fn load(&self, order: Ordering) -> $value {
                    schedule();
                    self.0.load(order)
                }
                pub fn store(&self, value: $value, order: Ordering) {
                    schedule();
                    self.0.store(value, order)
                }
                pub fn swap(&self, value: $value, order: Ordering) -> $value {
                    schedule();
                    self.0.swap(value, order)
                }
                pub fn compare_exchange(
                    &self,
                    current: $value,
                    new: $value,
                    success: Ordering,
                    failure: Ordering,
                ) -> Result<$value, $value> {
                    schedule();
                    self.0.compare_exchange(current, new, success, failure)
                }
                pub fn compare_exchange_weak(
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
    scheduled_atomic!(AtomicU8, core::sync::atomic::AtomicU8, u8);
    scheduled_atomic!(AtomicU16, core::sync::atomic::AtomicU16, u16);
    scheduled_atomic!(AtomicUsize, core::sync::atomic::AtomicUsize, usize);
    scheduled_atomic!(AtomicU64, core::sync::atomic::AtomicU64, u64);
    scheduled_atomic!(AtomicPtr, core::sync::atomic::AtomicPtr<T>, *mut T, T);

    #[allow(missing_docs)] // as above
    impl AtomicU64 {
        pub fn fetch_add(&self, value: u64, order: Ordering) -> u64 {
            schedule();
            self.0.fetch_add(value, order)
        }
        pub fn fetch_or(&self, value: u64, order: Ordering) -> u64 {
            schedule();
            self.0.fetch_or(value, order)
        }
        pub fn fetch_and(&self, value: u64, order: Ordering) -> u64 {
            schedule();
            self.0.fetch_and(value, order)
        }
    }
}
