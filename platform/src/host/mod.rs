//! Per-thread slots for user space on Linux.
//!
//! A thread claims a slot of its own the first time it allocates and keeps it until it
//! exits, so its fast path is one thread-local load and no atomic operation (the way
//! mimalloc and snmalloc give each thread a private heap). At exit a pthread key destructor
//! runs the registered exit hooks (the allocator returns what the slot caches) and frees the
//! slot for the next thread. When all exclusive slots are taken, and for code that runs
//! after the thread's own exit hook, threads share a few slots behind spin locks.
//!
//! Slots are process-wide: a thread holds the same index in every allocator instance over a
//! `HostPlatform`, so exclusivity holds whichever instance is used.
//!
//! Nothing here allocates on its own: the slot table is static and the thread-local has a
//! constant initialiser and no destructor. `pthread_setspecific` may allocate (glibc does
//! for keys from 32 on); a thread marks itself as sharing before calling it, so an
//! allocation it makes lands in a shared slot instead of claiming a second exclusive one.
//!
//! A thread that claims its slot during the last round of pthread key destructors (its first
//! allocation is in another key's destructor, in round `PTHREAD_DESTRUCTOR_ITERATIONS`)
//! never gets our destructor called: pthreads drops values set in the last round, and no
//! portable interface tells a thread that it is in that round. Such a slot is taken back
//! once its owner is gone: each owned entry names its thread (process and thread id), and
//! a thread that finds no free slot, or [`Platform::try_with_idle_slot`], takes over a slot
//! whose thread the kernel no longer knows (`tgkill(pid, tid, 0)` fails with `ESRCH`).
//!
//! Concurrency: an `OWNERS` entry is `FREE`, `LENT`, or an owner word (process id and
//! thread id of the owning thread). It moves FREE -> owner (a thread claims it) -> FREE (the
//! thread exits), FREE -> LENT -> FREE ([`Platform::try_with_idle_slot`]), and owner -> LENT
//! -> owner or -> LENT -> FREE / new owner (a check of whether the owner has exited, which
//! takes the entry first so that the check and the take-over cannot be separated by a
//! release and a new claim). Each move out of FREE or an owner word is a compare-exchange
//! with acquire ordering and each return to FREE a release operation, which orders one
//! holder's accesses to the slot's arena before the next holder's; a slot taken from an
//! exited owner is ordered after that owner's last accesses by the kernel (see
//! `Slots::take_from_exited_owner`). An owner releases its slot with a compare-exchange,
//! waiting while a check holds the entry, so a check never restores an owner word over a
//! release.
//!
//! Entries owned by another process's threads (a child of `fork` inherits the table) carry
//! that process's id and are never taken over: in the child, the slots of threads that did
//! not survive the fork stay owned and are never used, so arenas they left mid-operation
//! are never touched. (A descendant process given, by pid recycling, the id of an ancestor
//! that forked and has since exited would see the ancestor's entries as its own and could
//! take over the slot of a thread the fork left behind; this needs the kernel to hand an
//! ancestor's pid to its own descendant.)
//!
//! The protocol's code (`Slots`) works on a table it is given, and asks the kernel about
//! processes and threads through `Threads`: in production the process's table and the
//! kernel; under the model checker (feature `shuttle`, `model`) a test's small table and
//! the test's answers, with every atomic operation a scheduling point (see `sync`).

use core::ffi::c_void;
use core::sync::atomic;

use self::sync::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use crate::{MAX_SLOTS, Platform};

mod sync;

/// Slots that threads share behind spin locks once the exclusive ones run out.
const SHARED_SLOTS: usize = 32;
/// Slots a thread can own for its lifetime.
const EXCLUSIVE_SLOTS: usize = MAX_SLOTS - SHARED_SLOTS;

/// An `OWNERS` entry nobody holds.
const FREE: u64 = 0;
/// An `OWNERS` entry held by [`Platform::try_with_idle_slot`] or by a check of its owner.
const LENT: u64 = 1;
/// The owner word of a thread whose ids could not be read: never taken over.
const UNKNOWN_OWNER: u64 = 2;

