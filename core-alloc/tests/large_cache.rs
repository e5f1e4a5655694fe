//! Each arena's cache of freed large runs (`core-alloc/src/large_cache.rs`): a freed large
//! block serves the slot's next large request it fits, within the documented slack; a `Vec`
//! grown and dropped in a loop stops moving; the cache keeps to its limits, counts in the
//! statistics, and goes back on `collect()` and at thread exit.

mod common;

use std::ptr::NonNull;

use core_alloc::config::{LARGE_CACHE_PAGES, LARGE_CACHE_RUNS, LARGE_GROWTH_MIN, PAGE};

/// Frees `block` of `size` bytes (alignment 8).
fn free(heap: &common::MmapHeap, block: NonNull<u8>, size: usize) {
    // SAFETY: the tests free each block they allocated once, with its size.
    unsafe { heap.deallocate(block, size, 8) }
}

#[test]
fn a_freed_large_block_serves_the_next_request_it_fits() {
    let heap = common::mmap_heap();
    let keep = heap.allocate(64, 8).unwrap(); // this thread's arena exists
    let first = heap.allocate(100_000, 8).unwrap();
    free(heap, first, 100_000);
    let stats = heap.stats();
    assert_eq!((stats.large_cached, stats.large_cached_bytes), (1, 100_000usize.div_ceil(PAGE) * PAGE));
    assert_eq!(stats.heap.large_live, 0, "a cached run is not a live block: {stats}");
    assert_eq!(stats.live_allocations(), 1);
    // 90 000 bytes need 22 pages; the cached run has 25 (within twice): the same block.
    let again = heap.allocate(90_000, 8).unwrap();
    assert_eq!(again, first);
    // SAFETY: a live block.
    assert_eq!(unsafe { heap.usable_size(again) }, 25 * PAGE);
    assert_eq!(heap.stats().large_cached, 0);
    free(heap, again, 90_000);
    // A plain request needing less than half the run's pages does not take it.
    let small = heap.allocate(40_000, 8).unwrap();
    assert_ne!(small, first, "a 10-page request took a 25-page cached run");
    assert_eq!(heap.stats().large_cached, 1);
    free(heap, small, 40_000);
    // SAFETY: a live block.
    unsafe { heap.free(keep) };
    heap.check_invariants().unwrap();
}

#[test]
fn a_vec_grown_and_dropped_in_a_loop_stops_moving() {
    let heap = common::mmap_heap();
    let keep = heap.allocate(64, 8).unwrap();
    let mut addresses = Vec::new();
    for round in 0..3u8 {
        let mut size = 8;
        let mut block = heap.allocate(size, 8).unwrap();
        let mut moves = Vec::new();
        let mut room_at_4_kib = 0;
        while size < 64 * 1024 {
            // SAFETY: a live block of `size` bytes, grown with alignment 8.
            unsafe {
                block.as_ptr().add(size - 1).write(round);
                let grown = heap.reallocate(block, 8, size * 2).unwrap();
                assert_eq!(*grown.as_ptr().add(size - 1), round, "growth lost a byte");
                moves.push(grown != block);
                block = grown;
                if size * 2 == LARGE_GROWTH_MIN {
                    room_at_4_kib = heap.usable_size(block);
                }
            }
            size *= 2;
        }
        addresses.push((block, moves, room_at_4_kib));
        free(heap, block, size);
    }
    // Steps 8 B -> 16 B ... 2 KiB -> 4 KiB move between size classes (the last into a page
    // run: LARGE_GROWTH_MIN); the first round grows from there in place as long as the pages
    // after the run are free; later rounds take the cached 64 KiB run at 4 KiB whole
    // (LARGE_GROWTH_SLACK) and grow inside it, never moving again nor resizing the run under
    // the central lock.
    let from_4_kib = (LARGE_GROWTH_MIN / 8).ilog2() as usize;
    for (block, moves, room) in &addresses[1..] {
        assert_eq!(*block, addresses[0].0, "a later round did not reuse the cached run");
        assert!(moves[..from_4_kib].iter().all(|&moved| moved), "{moves:?}");
        assert!(!moves[from_4_kib..].iter().any(|&moved| moved), "growth from 4 KiB moved: {moves:?}");
        assert_eq!(*room, 64 * 1024, "the cached run was cut at 4 KiB");
    }
    // SAFETY: a live block.
    unsafe { heap.free(keep) };
    heap.check_invariants().unwrap();
}

