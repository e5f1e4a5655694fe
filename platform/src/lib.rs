//! What the allocator core needs to know about the machine it runs on: which slot (CPU or
//! thread) it may use without locks, and how wide a cache line is.
//!
//! The core keeps one arena per *slot*. A [`Platform`] hands out slot indices with a promise
//! of exclusive use: while a closure passed to [`Platform::with_slot`] runs, no other code
//! runs with the same index. How that promise is kept is the platform's business:
//!
//! - a kernel masks interrupts and uses the CPU index (no lock, no atomic read-modify-write);
//! - the Linux host implementation ([`host::HostPlatform`], feature `host`) gives every
//!   thread a slot of its own for its lifetime, and lets surplus threads share a few slots
//!   behind locks;
//! - [`Uniprocessor`] is for firmware with one CPU and no allocation from interrupts.
//!
//! Architecture code lives only in this crate, under `arch/` (kernels) and `host` (user space).
#![no_std]

#[cfg(feature = "host")]
extern crate std;

pub mod arch;
pub mod sync;

#[cfg(feature = "host")]
pub mod host;

/// The largest number of slots any platform may report. The core sizes its table of arena
/// pointers with it (8 bytes a slot), so kernels with up to this many CPUs need no
/// configuration.
pub const MAX_SLOTS: usize = 256;

/// Exclusive slots for the allocator core's per-CPU (or per-thread) arenas.
///
/// # Safety
///
/// The core accesses its arena for a slot with plain loads and stores, trusting that:
///
/// - every index passed to a closure is below [`slot_count`](Platform::slot_count), which
///   never changes and is at most [`MAX_SLOTS`];
/// - while a closure given an index runs, no other closure given the same index runs, on
///   any CPU or thread, nor in an interrupt handler on the same CPU (a kernel masks
///   interrupts for the closure's duration);
/// - the end of one closure for an index happens-before the start of the next closure for
///   that index (on another CPU this needs release/acquire ordering, which interrupt masking
///   on one CPU gets for free); a [`with_slot_exit`](Platform::with_slot_exit) closure's
///   hold on its index ends when its [`SlotExit`] drops, if `f` has not returned by then
///   (the core uses the slot only before the exit drops);
/// - `exit_slot` gives up what `with_slot_exit` took, for the values that made the exit; a
///   platform overrides both or neither (the default exit does nothing, and the default
///   `with_slot_exit` holds the slot through `with_slot`);
/// - between [`enter_critical`](Platform::enter_critical) and the matching
///   [`leave_critical`](Platform::leave_critical), nothing else runs on the calling CPU that
///   calls into the allocator (no interrupt handler, no other thread): the core takes its
///   locks and calls its provider only there, so nobody waits on a lock its own CPU holds.
///   With the defaults (which do nothing) that must hold anyway: hosts, where a thread that
///   is interrupted does not share its CPU's locks with the handler (signal handlers must
///   not allocate), and kernels whose `with_slot` masks interrupts.
pub unsafe trait Platform: Sync {
    /// The number of slots; every index handed out is below it. Constant.
    fn slot_count(&self) -> usize;

    /// Runs `f` with exclusive use of the current CPU's (or thread's) slot.
    ///
    /// The core never calls this from inside another `with_slot` closure of the same
    /// platform, so an implementation may use a non-reentrant lock.
    fn with_slot<R>(&self, f: impl FnOnce(usize) -> R) -> R;

