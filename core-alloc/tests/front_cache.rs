//! The front cache (see `core-alloc/src/front_cache.rs`): freed blocks served again first,
//! counted as freed and reported as cached, the older half given back when a class's stack
//! overflows, every cached block given back by `flush_cache()`, `collect()`, an idle
//! `decay()`, the slot's release and an allocation about to fail, and blocks of other slots'
//! slabs going back to those slots.
//!
//! An arena's first slab of a class is small (`size_class::first_slab_pages`); the tests
//! that count on whole slabs of `slab_capacity` blocks take it first ([`take_first_slab`]).

use std::collections::HashSet;
use std::ptr::NonNull;

use core_alloc::Allocator;
use core_alloc::config::PAGE;
use core_alloc::config::{FRONT_CACHE_BLOCKS, FRONT_CACHE_BYTES};
use core_alloc::size_class::{class_for, class_size, first_slab_pages, slab_capacity};
use core_alloc::testkit::{LIVE_BITS_CHUNKS, SimProvider, TestPlatform};
use platform::Platform;

type Heap = Allocator<SimProvider, TestPlatform>;

fn heap(chunks: usize) -> Heap {
    Allocator::new(SimProvider::new(chunks), TestPlatform::new())
}

fn allocate(heap: &Heap, size: usize) -> usize {
    heap.allocate(size, 8).expect("out of memory").as_ptr() as usize
}

fn free(heap: &Heap, block: usize, size: usize) {
    // SAFETY: each test frees each of its blocks once, with its size.
    unsafe { heap.deallocate(NonNull::new(block as *mut u8).unwrap(), size, 8) }
}

fn free_unsized(heap: &Heap, block: usize) {
    // SAFETY: as above.
    unsafe { heap.free(NonNull::new(block as *mut u8).unwrap()) }
}

fn cached(heap: &Heap, size: usize) -> u64 {
    heap.stats().classes[class_for(size, 8).unwrap()].cached
}

/// Fills the arena's small first slab of `size`'s class and returns its blocks, so that the
/// class's next slabs are whole ones: the caller keeps them live until it frees them last.
fn take_first_slab(heap: &Heap, size: usize) -> Vec<usize> {
    let class = class_for(size, 8).unwrap();
    (0..first_slab_pages(class) * PAGE / class_size(class)).map(|_| allocate(heap, size)).collect()
}

/// The capacity of the 64-byte class: the limit, or the byte bound.
fn capacity(size: usize) -> usize {
    FRONT_CACHE_BLOCKS.min(FRONT_CACHE_BYTES / class_size(class_for(size, 8).unwrap()))
}

#[test]
fn freed_blocks_come_back_newest_first_and_count_as_freed() {
    let heap = heap(8);
    TestPlatform::enter(0);
    let blocks: Vec<usize> = (0..10).map(|_| allocate(&heap, 64)).collect();
    for (index, &block) in blocks.iter().enumerate() {
        // Sized and unsized frees both go to the cache.
        if index % 2 == 0 { free(&heap, block, 64) } else { free_unsized(&heap, block) }
    }
    let stats = heap.stats();
    assert_eq!(stats.live_allocations(), 0, "{stats}");
    assert_eq!(cached(&heap, 64), 10, "{stats}");
    assert!(stats.to_string().contains("cached"), "{stats}");
    heap.check_invariants().unwrap();
    for &expected in blocks.iter().rev() {
        assert_eq!(allocate(&heap, 64), expected, "the cache does not serve the newest block first");
    }
    assert_eq!(cached(&heap, 64), 0);
    assert_eq!(heap.stats().live_allocations(), 10);
}

