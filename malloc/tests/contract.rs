//! The contract of each C allocation function (results, alignment, usable size, contents
//! kept, zeroing, and NULL with `ENOMEM` or `EINVAL` on bad input and overflow), checked by
//! `c/contract.c` running with libcorealloc.so preloaded.

mod common;

use std::time::Duration;

fn contract(function: &str) {
    common::run_c_test("contract", &[function], Duration::from_secs(60));
}

#[test]
fn malloc() {
    contract("malloc");
}

#[test]
fn free() {
    contract("free");
}

#[test]
fn calloc() {
    contract("calloc");
}

#[test]
fn realloc() {
    contract("realloc");
}

#[test]
fn reallocarray() {
    contract("reallocarray");
}

#[test]
fn posix_memalign() {
    contract("posix_memalign");
}

#[test]
fn aligned_alloc() {
    contract("aligned_alloc");
}

#[test]
fn memalign() {
    contract("memalign");
}

#[test]
fn valloc() {
    contract("valloc");
}

#[test]
fn pvalloc() {
    contract("pvalloc");
}

#[test]
fn malloc_usable_size() {
    contract("malloc_usable_size");
}

#[test]
fn malloc_trim() {
    contract("malloc_trim");
}

#[test]
fn random_operations_keep_every_block_intact() {
    contract("stress");
}

/// The library exports exactly the C allocation API (and nothing of Rust's), with every
/// symbol bound at load time.
#[test]
fn exports_the_c_allocation_api() {
    let library = common::library();
    let output = std::process::Command::new("nm").args(["-D", "--defined-only"]).arg(&library).output();
    let Ok(output) = output else {
        println!("SKIPPED: nm (binutils) is not installed");
        return;
    };
    let symbols = String::from_utf8_lossy(&output.stdout);
    let mut exported: Vec<&str> = symbols
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, kind, name) = (fields.next()?, fields.next()?, fields.next()?);
            (kind == "T").then_some(name)
        })
        .collect();
    exported.sort_unstable();
    assert_eq!(
        exported,
        [
            "aligned_alloc",
            "calloc",
            "free",
            "malloc",
            "malloc_trim",
            "malloc_usable_size",
            "memalign",
            "posix_memalign",
            "pvalloc",
            "realloc",
            "reallocarray",
            "valloc"
        ]
    );
}
