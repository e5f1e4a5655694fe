//! Packing: runs go where they fit best (the chunk whose longest free range holds them most
//! tightly, and in it the shortest free range that holds them), and slabs fill a chunk to
//! its last pages.
//!
//! Slabs: a slab is 16 pages or more and a chunk has 511 or 510 usable pages (after its
//! header), so a chunk full of whole slabs kept up to 15 pages that no slab fit, resident
//! all the same once a huge page backs the chunk (2 MiB of workload 6's 78). A slab may be
//! shorter where that fills a gap (`Heap::alloc_slab_in_gap`): what a chunk filled with
//! slabs leaves is shorter than a quarter slab.

use std::ptr::NonNull;

use core_alloc::Allocator;
use core_alloc::config::{CHUNK_SIZE, PAGE};
use core_alloc::size_class::{class_for, slab_pages};
use core_alloc::testkit::{LIVE_BITS_CHUNKS, SimProvider, TestPlatform, USABLE_PAGES};

/// Pages of the heap's metadata runs (in the heap's first chunk).
fn meta_pages(heap: &Allocator<SimProvider, TestPlatform>) -> usize {
    heap.stats().heap.meta_bytes / PAGE
}

/// Fills a heap of one chunk (slabs and the heap's metadata) with blocks of `size` bytes;
/// returns the pages of the chunk (its header's among them) that no slab or metadata took.
fn pages_left_by(size: usize) -> usize {
    let heap =
        Allocator::new(SimProvider::new(1 + LIVE_BITS_CHUNKS), TestPlatform::new()).with_front_cache(0);
    TestPlatform::enter(0);
    let mut blocks = Vec::new();
    while let Some(block) = heap.allocate(size, 8) {
        blocks.push(block);
    }
    let stats = heap.stats();
    assert_eq!((stats.heap.slab_chunks, stats.heap.meta_chunks), (1, 1 + LIVE_BITS_CHUNKS), "{stats}");
    let left = (CHUNK_SIZE - stats.heap.slab_bytes - stats.heap.meta_bytes) / PAGE;
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

/// Allocates a large run of exactly `pages` pages.
fn run(heap: &Allocator<SimProvider, TestPlatform>, pages: usize) -> Option<NonNull<u8>> {
    heap.allocate(pages * PAGE, 8)
}

fn free_run(heap: &Allocator<SimProvider, TestPlatform>, block: NonNull<u8>, pages: usize) {
    // SAFETY: each block is live and freed once, with its size.
    unsafe { heap.deallocate(block, pages * PAGE, 8) };
}

/// Best fit: a run goes to the shortest free range that holds it, so that a long range
/// stays for a long run. A chunk with a free range of 300 pages and one of 100 takes a run
/// of 90 pages in the 100, and then one of 250 still fits (first fit cut the 300 to 210, and
/// the 250 found no room in a heap of one chunk).
#[test]
fn a_run_goes_to_the_free_range_that_fits_it_best() {
    let heap =
        Allocator::new(SimProvider::new(1 + LIVE_BITS_CHUNKS), TestPlatform::new()).with_front_cache(0);
    TestPlatform::enter(0);
    // The chunk's pages in order (after the heap's metadata): 200 and 100 (to be freed:
    // 300), 10, 100 (to be freed), and a last run taking whatever is left.
    let low = [(run(&heap, 200).unwrap(), 200), (run(&heap, 100).unwrap(), 100)];
    let kept = run(&heap, 10).unwrap();
    let middle = run(&heap, 100).unwrap();
    let last_pages = USABLE_PAGES - 410 - meta_pages(&heap);
    let last = run(&heap, last_pages).unwrap();
    assert!(run(&heap, 1).is_none(), "the chunk is not full: {}", heap.stats());
    for (block, pages) in low {
        free_run(&heap, block, pages);
    }
    free_run(&heap, middle, 100);
    let small = run(&heap, 90).unwrap();
    assert_eq!(small, middle, "a run of 90 pages did not go to the free range of 100");
    let long = run(&heap, 250).expect("first fit: the 300 pages were cut");
    for (block, pages) in [(small, 90), (long, 250), (kept, 10), (last, last_pages)] {
        free_run(&heap, block, pages);
    }
    heap.check_invariants().unwrap();
}

/// Best fit across chunks: a run goes to the chunk whose longest free range holds it most
/// tightly, not the first that holds it. Two chunks with free ranges of 140 and 250
/// pages, the longer one filed last: a run of 130 pages goes to the 140, and one of 250 then
/// still fits in the other (taking the first chunk, the 250, left no room for it in either;
/// only the heap's last resort, the room of the chunk holding its metadata, had some).
#[test]
fn a_run_goes_to_the_chunk_that_fits_it_best() {
    // The chunk of the heap's metadata and two for the runs.
    let heap =
        Allocator::new(SimProvider::new(3 + LIVE_BITS_CHUNKS), TestPlatform::new()).with_front_cache(0);
    TestPlatform::enter(0);
    let tight = [run(&heap, 185).unwrap(), run(&heap, 185).unwrap()];
    let tight_pages = USABLE_PAGES - 370;
    let tight_rest = run(&heap, tight_pages).unwrap();
    let loose = [run(&heap, 130).unwrap(), run(&heap, 130).unwrap()];
    let loose_pages = USABLE_PAGES - 260;
    let loose_rest = run(&heap, loose_pages).unwrap();
    let stats = heap.stats();
    assert_eq!(stats.heap.large_live_bytes, 2 * USABLE_PAGES * PAGE, "the chunks are not full: {stats}");
    assert_eq!(stats.heap.slab_chunks, 3, "{stats}");
    free_run(&heap, tight_rest, tight_pages);
    free_run(&heap, loose_rest, loose_pages);
    let small = run(&heap, 130).unwrap();
    assert_eq!(small, tight_rest, "a run of 130 pages did not go to the tighter chunk");
    let long = run(&heap, 250).unwrap();
    assert_eq!(long, loose_rest, "the run of 130 pages went to the chunk with the longer range");
    free_run(&heap, small, 130);
    free_run(&heap, long, 250);
    for block in tight {
        free_run(&heap, block, 185);
    }
    for block in loose {
        free_run(&heap, block, 130);
    }
    heap.check_invariants().unwrap();
}
