//! A small program's footprint: a few MiB of small objects cost about their own size in
//! resident memory, not whole 2 MiB huge pages per chunk (slab chunks get a huge page only
//! once dense: `HUGIFY_PAGES`) nor a 2 MiB huge page of metadata. Measured as the growth of
//! the process's resident memory while the objects are allocated through the host allocator
//! (this binary's global allocator; this is its only test, so nothing else grows meanwhile).
//! Before the huge-page policy, with transparent huge pages in `madvise` mode, the same
//! objects grew the resident set by 1.7 times their size (6,148 KiB for 3,540).

mod common;

use core_alloc::host::HostAlloc;

#[global_allocator]
static GLOBAL: HostAlloc = HostAlloc;

#[test]
fn a_few_mib_of_small_objects_cost_about_their_size() {
    let before = common::resident_kib();
    // 3 MiB in objects of 16..512 bytes.
    let mut objects: Vec<Box<[u8]>> = Vec::with_capacity(30_000);
    let mut bytes = 0usize;
    let mut size = 16;
    while bytes < 3 << 20 {
        objects.push(vec![size as u8; size].into_boxed_slice());
        bytes += size;
        size = if size >= 512 { 16 } else { size + 8 };
    }
    let grown = common::resident_kib().saturating_sub(before);
    let live_kib = (bytes + objects.capacity() * size_of::<Box<[u8]>>()) as u64 / 1024;
    println!("{live_kib} KiB live in {} objects: resident +{grown} KiB", objects.len());
    assert!(
        grown * 2 <= live_kib * 3,
        "resident memory grew by {grown} KiB for {live_kib} KiB of objects (more than 1.5 times)"
    );
    assert!(objects.iter().all(|object| object.iter().all(|&byte| byte == object.len() as u8)));
}
