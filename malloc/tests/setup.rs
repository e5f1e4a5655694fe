//! The library's own set-up and what surrounds it: allocation before `main`, memory that
//! libc allocates and the program frees, glibc's allocator never used, thread-local storage set up while modules with
//! TLS are loaded (glibc then allocates from inside `__tls_get_addr`), and the statistics
//! printed at exit on request.

mod common;

use std::process::Command;
use std::time::Duration;

#[test]
fn allocation_in_a_constructor_before_main() {
    common::run_c_test("init", &["constructor"], Duration::from_secs(30));
}

#[test]
fn blocks_allocated_inside_libc_are_freed_by_the_program() {
    common::run_c_test("init", &["libc-internal"], Duration::from_secs(30));
}

/// Nothing in the process, the library included, ever calls glibc's own allocator.
#[test]
fn glibc_malloc_is_never_used() {
    common::run_c_test("init", &["glibc-malloc-unused"], Duration::from_secs(30));
}

#[test]
fn thread_local_storage_of_modules_loaded_later() {
    let directory = common::scratch("tls-modules");
    let first = directory.join("tls_module_0.so");
    common::compile(&[common::c_source("tls_module.c")], &first, &["-shared", "-fPIC"]);
    // Copies under other names are distinct modules to the dynamic linker: 30 of them
    // overflow the TLS vector glibc gives each thread at creation, so it grows it.
    for index in 1..30 {
        std::fs::copy(&first, directory.join(format!("tls_module_{index}.so"))).expect("copy the module");
    }
    let directory = directory.to_str().expect("a UTF-8 path");
    common::run_c_test("init", &["tls-modules", directory], Duration::from_secs(60));
}

#[test]
fn statistics_at_exit_on_request() {
    let mut command = common::preloaded(Command::new(common::c_program("contract")));
    command.arg("malloc").env("CORE_ALLOC_STATS", "1");
    let outcome = common::run(command, Duration::from_secs(60));
    outcome.assert_success("contract malloc with statistics");
    let (ours, rest) = outcome.split_stderr();
    assert_eq!(rest, "", "only the statistics were expected on stderr");
    assert!(ours[0].starts_with("corealloc: statistics at exit of process "), "{ours:#?}");
    for part in ["live: ", "chunks: ", "size class", "mmap: "] {
        assert!(ours.iter().any(|line| line.contains(part)), "no `{part}` line: {ours:#?}");
    }
    // The program made a block of every size up to 4 KiB, each class at least once.
    let rows: Vec<(u64, u64)> = common::class_rows(&ours).collect();
    for class in [8, 16, 32, 48, 4096] {
        assert!(
            rows.iter().any(|&(size, allocated)| size == class && allocated > 0),
            "class {class} missing: {ours:#?}"
        );
    }

    for quiet in ["", "0"] {
        let mut command = common::preloaded(Command::new(common::c_program("contract")));
        command.arg("malloc").env("CORE_ALLOC_STATS", quiet);
        let outcome = common::run(command, Duration::from_secs(60));
        outcome.assert_success("contract malloc without statistics");
        assert_eq!(outcome.stderr, "", "CORE_ALLOC_STATS={quiet:?} must print nothing");
    }
}