/// The thread has not claimed a slot yet.
const UNCLAIMED: usize = usize::MAX;
/// The thread's exit hook has run: it uses shared slots from now on.
const EXITED: usize = usize::MAX - 1;
/// No exclusive slot was free when the thread first asked (or it is claiming one now): it
/// uses shared slots.
const SHARING: usize = usize::MAX - 2;

/// Who holds each exclusive slot: `FREE`, `LENT` or an owner word ([`owner_word`]).
static OWNERS: [AtomicU64; EXCLUSIVE_SLOTS] = [const { AtomicU64::new(FREE) }; EXCLUSIVE_SLOTS];

/// One spin lock per shared slot, each on its own cache line.
#[repr(align(128))]
struct SharedLock(AtomicBool);
static SHARED: [SharedLock; SHARED_SLOTS] = [const { SharedLock(AtomicBool::new(false)) }; SHARED_SLOTS];

/// Functions run with the exiting thread's slot before the slot is freed: null, or a
/// `fn(usize)` stored as a pointer (so that it keeps its provenance).
const MAX_EXIT_HOOKS: usize = 8;
static EXIT_HOOKS: [AtomicPtr<()>; MAX_EXIT_HOOKS] =
    [const { AtomicPtr::new(core::ptr::null_mut()) }; MAX_EXIT_HOOKS];

/// The pthread key whose destructor frees the slot.
static EXIT_KEY: LazyKey = LazyKey::new(on_thread_exit);

/// This thread's exclusive slot, or `UNCLAIMED` / `EXITED` / `SHARING` (the word `tls`
/// keeps, which starts as `usize::MAX`).
mod tls;
const _: () = assert!(UNCLAIMED == usize::MAX);

/// What an allocator over a [`HostPlatform`] does around `fork` (see
/// [`HostPlatform::with_fork_hooks`]).
#[derive(Debug)]
pub struct ForkHooks {
    /// Runs in the forking thread before the fork, after the platform has taken its
    /// shared-slot locks: takes the allocator's own locks (`Allocator::lock_for_fork`).
    pub prepare: fn(),
    /// Runs in the parent and in the child after the fork, before the platform releases
    /// its shared-slot locks: releases what `prepare` took.
    ///
    /// # Safety
    ///
    /// Called once after `prepare`, by the thread that called it (or its copy in the child).
    pub after: unsafe fn(),
}

/// Fork hooks of the allocators over this platform that asked for them: null or a
/// `&'static ForkHooks`, filled in order and never cleared.
const MAX_FORK_HOOKS: usize = 8;
static FORK_HOOKS: [AtomicPtr<ForkHooks>; MAX_FORK_HOOKS] =
    [const { AtomicPtr::new(core::ptr::null_mut()) }; MAX_FORK_HOOKS];

/// How many entries of `FORK_HOOKS` the last prepare handler ran (see [`ForkTable`]).
static PREPARED: AtomicUsize = AtomicUsize::new(0);

/// The process's fork-hook table.
static FORK: ForkTable<'static> = ForkTable { hooks: &FORK_HOOKS, prepared: &PREPARED };

/// Whether the process's `pthread_atfork` handlers are registered: [`register_fork_handlers`].
const ATFORK_NONE: u8 = 0;
const ATFORK_REGISTERING: u8 = 1;
const ATFORK_DONE: u8 = 2;
static ATFORK: atomic::AtomicU8 = atomic::AtomicU8::new(ATFORK_NONE);

/// Per-thread slots for a user-space process; see the module documentation.
#[derive(Debug)]
pub struct HostPlatform {
    exit_hook: Option<fn(usize)>,
    fork_hooks: Option<&'static ForkHooks>,
    hook_registered: atomic::AtomicBool,
}

impl HostPlatform {
    /// A platform whose slots hold what they cache when their thread exits, until another
    /// thread takes the slot over or the allocator collects idle slots.
    pub const fn new() -> Self {
        Self { exit_hook: None, fork_hooks: None, hook_registered: atomic::AtomicBool::new(false) }
    }

