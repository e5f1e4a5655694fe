//! Packing: slabs fill a chunk to its last pages. A slab is 16 pages or more and a chunk has
//! 511 or 510 usable pages (after its header), so a chunk full of whole slabs kept up to 15
//! pages that no slab fit, resident all the same once a huge page backs the chunk (2 MiB of
//! workload 6's 78). A slab may be shorter where that fills a gap
//! (`Heap::alloc_slab_in_gap`): what a chunk filled with slabs leaves is shorter than a
//! quarter slab.

use core_alloc::Allocator;
use core_alloc::config::{CHUNK_SIZE, PAGE};
use core_alloc::size_class::{class_for, slab_pages};
use core_alloc::testkit::{SimProvider, TestPlatform};

/// Fills a heap of one slab chunk with blocks of `size` bytes; returns the pages of the chunk
/// (its header's among them) that no slab took.
fn pages_left_by(size: usize) -> usize {
    // Two chunks: one for metadata, one for slabs.
    let heap = Allocator::new(SimProvider::new(2), TestPlatform::new()).with_front_cache(0);
    TestPlatform::enter(0);
    let mut blocks = Vec::new();
    while let Some(block) = heap.allocate(size, 8) {
        blocks.push(block);
    }
    let stats = heap.stats();
    assert_eq!(stats.heap.slab_chunks, 1, "{stats}");
    let left = (CHUNK_SIZE - stats.heap.slab_bytes) / PAGE;
    for block in blocks {
        // SAFETY: each block is live and freed once, with its size.
        unsafe { heap.deallocate(block, size, 8) };
    }
    heap.collect();
    assert_eq!(heap.stats().live_allocations(), 0);
    left
}

#[test]
fn slabs_fill_a_chunk_to_its_last_pages() {
    for size in [8, 64, 640, 3584, 4096] {
        let slab = slab_pages(class_for(size, 8).unwrap());
        let left = pages_left_by(size);
        // The header's one or two pages, and a gap shorter than a quarter slab.
        assert!(
            left < 2 + slab / 4,
            "{size}-byte blocks left {left} pages of the chunk to no slab ({slab}-page slabs)"
        );
    }
}