/// The statistics count every allocation and free exactly, though an allocation the front
/// cache serves is not counted on its path but derived from the frees, the flushes and the
/// stack (see `ArenaCounters`): through pops, overflowing stacks, a bulk free's drain, a
/// class that is not cached, and `collect()`.
#[test]
fn allocations_the_cache_serves_are_counted_exactly() {
    let heap = heap(16);
    TestPlatform::enter(0);
    let counts = |size: usize| {
        let class = heap.stats().classes[class_for(size, 8).unwrap()];
        (class.allocations, class.frees)
    };
    for size in [64, 16 * 1024] {
        let (mut allocated, mut freed) = (0u64, 0u64);
        let mut live = Vec::new();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for step in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // Runs of frees long enough to overflow the stack, and of allocations to empty it.
            let allocating = (step / 200) % 2 == 0 || live.is_empty();
            if allocating && live.len() < 2_000 {
                live.push(allocate(&heap, size));
                allocated += 1;
            } else if !live.is_empty() {
                let block = live.swap_remove(state as usize % live.len());
                free(&heap, block, size);
                freed += 1;
            }
            if step % 499 == 0 {
                assert_eq!(counts(size), (allocated, freed), "size {size}, step {step}: {}", heap.stats());
            }
        }
        for block in live.drain(..) {
            free(&heap, block, size);
            freed += 1;
        }
        assert_eq!(counts(size), (allocated, freed), "after freeing everything: {}", heap.stats());
        heap.collect();
        assert_eq!(counts(size), (allocated, freed), "after collect: {}", heap.stats());
        assert_eq!(heap.stats().live_allocations(), 0);
    }
    heap.check_invariants().unwrap();
}

#[test]
fn an_overflowing_stack_gives_its_older_half_back_and_never_hands_a_block_out_twice() {
    let heap = heap(8);
    TestPlatform::enter(0);
    let first = take_first_slab(&heap, 64);
    let capacity = capacity(64);
    assert!(capacity >= 4);
    let blocks: Vec<usize> = (0..3 * capacity).map(|_| allocate(&heap, 64)).collect();
    for (count, &block) in blocks.iter().enumerate() {
        free(&heap, block, 64);
        let held = cached(&heap, 64) as usize;
        assert!(held <= capacity, "{held} cached, more than {capacity}");
        assert!(
            held > 0 && (count < capacity) == (held == count + 1),
            "count {count} held {held} cap {capacity}: {}",
            heap.stats()
        );
        heap.check_invariants().unwrap();
    }
    // Everything comes back exactly once, from the cache or from the slab.
    let again: Vec<usize> = (0..blocks.len()).map(|_| allocate(&heap, 64)).collect();
    let distinct: HashSet<usize> = again.iter().copied().collect();
    assert_eq!(distinct.len(), again.len(), "a block was handed out twice");
    assert_eq!(distinct, blocks.iter().copied().collect::<HashSet<_>>());
    for block in again.into_iter().chain(first) {
        free(&heap, block, 64);
    }
    heap.collect();
    assert_eq!(heap.stats().live_allocations(), 0);
    assert_eq!(heap.provider().outstanding(), heap.stats().heap.meta_chunks, "{}", heap.stats());
}

#[test]
fn flush_collect_and_release_give_every_cached_block_back() {
    let heap = heap(8);
    TestPlatform::enter(0);
    let first = take_first_slab(&heap, 64);
    let blocks: Vec<usize> =
        (0..slab_capacity(class_for(64, 8).unwrap())).map(|_| allocate(&heap, 64)).collect();
    for &block in &blocks {
        free(&heap, block, 64);
    }
    assert!(cached(&heap, 64) > 0);
    // The cached blocks keep their slab: it cannot go back yet.
    assert!(heap.stats().heap.slab_chunks > 0);
    heap.flush_cache();
    assert_eq!(cached(&heap, 64), 0);
    for block in first {
        free(&heap, block, 64);
    }
    heap.flush_cache();
    heap.collect();
    assert!(heap.stats().holds_nothing_but_metadata(), "{}", heap.stats());

    // The slot's release (a thread's exit) flushes too, before it abandons its slabs.
    let first = take_first_slab(&heap, 200);
    let blocks: Vec<usize> = (0..100).map(|_| allocate(&heap, 200)).collect();
    for &block in &blocks {
        free(&heap, block, 200);
    }
    assert!(cached(&heap, 200) > 0);
    for block in first {
        free(&heap, block, 200);
    }
    // SAFETY: the slot is this thread's, outside any other allocator call.
    heap.platform().with_slot(|slot| unsafe { heap.release_slot(slot) });
    let stats = heap.stats();
    assert_eq!(cached(&heap, 200), 0, "{stats}");
    assert_eq!(stats.heap.orphan_slabs, 0, "{stats}");
    heap.collect();
    assert_eq!(heap.provider().outstanding(), heap.stats().heap.meta_chunks);
}