    /// This platform, with `hooks` run around every `fork` of the process once a thread has
    /// claimed a slot through it (the first allocation of the process, for a global
    /// allocator): the forking thread takes the platform's shared-slot locks, then runs every
    /// registered `prepare`; after the fork, parent and child run every `after` in reverse
    /// order, then release the shared-slot locks. A child then finds no lock of the
    /// allocator held by a thread it does not have. Use it for allocators that live for the
    /// whole process (at most eight such allocators are served; a ninth is not protected).
    ///
    /// The hooks are registered with `pthread_atfork` the first time a thread claims a slot
    /// through this platform: that claim happens before the thread takes any lock of the
    /// allocator, and every thread that could hold one claimed a slot first.
    pub const fn with_fork_hooks(self, hooks: &'static ForkHooks) -> Self {
        Self { fork_hooks: Some(hooks), ..self }
    }

    /// A platform that calls `hook(slot)` when a thread that owned `slot` exits, while the
    /// thread still has exclusive use of the slot. The allocator's `release_slot` is the
    /// intended hook; it must not call back into this platform's `with_slot`.
    ///
    /// The hook is registered process-wide the first time a thread claims a slot through
    /// this platform, and from then on runs at every thread's exit (with that thread's slot):
    /// use it for allocators that live for the whole process. A thread whose slot is taken
    /// over after it exited without running its destructor (see the module documentation)
    /// does not run it; its slot's caches pass to the next holder.
    pub const fn with_exit_hook(hook: fn(usize)) -> Self {
        Self { exit_hook: Some(hook), fork_hooks: None, hook_registered: atomic::AtomicBool::new(false) }
    }

    #[cold]
    fn register_hooks(&self) {
        if self.exit_hook.is_none() && self.fork_hooks.is_none()
            || self.hook_registered.load(Ordering::Acquire)
        {
            return;
        }
        // The flag is set only once the hooks are in their tables, so that no thread claims
        // a slot through this platform before they would run. Threads racing here all scan
        // from the first entry, so each hook lands in its table once.
        if let Some(hook) = self.exit_hook {
            // With more than MAX_EXIT_HOOKS long-lived allocators, one keeps exited threads'
            // caches until the slot is reused or collected: correct, only less thrifty.
            insert_once(&EXIT_HOOKS, hook as *mut ());
        }
        if let Some(hooks) = self.fork_hooks {
            FORK.register(hooks);
            register_fork_handlers();
        }
        self.hook_registered.store(true, Ordering::Release);
    }

    /// The slot of a thread without an exclusive one yet: claims one if it can, else takes
    /// the lock of a shared slot (released by `with_slot_slow` after its closure).
    #[inline(always)]
    fn acquire_slot_slow(&self) -> usize {
        if tls::get() == UNCLAIMED {
            // Sharing until the claim is done: an allocation made while claiming (by
            // pthread_setspecific) uses a shared slot rather than claiming another one.
            tls::set(SHARING);
            self.register_hooks();
            // A thread that finds every exclusive slot taken shares from then on, rather
            // than scanning the table at every call.
            let claimed = claim_slot().unwrap_or(SHARING);
            tls::set(claimed);
            if claimed < EXCLUSIVE_SLOTS {
                return claimed;
            }
        }
        let index = thread_hash() % SHARED_SLOTS;
        lock_shared(index);
        EXCLUSIVE_SLOTS + index
    }

    /// [`with_slot`](Platform::with_slot) for a thread without an exclusive slot yet (or
    /// sharing): finds the slot, runs `f`, and releases a shared slot's lock.
    #[cold]
    #[inline(never)]
    fn with_slot_slow<R>(&self, f: impl FnOnce(usize) -> R) -> R {
        let slot = self.acquire_slot_slow();
        let result = f(slot);
        if slot >= EXCLUSIVE_SLOTS {
            SLOTS.unlock_shared(slot - EXCLUSIVE_SLOTS);
        }
        result
    }
}

