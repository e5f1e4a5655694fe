//! Tests of per-thread slots. Slots are process-wide, so these tests only assert properties
//! that hold whatever other tests in the binary do at the same time.

extern crate std;

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Barrier, Mutex};
use std::vec::Vec;

use super::*;

#[test]
fn a_thread_keeps_one_slot_and_live_threads_never_share_one() {
    let platform = HostPlatform::new();
    let threads = 16;
    let barrier = Arc::new(Barrier::new(threads));
    let seen: Vec<usize> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let barrier = barrier.clone();
                let platform = &platform;
                scope.spawn(move || {
                    let first = platform.with_slot(|slot| slot);
                    // Hold the slot until every thread has one, so none can inherit another's.
                    barrier.wait();
                    let again = platform.with_slot(|slot| slot);
                    assert_eq!(first, again, "a thread's slot changed while it lived");
                    first
                })
            })
            .collect();
        handles.into_iter().map(|handle| handle.join().unwrap()).collect()
    });
    let mut sorted = seen.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), threads, "two live threads shared an exclusive slot: {seen:?}");
    assert!(seen.iter().all(|&slot| slot < EXCLUSIVE_SLOTS));
}

#[test]
fn an_owned_slot_is_not_lent_and_a_freed_one_is() {
    let platform = HostPlatform::new();
    let (slot_sender, slot_receiver) = std::sync::mpsc::channel();
    let (done_sender, done_receiver) = std::sync::mpsc::channel::<()>();
    let owner = std::thread::spawn(move || {
        let platform = HostPlatform::new();
        slot_sender.send(platform.with_slot(|slot| slot)).unwrap();
        done_receiver.recv().unwrap();
    });
    let slot = slot_receiver.recv().unwrap();
    assert!(platform.try_with_idle_slot(slot, || ()).is_none(), "lent a slot its thread still owns");
    done_sender.send(()).unwrap();
    owner.join().unwrap();
    // The slot is free once the owner has exited, unless a new thread claimed it meanwhile;
    // retry briefly to tolerate other tests' threads.
    let mut lent = false;
    for _ in 0..1000 {
        if platform.try_with_idle_slot(slot, || ()).is_some() {
            lent = true;
            break;
        }
        std::thread::yield_now();
    }
    let word = OWNERS[slot].load(Ordering::Acquire);
    assert!(lent || word > UNKNOWN_OWNER, "slot stuck after its owner exited (entry {word:#x})");
}

static EXITED_SLOTS: Mutex<Vec<usize>> = Mutex::new(Vec::new());

fn record_exit(slot: usize) {
    EXITED_SLOTS.lock().unwrap().push(slot);
}

static HOOKED: HostPlatform = HostPlatform::with_exit_hook(record_exit);

#[test]
fn the_exit_hook_runs_with_the_exiting_threads_slot() {
    let slot = std::thread::spawn(|| HOOKED.with_slot(|slot| slot)).join().unwrap();
    // The hook runs in the pthread key destructor, before pthread_join returns.
    assert!(EXITED_SLOTS.lock().unwrap().contains(&slot), "exit hook did not run for slot {slot}");
}

