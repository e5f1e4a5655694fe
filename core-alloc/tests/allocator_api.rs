//! allocator-api2's `Allocator` trait: collections over a second heap, on stable Rust
//! (issue 9: kernels keep separate heaps). Over compact mode and over chunks.

use allocator_api2::alloc::{Allocator as Api, Layout};
use allocator_api2::boxed::Box;
use allocator_api2::vec::Vec;

mod common;

#[test]
fn collections_over_a_compact_heap_and_a_chunk_heap() {
    let compact = common::compact_heap(64 * 1024, 0);
    let chunks = common::mmap_heap();
    for round in 0..3 {
        let mut numbers = Vec::new_in(compact);
        for i in 0..3000u32 {
            numbers.push(i ^ round);
        }
        let boxed = Box::new_in([round as u64; 16], compact);
        let mut big = Vec::with_capacity_in(10, chunks);
        big.extend((0..200_000u64).map(|i| i * 3));
        assert!(compact.is_compact());
        assert_eq!(numbers.iter().map(|&n| u64::from(n ^ round)).sum::<u64>(), (0..3000u64).sum());
        assert_eq!(boxed.iter().sum::<u64>(), 16 * u64::from(round));
        assert_eq!(big.iter().sum::<u64>(), 3 * (0..200_000u64).sum::<u64>());
        numbers.shrink_to_fit();
        assert_eq!(numbers.len(), 3000);
    }
    assert_eq!(compact.stats().live_allocations(), 0);
    assert_eq!(chunks.stats().live_allocations(), 0);
    compact.check_invariants().unwrap();
}

#[test]
fn grow_to_a_larger_alignment_and_zeroed_growth() {
    let heap = common::compact_heap(256 * 1024, 0);
    // SAFETY: blocks of this heap used within their layouts and freed once.
    unsafe {
        let block = Api::allocate(heap, Layout::from_size_align(24, 8).unwrap()).unwrap().cast::<u8>();
        block.as_ptr().write_bytes(9, 24);
        let old = Layout::from_size_align(24, 8).unwrap();
        let new = Layout::from_size_align(5000, 4096).unwrap();
        let grown = Api::grow_zeroed(heap, block, old, new).unwrap().cast::<u8>();
        assert_eq!(grown.as_ptr() as usize % 4096, 0);
        let bytes = core::slice::from_raw_parts(grown.as_ptr(), 5000);
        assert!(bytes[..24].iter().all(|&b| b == 9) && bytes[24..].iter().all(|&b| b == 0));
        let shrunk =
            Api::shrink(heap, grown, new, Layout::from_size_align(10, 8).unwrap()).unwrap().cast::<u8>();
        assert!(core::slice::from_raw_parts(shrunk.as_ptr(), 10).iter().all(|&b| b == 9));
        Api::deallocate(heap, shrunk, Layout::from_size_align(10, 8).unwrap());
        let empty = Api::allocate(heap, Layout::from_size_align(0, 1).unwrap()).unwrap();
        Api::deallocate(heap, empty.cast(), Layout::from_size_align(0, 1).unwrap());
    }
    heap.collect();
    assert_eq!(heap.stats().live_allocations(), 0);
}
