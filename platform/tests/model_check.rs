//! The host platform's slot protocol under the shuttle model checker: the real claim,
//! release, lending, take-over and shared-lock code (`platform/src/host/mod.rs`, `Slots`),
//! every atomic operation a scheduling point (`platform/src/host/sync.rs`), run over a small
//! table (`platform::host::model::Table`) for many random and PCT schedules.
//!
//! ```sh
//! cargo test -p core-alloc-platform --features host,shuttle --test model_check
//! MODEL_CHECK_ITERATIONS=100000 cargo test -p core-alloc-platform --features host,shuttle --test model_check --release
//! ```
//!
//! Threads, their exits and the kernel's answer to "is this owner gone" are the test's:
//! a thread's owner word names a thread id of its own; once the thread has stopped using
//! its slot (and released it, or not) it marks itself gone, as the kernel would forget it.
//! Each scenario checks, throughout, that no two holders use a slot at once (a per-slot
//! in-use flag a holder sets on entry and clears on exit; a holder finding it set fails),
//! and at the end that no slot is lost: once every thread is gone, a sweep lends (or takes
//! over) every slot and then every entry is FREE and every shared lock open. A deadlock
//! (a thread waiting forever on a LENT entry or a lock) fails the schedule too: shuttle
//! reports it.
//!
//! The fork-hook table (`ForkTable`) runs over a table of its own too: registrations racing
//! forks, two forks at once, and threads inside a shared slot taking an allocator's lock.
//!
//! A failure prints the schedule; `shuttle::replay` with it reproduces the failure.
#![cfg(feature = "shuttle")]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

// The package is published as core-alloc-platform; its code calls itself `platform`.
use core_alloc_platform as platform;
use platform::host::ForkHooks;
use platform::host::model::{FREE, Table, owner_word};
use shuttle::sync::atomic::AtomicBool;
use shuttle::thread;

/// The process id every owner word names.
const PROCESS: i32 = 4242;

/// Schedules per scenario and scheduler: quick in CI, more with MODEL_CHECK_ITERATIONS.
fn iterations() -> usize {
    std::env::var("MODEL_CHECK_ITERATIONS").ok().and_then(|text| text.parse().ok()).unwrap_or(300)
}

/// Explores `scenario` with the random scheduler and with PCT (depth 3); says how many
/// schedules ran, and on a failure after how many schedules it failed.
fn explore(name: &str, scenario: fn()) {
    // Per scenario: the tests of the binary run in parallel.
    let schedules = Arc::new(AtomicUsize::new(0));
    let counter = schedules.clone();
    let counted = move || {
        counter.fetch_add(1, Ordering::Relaxed);
        scenario();
    };
    let explored = std::panic::catch_unwind(|| {
        shuttle::check_random(counted.clone(), iterations());
        shuttle::check_pct(counted, iterations(), 3);
    });
    let schedules = schedules.load(Ordering::Relaxed);
    if let Err(failure) = explored {
        eprintln!("model check: {name} failed at schedule {schedules}");
        std::panic::resume_unwind(failure);
    }
    eprintln!("model check: {name}: {schedules} schedules, no failure");
}

/// A slot table with the threads that use it and what the "kernel" knows of them.
struct World {
    table: Table,
    /// Per slot: someone is using it now.
    in_use: Vec<AtomicBool>,
    /// Per thread id: the thread has exited (the kernel no longer knows it).
    gone: Vec<AtomicBool>,
}

impl World {
    fn new(exclusive: usize, shared: usize, threads: usize) -> Arc<Self> {
        let table = Table::new(exclusive, shared, PROCESS, 0);
        let in_use = (0..table.slot_count()).map(|_| AtomicBool::new(false)).collect();
        // Thread ids start at 1 (an owner word needs a positive id).
        let gone = (0..=threads).map(|_| AtomicBool::new(false)).collect();
        Arc::new(Self { table, in_use, gone })
    }

    /// Whether the thread an owner word names has exited: the kernel's `tgkill` answer.
    fn is_gone(&self, word: u64) -> bool {
        assert_eq!(word >> 32, PROCESS as u64, "checked an owner of another process");
        self.gone[(word & u64::from(u32::MAX)) as usize].load(Ordering::SeqCst)
    }

