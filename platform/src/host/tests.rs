//! Tests of per-thread slots. Slots are process-wide, so these tests only assert properties
//! that hold whatever other tests in the binary do at the same time.

extern crate std;

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
    assert!(lent || OWNERS[slot].load(Ordering::Acquire) == OWNED, "slot stuck after its owner exited");
}

static EXITED_SLOTS: Mutex<Vec<usize>> = Mutex::new(Vec::new());

fn record_exit(slot: usize) {
    EXITED_SLOTS.lock().unwrap().push(slot);
}

static HOOKED: HostPlatform = HostPlatform::with_exit_hook(record_exit);

/// Issue 8: the hooks were stored as integers and transmuted back to `fn(usize)`, a pointer
/// without provenance; Miri stopped on the call. Run under Miri to check the fix.
#[test]
fn the_exit_hook_runs_with_the_exiting_threads_slot() {
    let slot = std::thread::spawn(|| HOOKED.with_slot(|slot| slot)).join().unwrap();
    // The hook runs in the pthread key destructor, before pthread_join returns.
    assert!(EXITED_SLOTS.lock().unwrap().contains(&slot), "exit hook did not run for slot {slot}");
}

#[test]
fn shared_slots_serialise_their_users() {
    let platform = HostPlatform::new();
    let inside: [AtomicUsize; SHARED_SLOTS] = [const { AtomicUsize::new(0) }; SHARED_SLOTS];
    let overlaps = AtomicUsize::new(0);
    let total = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                for _ in 0..2000 {
                    platform.with_shared_slot(|slot| {
                        assert!((EXCLUSIVE_SLOTS..MAX_SLOTS).contains(&slot));
                        let occupancy = &inside[slot - EXCLUSIVE_SLOTS];
                        if occupancy.fetch_add(1, Ordering::AcqRel) != 0 {
                            overlaps.fetch_add(1, Ordering::Relaxed);
                        }
                        std::hint::spin_loop();
                        total.fetch_add(1, Ordering::Relaxed);
                        occupancy.fetch_sub(1, Ordering::AcqRel);
                    });
                }
            });
        }
    });
    assert_eq!(overlaps.load(Ordering::Relaxed), 0, "two threads used one shared slot at once");
    assert_eq!(total.load(Ordering::Relaxed), 16000);
}

#[test]
#[cfg_attr(miri, ignore = "Miri's sysconf does not know the cache line size")]
fn reports_a_plausible_cache_line() {
    let line = HostPlatform::new().cache_line_size();
    assert!(line.is_power_of_two() && (32..=256).contains(&line), "{line}");
}