#[test]
fn blocks_of_another_slots_slab_go_back_to_that_slot() {
    let heap = heap(8);
    TestPlatform::enter(1);
    let blocks: Vec<usize> = (0..20).map(|_| allocate(&heap, 64)).collect();
    // Slot 2 frees them: they wait in its cache, then go back as remote frees.
    TestPlatform::enter(2);
    for &block in &blocks {
        free(&heap, block, 64);
    }
    assert_eq!(cached(&heap, 64), 20);
    heap.flush_cache();
    assert_eq!(cached(&heap, 64), 0);
    heap.check_invariants().unwrap();
    // Slot 1 finds them in its slab (it collects remote frees on its refills).
    TestPlatform::enter(1);
    heap.collect();
    assert_eq!(heap.stats().live_allocations(), 0);
    assert!(heap.stats().holds_nothing_but_metadata(), "{}", heap.stats());
}

#[test]
fn an_allocation_about_to_fail_gets_the_cached_blocks_back_first() {
    // A heap of one chunk (slabs and the heap's metadata): fill it with 64-byte blocks, free
    // them all, the last one freed of each slab staying in the cache (fresh slabs hand their
    // blocks out in order, so consecutive allocations share a slab), and ask for a class that
    // needs a slab of its own.
    let heap = heap(1 + LIVE_BITS_CHUNKS);
    TestPlatform::enter(0);
    // Both classes past their small first slabs: the 24-byte class then needs a whole slab.
    let first: Vec<usize> =
        take_first_slab(&heap, 24).into_iter().chain(take_first_slab(&heap, 64)).collect();
    // Half the chunk in one large run, so that the 64-byte slabs filling the rest (a slab per
    // 16 pages, and a shorter one in the gap left) are fewer than half the cache's blocks.
    let half = allocate(&heap, 1 << 20);
    let mut blocks = Vec::new();
    while let Some(block) = heap.allocate(64, 8) {
        blocks.push(block.as_ptr() as usize);
    }
    assert!(heap.allocate(24, 8).is_none(), "the heap is not full");
    let per_slab = slab_capacity(class_for(64, 8).unwrap());
    let pinning: Vec<usize> = blocks.iter().copied().step_by(per_slab).collect();
    let rest = blocks.iter().enumerate().filter(|(index, _)| index % per_slab != 0).map(|(_, &block)| block);
    assert!(pinning.len() > 1 && pinning.len() < capacity(64) / 2, "{} slabs", pinning.len());
    for block in rest.chain(pinning.iter().copied()) {
        free(&heap, block, 64);
    }
    assert!(cached(&heap, 64) as usize >= blocks.len() / per_slab);
    let other = heap.allocate(24, 8).expect("the cached blocks were not given back before failing");
    free(&heap, other.as_ptr() as usize, 24);
    free(&heap, half, 1 << 20);
    for block in first {
        free_unsized(&heap, block);
    }
    heap.collect();
    assert_eq!(heap.stats().live_allocations(), 0);
}

#[test]
fn without_a_front_cache_every_free_goes_to_its_slab() {
    let heap = Allocator::new(SimProvider::new(8), TestPlatform::new()).with_front_cache(0);
    TestPlatform::enter(0);
    let blocks: Vec<usize> = (0..100).map(|_| allocate(&heap, 64)).collect();
    for &block in &blocks {
        free(&heap, block, 64);
    }
    assert_eq!(cached(&heap, 64), 0);
    heap.collect();
    assert!(heap.stats().holds_nothing_but_metadata(), "{}", heap.stats());
}