/// Spins on `done` (which must not have side effects when it fails), yielding the CPU once
/// spinning has not helped for a while.
fn spin_until(mut done: impl FnMut() -> bool) {
    let mut spins = 0u32;
    while !done() {
        spins += 1;
        if spins < 64 {
            sync::spin_loop();
        } else {
            sync::yield_cpu();
        }
    }
}

/// Puts `value` in the first free entry of `table` unless an entry holds it already.
fn insert_once<T>(table: &[AtomicPtr<T>], value: *mut T) {
    for entry in table {
        match entry.compare_exchange(core::ptr::null_mut(), value, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return,
            Err(existing) if existing == value => return,
            Err(_) => {}
        }
    }
}

/// Registers the process's `pthread_atfork` handlers, which run the fork hooks of the
/// allocators over this platform (see [`HostPlatform::with_fork_hooks`]), unless they are
/// registered already. A platform with fork hooks calls it when a thread first claims a slot
/// through it; a library that replaces `malloc` may call it from its constructor as well, so
/// that its handlers come early in the process's list (glibc runs prepare handlers in reverse
/// order of registration, and parent and child handlers in order: registered early, ours
/// take the allocator's locks after the prepare handlers of everything registered later,
/// which may allocate, and give them back before their parent and child handlers run).
///
/// The registration may allocate (glibc grows its handler list with `malloc`); the thread
/// registering is marked as sharing by then, so such an allocation through this platform
/// uses a shared slot and does not come back here. If `pthread_atfork` fails (out of
/// memory), the next call tries again.
pub fn register_fork_handlers() {
    if ATFORK.load(Ordering::Acquire) == ATFORK_DONE
        || ATFORK
            .compare_exchange(ATFORK_NONE, ATFORK_REGISTERING, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
    {
        return;
    }
    // SAFETY: the handlers are `extern "C"` functions without arguments that live as long
    // as the program (or the library holding this crate, which must not be unloaded while
    // the process may fork).
    let status = unsafe { libc::pthread_atfork(Some(before_fork), Some(after_fork), Some(after_fork)) };
    ATFORK.store(if status == 0 { ATFORK_DONE } else { ATFORK_NONE }, Ordering::Release);
}

/// The prepare handler: see [`ForkTable::prepare`].
extern "C" fn before_fork() {
    FORK.prepare(&SLOTS);
}

/// The parent and child handler: see [`ForkTable::after`].
extern "C" fn after_fork() {
    // SAFETY: `pthread_atfork` runs this once after `before_fork`, in the thread that ran
    // it (or, in the child, its copy).
    unsafe { FORK.after(&SLOTS) };
}

/// The fork-hook protocol over a table: the hooks registered, and how many of them the last
/// prepare ran. Production uses the process's table ([`FORK`]); the model checker a small
/// one of its own ([`model::Table`]).
///
/// Entries are filled in order by compare-exchange and never cleared, so the filled ones
/// form a prefix of the table. `prepared` is written by [`prepare`](Self::prepare) and read
/// by [`after`](Self::after) with every shared-slot lock held, which serialises concurrent
/// forks: each `after` releases exactly the hooks its `prepare` took, and an entry filled
/// between the two (another thread of the parent claiming a slot through a new allocator
/// during the fork) is neither prepared nor released by that fork.
struct ForkTable<'a> {
    hooks: &'a [AtomicPtr<ForkHooks>],
    prepared: &'a AtomicUsize,
}

