//! Per-thread slots for user space on Linux (any pthreads system with thread-local storage).
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
//! Nothing here allocates: the slot table is static, the thread-local has a constant
//! initialiser and no destructor, and pthread keys below 32 need no memory in glibc.
//!
//! Concurrency: `OWNERS` entries move FREE -> OWNED (a thread claims it) -> FREE (the thread
//! exits) and FREE -> LENT -> FREE ([`Platform::try_with_idle_slot`]); each transition out of
//! FREE is a compare-exchange with acquire ordering and each return to FREE a release store,
//! which orders one holder's accesses to the slot's arena before the next holder's.

use core::cell::Cell;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU8, AtomicUsize, Ordering};

use crate::{MAX_SLOTS, Platform};

/// Slots that threads share behind spin locks once the exclusive ones run out.
const SHARED_SLOTS: usize = 32;
/// Slots a thread can own for its lifetime.
const EXCLUSIVE_SLOTS: usize = MAX_SLOTS - SHARED_SLOTS;

const FREE: u8 = 0;
const OWNED: u8 = 1;
const LENT: u8 = 2;

/// The thread has not claimed a slot yet.
const UNCLAIMED: usize = usize::MAX;
/// The thread's exit hook has run: it uses shared slots from now on.
const EXITED: usize = usize::MAX - 1;
/// No exclusive slot was free when the thread first asked: it uses shared slots.
const SHARING: usize = usize::MAX - 2;

static OWNERS: [AtomicU8; EXCLUSIVE_SLOTS] = [const { AtomicU8::new(FREE) }; EXCLUSIVE_SLOTS];

/// One spin lock per shared slot, each on its own cache line.
#[repr(align(128))]
struct SharedLock(AtomicBool);
static SHARED: [SharedLock; SHARED_SLOTS] = [const { SharedLock(AtomicBool::new(false)) }; SHARED_SLOTS];

/// Functions run with the exiting thread's slot before the slot is freed: null, or a
/// `fn(usize)` stored as a pointer (so that it keeps its provenance).
const MAX_EXIT_HOOKS: usize = 8;
static EXIT_HOOKS: [AtomicPtr<()>; MAX_EXIT_HOOKS] =
    [const { AtomicPtr::new(core::ptr::null_mut()) }; MAX_EXIT_HOOKS];

/// The pthread key whose destructor frees the slot: 0 before creation, 1 while one thread
/// creates it, `key + 2` after, `usize::MAX` if creation failed.
static KEY: AtomicUsize = AtomicUsize::new(0);
const KEY_FAILED: usize = usize::MAX;

std::thread_local! {
    /// This thread's exclusive slot, or `UNCLAIMED` / `EXITED`.
    static THREAD_SLOT: Cell<usize> = const { Cell::new(UNCLAIMED) };
}

/// Per-thread slots for a user-space process; see the module documentation.
#[derive(Debug)]
pub struct HostPlatform {
    exit_hook: Option<fn(usize)>,
    hook_registered: AtomicBool,
}

impl HostPlatform {
    /// A platform whose slots hold what they cache when their thread exits, until another
    /// thread takes the slot over or the allocator collects idle slots.
    pub const fn new() -> Self {
        Self { exit_hook: None, hook_registered: AtomicBool::new(false) }
    }

    /// A platform that calls `hook(slot)` when a thread that owned `slot` exits, while the
    /// thread still has exclusive use of the slot. The allocator's `release_slot` is the
    /// intended hook; it must not call back into this platform's `with_slot`.
    ///
    /// The hook is registered process-wide the first time a thread claims a slot through
    /// this platform, and from then on runs at every thread's exit (with that thread's slot):
    /// use it for allocators that live for the whole process.
    pub const fn with_exit_hook(hook: fn(usize)) -> Self {
        Self { exit_hook: Some(hook), hook_registered: AtomicBool::new(false) }
    }