#[test]
fn the_cache_keeps_to_its_limits_and_goes_back_on_collect() {
    let heap = common::mmap_heap();
    let keep = heap.allocate(64, 8).unwrap();
    let sizes: Vec<usize> = (0..2 * LARGE_CACHE_RUNS).map(|index| (5 + index) * PAGE).collect();
    let blocks: Vec<NonNull<u8>> = sizes.iter().map(|&size| heap.allocate(size, 8).unwrap()).collect();
    let held = heap.provider().outstanding();
    for (&block, &size) in blocks.iter().zip(&sizes) {
        free(heap, block, size);
        let stats = heap.stats();
        assert!(stats.large_cached <= LARGE_CACHE_RUNS, "{stats}");
        assert!(stats.large_cached_bytes <= LARGE_CACHE_PAGES * PAGE, "{stats}");
        heap.check_invariants().unwrap();
    }
    let stats = heap.stats();
    assert!(stats.large_cached >= 1 && stats.heap.large_live == 0, "{stats}");
    // Runs too big to cache go straight back.
    let big = heap.allocate(300 * 1024, 8).unwrap();
    let cached = heap.stats().large_cached;
    free(heap, big, 300 * 1024);
    assert!(heap.stats().large_cached <= cached);
    heap.collect();
    let stats = heap.stats();
    assert_eq!((stats.large_cached, stats.large_cached_bytes), (0, 0), "{stats}");
    assert!(heap.provider().outstanding() <= held, "collect kept chunks the cache held");
    // SAFETY: a live block.
    unsafe { heap.free(keep) };
    heap.check_invariants().unwrap();
}

#[test]
fn a_thread_that_exits_leaves_nothing_cached() {
    // The host allocator's exit hook releases the thread's slot, and with it the cache.
    use core_alloc::host::HostAlloc;
    use std::alloc::{GlobalAlloc, Layout};
    let layout = Layout::from_size_align(200_000, 8).unwrap();
    std::thread::spawn(move || {
        // SAFETY: a valid layout; freed once.
        unsafe {
            let block = HostAlloc.alloc(layout);
            assert!(!block.is_null());
            HostAlloc.dealloc(block, layout);
        }
        assert!(HostAlloc::stats().large_cached >= 1, "the freed run was not cached");
    })
    .join()
    .unwrap();
    // Other tests of this binary do not use HostAlloc: the exiting thread's cache was the
    // only one.
    assert_eq!(HostAlloc::stats().large_cached, 0, "{}", HostAlloc::stats());
}

#[test]
fn blocks_of_cached_runs_move_between_threads() {
    let heap = common::mmap_heap();
    let (sender, receiver) = std::sync::mpsc::channel::<(usize, usize)>();
    let producer = std::thread::spawn(move || {
        let _ = heap.allocate(64, 8).unwrap();
        for round in 0..2000usize {
            let size = (4 + round % 60) * PAGE;
            let block = heap.allocate(size, 8).unwrap();
            // SAFETY: a live block of `size` bytes.
            unsafe { block.as_ptr().write_bytes(round as u8, size) };
            sender.send((block.as_ptr() as usize, size)).unwrap();
        }
    });
    let consumer = std::thread::spawn(move || {
        let _ = heap.allocate(64, 8).unwrap();
        let mut round = 0usize;
        while let Ok((address, size)) = receiver.recv() {
            // SAFETY: the producer's live block of `size` bytes.
            unsafe {
                let block = address as *mut u8;
                assert_eq!((*block, *block.add(size - 1)), (round as u8, round as u8));
                heap.deallocate(NonNull::new(block).unwrap(), size, 8);
            }
            // The consumer's own allocations reuse what it cached.
            let mine = heap.allocate(size, 8).unwrap();
            // SAFETY: a live block of `size` bytes.
            unsafe { mine.as_ptr().write_bytes(0xEE, size) };
            free(heap, mine, size);
            round += 1;
        }
    });
    producer.join().unwrap();
    consumer.join().unwrap();
    heap.collect();
    heap.check_invariants().unwrap();
    let stats = heap.stats();
    assert_eq!(stats.heap.large_live, 0, "{stats}");
}

