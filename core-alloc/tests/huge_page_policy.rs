//! Huge pages as a policy (`core-alloc/src/heap/placement.rs`): a slab chunk is backed by
//! small pages until `HUGIFY_PAGES` of its pages are in runs, then the heap asks the provider
//! once for a huge page (`PageProvider::hugify`, counted at the provider boundary); a chunk
//! given back leaves the count of huge-page chunks. A huge allocation asks for huge pages
//! over the chunks it fills, not over the last one it fills in part. Purges that split a
//! chunk's huge page are counted in `tests/purge_rss.rs`.

mod common;

use std::ptr::NonNull;

use core_alloc::config::{CHUNK_SIZE, HUGIFY_PAGES, PAGE};

#[test]
fn a_chunk_asks_for_a_huge_page_once_it_is_dense() {
    let heap = common::mmap_heap();
    const SIZE: usize = 2048; // a size class with slabs of 16 pages or more
    let mut blocks: Vec<NonNull<u8>> = Vec::new();
    while heap.provider().hugified() == 0 {
        blocks.push(heap.allocate(SIZE, 8).unwrap());
        assert!(blocks.len() < 1 << 20, "no chunk became dense");
    }
    let stats = heap.stats();
    // The slabs in use when the chunk crossed the threshold: at least HUGIFY_PAGES pages,
    // all but the newest (at most 64 pages) full of blocks.
    let live_pages = blocks.len() * SIZE / PAGE;
    assert!(
        live_pages + 64 >= HUGIFY_PAGES,
        "asked for a huge page with {live_pages} pages of blocks, below {HUGIFY_PAGES}"
    );
    assert_eq!((stats.heap.hugified_chunks, stats.heap.huge_slab_chunks), (1, 1), "{stats}");
    // More blocks in the same chunk ask nothing more.
    for _ in 0..64 {
        blocks.push(heap.allocate(SIZE, 8).unwrap());
    }
    assert_eq!(heap.provider().hugified(), 1);
    for block in blocks {
        // SAFETY: allocated above with this size, freed once.
        unsafe { heap.deallocate(block, SIZE, 8) };
    }
    heap.collect();
    let stats = heap.stats();
    assert!(stats.holds_nothing_but_metadata() && stats.heap.cached_chunks == 0, "{stats}");
    assert_eq!(stats.heap.huge_slab_chunks, 0, "a chunk given back still counts as a huge page: {stats}");
    heap.check_invariants().unwrap();
}

#[test]
fn a_huge_block_asks_for_huge_pages_only_where_it_fills_its_chunks() {
    let heap = common::mmap_heap();
    // 1.5 MiB: one chunk, filled in part. A program that touches the start of such a buffer
    // (a vector with room reserved) would pay 2 MiB at its first touch with a huge page.
    let partial = CHUNK_SIZE * 3 / 4;
    let block = heap.allocate(partial, 8).unwrap();
    assert_eq!(heap.provider().hugified_fresh(), 0, "a chunk filled in part asked for a huge page");
    // 5 MiB: two chunks filled, a third in part.
    let big = 2 * CHUNK_SIZE + CHUNK_SIZE / 2;
    let other = heap.allocate(big, 8).unwrap();
    assert_eq!(heap.provider().hugified_fresh(), 2);
    // SAFETY: allocated above with these sizes, freed once.
    unsafe {
        heap.deallocate(block, partial, 8);
        heap.deallocate(other, big, 8);
    }
    heap.check_invariants().unwrap();
}
