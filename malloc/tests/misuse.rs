//! Memory the allocator never handed out, passed to `free`, `realloc` or
//! `malloc_usable_size`: the program must stop with a clear message and `SIGABRT`, as with
//! C allocators, without the allocator following the pointer. In builds with the `checked`
//! feature, double frees and pointers into the middle of a block are caught too.

mod common;

use std::process::Command;
use std::time::Duration;

/// Runs a case of `c/misuse.c` and checks it aborted with `message` on stderr.
fn aborts_with(case: &str, message: &str) {
    let mut command = common::preloaded(Command::new(common::c_program("misuse")));
    command.arg(case).env_remove("CORE_ALLOC_STATS");
    let outcome = common::run(command, Duration::from_secs(30));
    outcome.assert_aborted(case);
    assert!(!outcome.stdout.contains("survived"), "{case}: the program went on after the misuse");
    let (ours, _) = outcome.split_stderr();
    assert!(
        ours.iter().any(|line| line.contains(message) && line.ends_with("; aborting")),
        "{case}: expected a line with `{message}` on stderr, got:\n{}",
        outcome.stderr
    );
}

#[test]
fn free_of_a_stack_address() {
    aborts_with("free-stack", "free(): invalid pointer 0x");
}

#[test]
fn free_of_a_static_object() {
    aborts_with("free-static", "free(): invalid pointer 0x");
}

#[test]
fn free_of_a_private_mapping() {
    aborts_with("free-mapping", "free(): invalid pointer 0x");
}

#[test]
fn free_of_a_chunk_aligned_address_that_is_not_ours() {
    aborts_with("free-chunk-aligned", "free(): invalid pointer 0x");
}

#[test]
fn free_of_a_block_from_glibc_malloc() {
    aborts_with("free-libc-block", "free(): invalid pointer 0x");
}

#[test]
fn free_of_a_wild_pointer() {
    aborts_with("free-wild", "free(): invalid pointer 0x10:");
}

#[test]
fn realloc_of_a_foreign_pointer() {
    aborts_with("realloc-foreign", "realloc(): invalid pointer 0x");
}

#[test]
fn malloc_usable_size_of_a_foreign_pointer() {
    aborts_with("usable-size-foreign", "malloc_usable_size(): invalid pointer 0x");
}

/// Issue 8, defect 6: a pointer inside a huge block passed the chunk-map check, and the free
/// read the block's bytes as a chunk header.
#[test]
fn free_of_a_pointer_into_a_huge_block() {
    aborts_with("free-into-huge", "free(): invalid pointer 0x");
    aborts_with("free-into-huge-tail", "free(): invalid pointer 0x");
}

#[cfg(feature = "checked")]
#[test]
fn double_free() {
    aborts_with("double-free", "free(): double free of 0x");
}

#[cfg(feature = "checked")]
#[test]
fn free_of_a_pointer_into_a_block() {
    aborts_with("free-interior", "free(): invalid pointer 0x");
}