/// A bounded provider running low (more than `1 / TIGHT_SUPPLY_DIVISOR` of its chunks in use)
/// puts the large path in its tight mode: growth gets no room from a bigger cached run, a
/// cached run serves only a request of its own size, and a shrink gives its spare pages
/// back. With the supply back, runs get room to grow again.
#[test]
fn a_bounded_provider_running_low_gets_runs_of_exactly_the_pages_needed() {
    use core_alloc::config::{CHUNK_SIZE, LARGE_GROWTH_SLACK, tight_supply};
    use page_provider::PageProvider;

    let heap = common::region_heap(16);
    let free = |block: NonNull<u8>, size: usize| {
        // SAFETY: each block is freed once, with its size.
        unsafe { heap.deallocate(block, size, 8) }
    };
    // SAFETY: live blocks of this heap.
    let usable = |block: NonNull<u8>| unsafe { heap.usable_size(block) };
    let grow = |from: usize, to: usize| {
        let block = heap.allocate(from, 8).unwrap();
        // SAFETY: a live block of `from` bytes.
        unsafe { heap.reallocate(block, 8, to) }.unwrap()
    };
    let keep = heap.allocate(64, 8).unwrap(); // this thread's arena exists
    let supply = || heap.provider().supply().unwrap();
    assert_eq!(supply().total, 16);

    // Plenty left: growth to 3 pages takes the cached 49-page run, cut to LARGE_GROWTH_SLACK
    // times the pages (48).
    let big = heap.allocate(200_000, 8).unwrap();
    free(big, 200_000);
    let grown = grow(16, 10_000);
    assert_eq!(grown, big, "growth did not take the cached run");
    assert_eq!(usable(grown), 3 * LARGE_GROWTH_SLACK * PAGE);
    free(grown, 10_000);
    assert_eq!(heap.stats().large_cached, 1);

    // Use up the supply with one-chunk huge blocks until the tight mode starts.
    let mut huge = Vec::new();
    while !tight_supply(supply().available, supply().total) {
        huge.push(heap.allocate(CHUNK_SIZE, 8).unwrap());
    }
    let grown = grow(16, 10_000);
    assert_ne!(grown, big, "growth took a 48-page cached run for 3 pages in the tight mode");
    assert_eq!(usable(grown), 3 * PAGE);
    let plain = heap.allocate(180_000, 8).unwrap();
    assert_ne!(plain, big, "a 44-page request took a 48-page cached run in the tight mode");
    assert_eq!(usable(plain), 44 * PAGE);
    // A shrink gives its spare pages back (it keeps them otherwise while it needs half).
    // SAFETY: a live block of 10 000 bytes.
    let shrunk = unsafe { heap.reallocate(grown, 8, 6_000) }.unwrap();
    assert_eq!((shrunk, usable(shrunk)), (grown, 2 * PAGE));
    assert_eq!(heap.stats().large_cached, 1, "the cached run stayed cached");
    heap.check_invariants().unwrap();

    // The supply back: room to grow again (the cached run serves growth, cut down).
    for block in huge.drain(..) {
        free(block, CHUNK_SIZE);
    }
    let grown_again = grow(16, 10_000);
    assert_eq!((grown_again, usable(grown_again)), (big, 3 * LARGE_GROWTH_SLACK * PAGE));
    for (block, size) in [(grown_again, 10_000), (plain, 180_000), (shrunk, 6_000)] {
        free(block, size);
    }
    // SAFETY: a live block.
    unsafe { heap.free(keep) };
    heap.check_invariants().unwrap();
}
