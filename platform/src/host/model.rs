//! The slot protocol over a small table of a test's own, for the shuttle model checker
//! (`platform/tests/model_check.rs`; feature `shuttle`).
//!
//! [`Table`] runs the protocol code the process's table runs (`Slots`: claim, release,
//! lending, take-over of an exited owner's slot, shared-slot locks; `ForkTable`: fork-hook
//! registration and the prepare and after handlers of a fork), with the atomics of
//! the `shuttle` build (a scheduling point before every operation). What production asks
//! the kernel (the process id, whether a thread is gone) the test answers, and the thread
//! ids and start of the scan are the test's: nothing here calls pthreads or reads
//! thread-locals.

use std::boxed::Box;
use std::vec::Vec;

use super::sync::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize};
use super::{ForkHooks, ForkTable, SharedLock, Slots, Threads};

/// An entry nobody holds.
pub const FREE: u64 = super::FREE;
/// An entry held by a lender or by a check of its owner.
pub const LENT: u64 = super::LENT;

/// The owner word of thread `thread` of process `process`, as a thread's claim writes it.
pub fn owner_word(process: i32, thread: i32) -> u64 {
    super::owner_word_of(process, thread)
}

/// A slot table: `exclusive` owner entries and `shared` shared-slot locks, all free, used
/// by threads of process `process`. Slot indices are as in production: exclusive slots
/// first, then shared ones.
pub struct Table {
    owners: Box<[AtomicU64]>,
    shared: Box<[SharedLock]>,
    process: i32,
    fork_hooks: Box<[AtomicPtr<ForkHooks>]>,
    prepared: AtomicUsize,
}

/// The test's answers to what production asks the kernel.
struct Answers<'a> {
    process: i32,
    gone: &'a dyn Fn(u64) -> bool,
}

impl Threads for Answers<'_> {
    fn this_process(&self) -> libc::pid_t {
        self.process
    }

    fn thread_gone(&self, process: libc::pid_t, thread: libc::pid_t) -> bool {
        (self.gone)(super::owner_word_of(process, thread))
    }
}

impl Table {
    /// A table with every slot free and room for `fork_hooks` allocators' fork hooks.
    pub fn new(exclusive: usize, shared: usize, process: i32, fork_hooks: usize) -> Self {
        Self {
            fork_hooks: (0..fork_hooks)
                .map(|_| AtomicPtr::new(core::ptr::null_mut()))
                .collect::<Vec<_>>()
                .into_boxed_slice(),
            prepared: AtomicUsize::new(0),
            owners: (0..exclusive).map(|_| AtomicU64::new(FREE)).collect::<Vec<_>>().into_boxed_slice(),
            shared: (0..shared)
                .map(|_| SharedLock(AtomicBool::new(false)))
                .collect::<Vec<_>>()
                .into_boxed_slice(),
            process,
        }
    }

    fn slots(&self) -> Slots<'_> {
        Slots { owners: &self.owners, shared: &self.shared }
    }

    fn forks(&self) -> ForkTable<'_> {
        ForkTable { hooks: &self.fork_hooks, prepared: &self.prepared }
    }

    fn answers<'a>(&self, gone: &'a dyn Fn(u64) -> bool) -> Answers<'a> {
        Answers { process: self.process, gone }
    }

    /// The number of exclusive slots.
    pub fn exclusive_slots(&self) -> usize {
        self.owners.len()
    }

    /// The number of slots, exclusive and shared.
    pub fn slot_count(&self) -> usize {
        self.owners.len() + self.shared.len()
    }

    /// The table part of a thread's claim (production's `claim_slot` without the pthread
    /// key): the thread's owner word is `word`, its scan starts at `start`, and `gone`
    /// answers whether the thread an owner word names has exited.
    pub fn claim(&self, word: u64, start: usize, gone: &dyn Fn(u64) -> bool) -> Option<usize> {
        self.slots().claim(word, start, &self.answers(gone))
    }

    /// A thread's release of its exclusive slot at exit.
    pub fn release_own_slot(&self, slot: usize) {
        self.slots().release_own_slot(slot);
    }

    /// `Platform::try_with_idle_slot`: runs `f` with `slot` if it is idle.
    pub fn try_with_idle_slot<R>(
        &self,
        slot: usize,
        gone: &dyn Fn(u64) -> bool,
        f: impl FnOnce() -> R,
    ) -> Option<R> {
        self.slots().try_with_idle_slot(slot, &self.answers(gone), f)
    }

    /// Runs `f` with shared slot `index` (slot number `exclusive_slots() + index`) under
    /// its lock, as a thread without an exclusive slot does in `with_slot`.
    pub fn with_shared_slot<R>(&self, index: usize, f: impl FnOnce(usize) -> R) -> R {
        let slots = self.slots();
        slots.lock_shared(index);
        let result = f(self.owners.len() + index);
        slots.unlock_shared(index);
        result
    }

    /// Exclusive slot `slot`'s entry: [`FREE`], [`LENT`] or an owner word.
    pub fn entry(&self, slot: usize) -> u64 {
        self.owners[slot].load(super::Ordering::Acquire)
    }

    /// Whether shared slot `index` is locked.
    pub fn shared_locked(&self, index: usize) -> bool {
        self.shared[index].0.load(super::Ordering::Acquire)
    }

    /// An allocator's first slot claim registering its fork hooks
    /// (`HostPlatform::with_fork_hooks`).
    pub fn register_fork_hooks(&self, hooks: &'static ForkHooks) {
        self.forks().register(hooks);
    }

    /// A fork of the process by this thread: the prepare handler, then `at_fork` (the moment
    /// of the fork) with the number of registered hooks the handler prepared, then the
    /// parent's after handler (the child's is the same code in a copy of this thread).
    pub fn fork(&self, at_fork: impl FnOnce(usize)) {
        let slots = self.slots();
        let forks = self.forks();
        forks.prepare(&slots);
        at_fork(self.prepared.load(super::Ordering::Relaxed));
        // SAFETY: once, after `prepare` over the same table, in the thread that ran it.
        unsafe { forks.after(&slots) };
    }

    /// The registered fork hooks, in table order.
    pub fn fork_hooks(&self) -> Vec<*const ForkHooks> {
        self.fork_hooks
            .iter()
            .map(|entry| entry.load(super::Ordering::Acquire).cast_const())
            .take_while(|hooks| !hooks.is_null())
            .collect()
    }
}