    /// Runs `f` with exclusive use of the current slot, as [`with_slot`](Platform::with_slot),
    /// and hands it the slot's [`SlotExit`]: the slot is `f`'s until the exit drops or `f`
    /// returns, whichever comes later. So `f` can pass the exit on to a function that
    /// finishes the work and gives the slot up itself, and keep nothing to do after that
    /// call (a tail call: the fast path then saves no register for after it).
    ///
    /// The default holds the slot for all of `f` through `with_slot` (its exit does nothing);
    /// a platform that gives a slot up with a step of its own overrides this together with
    /// [`exit_slot`](Platform::exit_slot).
    #[inline(always)]
    fn with_slot_exit<R>(&self, f: impl for<'a> FnOnce(usize, SlotExit<'a, Self>) -> R) -> R
    where
        Self: Sized,
    {
        // SAFETY: `exit_slot` is the default, which does nothing: `with_slot` holds the slot
        // until `f` returns.
        self.with_slot(|slot| f(slot, unsafe { SlotExit::new(0, 0) }))
    }

    /// Gives up the slot of a [`with_slot_exit`](Platform::with_slot_exit) closure: called
    /// once, when its exit drops. The default does nothing.
    ///
    /// # Safety
    ///
    /// `word` and `value` are those the platform's `with_slot_exit` made the exit with, on
    /// this CPU, and the exit's closure holds the slot until this call.
    #[inline(always)]
    unsafe fn exit_slot(word: usize, value: usize)
    where
        Self: Sized,
    {
        let _ = (word, value);
    }

    /// Runs `f` with exclusive use of slot `slot` if nobody holds it now, as when the thread
    /// that owned it has exited; returns `None` otherwise. The core uses it to collect memory
    /// cached in idle slots. Platforms whose slots are always held (CPUs) keep the default.
    fn try_with_idle_slot<R>(&self, slot: usize, f: impl FnOnce() -> R) -> Option<R> {
        let _ = (slot, f);
        None
    }

    /// Bytes between addresses that can be written by different CPUs without false sharing.
    fn cache_line_size(&self) -> usize {
        128
    }

    /// A monotonic clock in nanoseconds, if the platform has one: the core then gives memory
    /// that stayed unused for its decay period back to the provider (see core-alloc's
    /// `Allocator::with_decay`), and otherwise keeps a count-based amount. Any origin; it
    /// must never go backwards on one CPU, and should agree across CPUs to within a small
    /// fraction of the decay period. Called on slow paths only. The default has no clock.
    fn now_ns(&self) -> Option<u64> {
        None
    }

    /// Enters a section where the core holds a lock or calls the provider; returns a token
    /// for [`leave_critical`](Platform::leave_critical). A kernel whose `with_slot` leaves
    /// interrupts enabled (so that an interrupt handler may allocate in the middle of an
    /// allocation, on a slot of its own) masks them here. Sections nest: each token
    /// restores the state its `enter_critical` found. The default does nothing.
    #[inline(always)]
    fn enter_critical(&self) -> usize {
        0
    }

    /// Leaves the section `token` came from.
    ///
    /// # Safety
    ///
    /// `token` was returned by `enter_critical` on this CPU, and sections entered after it
    /// were left already.
    #[inline(always)]
    unsafe fn leave_critical(&self, token: usize) {
        let _ = token;
    }
}

// SAFETY: forwards every call to the referenced platform, which keeps the promises; two
// allocators sharing one platform each get its exclusive slots in turn (neither calls the
// other inside a closure).
unsafe impl<P: Platform> Platform for &P {
    fn slot_count(&self) -> usize {
        (**self).slot_count()
    }

    #[inline(always)]
    fn with_slot<R>(&self, f: impl FnOnce(usize) -> R) -> R {
        (**self).with_slot(f)
    }

    #[inline(always)]
    fn with_slot_exit<R>(&self, f: impl for<'a> FnOnce(usize, SlotExit<'a, Self>) -> R) -> R
    where
        P: Sized,
    {
        (**self).with_slot_exit(|slot, exit| f(slot, exit.by_reference()))
    }

    #[inline(always)]
    unsafe fn exit_slot(word: usize, value: usize)
    where
        P: Sized,
    {
        // SAFETY: the caller's promise, made for the referenced platform's exit.
        unsafe { P::exit_slot(word, value) }
    }

    fn try_with_idle_slot<R>(&self, slot: usize, f: impl FnOnce() -> R) -> Option<R> {
        (**self).try_with_idle_slot(slot, f)
    }

    fn cache_line_size(&self) -> usize {
        (**self).cache_line_size()
    }

    fn now_ns(&self) -> Option<u64> {
        (**self).now_ns()
    }

    #[inline(always)]
    fn enter_critical(&self) -> usize {
        (**self).enter_critical()
    }

    #[inline(always)]
    unsafe fn leave_critical(&self, token: usize) {
        // SAFETY: the caller's promise, which is the referenced platform's precondition.
        unsafe { (**self).leave_critical(token) }
    }
}

/// A [`Platform::with_slot_exit`] closure's hold on its slot: dropping it gives the slot up
/// ([`Platform::exit_slot`]). The closure may pass it on (to a function that finishes the
/// work), but not out of the closure: its lifetime is the closure's call.
#[must_use = "dropping the exit gives the slot up"]
pub struct SlotExit<'a, P: Platform> {
    /// What the platform needs to give the slot up: where its state is, and what to put back.
    word: usize,
    value: usize,
    /// The closure's call, which the exit must not outlive.
    _closure: core::marker::PhantomData<&'a ()>,
    _platform: core::marker::PhantomData<fn() -> P>,
}

