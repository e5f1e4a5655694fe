//! Huge pages: with transparent huge pages in `madvise` (or `always`) mode, a workload that
//! keeps 256 MiB of small objects live has at least 90% of the allocator's resident memory
//! in huge pages (`AnonHugePages` in `/proc/self/smaps_rollup`). Where THP is off, or where
//! memory advised with `MADV_HUGEPAGE` gets no huge page at all (a probe mapping, made with
//! `mmap` and `madvise` directly, shows none: QEMU user-mode emulation ignores the advice),
//! the test says so and skips: it asserts the allocator's share where the system gives
//! huge pages to a program that asks for them.
//!
//! The allocator's share is measured as the growth of the process's resident and huge-page
//! memory while the objects are allocated (this binary's global allocator is the host
//! allocator, and this is its only test, so nothing else grows meanwhile).

mod common;

use core_alloc::host::HostAlloc;

#[global_allocator]
static GLOBAL: HostAlloc = HostAlloc;

/// (Rss, AnonHugePages) in KiB.
fn resident() -> (u64, u64) {
    (common::resident_kib(), common::smaps_rollup_kib("AnonHugePages:").unwrap_or(0))
}

/// Whether memory advised with `MADV_HUGEPAGE` gets huge pages here: maps 8 MiB, advises
/// it, writes every byte of the 2 MiB-aligned middle and reads how much of that became
/// huge pages (at least one 2 MiB page counts as yes).
fn advised_memory_gets_huge_pages() -> bool {
    const MIB: usize = 1 << 20;
    let length = 8 * MIB;
    // SAFETY: a fresh private anonymous mapping, written only inside its bounds, unmapped
    // before returning; no other code knows its address.
    unsafe {
        let map = libc::mmap(
            std::ptr::null_mut(),
            length,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if map == libc::MAP_FAILED {
            return false;
        }
        let start = (map as usize).next_multiple_of(2 * MIB);
        let (_, huge_before) = resident();
        let advised = libc::madvise(start as *mut libc::c_void, 4 * MIB, libc::MADV_HUGEPAGE) == 0;
        if advised {
            std::ptr::write_bytes(start as *mut u8, 1, 4 * MIB);
        }
        let (_, huge_after) = resident();
        libc::munmap(map, length);
        advised && huge_after >= huge_before + 2048
    }
}

#[test]
fn small_objects_live_in_huge_pages() {
    let mode = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    if !mode.contains("[always]") && !mode.contains("[madvise]") {
        println!("SKIPPED: transparent huge pages are off here ({})", mode.trim());
        return;
    }
    if !advised_memory_gets_huge_pages() {
        println!(
            "SKIPPED: memory advised with MADV_HUGEPAGE gets no huge page here (a probe mapping \
             got none: QEMU user-mode emulation ignores the advice, or the system has no free \
             2 MiB frames)"
        );
        return;
    }
    let (rss_before, huge_before) = resident();
    // 256 MiB and a bit in objects of 16..512 bytes.
    let mut objects: Vec<Box<[u8]>> = Vec::with_capacity(2_200_000);
    let mut bytes = 0usize;
    let mut size = 16;
    while bytes < 270 << 20 {
        objects.push(vec![size as u8; size].into_boxed_slice());
        bytes += size;
        size = if size >= 512 { 16 } else { size + 8 };
    }
    let (rss_after, huge_after) = resident();
    let grown = rss_after - rss_before;
    let grown_huge = huge_after - huge_before;
    let share = grown_huge as f64 / grown as f64;
    println!(
        "{} MiB live in {} objects: resident +{} KiB, huge pages +{} KiB ({:.1}%)",
        bytes >> 20,
        objects.len(),
        grown,
        grown_huge,
        share * 100.0
    );
    assert!(grown >= 256 << 10, "resident memory grew by only {grown} KiB");
    assert!(share >= 0.90, "only {:.1}% of the allocator's resident memory is in huge pages", share * 100.0);
    assert!(objects.iter().all(|object| object.iter().all(|&byte| byte == object.len() as u8)));
}