impl ForkTable<'_> {
    /// Puts `hooks` in the first free entry unless an entry holds them already (with more
    /// than the table's entries, the extra allocator is not protected; documented on
    /// [`HostPlatform::with_fork_hooks`]).
    fn register(&self, hooks: &'static ForkHooks) {
        insert_once(self.hooks, core::ptr::from_ref(hooks).cast_mut());
    }

    /// Before a fork, in the forking thread: every shared-slot lock of `slots` (in index
    /// order, so that concurrent forks cannot deadlock), then every registered `prepare` (the
    /// allocator's lock order: a thread in a shared slot takes the allocator's locks inside
    /// it). So no thread is inside a shared slot while the process forks. Exclusive slots
    /// need nothing: in the child, the slots of threads that did not survive the fork stay
    /// owned (their entries name the parent process, so they are never taken over) and are
    /// never used again, so arenas they left mid-operation are never touched. The thread-exit
    /// key needs nothing either: it is never half-created (see `LazyKey`).
    fn prepare(&self, slots: &Slots<'_>) {
        for index in 0..slots.shared.len() {
            slots.lock_shared(index);
        }
        let mut prepared = 0;
        for entry in self.hooks {
            let hooks = entry.load(Ordering::Acquire);
            if hooks.is_null() {
                break;
            }
            // SAFETY: entries are null or `&'static ForkHooks` (`register`).
            unsafe { ((*hooks).prepare)() };
            prepared += 1;
        }
        self.prepared.store(prepared, Ordering::Relaxed);
    }

    /// After a fork, in the parent and in the child: every `after` of the hooks
    /// [`prepare`](Self::prepare) ran, in reverse order, then the shared-slot locks.
    ///
    /// # Safety
    ///
    /// Called once after [`prepare`](Self::prepare) over the same `slots`, by the thread
    /// that called it (or, in the child, its copy).
    unsafe fn after(&self, slots: &Slots<'_>) {
        let prepared = self.prepared.load(Ordering::Relaxed);
        for entry in self.hooks[..prepared].iter().rev() {
            let hooks = entry.load(Ordering::Acquire);
            // SAFETY: one of the `prepared` entries whose `prepare` ran in this thread (or
            // in the thread this one is the copy of), under the shared-slot locks still
            // held: a `&'static ForkHooks`, never cleared; its `after` runs once for that
            // `prepare`, as the caller promises.
            unsafe { ((*hooks).after)() };
        }
        for index in 0..slots.shared.len() {
            slots.unlock_shared(index);
        }
    }
}

/// Takes the process's shared slot `index`'s spin lock.
fn lock_shared(index: usize) {
    SLOTS.lock_shared(index);
}

impl Default for HostPlatform {
    fn default() -> Self {
        Self::new()
    }
}

/// A per-thread number to spread threads over slots: the address of this thread's TLS.
fn thread_hash() -> usize {
    let address = tls::address();
    let mixed = (address >> 6).wrapping_mul(0x9E37_79B9_7F4A_7C15_u64 as usize);
    mixed >> (usize::BITS / 2)
}

/// A pthread key created on first use, by whichever thread gets there first.
///
/// Threads that find no key each create one and publish theirs with a compare-exchange;
/// the losers delete theirs. There is no "being created" state that others wait on, so a
/// `fork` at any moment leaves the child either a published key or none (and the child then
/// creates its own): a child never waits for a thread that does not exist in it. A key made
/// in the parent by a thread that had not published it yet stays allocated in the child,
/// unused (one pthread key).
struct LazyKey {
    /// 0 before publication, `key + 1` after, `KEY_FAILED` if creation failed.
    state: atomic::AtomicUsize,
    destructor: unsafe extern "C" fn(*mut c_void),
}

const KEY_FAILED: usize = usize::MAX;

impl LazyKey {
    const fn new(destructor: unsafe extern "C" fn(*mut c_void)) -> Self {
        Self { state: atomic::AtomicUsize::new(0), destructor }
    }

    /// The key, created on first use; `None` if pthreads could not create one.
    fn get(&self) -> Option<libc::pthread_key_t> {
        self.get_pausing(|| {})
    }