    fn gone_answer(&self) -> impl Fn(u64) -> bool + '_ {
        |word| self.is_gone(word)
    }

    /// Uses `slot` for a moment, failing if someone else is using it.
    fn hold(&self, slot: usize, who: &str) {
        assert!(!self.in_use[slot].swap(true, Ordering::SeqCst), "{who}: slot {slot} is already in use");
        thread::yield_now();
        assert!(self.in_use[slot].load(Ordering::SeqCst), "{who}: slot {slot} was released under us");
        self.in_use[slot].store(false, Ordering::SeqCst);
    }

    /// Starts using `slot` for a while (a thread's lifetime), failing if it is in use.
    fn enter(&self, slot: usize, who: &str) {
        assert!(!self.in_use[slot].swap(true, Ordering::SeqCst), "{who}: slot {slot} is already in use");
    }

    fn leave(&self, slot: usize) {
        self.in_use[slot].store(false, Ordering::SeqCst);
    }

    /// A thread with id `thread` that claims a slot as `with_slot` does (an exclusive one,
    /// scanning from `start`, else a shared one), uses it, and exits: releasing its slot, or
    /// (`release: false`) without its exit destructor running, leaving its slot owned.
    fn live(&self, thread: usize, start: usize, release: bool) {
        let word = owner_word(PROCESS, thread as i32);
        self.gone[thread].store(false, Ordering::SeqCst);
        let gone = self.gone_answer();
        match self.table.claim(word, start, &gone) {
            Some(slot) => {
                assert!(slot < self.table.exclusive_slots());
                self.enter(slot, "owner");
                thread::yield_now();
                self.leave(slot);
                if release {
                    self.table.release_own_slot(slot);
                }
            }
            None => {
                let index = thread % (self.table.slot_count() - self.table.exclusive_slots());
                self.table.with_shared_slot(index, |slot| self.hold(slot, "sharer"));
            }
        }
        self.gone[thread].store(true, Ordering::SeqCst);
    }

    /// `try_with_idle_slot` over every slot, as the allocator's collection of idle slots.
    fn lend_all(&self) {
        let gone = self.gone_answer();
        for slot in 0..self.table.slot_count() {
            self.table.try_with_idle_slot(slot, &gone, || self.hold(slot, "lender"));
        }
    }

    /// Once every thread is gone: every slot can be had, and afterwards is free.
    fn check_nothing_lost(&self) {
        assert!(self.gone.iter().skip(1).all(|gone| gone.load(Ordering::SeqCst)));
        let gone = self.gone_answer();
        for slot in 0..self.table.slot_count() {
            let lent = self.table.try_with_idle_slot(slot, &gone, || self.hold(slot, "final sweep"));
            assert!(lent.is_some(), "slot {slot} is lost (entry {:#x})", self.entry(slot));
        }
        for slot in 0..self.table.exclusive_slots() {
            assert_eq!(self.table.entry(slot), FREE, "slot {slot} not free at the end");
        }
        for index in 0..self.table.slot_count() - self.table.exclusive_slots() {
            assert!(!self.table.shared_locked(index), "shared slot {index} left locked");
        }
    }

    fn entry(&self, slot: usize) -> u64 {
        if slot < self.table.exclusive_slots() { self.table.entry(slot) } else { u64::MAX }
    }
}

fn spawn(world: &Arc<World>, body: impl FnOnce(&World) + Send + 'static) -> thread::JoinHandle<()> {
    let world = world.clone();
    thread::spawn(move || body(&world))
}

/// Three threads claim two exclusive slots (the last one may find none free and take over
/// the slot of an owner that exited without releasing it, or share), one exits without
/// releasing, while a lender lends idle slots and takes over exited owners' slots.
#[test]
fn claims_releases_lending_and_take_over() {
    explore("claims_releases_lending_and_take_over", || {
        let world = World::new(2, 1, 3);
        let threads = [
            spawn(&world, |world| world.live(1, 0, true)),
            spawn(&world, |world| world.live(2, 1, false)),
            spawn(&world, |world| world.live(3, 0, true)),
            spawn(&world, World::lend_all),
        ];
        for handle in threads {
            handle.join().unwrap();
        }
        world.check_nothing_lost();
    });
}

/// Owners exiting (one without its destructor) while two checkers hold their entries LENT
/// to ask whether they are gone: a release waits for the check, and a check of a live owner
/// puts its word back.
#[test]
fn exits_racing_checks_of_their_owners() {
    explore("exits_racing_checks_of_their_owners", || {
        let world = World::new(2, 1, 2);
        let threads = [
            spawn(&world, |world| world.live(1, 0, true)),
            spawn(&world, |world| world.live(2, 1, false)),
            spawn(&world, World::lend_all),
            spawn(&world, World::lend_all),
        ];
        for handle in threads {
            handle.join().unwrap();
        }
        world.check_nothing_lost();
    });
}

/// A thread id reused: a thread exits (releasing its slot, or not) and a new thread with the
/// same id claims a slot, while a lender and a late claimer check owners. A check that
/// found the first thread gone must not take the second one's slot.
#[test]
fn a_reused_thread_id_keeps_its_new_slot() {
    explore("a_reused_thread_id_keeps_its_new_slot", || {
        let world = World::new(1, 1, 2);
        let threads = [
            spawn(&world, |world| {
                world.live(1, 0, true);
                world.live(1, 0, false);
            }),
            spawn(&world, |world| world.live(2, 0, true)),
            spawn(&world, World::lend_all),
        ];
        for handle in threads {
            handle.join().unwrap();
        }
        world.check_nothing_lost();
    });
}

