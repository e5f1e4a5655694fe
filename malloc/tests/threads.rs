//! Threads: what a thread cached is given back when it exits, blocks freed by other threads
//! (also after their owner exited), allocation from thread-exit destructors, and many
//! threads making their first allocation at the same moment (`c/threads.c`).

mod common;

use std::process::Command;
use std::time::Duration;

/// 1000 short-lived threads, 8 at a time, each making 4000 allocations (about 5 MiB) and
/// leaving half its blocks to be freed by the main thread after it exited. At exit, with everything freed,
/// the allocator must hold almost nothing: exited threads' slabs were given back, not kept
/// by slots nobody uses (that would be hundreds of chunks).
#[test]
fn exited_threads_memory_is_given_back() {
    let mut command = common::preloaded(Command::new(common::c_program("threads")));
    command.arg("exit-churn").env("CORE_ALLOC_STATS", "1");
    let outcome = common::run(command, Duration::from_secs(120));
    outcome.assert_success("exit-churn");
    let (ours, rest) = outcome.split_stderr();
    assert_eq!(rest, "", "unexpected messages");
    let held = common::stat(&ours, "held").expect("chunks held in the statistics");
    let slab = common::stat(&ours, "slab").expect("slab chunks in the statistics");
    let live = common::stat(&ours, "allocations").expect("live allocations in the statistics");
    // 3.96 million small blocks (the large ones are not counted per class).
    assert!(common::allocations(&ours) > 3_900_000, "the threads' allocations are missing: {ours:#?}");
    assert!(held <= 8 && slab <= 4, "memory of exited threads was kept: {ours:#?}");
    assert!(live < 100, "blocks are still live after everything was freed: {ours:#?}");
}

#[test]
fn blocks_freed_by_other_threads() {
    common::run_c_test("threads", &["cross-free"], Duration::from_secs(120));
}

#[test]
fn allocation_in_thread_exit_destructors() {
    common::run_c_test("threads", &["exit-destructors"], Duration::from_secs(60));
}

#[test]
fn first_allocations_of_many_threads_at_once() {
    common::run_c_test("threads", &["first-touch"], Duration::from_secs(60));
}