#[test]
fn shared_slots_serialise_their_users() {
    // More sharing threads than shared slots: at least two of them use one slot (checked),
    // and its lock must keep them from being inside at once.
    const THREADS: usize = SHARED_SLOTS + 8;
    // Few rounds under Miri, which runs every thread's steps one at a time.
    let rounds = if cfg!(miri) { 5 } else { 500 };
    let platform = HostPlatform::new();
    let inside: [AtomicUsize; SHARED_SLOTS] = [const { AtomicUsize::new(0) }; SHARED_SLOTS];
    let users: [AtomicUsize; SHARED_SLOTS] = [const { AtomicUsize::new(0) }; SHARED_SLOTS];
    let overlaps = AtomicUsize::new(0);
    let total = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..THREADS {
            scope.spawn(|| {
                // A thread that found every exclusive slot taken shares from then on: the
                // real `with_slot`, through its slow path (lock, closure, unlock).
                tls::set(SHARING);
                let mut used = None;
                for _ in 0..rounds {
                    platform.with_slot(|slot| {
                        assert!((EXCLUSIVE_SLOTS..MAX_SLOTS).contains(&slot));
                        used = Some(slot - EXCLUSIVE_SLOTS);
                        let occupancy = &inside[slot - EXCLUSIVE_SLOTS];
                        if occupancy.fetch_add(1, Ordering::AcqRel) != 0 {
                            overlaps.fetch_add(1, Ordering::Relaxed);
                        }
                        std::thread::yield_now();
                        total.fetch_add(1, Ordering::Relaxed);
                        occupancy.fetch_sub(1, Ordering::AcqRel);
                    });
                }
                users[used.unwrap()].fetch_add(1, Ordering::Relaxed);
            });
        }
    });
    assert!(users.iter().any(|count| count.load(Ordering::Relaxed) > 1), "no two threads shared a slot");
    assert_eq!(overlaps.load(Ordering::Relaxed), 0, "two threads used one shared slot at once");
    assert_eq!(total.load(Ordering::Relaxed), THREADS * rounds);
}

/// The destructor of the test keys below: nothing to release.
unsafe extern "C" fn ignore_value(_value: *mut c_void) {}

/// Issue 8: a thread that had marked the key as "being created" and was paused there by a
/// `fork` left the child spinning forever on its first allocation. The creator is paused
/// between creating its key and publishing it (the test-only pause point of `LazyKey`)
/// while the main thread forks; the child must get a key of its own. A child that hangs is
/// killed by its alarm and the test fails.
#[test]
#[cfg_attr(miri, ignore = "Miri does not support fork")]
fn a_fork_while_another_thread_creates_the_key_gives_the_child_a_key() {
    static TEST_KEY: LazyKey = LazyKey::new(ignore_value);
    let paused = Barrier::new(2);
    let resume = Barrier::new(2);
    std::thread::scope(|scope| {
        let creator = scope.spawn(|| {
            TEST_KEY.get_pausing(|| {
                paused.wait();
                resume.wait();
            })
        });
        paused.wait();
        // SAFETY: the child calls only async-signal-safe functions (alarm, _exit) and
        // LazyKey::get, which calls pthread_key_create (no lock, no allocation in glibc).
        let child = unsafe { libc::fork() };
        if child == 0 {
            // SAFETY: as above; the alarm kills the child if it hangs.
            unsafe {
                libc::alarm(10);
                let code = if TEST_KEY.get().is_some() { 0 } else { 1 };
                libc::_exit(code);
            }
        }
        assert!(child > 0, "fork failed");
        let mut status = 0;
        // SAFETY: `child` is our child process; `status` is a valid place to write.
        let waited = unsafe { libc::waitpid(child, &mut status, 0) };
        resume.wait();
        assert_eq!(waited, child);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "the forked child did not get a key (wait status {status:#x}; signal 14 = hung)"
        );
        assert!(creator.join().unwrap().is_some(), "the paused creator lost its key");
    });
}