    #[cold]
    fn register_exit_hook(&self) {
        let Some(hook) = self.exit_hook else { return };
        if self.hook_registered.swap(true, Ordering::AcqRel) {
            return;
        }
        let value = hook as *mut ();
        for entry in &EXIT_HOOKS {
            match entry.compare_exchange(core::ptr::null_mut(), value, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(existing) if existing == value => return,
                Err(_) => {}
            }
        }
        // More than MAX_EXIT_HOOKS long-lived allocators: this one keeps exited threads'
        // caches until the slot is reused or collected, which is correct, only less thrifty.
    }

    /// The slot of a thread without an exclusive one yet: claims one if it can, else takes
    /// the lock of a shared slot (released by `with_slot` after its closure).
    #[cold]
    #[inline(never)]
    fn acquire_slot_slow(&self) -> usize {
        if THREAD_SLOT.with(Cell::get) == UNCLAIMED {
            self.register_exit_hook();
            // A thread that finds every exclusive slot taken shares from then on, rather
            // than scanning the table at every call.
            let claimed = claim_slot().unwrap_or(SHARING);
            THREAD_SLOT.with(|state| state.set(claimed));
            if claimed < EXCLUSIVE_SLOTS {
                return claimed;
            }
        }
        let index = thread_hash() % SHARED_SLOTS;
        lock_shared(index);
        EXCLUSIVE_SLOTS + index
    }

    /// Runs `f` on a shared slot chosen from the thread's identity, under its lock.
    #[cfg(test)]
    fn with_shared_slot<R>(&self, f: impl FnOnce(usize) -> R) -> R {
        let index = thread_hash() % SHARED_SLOTS;
        lock_shared(index);
        let result = f(EXCLUSIVE_SLOTS + index);
        SHARED[index].0.store(false, Ordering::Release);
        result
    }
}

/// Takes a shared slot's spin lock, yielding the CPU while it stays taken.
fn lock_shared(index: usize) {
    let lock = &SHARED[index].0;
    let mut spins = 0u32;
    while lock.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
        while lock.load(Ordering::Relaxed) {
            spins += 1;
            if spins < 64 {
                core::hint::spin_loop();
            } else {
                // SAFETY: sched_yield has no preconditions.
                unsafe { libc::sched_yield() };
            }
        }
    }
}

/// Takes every shared-slot lock, so that no thread is inside a shared slot while the
/// process forks (`pthread_atfork`'s prepare handler). Exclusive slots need nothing: in the
/// child, the slots of threads that did not survive the fork stay owned and are never used
/// again, so arenas they left mid-operation are never touched.
pub fn lock_shared_slots_for_fork() {
    for lock in &SHARED {
        while lock.0.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
            core::hint::spin_loop();
        }
    }
}

/// Releases the locks [`lock_shared_slots_for_fork`] took, in the parent and in the child.
///
/// # Safety
///
/// Called once after [`lock_shared_slots_for_fork`], by the thread that called it (or, in
/// the child, its copy).
pub unsafe fn unlock_shared_slots_after_fork() {
    for lock in &SHARED {
        lock.0.store(false, Ordering::Release);
    }
}

impl Default for HostPlatform {
    fn default() -> Self {
        Self::new()
    }
}

/// A per-thread number to spread threads over slots: the address of this thread's TLS.
fn thread_hash() -> usize {
    let address = THREAD_SLOT.with(|slot| slot as *const Cell<usize> as usize);
    let mixed = (address >> 6).wrapping_mul(0x9E37_79B9_7F4A_7C15_u64 as usize);
    mixed >> (usize::BITS / 2)
}

/// Returns the pthread key whose destructor releases slots, creating it on first use.
fn exit_key() -> Option<libc::pthread_key_t> {
    loop {
        match KEY.load(Ordering::Acquire) {
            0 => {
                if KEY.compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed).is_err() {
                    continue;
                }
                let mut key: libc::pthread_key_t = 0;
                // SAFETY: `key` is a valid place to write the new key; the destructor has the
                // signature pthreads expects.
                let status = unsafe { libc::pthread_key_create(&mut key, Some(on_thread_exit)) };
                let published = if status == 0 { key as usize + 2 } else { KEY_FAILED };
                KEY.store(published, Ordering::Release);
            }
            1 => core::hint::spin_loop(),
            KEY_FAILED => return None,
            published => return Some((published - 2) as libc::pthread_key_t),
        }
    }
}

