//! Every size from 1 byte to 64 MiB (each size up to 8 KiB, then every class and page and
//! chunk boundary and its neighbours) at every power-of-two alignment up to 2 MiB: the block
//! is aligned, usable over its whole size, and disjoint from every other live block.

mod common;

use std::collections::BTreeMap;
use std::ptr::NonNull;

use core_alloc::size_class::{CLASS_COUNT, class_size};
use page_provider::CHUNK_SIZE;

/// The sizes to try: all up to 8 KiB, then boundaries and their neighbours up to 64 MiB.
fn sizes() -> Vec<usize> {
    let mut sizes: Vec<usize> = (1..=8192).collect();
    let mut boundaries: Vec<usize> = (0..CLASS_COUNT).map(class_size).collect();
    for shift in 12..=26 {
        boundaries.push(1 << shift);
        boundaries.push(3 << (shift - 1));
    }
    boundaries.extend([1 << 20, CHUNK_SIZE, 64 << 20]);
    for boundary in boundaries {
        for size in [boundary - 1, boundary, boundary + 1] {
            if size <= 64 << 20 {
                sizes.push(size);
            }
        }
    }
    sizes.sort_unstable();
    sizes.dedup();
    sizes
}

/// Writes a pattern unique to `tag` over the block and reads it back: every byte, or one
/// word a page plus the last bytes when `whole` is false.
fn fill_and_check(block: *mut u8, size: usize, tag: u64, whole: bool) {
    let word = tag.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let stride = if whole { 8 } else { 4096 };
    let width = if whole { 8 } else { 1 };
    let last = (size - 1) / stride * stride != size - 1 && !whole;
    let offsets = move || (0..size).step_by(stride).chain(last.then_some(size - 1));
    // SAFETY: the block is live with `size` bytes (the allocator's promise under test).
    unsafe {
        for offset in offsets() {
            let bytes = (word ^ offset as u64).to_le_bytes();
            let take = (size - offset).min(width);
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), block.add(offset), take);
        }
        for offset in offsets() {
            let bytes = (word ^ offset as u64).to_le_bytes();
            let take = (size - offset).min(width);
            let found = std::slice::from_raw_parts(block.add(offset), take);
            assert_eq!(found, &bytes[..take], "block {block:p} size {size} lost bytes at {offset}");
        }
    }
}

#[test]
fn every_size_and_alignment_is_aligned_usable_and_disjoint() {
    let heap = common::mmap_heap();
    let mut live: BTreeMap<usize, (usize, usize, u64)> = BTreeMap::new();
    let mut tag = 0u64;
    for size in sizes() {
        // Filling every byte of big blocks at all 22 alignments would write gigabytes: blocks
        // above 64 KiB are filled whole at alignments 1 and 2 MiB and a word a page otherwise.
        for shift in 0..=21 {
            let align = 1usize << shift;
            let block =
                heap.allocate(size, align).unwrap_or_else(|| panic!("no memory for {size} at {align}"));
            let address = block.as_ptr() as usize;
            assert_eq!(address % align, 0, "size {size} align {align}: {address:#x} misaligned");
            assert!(heap.check_usable(block, size), "usable size below {size}");
            if let Some((&start, &(other, _, _))) = live.range(..address + size).next_back() {
                assert!(start + other <= address, "{address:#x}+{size} overlaps {start:#x}+{other}");
            }
            tag += 1;
            let whole = size <= 64 << 10 || shift == 0 || shift == 21;
            fill_and_check(block.as_ptr(), size, tag, whole);
            live.insert(address, (size, align, tag));
        }
        // Keep small blocks of many sizes live together; free big ones promptly.
        let keep_live = size <= 4096 && live.len() < 20_000;
        if !keep_live {
            free_all(heap, &mut live);
        }
    }
    free_all(heap, &mut live);
    let stats = heap.stats();
    assert_eq!(stats.live_allocations(), 0, "{stats}");
    assert_eq!(stats.live_bytes(), 0, "{stats}");
    heap.check_invariants().unwrap();
}

fn free_all(heap: &common::MmapHeap, live: &mut BTreeMap<usize, (usize, usize, u64)>) {
    for (address, (size, align, tag)) in std::mem::take(live) {
        let word = tag.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let first = word.to_le_bytes();
        // SAFETY: the block is live with at least one byte.
        let found = unsafe { *(address as *const u8) };
        assert_eq!(found, first[0], "block {address:#x} overwritten before its free");
        // SAFETY: allocated above with this size and alignment, not freed yet.
        unsafe { heap.deallocate(NonNull::new(address as *mut u8).unwrap(), size, align) };
    }
}

/// `usable_size` must cover the request.
trait CheckUsable {
    fn check_usable(&self, block: NonNull<u8>, size: usize) -> bool;
}

impl CheckUsable for common::MmapHeap {
    fn check_usable(&self, block: NonNull<u8>, size: usize) -> bool {
        // SAFETY: the block is live.
        unsafe { self.usable_size(block) >= size }
    }
}

#[test]
fn a_free_without_a_size_follows_pages_from_slabs_to_large_runs_and_back() {
    // An unsized free (C's `free`) takes a block's class from its page's class byte. Pages
    // of slabs given back and carved again for large runs must read as no class, and pages
    // of large runs given back and carved again for slabs as the new slab's: each free below
    // lands where its block came from, which the statistics and the heap's own checks see.
    // One small block stays live each round, so that its chunk stays (a chunk that empties
    // is formatted afresh when it comes back).
    let heap = common::mmap_heap();
    let class_of = |size: usize| (0..CLASS_COUNT).find(|&index| class_size(index) >= size).unwrap();
    let (small, large) = (2048, 64 * 1024);
    let small_frees = |heap: &common::MmapHeap| heap.stats().classes[class_of(small)].frees;
    for round in 0..4 {
        // Slabs of 2 KiB blocks, freed without sizes and given back, but for the first.
        let blocks: Vec<NonNull<u8>> = (0..2000).map(|_| heap.allocate(small, 8).unwrap()).collect();
        let pages: std::collections::BTreeSet<usize> =
            blocks.iter().map(|b| b.as_ptr() as usize >> 12).collect();
        let before = small_frees(heap);
        for &block in &blocks[1..] {
            // SAFETY: a live block of this heap, freed once.
            unsafe { heap.free(block) };
        }
        assert_eq!(small_frees(heap) - before, 1999, "round {round}: the small frees went elsewhere");
        heap.collect();
        // Large runs over those pages, freed without sizes: none may count as a small free.
        let runs: Vec<NonNull<u8>> = (0..60).map(|_| heap.allocate(large, 8).unwrap()).collect();
        let reused = runs.iter().filter(|run| pages.contains(&(run.as_ptr() as usize >> 12))).count();
        assert!(reused > 0, "round {round}: no large run reused a slab's pages");
        let (before, live) = (small_frees(heap), heap.stats().heap.large_live);
        for &run in &runs {
            // SAFETY: as above.
            unsafe { heap.free(run) };
        }
        let stats = heap.stats();
        assert_eq!(small_frees(heap), before, "round {round}: a large block was freed as a small one");
        assert_eq!(stats.heap.large_live, live - 60, "round {round}: {stats}");
        // SAFETY: as above.
        unsafe { heap.free(blocks[0]) };
        heap.collect();
        heap.check_invariants().unwrap();
    }
    assert_eq!(heap.stats().live_allocations(), 0);
}
