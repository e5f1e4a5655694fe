//! Decay with a platform clock (`Allocator::with_decay`, `Allocator::decay`): the empty
//! chunks the central heap keeps for reuse go back to the provider once they have stayed
//! unused for the decay period, each after its own period (oldest first), not before; the
//! check runs on `decay()` and on the allocator's own slow paths; without a clock nothing
//! changes. Driven by `TestPlatform`'s manual clock over the simulated provider.

use std::ptr::NonNull;

use core_alloc::Allocator;
use core_alloc::testkit::{SimProvider, TestPlatform};

/// 300 KiB: a large run too big for the arenas' large caches, so a free goes straight to
/// the central heap; six fill a chunk (75 pages each, 510 usable).
const BLOCK: usize = 300 * 1024;
const PER_CHUNK: usize = 6;
const DECAY: u64 = 1_000;

type Heap = Allocator<SimProvider, TestPlatform>;

fn heap() -> Heap {
    Allocator::new(SimProvider::new(64), TestPlatform::with_clock()).with_decay(DECAY)
}

/// One chunk's worth of blocks.
fn fill_chunk(heap: &Heap) -> Vec<NonNull<u8>> {
    (0..PER_CHUNK).map(|_| heap.allocate(BLOCK, 8).expect("the simulated provider has room")).collect()
}

fn free_all(heap: &Heap, blocks: Vec<NonNull<u8>>) {
    for block in blocks {
        // SAFETY: each block was allocated by `heap` with this size and is freed once.
        unsafe { heap.deallocate(block, BLOCK, 8) };
    }
}

#[test]
fn each_empty_chunk_goes_back_after_its_own_decay_period_and_not_before() {
    let heap = heap();
    // Sixteen chunks in use, so that the count-based cache keeps up to three empty ones.
    let busy: Vec<_> = (0..16).flat_map(|_| fill_chunk(&heap)).collect();
    let (first, second, third) = (fill_chunk(&heap), fill_chunk(&heap), fill_chunk(&heap));
    let outstanding = heap.provider().outstanding();

    free_all(&heap, first); // empty since 0
    assert_eq!(heap.stats().heap.cached_chunks, 1, "{}", heap.stats());
    heap.platform().advance(600);
    free_all(&heap, second); // empty since 600
    assert_eq!(heap.stats().heap.cached_chunks, 2, "{}", heap.stats());
    assert_eq!(heap.provider().outstanding(), outstanding, "nothing goes back within the period");

    heap.platform().advance(DECAY - 600 - 1); // 999: the first is one short
    heap.decay();
    assert_eq!(heap.stats().heap.cached_chunks, 2, "{}", heap.stats());
    heap.platform().advance(1); // 1 000: the first has stayed its period
    heap.decay();
    let stats = heap.stats();
    assert_eq!((stats.heap.cached_chunks, stats.heap.decayed_chunks), (1, 1), "{stats}");
    assert_eq!(heap.provider().outstanding(), outstanding - 1);

    // The second goes back on a slow path of the allocator's own, without `decay()`: the
    // free that empties the third chunk at 1 700 finds it due.
    heap.platform().advance(700);
    free_all(&heap, third);
    let stats = heap.stats();
    assert_eq!((stats.heap.cached_chunks, stats.heap.decayed_chunks), (1, 2), "{stats}");
    assert_eq!(heap.provider().outstanding(), outstanding - 2);

    heap.platform().advance(DECAY);
    heap.decay();
    assert_eq!(heap.stats().heap.cached_chunks, 0);
    assert_eq!(heap.provider().outstanding(), outstanding - 3);
    free_all(&heap, busy);
    heap.check_invariants().unwrap();
    heap.collect();
    assert_eq!(heap.provider().outstanding(), heap.stats().heap.meta_chunks);
}

#[test]
fn a_cached_chunk_taken_for_reuse_is_no_longer_due() {
    let heap = heap();
    let busy: Vec<_> = (0..8).flat_map(|_| fill_chunk(&heap)).collect();
    free_all(&heap, fill_chunk(&heap));
    assert_eq!(heap.stats().heap.cached_chunks, 1);
    heap.platform().advance(DECAY - 1);
    // Reused before it was due: it holds blocks again, and nothing decays.
    let reused = fill_chunk(&heap);
    assert_eq!(heap.stats().heap.cached_chunks, 0);
    heap.platform().advance(10 * DECAY);
    heap.decay();
    assert_eq!(heap.stats().heap.decayed_chunks, 0);
    // Emptied again at 10 999: due at 11 999, not by its first time.
    free_all(&heap, reused);
    heap.decay();
    assert_eq!(heap.stats().heap.cached_chunks, 1, "{}", heap.stats());
    heap.platform().advance(DECAY);
    heap.decay();
    assert_eq!(heap.stats().heap.cached_chunks, 0);
    free_all(&heap, busy);
    heap.check_invariants().unwrap();
}

