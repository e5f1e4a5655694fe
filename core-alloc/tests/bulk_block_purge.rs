//! A program that frees most of its 16 KiB objects in bulk, keeping one in sixteen: the
//! slabs holding a kept block (four blocks each) cannot go back, but the pages of their
//! freed blocks are purged as they are freed (`Heap::purge_freed_block`: every page of a
//! block but its first, which holds its free-list link), so the resident set falls by
//! nearly all that was freed, without a call and without waiting for the decay period.
//! Measured as the change of `Rss` in `/proc/self/smaps_rollup` (this binary's only test;
//! its own global allocator is the system one).

mod common;

use common::Metered;
use core_alloc::Allocator;
use page_provider::linux::MmapProvider;
use platform::host::HostPlatform;

static HEAP: Allocator<Metered<MmapProvider>, HostPlatform> =
    Allocator::new(Metered::new(MmapProvider::new()), HostPlatform::new());

#[test]
fn a_bulk_free_purges_the_pages_of_freed_blocks_in_slabs_that_stay() {
    const SIZE: usize = 16 * 1024;
    const COUNT: usize = 3 * 1024; // 48 MiB
    const KEEP_EVERY: usize = 16; // one block in every fourth slab
    let (kept, peak) = common::scatter(&HEAP, SIZE, COUNT, KEEP_EVERY);
    let after = common::resident_kib();
    let stats = HEAP.stats();
    let freed_kib = ((COUNT - kept.len()) * SIZE / 1024) as u64;
    // The freed blocks of the slabs that keep one: three per kept block, three pages each.
    let in_kept_slabs_kib = (kept.len() * 3 * 12) as u64;
    println!(
        "resident at peak {peak} KiB, after the frees {after} KiB; freed {freed_kib} KiB ({in_kept_slabs_kib} KiB \
         in slabs that stay); block purges {} KiB in {} calls",
        stats.heap.block_purged_bytes / 1024,
        stats.heap.block_purges,
    );
    // Nearly every freed block in a slab that stays had its pages purged (a few frees come
    // before the program is seen to free in bulk).
    assert!(stats.heap.block_purged_bytes as u64 / 1024 >= in_kept_slabs_kib * 3 / 4, "{stats}");
    // The resident set fell by nearly all that was freed: the slabs that stay keep at most
    // a third of their freed blocks' bytes (first pages, and the blocks freed before the
    // bulk free purges), with 2 MiB of slack. Without the block purges it falls by about
    // 7 MiB less.
    let fell = peak.saturating_sub(after);
    assert!(
        fell + in_kept_slabs_kib / 3 + 2048 >= freed_kib,
        "resident memory fell by {fell} KiB of {freed_kib} KiB freed ({in_kept_slabs_kib} KiB in slabs that stay)"
    );
    assert_eq!(HEAP.provider().unhugified(), stats.heap.huge_page_splits, "{stats}");
    common::free_scattered(&HEAP, SIZE, kept);
}
