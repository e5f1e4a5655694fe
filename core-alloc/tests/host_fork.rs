//! `fork` in a multi-threaded Rust program whose global allocator is `HostAlloc`: worker
//! threads allocate and free without pause (small, large and huge blocks, each other's
//! blocks) while the main thread forks again and again; every child allocates in every path
//! and exits. A child that finds a lock held by a thread that does not exist in it (the
//! central heap's, a shared slot's) hangs: it is killed at a time limit and the test fails.
#![cfg(target_os = "linux")]

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::time::{Duration, Instant};

use core_alloc::host::HostAlloc;

#[global_allocator]
static GLOBAL: HostAlloc = HostAlloc;

const WORKERS: usize = 3;

fn size(state: &mut u64) -> usize {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    match *state % 100 {
        0..80 => 16 + (*state >> 8) as usize % 2000,
        80..98 => 40_000 + (*state >> 8) as usize % 900_000,
        _ => (3 << 20) + (*state >> 8) as usize % 100_000,
    }
}

/// What a child does before `_exit`: allocations of every kind. Returns whether they
/// succeeded and kept their bytes.
fn child_work() -> bool {
    let mut state = 0xC0FF_EE00 ^ u64::from(std::process::id());
    let mut kept = Vec::new();
    for _ in 0..200 {
        let mut block = vec![0u8; size(&mut state)];
        block[0] = 7;
        kept.push(block);
    }
    kept.iter().all(|block| block[0] == 7)
}

#[test]
fn forks_while_threads_allocate_leave_children_that_can_allocate() {
    let stop = Arc::new(AtomicBool::new(false));
    let handoff: Arc<[AtomicPtr<u8>; WORKERS]> = Arc::new(Default::default());
    let workers: Vec<_> = (0..WORKERS)
        .map(|index| {
            let (stop, handoff) = (stop.clone(), handoff.clone());
            std::thread::spawn(move || {
                let mut state = 0x51ED_2701 + index as u64;
                let mut kept: Vec<Vec<u8>> = (0..32).map(|_| Vec::new()).collect();
                let mut step = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    kept[step % 32] = vec![1u8; size(&mut state)];
                    // A block for the next worker to free (remote frees).
                    let given = Box::into_raw(Box::new([0u8; 48])).cast::<u8>();
                    let taken = handoff[(index + 1) % WORKERS].swap(given, Ordering::AcqRel);
                    if !taken.is_null() {
                        // SAFETY: every pointer in the hand-off slots is a Box<[u8; 48]>
                        // leaked above, taken out of its slot exactly once.
                        drop(unsafe { Box::from_raw(taken.cast::<[u8; 48]>()) });
                    }
                    step += 1;
                }
                black_box(&kept);
            })
        })
        .collect();
    let mut hung = 0;
    let rounds = 200;
    for _ in 0..rounds {
        // SAFETY: the child only allocates, frees and calls _exit; it never returns into
        // the test harness.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let ok = child_work();
            // SAFETY: _exit ends the child without running the parent's atexit handlers.
            unsafe { libc::_exit(if ok { 0 } else { 3 }) };
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut status = 0;
        loop {
            // SAFETY: waits for our own child without blocking.
            let done = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if done == pid {
                assert!(
                    libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
                    "a child failed: {status:#x}"
                );
                break;
            }
            if Instant::now() > deadline {
                // SAFETY: kills and reaps our own hung child.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, &mut status, 0);
                }
                hung += 1;
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.join().unwrap();
    }
    assert_eq!(hung, 0, "{hung} of {rounds} children hung on a lock the fork left held");
}
