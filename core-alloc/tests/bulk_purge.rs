//! A program that frees most of its small objects in bulk gets their pages purged as it
//! frees, without a call and without waiting for the decay period (`Heap::free_run_in_bulk`):
//! every chunk keeps a few live blocks, so no chunk can go back whole, yet the resident set
//! falls by most of what was freed at once. A purged chunk that had a huge page loses its
//! huge-page request too (`PageProvider::unhugify`), so that khugepaged does not fill its
//! holes back in. Measured as the change of `Rss` in `/proc/self/smaps_rollup` (this
//! binary's only test; its own global allocator is the system one).

mod common;

use common::Metered;
use core_alloc::Allocator;
use page_provider::linux::MmapProvider;
use platform::host::HostPlatform;

static HEAP: Allocator<Metered<MmapProvider>, HostPlatform> =
    Allocator::new(Metered::new(MmapProvider::new()), HostPlatform::new());

#[test]
fn a_bulk_free_of_most_small_objects_purges_their_pages_at_once() {
    const SIZE: usize = 2048;
    const COUNT: usize = 24 * 1024; // 48 MiB: a big heap, whose chunks get huge pages
    const KEEP_EVERY: usize = 512; // a block in every 16 slabs or so: each chunk keeps some
    // Each chunk keeps live blocks, so none can go back whole.
    let (kept, peak) = common::scatter(&HEAP, SIZE, COUNT, KEEP_EVERY);
    let after = common::resident_kib();
    let stats = HEAP.stats();
    let freed_kib = ((COUNT - kept.len()) * SIZE / 1024) as u64;
    println!(
        "resident at peak {peak} KiB, after the frees {after} KiB; freed {freed_kib} KiB; purged {} KiB in {} \
         calls over {} chunks; {} huge pages split",
        stats.heap.purged_bytes / 1024,
        stats.heap.purges,
        stats.heap.purged_chunks,
        stats.heap.huge_page_splits
    );
    assert!(stats.heap.slab_chunks >= 20, "the chunks should all keep live blocks: {stats}");
    assert!(stats.heap.purged_bytes as u64 / 1024 >= freed_kib * 3 / 4, "{stats}");
    assert!(
        peak.saturating_sub(after) >= freed_kib * 2 / 3,
        "resident memory fell by {} KiB of {freed_kib} KiB freed",
        peak.saturating_sub(after)
    );
    // Every split huge page had its request withdrawn at the provider.
    assert!(stats.heap.huge_page_splits > 0, "{stats}");
    assert_eq!(HEAP.provider().unhugified(), stats.heap.huge_page_splits, "{stats}");
    common::free_scattered(&HEAP, SIZE, kept);
}