#[test]
fn big_classes_are_not_cached_and_each_class_holds_at_most_its_bytes() {
    let heap = heap(16);
    TestPlatform::enter(0);
    let mut first = Vec::new();
    for size in [8, 64, 1000, 4000, 8192, 16384, 32768] {
        // Fewer than a whole slab holds, past the small first one: no slab empties, so the
        // class is not drained (see the bulk-free test) and the bounds alone decide.
        first.extend(take_first_slab(&heap, size).into_iter().map(|block| (block, size)));
        let count = 80.min(slab_capacity(class_for(size, 8).unwrap()) - 1);
        let blocks: Vec<usize> = (0..count).map(|_| allocate(&heap, size)).collect();
        for &block in &blocks {
            free(&heap, block, size);
        }
        let held = cached(&heap, size) as usize;
        let block_size = class_size(class_for(size, 8).unwrap());
        assert!(held <= FRONT_CACHE_BLOCKS && held * block_size <= FRONT_CACHE_BYTES, "{size}: {held}");
        assert_eq!(held == 0, FRONT_CACHE_BYTES / block_size < 2, "{size}: {held}");
    }
    for (block, size) in first {
        free(&heap, block, size);
    }
    heap.check_invariants().unwrap();
}

#[test]
fn a_bulk_free_drains_the_cache_so_that_emptied_slabs_go_back() {
    let heap = heap(8);
    TestPlatform::enter(0);
    let per_slab = slab_capacity(class_for(64, 8).unwrap());
    // Four slabs' worth, freed in allocation order: the first slabs empty while the cache
    // overflows, which says the program is freeing in bulk.
    let blocks: Vec<usize> = (0..4 * per_slab).map(|_| allocate(&heap, 64)).collect();
    // A block of another class waits in the cache meanwhile.
    let bystander = allocate(&heap, 200);
    free(&heap, bystander, 200);
    assert_eq!(cached(&heap, 200), 1);
    for &block in &blocks {
        free(&heap, block, 64);
    }
    let stats = heap.stats();
    assert_eq!(cached(&heap, 64), 0, "the cache kept blocks of a class freed in bulk: {stats}");
    assert_eq!(cached(&heap, 200), 0, "a bulk free left other classes' blocks cached: {stats}");
    // Every slab but the current one went back; the chunk empties once that one does.
    heap.check_invariants().unwrap();
    heap.collect();
    assert!(heap.stats().holds_nothing_but_metadata(), "{}", heap.stats());
    // Allocating the class again (a refill) caches it again.
    let block = allocate(&heap, 64);
    let other = allocate(&heap, 64);
    free(&heap, block, 64);
    assert_eq!(cached(&heap, 64), 1, "the class was not cached again after a refill");
    free(&heap, other, 64);
    heap.collect();
    assert_eq!(heap.stats().live_allocations(), 0);
}

/// A bulk free turns a class's cache off until the class's next refill; an allocation of
/// another class ends the bulk free. When the first class then frees again, its frees go
/// straight to its slabs, and a free that empties one starts a bulk free again (as a flush
/// that empties one does), with its purges: here the chunks its releases leave half free.
/// Before, nothing restarted it: W6's last tenth, freed after the harness allocated a
/// little, left 21 chunks of 2 MiB huge pages holding a slab or two each.
#[test]
fn a_bulk_free_resumed_after_another_class_allocated_purges_again() {
    const SIZE: usize = 1024;
    let heap = heap(8);
    TestPlatform::enter(0);
    // Eight chunks' worth of 1 KiB blocks (64 to a 64 KiB slab).
    let blocks: Vec<usize> = (0..8 * 1024).map(|_| allocate(&heap, SIZE)).collect();
    let (first, rest) = blocks.split_at(blocks.len() / 4);
    for &block in first {
        free(&heap, block, SIZE);
    }
    assert!(heap.provider().purged_bytes() > 0, "the first bulk free purged nothing");
    // Another class allocates through its slow path: the bulk free ends.
    let other = allocate(&heap, 64);
    let purged = heap.provider().purged_bytes();
    // The rest but one block in each chunk's worth.
    let kept: Vec<usize> = rest.iter().copied().step_by(1024).collect();
    for &block in rest.iter().filter(|block| !kept.contains(block)) {
        free(&heap, block, SIZE);
    }
    let stats = heap.stats();
    assert!(heap.provider().purged_bytes() > purged, "the second bulk free purged nothing: {stats}");
    free(&heap, other, 64);
    for block in kept {
        free(&heap, block, SIZE);
    }
    heap.collect();
    assert_eq!(heap.stats().live_allocations(), 0);
    heap.check_invariants().unwrap();
}