    /// [`get`](Self::get), calling `before_publish` between creating a key and publishing
    /// it (a pause point for tests; a no-op otherwise).
    fn get_pausing(&self, before_publish: impl FnOnce()) -> Option<libc::pthread_key_t> {
        let published = self.state.load(Ordering::Acquire);
        if published != 0 {
            return Self::decode(published);
        }
        let mut key: libc::pthread_key_t = 0;
        // SAFETY: `key` is a valid place to write the new key; the destructor has the
        // signature pthreads expects.
        let status = unsafe { libc::pthread_key_create(&mut key, Some(self.destructor)) };
        let mine = if status == 0 { key as usize + 1 } else { KEY_FAILED };
        before_publish();
        match self.state.compare_exchange(0, mine, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => Self::decode(mine),
            Err(published) => {
                if status == 0 {
                    // SAFETY: `key` is the key created above, never published, so no thread
                    // has a value for it and nobody else uses it.
                    unsafe { libc::pthread_key_delete(key) };
                }
                Self::decode(published)
            }
        }
    }

    fn decode(state: usize) -> Option<libc::pthread_key_t> {
        if state == KEY_FAILED { None } else { Some((state - 1) as libc::pthread_key_t) }
    }
}

/// The owner word of the calling thread: its process id in the high half, its thread id
/// in the low half (both positive on Linux, so the word is above `UNKNOWN_OWNER`).
fn owner_word() -> u64 {
    // SAFETY: getpid and gettid have no preconditions and cannot fail.
    let (process, thread) = unsafe { (libc::getpid(), libc::gettid()) };
    owner_word_of(process, thread)
}

/// The owner word of thread `thread` of process `process` (see [`owner_word`]).
fn owner_word_of(process: libc::pid_t, thread: libc::pid_t) -> u64 {
    if process > 0 && thread > 0 { (process as u64) << 32 | thread as u64 } else { UNKNOWN_OWNER }
}

/// What the slot protocol asks the operating system; the model checker answers for it.
trait Threads {
    /// The calling thread's process id.
    fn this_process(&self) -> libc::pid_t;
    /// Whether thread `thread` of process `process` (this one) is gone.
    fn thread_gone(&self, process: libc::pid_t, thread: libc::pid_t) -> bool;
}

/// The kernel's answers.
struct Kernel;

impl Threads for Kernel {
    fn this_process(&self) -> libc::pid_t {
        // SAFETY: getpid has no preconditions.
        unsafe { libc::getpid() }
    }

    fn thread_gone(&self, process: libc::pid_t, thread: libc::pid_t) -> bool {
        owner_thread_gone(process, thread)
    }
}

/// Whether the thread an owner word names is gone from this process: the word names this
/// process, and the kernel no longer knows the thread. A thread id reused by a newer thread
/// of the process counts as alive (the slot just stays taken).
fn owner_exited(word: u64, this_process: libc::pid_t, threads: &impl Threads) -> bool {
    if word <= UNKNOWN_OWNER || (word >> 32) as libc::pid_t != this_process {
        return false;
    }
    let thread = (word & u64::from(u32::MAX)) as libc::pid_t;
    threads.thread_gone(this_process, thread)
}

#[cfg(not(miri))]
fn owner_thread_gone(process: libc::pid_t, thread: libc::pid_t) -> bool {
    // SAFETY: signal 0 sends nothing, it only checks that the thread exists; no memory is
    // passed.
    let status = unsafe { libc::syscall(libc::SYS_tgkill, process, thread, 0) };
    status != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

/// Miri cannot ask the kernel: every owner counts as alive, so slots are never taken over.
#[cfg(miri)]
fn owner_thread_gone(_process: libc::pid_t, _thread: libc::pid_t) -> bool {
    false
}

/// The slot protocol over a table: the exclusive slots' `OWNERS` entries and the shared
/// slots' locks. Production uses the process's table ([`SLOTS`]); the model checker a small
/// one of its own ([`model::Table`]).
struct Slots<'a> {
    owners: &'a [AtomicU64],
    shared: &'a [SharedLock],
}

/// The process's slot table.
static SLOTS: Slots<'static> = Slots { owners: &OWNERS, shared: &SHARED };