/// More threads than exclusive slots: the rest share behind the spin lock, which a lender
/// also tries.
#[test]
fn shared_slots_when_exclusive_ones_run_out() {
    explore("shared_slots_when_exclusive_ones_run_out", || {
        let world = World::new(1, 1, 3);
        let threads = [
            spawn(&world, |world| world.live(1, 0, true)),
            spawn(&world, |world| world.live(2, 0, true)),
            spawn(&world, |world| world.live(3, 0, true)),
            spawn(&world, World::lend_all),
        ];
        for handle in threads {
            handle.join().unwrap();
        }
        world.check_nothing_lost();
    });
}

/// The two allocators of the fork scenario: each "lock" is a spin lock its `prepare` takes
/// and its `after` releases, and which other threads take too, as allocation does. Used by
/// that scenario only (the tests of the binary run in parallel).
static LOCK_A: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static LOCK_B: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn take(lock: &std::sync::atomic::AtomicBool) {
    while lock.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
        shuttle::hint::spin_loop();
    }
}

/// Releases `lock`, failing if nobody held it: an `after` releasing an allocator it did
/// not prepare finds it free, or frees another thread's hold, whose own release then finds
/// it free.
fn give_back(lock: &std::sync::atomic::AtomicBool, who: &str) {
    assert!(lock.swap(false, Ordering::Release), "{who} released a lock nobody held");
}

static HOOKS_A: ForkHooks = ForkHooks { prepare: || take(&LOCK_A), after: after_a };
static HOOKS_B: ForkHooks = ForkHooks { prepare: || take(&LOCK_B), after: after_b };

/// # Safety
///
/// None: the test's hook.
unsafe fn after_a() {
    give_back(&LOCK_A, "the after handler (allocator A)");
}

/// # Safety
///
/// None: the test's hook.
unsafe fn after_b() {
    give_back(&LOCK_B, "the after handler (allocator B)");
}

/// Two allocators register their fork hooks (one of them twice, as two threads' first
/// claims would) while two threads fork, a thread in a shared slot takes allocator A's lock
/// and another thread takes B's. At each fork every shared-slot lock and every prepared
/// allocator's lock is held by the forking thread; each after handler releases exactly what
/// its prepare took (an allocator registered during a fork is not released by it); nothing
/// deadlocks (the lock order is shared slot, then allocator); at the end every lock is free
/// and each allocator is in the table once.
#[test]
fn fork_hooks_registered_during_forks() {
    explore("fork_hooks_registered_during_forks", || {
        LOCK_A.store(false, Ordering::Relaxed);
        LOCK_B.store(false, Ordering::Relaxed);
        let table = Arc::new(Table::new(1, 2, PROCESS, 3));
        let fork = |table: Arc<Table>| {
            thread::spawn(move || {
                table.fork(|prepared| {
                    for index in 0..2 {
                        assert!(table.shared_locked(index), "shared slot {index} open during a fork");
                    }
                    let hooks = table.fork_hooks();
                    assert!(prepared <= hooks.len());
                    for &hooks in &hooks[..prepared] {
                        let lock = if hooks == &raw const HOOKS_A { &LOCK_A } else { &LOCK_B };
                        assert!(
                            lock.load(Ordering::Relaxed),
                            "a prepared allocator's lock is open during a fork"
                        );
                    }
                });
            })
        };
        let threads = [
            fork(table.clone()),
            fork(table.clone()),
            {
                let table = table.clone();
                thread::spawn(move || {
                    table.register_fork_hooks(&HOOKS_A);
                    table.register_fork_hooks(&HOOKS_B);
                })
            },
            {
                let table = table.clone();
                thread::spawn(move || table.register_fork_hooks(&HOOKS_B))
            },
            {
                let table = table.clone();
                thread::spawn(move || {
                    table.with_shared_slot(1, |_| {
                        take(&LOCK_A);
                        give_back(&LOCK_A, "a thread in a shared slot");
                    });
                })
            },
            thread::spawn(|| {
                take(&LOCK_B);
                give_back(&LOCK_B, "a thread in its own slot");
            }),
        ];
        for handle in threads {
            handle.join().unwrap();
        }
        let hooks = table.fork_hooks();
        assert_eq!(hooks.len(), 2, "each allocator registered once");
        assert!(hooks.contains(&(&raw const HOOKS_A)) && hooks.contains(&(&raw const HOOKS_B)));
        assert!(!LOCK_A.load(Ordering::Relaxed) && !LOCK_B.load(Ordering::Relaxed));
        assert!(!table.shared_locked(0) && !table.shared_locked(1));
    });
}