/// Issue 8: a thread whose first allocation is in a key destructor's last round sets the
/// exit key's value too late for pthreads to call its destructor, so its slot stayed owned
/// for good. `LATE` is created after the exit key (so that it comes later in pthreads'
/// destructor order) and re-arms itself until the last round, where it claims a slot. Once
/// the thread is gone, the slot must be taken back (here by `try_with_idle_slot`).
#[test]
#[cfg_attr(miri, ignore = "Miri cannot ask the kernel whether a thread exited")]
fn a_slot_claimed_in_the_last_destructor_round_is_taken_back() {
    static LATE: LazyKey = LazyKey::new(claim_in_last_round);
    static LATE_SLOT: AtomicUsize = AtomicUsize::new(usize::MAX);

    unsafe extern "C" fn claim_in_last_round(value: *mut c_void) {
        let round = value.addr();
        // SAFETY: sysconf has no preconditions.
        let rounds = unsafe { libc::sysconf(libc::_SC_THREAD_DESTRUCTOR_ITERATIONS) }.max(1) as usize;
        if round < rounds {
            // SAFETY: the key is LATE's, created before this thread started.
            unsafe {
                libc::pthread_setspecific(LATE.get().unwrap(), core::ptr::without_provenance(round + 1))
            };
        } else {
            LATE_SLOT.store(HostPlatform::new().with_slot(|slot| slot), Ordering::Release);
        }
    }

    EXIT_KEY.get().expect("no exit key");
    let late = LATE.get().expect("no key");
    std::thread::spawn(move || {
        // SAFETY: `late` is a live key; round 1 is the destructor's first call.
        unsafe { libc::pthread_setspecific(late, core::ptr::without_provenance(1)) };
    })
    .join()
    .unwrap();
    let slot = LATE_SLOT.load(Ordering::Acquire);
    assert!(slot < EXCLUSIVE_SLOTS, "the last-round allocation got no exclusive slot ({slot})");
    // pthread_join returns once the thread has cleared its thread id, a moment before the
    // kernel forgets it: retry briefly. Nobody else can claim the slot meanwhile (it is not
    // free), so only a take-over by this call can succeed.
    let platform = HostPlatform::new();
    let mut taken = false;
    for _ in 0..10_000 {
        if platform.try_with_idle_slot(slot, || ()).is_some() {
            taken = true;
            break;
        }
        std::thread::yield_now();
    }
    assert!(
        taken,
        "slot {slot} stayed owned after its thread exited (entry {:#x})",
        OWNERS[slot].load(Ordering::Relaxed)
    );
}

#[test]
#[cfg_attr(miri, ignore = "Miri's sysconf does not know the cache line size")]
fn reports_a_plausible_cache_line() {
    let line = HostPlatform::new().cache_line_size();
    assert!(line.is_power_of_two() && (32..=256).contains(&line), "{line}");
}

static PREPARED_A: AtomicUsize = AtomicUsize::new(0);
static RELEASED_A: AtomicUsize = AtomicUsize::new(0);
static RELEASED_B: AtomicUsize = AtomicUsize::new(0);
static HOOKS_A: ForkHooks = ForkHooks {
    prepare: || {
        PREPARED_A.fetch_add(1, Ordering::Relaxed);
    },
    after: release_a,
};
static HOOKS_B: ForkHooks = ForkHooks { prepare: || {}, after: release_b };
/// # Safety
///
/// None: a test counter.
unsafe fn release_a() {
    RELEASED_A.fetch_add(1, Ordering::Relaxed);
}
/// # Safety
///
/// None: a test counter.
unsafe fn release_b() {
    RELEASED_B.fetch_add(1, Ordering::Relaxed);
}

/// The fork handlers release only what their prepare handler took: an allocator whose hooks
/// are registered between the two (another thread's first claim during a fork) is not
/// unlocked without having been locked. The handlers run here without a fork.
#[test]
fn fork_handlers_release_only_the_hooks_they_prepared() {
    FORK.register(&HOOKS_A);
    before_fork();
    assert_eq!(PREPARED_A.load(Ordering::Relaxed), 1);
    // Registered during the fork: a later entry of the table.
    FORK.register(&HOOKS_B);
    after_fork();
    assert_eq!(RELEASED_A.load(Ordering::Relaxed), 1, "the prepared hook was not released");
    assert_eq!(RELEASED_B.load(Ordering::Relaxed), 0, "a hook that was not prepared was released");
    // The next fork prepares and releases both.
    before_fork();
    after_fork();
    assert_eq!((RELEASED_A.load(Ordering::Relaxed), RELEASED_B.load(Ordering::Relaxed)), (2, 1));
    // The shared-slot locks were given back each time.
    assert!(SHARED.iter().all(|lock| !lock.0.load(Ordering::Relaxed)));
}
