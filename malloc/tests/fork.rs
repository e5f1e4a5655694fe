//! fork in multi-threaded programs: the child of a parent whose threads allocate and free
//! without pause must be able to allocate in every path, start threads and fork again
//! (`c/fork.c`), also when the program's own fork handlers allocate (`c/init.c`).

mod common;

use std::time::Duration;

#[test]
fn children_of_a_multi_threaded_parent_allocate() {
    common::run_c_test("fork", &["40"], Duration::from_secs(180));
}

#[test]
fn fork_handlers_of_the_program_may_allocate() {
    common::run_c_test("init", &["atfork-handlers"], Duration::from_secs(120));
}