#[test]
fn without_a_clock_the_count_based_cache_is_all_there_is() {
    let heap = Allocator::new(SimProvider::new(64), TestPlatform::new()).with_decay(0);
    let busy: Vec<_> = (0..8).flat_map(|_| fill_chunk(&heap)).collect();
    free_all(&heap, fill_chunk(&heap));
    heap.decay();
    let stats = heap.stats();
    assert_eq!((stats.heap.cached_chunks, stats.heap.decayed_chunks), (1, 0), "{stats}");
    free_all(&heap, busy);
    heap.collect();
    assert_eq!(heap.provider().outstanding(), heap.stats().heap.meta_chunks);
}

#[test]
fn a_zero_period_keeps_no_empty_chunk() {
    let heap = Allocator::new(SimProvider::new(64), TestPlatform::with_clock()).with_decay(0);
    let busy: Vec<_> = (0..8).flat_map(|_| fill_chunk(&heap)).collect();
    let last = fill_chunk(&heap);
    let outstanding = heap.provider().outstanding();
    free_all(&heap, last);
    let stats = heap.stats();
    assert_eq!((stats.heap.cached_chunks, stats.heap.decayed_chunks), (0, 1), "{stats}");
    assert_eq!(heap.provider().outstanding(), outstanding - 1);
    free_all(&heap, busy);
    heap.check_invariants().unwrap();
}

#[test]
fn an_arena_idle_for_the_decay_period_gives_back_what_it_holds_unused() {
    let heap = heap();
    // The arena keeps its current slab (now empty) and a freed 64 KiB run in its cache,
    // both in the heap's one slab chunk.
    let small: Vec<_> = (0..100).map(|_| heap.allocate(48, 8).unwrap()).collect();
    let large = heap.allocate(64 * 1024, 8).unwrap();
    for block in small {
        // SAFETY: allocated above with this size, freed once.
        unsafe { heap.deallocate(block, 48, 8) };
    }
    // SAFETY: as above.
    unsafe { heap.deallocate(large, 64 * 1024, 8) };
    // Pages the arena holds in slabs and large runs (its chunk also holds the heap's
    // metadata, which stays).
    let held = |heap: &Heap| heap.stats().heap.slab_bytes + heap.stats().heap.large_live_bytes;
    let before = held(&heap);
    assert!(before >= 64 * 1024);
    assert_eq!(heap.stats().large_cached, 1);

    heap.decay(); // marks the arena at 0
    heap.platform().advance(DECAY - 1);
    heap.decay();
    assert_eq!(heap.stats().large_cached, 1, "flushed before the period");

    // Activity moves the mark: a period must pass again from the next look.
    let block = heap.allocate(64 * 1024, 8).unwrap(); // from the cache
    // SAFETY: as above.
    unsafe { heap.deallocate(block, 64 * 1024, 8) };
    heap.platform().advance(1);
    heap.decay(); // sees activity: marks at 1 000
    heap.platform().advance(DECAY - 1);
    heap.decay();
    assert_eq!(heap.stats().large_cached, 1, "flushed before a period without activity");

    heap.platform().advance(1);
    heap.decay();
    let stats = heap.stats();
    assert_eq!(stats.large_cached, 0, "{stats}");
    assert_eq!(held(&heap), 0, "the arena's slab and run went back to the heap: {stats}");
    heap.check_invariants().unwrap();
}

/// Fills a chunk with blocks whose bytes are all `value`.
fn fill_chunk_with(heap: &Heap, value: u8) -> Vec<NonNull<u8>> {
    let blocks = fill_chunk(heap);
    for block in &blocks {
        // SAFETY: a live block of BLOCK bytes.
        unsafe { block.as_ptr().write_bytes(value, BLOCK) };
    }
    blocks
}

#[test]
fn free_pages_of_a_mostly_free_chunk_unchanged_for_the_period_are_purged_once() {
    purge_once(true);
}

#[test]
fn a_purge_that_keeps_bytes_is_not_repeated_and_zeroed_allocations_still_clear() {
    purge_once(false);
}

