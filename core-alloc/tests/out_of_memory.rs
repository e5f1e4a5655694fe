//! Out of memory: over a provider that refuses after a few chunks, every path returns null
//! (no panic, no hang), and allocation works again once memory is freed.

mod common;

use std::ptr::NonNull;

use core_alloc::config::PAGE;
use core_alloc::size_class::{class_for, class_size, first_slab_pages};
use core_alloc::testkit::LIVE_BITS_CHUNKS;
use page_provider::CHUNK_SIZE;

/// Allocates `size`-byte blocks until the heap says no; returns them.
fn exhaust(heap: &common::MmapHeap, size: usize, align: usize) -> Vec<NonNull<u8>> {
    let mut blocks = Vec::new();
    while let Some(block) = heap.allocate(size, align) {
        // SAFETY: the block is live with `size` bytes.
        unsafe { block.as_ptr().write_bytes(0xAB, size) };
        blocks.push(block);
        assert!(blocks.len() < 10_000_000, "the limit is never reached");
    }
    blocks
}

#[test]
fn every_path_returns_null_when_the_provider_refuses_and_recovers_after_frees() {
    let heap = common::mmap_heap();
    heap.provider().set_limit(6);
    for (size, align) in [(24, 8), (3000, 16), (100_000, 4096), (300_000, 65536), (3 << 20, 8), (8, 1 << 20)]
    {
        let blocks = exhaust(heap, size, align);
        assert!(!blocks.is_empty() || size > 2 * CHUNK_SIZE, "nothing fit for {size}");
        assert!(heap.provider().refused() > 0);
        assert!(heap.provider().outstanding() <= 6);
        // Every other API fails cleanly too while memory is exhausted.
        assert!(heap.allocate_zeroed(size, align).is_none());
        if let Some(&first) = blocks.first() {
            // SAFETY: a live block with this alignment; growth fails, leaving it intact.
            let grown = unsafe { heap.reallocate(first, align, 64 << 20) };
            assert!(grown.is_none());
            // SAFETY: the block is live with `size` bytes.
            assert_eq!(unsafe { *first.as_ptr().add(size - 1) }, 0xAB, "a failed realloc damaged the block");
        }
        let count = blocks.len();
        for block in blocks {
            // SAFETY: allocated above with this size and alignment.
            unsafe { heap.deallocate(block, size, align) };
        }
        heap.collect();
        // The same amount fits again, but for the arena's small first slab of the class
        // (taken the first time only), which may have fitted where a whole slab cannot.
        let first_slab =
            class_for(size, align).map_or(0, |class| first_slab_pages(class) * PAGE / class_size(class));
        let again = exhaust(heap, size, align);
        assert!(
            again.len() + 2 + first_slab >= count,
            "only {} of {count} blocks fit after freeing",
            again.len()
        );
        for block in again {
            // SAFETY: allocated above with this size and alignment.
            unsafe { heap.deallocate(block, size, align) };
        }
        heap.collect();
    }
    let stats = heap.stats();
    assert_eq!(stats.live_allocations(), 0, "{stats}");
    heap.check_invariants().unwrap();
}

#[test]
fn a_provider_that_refuses_everything_gives_null_from_the_start() {
    let heap = common::mmap_heap();
    heap.provider().set_limit(0);
    assert!(heap.allocate(8, 8).is_none());
    assert!(heap.allocate(100_000, 8).is_none());
    assert!(heap.allocate(8 << 20, 8).is_none());
    let stats = heap.stats();
    assert_eq!(stats.live_allocations(), 0);
    heap.provider().set_limit(usize::MAX);
    let block = heap.allocate(8, 8).expect("allocation after the provider relents");
    // SAFETY: allocated just above.
    unsafe { heap.deallocate(block, 8, 8) };
}

#[test]
fn a_fixed_region_runs_out_and_recovers() {
    // Checked builds keep a chunk of the region for their live-bit tables.
    let heap = common::region_heap(4 + LIVE_BITS_CHUNKS);
    let mut blocks = Vec::new();
    while let Some(block) = heap.allocate(1000, 8) {
        blocks.push(block);
    }
    assert!(blocks.len() > 4000, "a 4-chunk region held only {} blocks of 1000 bytes", blocks.len());
    for block in blocks.drain(..) {
        // SAFETY: allocated above.
        unsafe { heap.free(block) };
    }
    heap.collect();
    let huge = heap.allocate(3 * CHUNK_SIZE, 8).expect("the freed region should hold 3 chunks again");
    // SAFETY: allocated just above.
    unsafe { heap.free(huge) };
}

/// Runs in the arena's large cache are free memory: a request the heap cannot serve
/// otherwise gets them back before the allocator says no, for a large request and for a
/// slab of a class not used before (32 KiB blocks: even its small first slab takes 32 pages,
/// more than the chunks have left).
#[test]
fn cached_large_runs_serve_a_request_before_it_fails() {
    const BLOCK: usize = 200 * 1024; // 50 pages: cached when freed
    const FILLER: usize = 36 * 1024; // 9 pages
    for request in [300 * 1024, 30_000] {
        let heap = common::mmap_heap();
        heap.provider().set_limit(3);
        let mut blocks = exhaust(heap, BLOCK, 8);
        assert!(blocks.len() >= 10, "only {} blocks fit", blocks.len());
        // The gaps the blocks leave filled too (9 pages each, below a 32 KiB slab's 32).
        let fillers = exhaust(heap, FILLER, 8);
        // Two neighbours freed: 100 free pages in one place, but held by the arena's cache.
        for block in blocks.drain(4..6) {
            // SAFETY: a live block of BLOCK bytes, freed once.
            unsafe { heap.deallocate(block, BLOCK, 8) };
        }
        assert_eq!(heap.stats().large_cached, 2);
        let served = heap.allocate(request, 8).expect("the cached runs should have served the request");
        assert_eq!(heap.stats().large_cached, 0, "the cache was not given back");
        if request > BLOCK {
            // Nothing else was free: what served it is what the cache held.
            assert!(heap.allocate(request, 8).is_none());
        }
        // SAFETY: live blocks, freed once.
        unsafe {
            heap.deallocate(served, request, 8);
            for block in blocks {
                heap.deallocate(block, BLOCK, 8);
            }
            for block in fillers {
                heap.deallocate(block, FILLER, 8);
            }
        }
        heap.check_invariants().unwrap();
    }
}