/// Claims a free exclusive slot for this thread and arms the exit destructor.
#[cold]
fn claim_slot() -> Option<usize> {
    let key = exit_key()?;
    let start = thread_hash() % EXCLUSIVE_SLOTS;
    for step in 0..EXCLUSIVE_SLOTS {
        let slot = (start + step) % EXCLUSIVE_SLOTS;
        if OWNERS[slot].compare_exchange(FREE, OWNED, Ordering::Acquire, Ordering::Relaxed).is_err() {
            continue;
        }
        // The value is slot + 1 so that it is never null (pthreads skips null values).
        // SAFETY: `key` came from pthread_key_create and is never deleted.
        let status = unsafe { libc::pthread_setspecific(key, (slot + 1) as *const libc::c_void) };
        if status != 0 {
            OWNERS[slot].store(FREE, Ordering::Release);
            return None;
        }
        return Some(slot);
    }
    None
}

/// The pthread key destructor: runs the exit hooks with the thread's slot, then frees it.
unsafe extern "C" fn on_thread_exit(value: *mut libc::c_void) {
    let slot = value as usize - 1;
    for entry in &EXIT_HOOKS {
        let hook = entry.load(Ordering::Acquire);
        if !hook.is_null() {
            // SAFETY: non-null entries of EXIT_HOOKS are only ever `fn(usize)` pointers cast
            // to `*mut ()` (register_exit_hook), so this casts one back, with its provenance.
            let hook = unsafe { core::mem::transmute::<*mut (), fn(usize)>(hook) };
            hook(slot);
        }
    }
    THREAD_SLOT.with(|state| state.set(EXITED));
    OWNERS[slot].store(FREE, Ordering::Release);
}

// SAFETY: exclusive slots are held by one thread between a successful FREE->OWNED (or
// FREE->LENT) compare-exchange with acquire ordering and a release store of FREE; a thread
// records its slot only after winning that exchange. Shared slots are used only under their
// spin lock, taken with acquire and released with release ordering. Indices are below
// EXCLUSIVE_SLOTS + SHARED_SLOTS = MAX_SLOTS.
unsafe impl Platform for HostPlatform {
    fn slot_count(&self) -> usize {
        MAX_SLOTS
    }

    #[inline(always)]
    fn with_slot<R>(&self, f: impl FnOnce(usize) -> R) -> R {
        // `f` has one call site, so that it inlines into the caller's fast path; the slow
        // path only finds the slot (and takes a shared slot's lock, released here).
        let mut slot = THREAD_SLOT.with(Cell::get);
        let slow = slot >= EXCLUSIVE_SLOTS;
        if slow {
            slot = self.acquire_slot_slow();
        }
        let result = f(slot);
        if slow && slot >= EXCLUSIVE_SLOTS {
            SHARED[slot - EXCLUSIVE_SLOTS].0.store(false, Ordering::Release);
        }
        result
    }

    fn try_with_idle_slot<R>(&self, slot: usize, f: impl FnOnce() -> R) -> Option<R> {
        if slot < EXCLUSIVE_SLOTS {
            let owner = &OWNERS[slot];
            owner.compare_exchange(FREE, LENT, Ordering::Acquire, Ordering::Relaxed).ok()?;
            let result = f();
            owner.store(FREE, Ordering::Release);
            Some(result)
        } else if slot < MAX_SLOTS {
            let lock = &SHARED[slot - EXCLUSIVE_SLOTS].0;
            lock.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).ok()?;
            let result = f();
            lock.store(false, Ordering::Release);
            Some(result)
        } else {
            None
        }
    }

    fn cache_line_size(&self) -> usize {
        // SAFETY: sysconf has no preconditions; it returns 0 or -1 when it does not know.
        let reported = unsafe { libc::sysconf(libc::_SC_LEVEL1_DCACHE_LINESIZE) };
        if reported > 0 { reported as usize } else { 128 }
    }
}

#[cfg(test)]
mod tests;