/// The purge test over a provider whose purges zero (`MADV_DONTNEED`) or keep bytes
/// (`MADV_FREE`).
fn purge_once(zeroes: bool) {
    let heap = heap();
    heap.provider().set_purge_zeroes(zeroes);
    // Two chunks with one block left live each (mostly free), one with four (not).
    let (mut first, mut second, mut busy) =
        (fill_chunk_with(&heap, 1), fill_chunk_with(&heap, 2), fill_chunk_with(&heap, 3));
    let mostly_free = vec![first.pop().unwrap(), second.pop().unwrap()];
    free_all(&heap, first);
    free_all(&heap, second);
    free_all(&heap, busy.split_off(4));
    let purged = || heap.provider().purged_bytes();

    heap.decay(); // the pass notes the chunks' last change at 0
    heap.platform().advance(DECAY - 1);
    heap.decay();
    assert_eq!(purged(), 0, "purged before the period");
    heap.platform().advance(DECAY / 2); // due, and past the pass's quarter-period pacing
    heap.decay();
    let stats = heap.stats();
    assert_eq!(stats.heap.purged_chunks, 2, "{stats}");
    // At least the five freed blocks' pages of each chunk, in whole pages.
    assert!(purged() >= 2 * 5 * BLOCK, "purged {} bytes", purged());
    assert_eq!(stats.heap.purged_bytes, purged());
    // The live blocks kept their bytes.
    for (block, value) in mostly_free.iter().zip([1u8, 2]) {
        // SAFETY: live blocks of BLOCK bytes.
        let bytes = unsafe { std::slice::from_raw_parts(block.as_ptr(), BLOCK) };
        assert!(bytes.iter().all(|&byte| byte == value), "a live block lost its bytes");
    }
    for block in &busy {
        // SAFETY: as above.
        let bytes = unsafe { std::slice::from_raw_parts(block.as_ptr(), BLOCK) };
        assert!(bytes.iter().all(|&byte| byte == 3));
    }

    // Once per change: later passes leave the purged chunks alone.
    let before = purged();
    heap.platform().advance(3 * DECAY);
    heap.decay();
    assert_eq!(purged(), before, "purged again without a change");

    // Purged pages read as zero, and a zeroed allocation from them is zero.
    let zeroed = heap.allocate_zeroed(BLOCK, 8).unwrap();
    // SAFETY: a live block of BLOCK bytes.
    assert!(unsafe { std::slice::from_raw_parts(zeroed.as_ptr(), BLOCK) }.iter().all(|&byte| byte == 0));
    heap.check_invariants().unwrap();
    free_all(&heap, vec![zeroed]);
    free_all(&heap, mostly_free);
    free_all(&heap, busy);
    heap.check_invariants().unwrap();
}

/// Free pages are purged once they have stayed free for the decay period, also in a chunk
/// whose runs keep changing (each page's own time, not the chunk's last change): the pass
/// marks the free pages it finds, a carve unmarks the pages it takes, and a period after
/// the mark the pages still marked are purged (a page freed after the mark waits for the
/// next one). A chunk not backed by a huge page is purged so whether mostly free or not.
#[test]
fn pages_free_for_the_period_are_purged_while_their_chunk_changes() {
    let heap = heap();
    // Four blocks of 75 pages: 300 of the chunk's 510 usable pages, not dense enough for
    // a huge page.
    let mut blocks: Vec<NonNull<u8>> = (0..4).map(|_| heap.allocate(BLOCK, 8).unwrap()).collect();
    for (value, block) in blocks.iter().enumerate() {
        // SAFETY: live blocks of BLOCK bytes.
        unsafe { block.as_ptr().write_bytes(value as u8 + 1, BLOCK) };
    }
    assert_eq!(heap.stats().heap.huge_slab_chunks, 0);
    let purged = || heap.provider().purged_bytes();
    free_all(&heap, vec![blocks.remove(0)]);
    heap.decay(); // marks the chunk's free pages at 0: the first block's among them

    // Half a period on, the chunk changes: a second block freed, and a run of 200 pages
    // carved from the pages after the blocks (the only free range that holds it).
    heap.platform().advance(DECAY / 2);
    free_all(&heap, vec![blocks.remove(0)]);
    let other = heap.allocate(200 * 4096, 8).unwrap();
    heap.decay();
    assert_eq!(purged(), 0, "purged before the period");

    // A period after the mark: the first block's pages are purged (dirty, free since the
    // mark), not the second's (freed after it) nor the free pages nothing ever used (clean).
    heap.platform().advance(DECAY / 2 + DECAY / 4);
    heap.decay();
    assert_eq!(purged(), BLOCK, "{}", heap.stats());
    // The second block's pages a period after the next mark.
    heap.platform().advance(DECAY + DECAY / 4);
    heap.decay();
    assert_eq!(purged(), 2 * BLOCK, "{}", heap.stats());
    for (value, block) in blocks.iter().enumerate() {
        // SAFETY: live blocks of BLOCK bytes.
        let bytes = unsafe { std::slice::from_raw_parts(block.as_ptr(), BLOCK) };
        assert!(bytes.iter().all(|&byte| byte == value as u8 + 3), "a purge reached a live block");
    }
    heap.check_invariants().unwrap();
    // SAFETY: allocated above with this size, freed once.
    unsafe { heap.deallocate(other, 200 * 4096, 8) };
    free_all(&heap, blocks);
    heap.check_invariants().unwrap();
}