impl Slots<'_> {
    /// Takes exclusive slot `slot` (leaving it `LENT`) if it is owned by a thread of this
    /// process that has exited without releasing it. The caller then holds the slot as if it
    /// had lent it, and ends with a release store of `FREE` or of its own owner word.
    ///
    /// The entry is taken first and the owner checked after, so that the owner word checked
    /// is the one replaced: a slot released and claimed again meanwhile fails the exchange,
    /// and a live owner's word is put back (the owner, exiting meanwhile, waits for that; see
    /// [`release_own_slot`](Self::release_own_slot)). The exited owner's accesses to the
    /// slot's arena are ordered before ours by the kernel: the thread leaves the thread group
    /// (so that `tgkill` fails) only after it has stopped running, through locks that order
    /// its last user-space accesses before the lookup that fails; the fence makes that
    /// ordering hold for the compiler too.
    fn take_from_exited_owner(&self, slot: usize, this_process: libc::pid_t, threads: &impl Threads) -> bool {
        let owner = &self.owners[slot];
        let word = owner.load(Ordering::Relaxed);
        if word <= UNKNOWN_OWNER || (word >> 32) as libc::pid_t != this_process {
            return false;
        }
        if owner.compare_exchange(word, LENT, Ordering::Acquire, Ordering::Relaxed).is_err() {
            return false;
        }
        if owner_exited(word, this_process, threads) {
            atomic::fence(Ordering::SeqCst);
            true
        } else {
            owner.store(word, Ordering::Release);
            false
        }
    }

    /// Claims an exclusive slot for the thread whose owner word is `word`, scanning from
    /// `start`: a free slot if there is one, else one whose owner exited without releasing
    /// it.
    fn claim(&self, word: u64, start: usize, threads: &impl Threads) -> Option<usize> {
        let count = self.owners.len();
        let slots = || (0..count).map(|step| (start + step) % count);
        if let Some(slot) = slots().find(|&slot| {
            self.owners[slot].compare_exchange(FREE, word, Ordering::Acquire, Ordering::Relaxed).is_ok()
        }) {
            return Some(slot);
        }
        let this_process = threads.this_process();
        let slot = slots().find(|&slot| self.take_from_exited_owner(slot, this_process, threads))?;
        // The slot is ours (LENT by us); name ourselves as its owner.
        self.owners[slot].store(word, Ordering::Release);
        Some(slot)
    }

    /// Frees the calling thread's exclusive slot `slot`. The entry holds this thread's owner
    /// word (as of the claim; in a child of `fork`, the parent's) unless a check of the owner
    /// holds it (`LENT`) for a moment, after which it puts the word back: wait for that.
    fn release_own_slot(&self, slot: usize) {
        let owner = &self.owners[slot];
        loop {
            let word = owner.load(Ordering::Relaxed);
            if word != LENT
                && owner.compare_exchange(word, FREE, Ordering::Release, Ordering::Relaxed).is_ok()
            {
                return;
            }
            spin_until(|| owner.load(Ordering::Relaxed) != LENT);
        }
    }

    /// Runs `f` with slot `slot` if it is idle: a free exclusive slot, or one whose owner
    /// exited without releasing it, or an unlocked shared slot.
    fn try_with_idle_slot<R>(&self, slot: usize, threads: &impl Threads, f: impl FnOnce() -> R) -> Option<R> {
        if slot < self.owners.len() {
            let owner = &self.owners[slot];
            if owner.compare_exchange(FREE, LENT, Ordering::Acquire, Ordering::Relaxed).is_err()
                && !self.take_from_exited_owner(slot, threads.this_process(), threads)
            {
                return None;
            }
            let result = f();
            owner.store(FREE, Ordering::Release);
            Some(result)
        } else if let Some(lock) = self.shared.get(slot - self.owners.len()) {
            lock.0.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).ok()?;
            let result = f();
            lock.0.store(false, Ordering::Release);
            Some(result)
        } else {
            None
        }
    }

    /// Takes shared slot `index`'s spin lock, yielding the CPU while it stays taken.
    fn lock_shared(&self, index: usize) {
        let lock = &self.shared[index].0;
        while lock.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
            spin_until(|| !lock.load(Ordering::Relaxed));
        }
    }

    /// Releases shared slot `index`'s spin lock, taken by [`lock_shared`](Self::lock_shared).
    fn unlock_shared(&self, index: usize) {
        self.shared[index].0.store(false, Ordering::Release);
    }
}