impl<'a, P: Platform> SlotExit<'a, P> {
    /// An exit that calls `P::exit_slot(word, value)` when it drops.
    ///
    /// # Safety
    ///
    /// Made only by `P`'s `with_slot_exit` for its closure, with values for which
    /// `P::exit_slot` gives that closure's slot up.
    #[inline(always)]
    pub unsafe fn new(word: usize, value: usize) -> Self {
        Self { word, value, _closure: core::marker::PhantomData, _platform: core::marker::PhantomData }
    }

    /// Gives the slot up now: what dropping the exit does, always inline (a drop in cold
    /// code may become a call, which costs the caller a stack frame).
    #[inline(always)]
    pub fn leave(self) {
        let (word, value) = (self.word, self.value);
        core::mem::forget(self);
        // SAFETY: as for the drop, which the `forget` replaces.
        unsafe { P::exit_slot(word, value) }
    }

    /// The same exit for `&P`, whose `exit_slot` is `P`'s.
    #[inline(always)]
    fn by_reference<'r>(self) -> SlotExit<'a, &'r P> {
        let (word, value) = (self.word, self.value);
        core::mem::forget(self);
        SlotExit { word, value, _closure: core::marker::PhantomData, _platform: core::marker::PhantomData }
    }
}

impl<P: Platform> Drop for SlotExit<'_, P> {
    #[inline(always)]
    fn drop(&mut self) {
        // SAFETY: `new`'s caller made the exit for this call of `exit_slot`, which runs once
        // (the exit drops once; `by_reference` and `leave` forget it).
        unsafe { P::exit_slot(self.word, self.value) }
    }
}

/// A platform with a single slot, for firmware with one CPU that never allocates from an
/// interrupt handler (or masks interrupts around every allocation itself).
#[derive(Debug)]
pub struct Uniprocessor {
    _private: (),
}

impl Uniprocessor {
    /// Creates the platform.
    ///
    /// # Safety
    ///
    /// The allocator using it must never be entered twice at once: one CPU, and no
    /// allocation or free from an interrupt or signal handler that could interrupt one.
    pub const unsafe fn new() -> Self {
        Self { _private: () }
    }
}

// SAFETY: `Uniprocessor::new`'s caller promised that allocator calls never overlap, so the
// single slot 0 is always used by one closure at a time, in program order.
unsafe impl Platform for Uniprocessor {
    fn slot_count(&self) -> usize {
        1
    }

    #[inline(always)]
    fn with_slot<R>(&self, f: impl FnOnce(usize) -> R) -> R {
        f(0)
    }
}

/// Installs and removes 2 MiB mappings in the running kernel's page tables: the arch paging
/// the bare-metal chunk provider needs. Implemented by each architecture module.
///
/// # Safety
///
/// The bare-metal provider hands out memory through these mappings, trusting that:
///
/// - after `map_2m(virt, phys)` returns true, the 2 MiB at `virt` translate, on every CPU,
///   to the 2 MiB at `phys` as normal write-back cacheable, readable and writable memory
///   (x86-64: a page-directory entry with PS; AArch64: a level-2 block descriptor with the
///   4 KiB granule, or 128 / 32 level-3 pages with the contiguous bit with 16 / 64 KiB,
///   normal memory, inner shareable);
/// - after `unmap_2m(virt)` returns, the mapping is gone and no CPU's TLB can translate
///   `virt` to anything but the frame it was mapped to before;
/// - neither allocates memory from the allocator the provider serves.
pub unsafe trait HugeMapper: Sync {
    /// Maps the 2 MiB frame at physical address `phys` at virtual address `virt`. Returns
    /// false, mapping nothing, if `virt` lies outside the window the mapper can map.
    ///
    /// # Safety
    ///
    /// Both addresses are 2 MiB aligned, `phys` is RAM that nothing else uses, and `virt`
    /// is not mapped.
    unsafe fn map_2m(&self, virt: usize, phys: u64) -> bool;

    /// Removes the mapping at `virt` and invalidates its TLB entries.
    ///
    /// # Safety
    ///
    /// `virt` was mapped by `map_2m` and nothing uses the memory any more.
    unsafe fn unmap_2m(&self, virt: usize);
}
