//! Purging on Linux: after most blocks of a heap are freed but every chunk keeps a live one
//! (nothing can go back whole), `decay()` on a quiet heap purges the free pages after the
//! decay period and the process's resident memory falls by most of what was freed. Measured
//! as the change of `Rss` in `/proc/self/smaps_rollup` (this binary's only test, so nothing
//! else grows meanwhile; its own global allocator is the system one).

mod common;

use std::time::Duration;

use core_alloc::Allocator;
use page_provider::linux::MmapProvider;
use platform::host::HostPlatform;

/// 50 ms: short, so that the test waits little.
const DECAY_NS: u64 = 50_000_000;

static HEAP: Allocator<MmapProvider, HostPlatform> =
    Allocator::new(MmapProvider::new(), HostPlatform::new()).with_decay(DECAY_NS);

#[test]
fn freed_pages_inside_partly_used_chunks_leave_the_resident_set_after_the_period() {
    const SIZE: usize = 96 * 1024;
    const COUNT: usize = 640; // 60 MiB
    // Each chunk keeps live blocks, so none can go back whole.
    let (kept, peak) = common::scatter(&HEAP, SIZE, COUNT, 10);
    let stats = HEAP.stats();
    assert_eq!(stats.heap.cached_chunks, 0, "every chunk should keep a live block: {stats}");
    let freed_kib = ((COUNT - kept.len()) * SIZE / 1024) as u64;
    // The first pass marks the chunks' free pages (and notes the arena's activity), the
    // second, a period later, purges them (and flushes the idle arena's cached runs, purged
    // a period after that).
    // Four rounds are enough on a quiet machine; a loaded one (the test suite's other
    // binaries, CI) may need a few more passes, each bounded in provider calls.
    for round in 0..40 {
        HEAP.decay();
        let purged_kib = HEAP.stats().heap.purged_bytes as u64 / 1024;
        if round >= 4 && purged_kib >= freed_kib * 9 / 10 {
            break;
        }
        std::thread::sleep(Duration::from_nanos(DECAY_NS + DECAY_NS / 2));
    }
    let after = common::resident_kib();
    let stats = HEAP.stats();
    println!(
        "resident at peak {peak} KiB, after purging {after} KiB; freed {freed_kib} KiB; purged {} KiB in {} calls over {} chunks",
        stats.heap.purged_bytes / 1024,
        stats.heap.purges,
        stats.heap.purged_chunks
    );
    assert!(stats.heap.purged_bytes as u64 / 1024 >= freed_kib * 9 / 10, "{stats}");
    // Each chunk held 21 blocks (504 of its pages) before the frees: dense enough for a huge
    // page (asked once each; the last chunk, partly filled, perhaps not), and the first
    // purge of each such chunk split it (a chunk may be purged in more than one pass: pages
    // that became free at different times, or a pass's call budget).
    assert!(stats.heap.hugified_chunks >= COUNT / 21 - 1, "{stats}");
    assert!(
        stats.heap.huge_page_splits == stats.heap.hugified_chunks
            && stats.heap.huge_page_splits <= stats.heap.purged_chunks,
        "{stats}"
    );
    assert_eq!(
        stats.heap.huge_slab_chunks,
        stats.heap.hugified_chunks - stats.heap.huge_page_splits,
        "{stats}"
    );
    assert!(
        peak.saturating_sub(after) >= freed_kib * 8 / 10,
        "resident memory fell by {} KiB of {freed_kib} KiB freed",
        peak.saturating_sub(after)
    );
    common::free_scattered(&HEAP, SIZE, kept);
}