/// Claims an exclusive slot for this thread and arms the exit destructor: a free slot if
/// there is one, else one whose owner exited without releasing it.
#[cold]
fn claim_slot() -> Option<usize> {
    let key = EXIT_KEY.get()?;
    let slot = SLOTS.claim(owner_word(), thread_hash() % EXCLUSIVE_SLOTS, &Kernel)?;
    // The value is slot + 1 so that it is never null (pthreads skips null values).
    // SAFETY: `key` came from pthread_key_create and is never deleted once published.
    let status = unsafe { libc::pthread_setspecific(key, core::ptr::without_provenance(slot + 1)) };
    if status != 0 {
        OWNERS[slot].store(FREE, Ordering::Release);
        return None;
    }
    Some(slot)
}

/// The pthread key destructor: runs the exit hooks with the thread's slot, then frees it.
unsafe extern "C" fn on_thread_exit(value: *mut c_void) {
    let slot = value.addr() - 1;
    for entry in &EXIT_HOOKS {
        let hook = entry.load(Ordering::Acquire);
        if !hook.is_null() {
            // SAFETY: non-null entries of EXIT_HOOKS are only ever `fn(usize)` pointers cast
            // to `*mut ()` (register_exit_hook), so this casts one back, with its provenance.
            let hook = unsafe { core::mem::transmute::<*mut (), fn(usize)>(hook) };
            hook(slot);
        }
    }
    tls::set(EXITED);
    SLOTS.release_own_slot(slot);
}

// SAFETY: an exclusive slot is held by one thread at a time: a thread records a slot as its
// own only after a successful FREE->owner compare-exchange (acquire) or after taking it from
// an exited owner (LENT, see `take_from_exited_owner`), and gives it back with a release
// compare-exchange to FREE at exit; a lender holds it between a FREE->LENT compare-exchange
// (acquire) and a release store of FREE. A check of a live owner holds the entry LENT but
// never touches the slot's arena. Shared slots are used only under their spin lock, taken
// with acquire and released with release ordering. Indices are below
// EXCLUSIVE_SLOTS + SHARED_SLOTS = MAX_SLOTS.
unsafe impl Platform for HostPlatform {
    fn slot_count(&self) -> usize {
        MAX_SLOTS
    }

    #[inline(always)]
    fn with_slot<R>(&self, f: impl FnOnce(usize) -> R) -> R {
        // The fast path is a thread-local load, a compare and `f` inlined. Everything else
        // (finding a slot, a shared slot's lock) is in a cold function of its own, so that
        // the fast path keeps no value across a call: no registers saved, no closure
        // captures spilled to the stack.
        let slot = tls::get();
        if slot < EXCLUSIVE_SLOTS { f(slot) } else { self.with_slot_slow(f) }
    }

    /// Lends a free exclusive slot, or one whose owner exited without releasing it, or an
    /// unlocked shared slot.
    fn try_with_idle_slot<R>(&self, slot: usize, f: impl FnOnce() -> R) -> Option<R> {
        SLOTS.try_with_idle_slot(slot, &Kernel, f)
    }

    fn cache_line_size(&self) -> usize {
        // SAFETY: sysconf has no preconditions; it returns 0 or -1 when it does not know.
        let reported = unsafe { libc::sysconf(libc::_SC_LEVEL1_DCACHE_LINESIZE) };
        if reported > 0 { reported as usize } else { 128 }
    }

    /// `CLOCK_MONOTONIC` (a vDSO call on Linux: no system call, no allocation).
    fn now_ns(&self) -> Option<u64> {
        let mut time = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `time` is a valid timespec to write; CLOCK_MONOTONIC always exists.
        let status = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut time) };
        (status == 0)
            .then(|| (time.tv_sec as u64).wrapping_mul(1_000_000_000).wrapping_add(time.tv_nsec as u64))
    }
}

#[cfg(feature = "shuttle")]
pub mod model;

#[cfg(test)]
mod tests;
