//! Heaps from 4 KiB to a few MiB (issue 9): compact mode over one span, with the std
//! collections a kernel uses, the share of a 1 MiB span that live data can fill, the reason
//! given for every failure, misuse and threads.
//!
//! The test binary's global allocator sends a thread's allocations to a small heap while
//! the thread runs inside [`within`], and every free to the heap that owns the block, so
//! `Box`, `Vec`, `String` and `BTreeMap` run over a span of 64 KiB.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicUsize, Ordering};

use core_alloc::{Allocator, COMPACT_CHUNKS, Failure, FailureReport, MisuseReport};
use page_provider::CHUNK_SIZE;
use page_provider::fixed::FixedRegion;
use platform::host::HostPlatform;

mod common;
use common::Rng;

type SmallHeap = Allocator<FixedRegion, HostPlatform>;

thread_local! {
    static CURRENT: Cell<*const SmallHeap> = const { Cell::new(ptr::null()) };
}

/// Heaps made so far, so that a free finds the heap owning its block on any thread.
static HEAPS: [AtomicUsize; 64] = [const { AtomicUsize::new(0) }; 64];

fn owner(block: *mut u8) -> Option<&'static SmallHeap> {
    HEAPS.iter().map(|slot| slot.load(Ordering::Acquire)).filter(|&heap| heap != 0).find_map(|heap| {
        // SAFETY: registered heaps are leaked, so they live for the program.
        let heap = unsafe { &*(heap as *const SmallHeap) };
        heap.owns(block).then_some(heap)
    })
}

struct Router;

// SAFETY: every block comes from the system allocator or a small heap, and goes back to the
// one that owns it (small heaps' `owns` is exact for blocks they handed out).
unsafe impl GlobalAlloc for Router {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let heap = CURRENT.try_with(Cell::get).unwrap_or(ptr::null());
        if heap.is_null() {
            // SAFETY: forwarded.
            unsafe { System.alloc(layout) }
        } else {
            // SAFETY: heaps in CURRENT are leaked; forwarded.
            unsafe { (*heap).alloc(layout) }
        }
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        match owner(block) {
            // SAFETY: the heap handed the block out; forwarded.
            Some(heap) => unsafe { heap.dealloc(block, layout) },
            // SAFETY: forwarded.
            None => unsafe { System.dealloc(block, layout) },
        }
    }
}

#[global_allocator]
static ROUTER: Router = Router;

static MISUSES: AtomicUsize = AtomicUsize::new(0);
static FAILURES: AtomicUsize = AtomicUsize::new(0);

fn count_misuse(_: &MisuseReport) {
    MISUSES.fetch_add(1, Ordering::SeqCst);
}

fn count_failure(_: &FailureReport) {
    FAILURES.fetch_add(1, Ordering::SeqCst);
}

/// A heap over a fresh span of `bytes` bytes starting `offset` bytes past a 16-byte
/// boundary (leaked, registered with the router).
fn small_heap(bytes: usize, offset: usize) -> &'static SmallHeap {
    let span = vec![0u128; (bytes + offset).div_ceil(16) + 1].leak();
    let start = span.as_mut_ptr().cast::<u8>().wrapping_add(offset);
    // SAFETY: the leaked, zeroed vector is used by nothing else.
    let region = unsafe { FixedRegion::new(start, bytes, true) };
    let heap: &'static SmallHeap = Box::leak(Box::new(
        Allocator::new(region, HostPlatform::new())
            .with_misuse_hook(count_misuse)
            .with_failure_hook(count_failure),
    ));
    let registered = HEAPS.iter().any(|slot| {
        slot.compare_exchange(0, heap as *const SmallHeap as usize, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    });
    assert!(registered, "too many heaps for the router");
    heap
}

/// Runs `f` with this thread's allocations going to `heap`.
fn within<R>(heap: &'static SmallHeap, f: impl FnOnce() -> R) -> R {
    CURRENT.with(|current| current.set(heap));
    let result = f();
    CURRENT.with(|current| current.set(ptr::null()));
    result
}

#[test]
fn std_collections_run_in_a_64_kib_heap() {
    let heap = small_heap(64 * 1024, 0);
    let checksum = within(heap, || {
        let boxed = Box::new([7u64; 4]);
        let mut numbers: Vec<u32> = Vec::new();
        for i in 0..2000 {
            numbers.push(i); // grows by reallocation up to 8 KiB
        }
        let mut words = BTreeMap::new();
        for i in 0..300u32 {
            words.insert(i, format!("word number {i}"));
        }
        let text: String = words.values().take(50).map(String::as_str).collect::<Vec<_>>().join(",");
        let sum: u64 = numbers.iter().map(|&n| u64::from(n)).sum::<u64>() + boxed.iter().sum::<u64>();
        sum + text.len() as u64 + words.len() as u64
    });
    assert!(heap.is_compact(), "a 64 KiB span must run in compact mode");
    // The numbers, the box, the joined text (10 words of 13 bytes, 40 of 14, 49 commas) and
    // the map's length.
    assert_eq!(checksum, (0..2000u64).sum::<u64>() + 28 + (10 * 13 + 40 * 14 + 49) + 300);
    let stats = heap.stats();
    assert_eq!(stats.live_allocations(), 0, "{stats}");
    assert_eq!(stats.heap.failures.last, None, "{stats}");
    heap.check_invariants().unwrap();
}

#[test]
fn live_data_fills_at_least_85_percent_of_a_1_mib_heap() {
    const SPAN: usize = 1 << 20;
    for seed in 1..=5u64 {
        let heap = small_heap(SPAN, 16 * seed as usize);
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut live = Vec::with_capacity(4096);
        let mut requested = 0;
        loop {
            let size = rng.below(4096) + 1;
            let Some(block) = heap.allocate(size, 8) else { break };
            // SAFETY: a fresh block of `size` bytes.
            unsafe { block.as_ptr().write_bytes(seed as u8, size) };
            requested += size;
            live.push((block, size));
        }
        let share = requested as f64 / SPAN as f64;
        let stats = heap.stats();
        println!("seed {seed}: {:.1}% of the span in live data\n{stats}", share * 100.0);
        assert!(share >= 0.85, "seed {seed}: only {:.1}% of a 1 MiB span held live data", share * 100.0);
        let last = stats.heap.failures.last.expect("the failure is recorded");
        assert!(matches!(last.reason, Failure::OutOfMemory | Failure::Fragmented), "{last:?}");
        assert!(last.largest_free < core_alloc::COMPACT_SLAB_MAX.max(last.size) + 64 + 4096, "{last:?}");
        for (block, size) in live {
            // SAFETY: live blocks of this heap, freed once.
            unsafe {
                assert!(std::slice::from_raw_parts(block.as_ptr(), size).iter().all(|&b| b == seed as u8));
                heap.deallocate(block, size, 8);
            }
        }
        heap.collect();
        let stats = heap.stats();
        assert_eq!(stats.live_allocations(), 0, "{stats}");
        assert_eq!(stats.heap.region.slab_pages, 0, "empty slab pages went back: {stats}");
        heap.check_invariants().unwrap();
    }
}

#[test]
fn every_failure_says_why_and_the_heap_recovers() {
    let heap = small_heap(64 * 1024, 0);
    let before = FAILURES.load(Ordering::SeqCst);
    // Bigger than the span could ever hold.
    assert!(heap.allocate(1 << 20, 8).is_none());
    let stats = heap.stats();
    assert_eq!(
        stats.heap.failures.last.map(|last| (last.reason, last.size)),
        Some((Failure::TooBig, 1 << 20))
    );
    assert!(FAILURES.load(Ordering::SeqCst) > before, "the failure hook was not called");

    // Fragmented: 1 KiB blocks filling the span, every other one freed: plenty of bytes
    // free, no piece of 8 KiB.
    let mut blocks = Vec::new();
    while let Some(block) = heap.allocate(1024, 8) {
        blocks.push(block);
    }
    assert_eq!(heap.stats().heap.failures.last.unwrap().reason, Failure::OutOfMemory);
    for block in blocks.iter().skip(1).step_by(2) {
        // SAFETY: live blocks, freed once.
        unsafe { heap.deallocate(*block, 1024, 8) };
    }
    assert!(heap.allocate(8 * 1024, 8).is_none());
    let last = heap.stats().heap.failures.last.unwrap();
    assert_eq!(last.reason, Failure::Fragmented, "{last:?}");
    assert!(last.free_bytes >= 8 * 1024 && last.largest_free < 8 * 1024, "{last:?}");
    let counted = heap.stats().heap.failures;
    assert!(counted.too_big >= 1 && counted.out_of_memory >= 1 && counted.fragmented >= 1, "{counted:?}");

    // Everything back: the whole span serves one big block again.
    for block in blocks.iter().step_by(2) {
        // SAFETY: the other half, freed once.
        unsafe { heap.deallocate(*block, 1024, 8) };
    }
    heap.collect();
    let big = heap.allocate(48 * 1024, 8).expect("the span is whole again");
    // SAFETY: a live block of this heap.
    unsafe { heap.deallocate(big, 48 * 1024, 8) };
    heap.check_invariants().unwrap();
}

#[test]
fn misuse_in_compact_mode_is_reported_and_leaves_the_heap_intact() {
    let heap = small_heap(64 * 1024, 0);
    let before = MISUSES.load(Ordering::SeqCst);
    let big = heap.allocate(1000, 8).unwrap();
    let small = heap.allocate(24, 8).unwrap();
    // SAFETY: deliberate misuses the allocator must notice without touching its state.
    unsafe {
        heap.deallocate(big, 1000, 8);
        heap.deallocate(big, 1000, 8); // double free of a fit block
        heap.free(NonNull::new_unchecked(small.as_ptr().wrapping_add(1 << 30))); // outside the span
        let other = heap.allocate(1000, 8).unwrap();
        heap.free(NonNull::new_unchecked(other.as_ptr().add(16))); // inside a fit block
        heap.deallocate(other, 8000, 8); // wrong layout
        heap.deallocate(other, 1000, 8);
        heap.deallocate(small, 24, 8);
    }
    assert_eq!(MISUSES.load(Ordering::SeqCst) - before, 4);
    heap.collect();
    assert_eq!(heap.stats().live_allocations(), 0);
    heap.check_invariants().unwrap();
}

#[test]
fn blocks_resize_in_place_and_move_between_slabs_and_the_span() {
    let heap = small_heap(256 * 1024, 0);
    // SAFETY: live blocks of this heap, used within their sizes.
    unsafe {
        let block = heap.allocate(100, 8).unwrap();
        block.as_ptr().write_bytes(3, 100);
        let grown = heap.reallocate(block, 8, 5000).unwrap(); // slab -> fit
        assert!(std::slice::from_raw_parts(grown.as_ptr(), 100).iter().all(|&b| b == 3));
        grown.as_ptr().write_bytes(4, 5000);
        let in_place = heap.reallocate(grown, 8, 20_000).unwrap();
        assert_eq!(in_place, grown, "grew into the free space after it");
        assert!(heap.usable_size(in_place) >= 20_000);
        let shrunk = heap.reallocate(in_place, 8, 300).unwrap();
        assert_eq!(shrunk, in_place);
        let small = heap.reallocate(shrunk, 8, 16).unwrap(); // fit -> slab
        assert!(std::slice::from_raw_parts(small.as_ptr(), 16).iter().all(|&b| b == 4));
        heap.free(small);
        let aligned = heap.allocate(3000, 4096).unwrap();
        assert_eq!(aligned.as_ptr() as usize % 4096, 0);
        heap.deallocate(aligned, 3000, 4096);
    }
    heap.collect();
    assert_eq!(heap.stats().live_allocations(), 0);
    heap.check_invariants().unwrap();
}

/// Reallocation growth that moves a block into the span puts it where it can keep growing
/// in place: a `Vec` doubling from 512 bytes landed in the tightest hole that held it and
/// moved again at the next doubling or two (a copy and three trips through the central lock
/// each time; compact mode's Vec growth in the kernels took 456 ns a reallocation under
/// QEMU, 345 with room).
#[test]
fn growth_moves_where_it_can_keep_growing_in_place() {
    let heap = small_heap(256 * 1024, 0);
    // SAFETY: live blocks of this heap, used within their sizes, each freed once.
    unsafe {
        // A hole of 600 bytes between two live fit blocks: the tightest fit for 512.
        let before = heap.allocate(1000, 8).unwrap();
        let hole = heap.allocate(600, 8).unwrap();
        let after = heap.allocate(1000, 8).unwrap();
        heap.deallocate(hole, 600, 8);
        let block = heap.allocate(256, 8).unwrap(); // a slab block
        block.as_ptr().write_bytes(7, 256);
        let moved = heap.reallocate(block, 8, 512).unwrap(); // slab -> fit
        assert_ne!(moved, hole, "a growing block went to a hole it cannot grow in");
        let mut size = 512;
        while size < 8192 {
            let grown = heap.reallocate(moved, 8, size * 2).unwrap();
            assert_eq!(grown, moved, "moved again growing to {} bytes", size * 2);
            size *= 2;
            moved.as_ptr().add(size - 1).write(9);
        }
        assert!(std::slice::from_raw_parts(moved.as_ptr(), 256).iter().all(|&b| b == 7));
        for (block, size) in [(moved, size), (before, 1000), (after, 1000)] {
            heap.deallocate(block, size, 8);
        }
    }
    heap.collect();
    assert_eq!(heap.stats().live_allocations(), 0);
    heap.check_invariants().unwrap();
}

#[test]
fn threads_share_a_compact_heap_with_remote_frees() {
    let heap = small_heap(1 << 20, 0);
    let (sender, receiver) = std::sync::mpsc::sync_channel::<(usize, usize, u8)>(64);
    let producer = std::thread::spawn(move || {
        let mut rng = Rng(42);
        let mut sent = 0;
        while sent < 20_000 {
            let size = if rng.below(4) == 0 { rng.below(3000) + 1 } else { rng.below(200) + 1 };
            let Some(block) = heap.allocate(size, 8) else {
                std::thread::yield_now();
                continue;
            };
            let tag = (sent % 251) as u8;
            // SAFETY: a fresh block of `size` bytes.
            unsafe { block.as_ptr().write_bytes(tag, size) };
            sender.send((block.as_ptr() as usize, size, tag)).unwrap();
            sent += 1;
        }
    });
    let consumer = std::thread::spawn(move || {
        for (address, size, tag) in receiver {
            // SAFETY: the producer's block, handed over whole; freed once, on this thread.
            unsafe {
                let block = address as *mut u8;
                assert!(std::slice::from_raw_parts(block, size).iter().all(|&b| b == tag));
                heap.deallocate(NonNull::new_unchecked(block), size, 8);
            }
        }
        heap.collect();
    });
    producer.join().unwrap();
    consumer.join().unwrap();
    heap.collect();
    let stats = heap.stats();
    assert_eq!(stats.live_allocations(), 0, "{stats}");
    heap.check_invariants().unwrap();
}

#[test]
fn spans_too_small_fail_cleanly_and_big_ones_use_chunks() {
    for bytes in [0, 16, 200, 4096] {
        let heap = small_heap(bytes, 0);
        assert!(heap.allocate(8, 8).is_none() || bytes >= 4096, "{bytes}-byte span");
        assert!(heap.allocate(100_000, 8).is_none());
        assert!(heap.stats().heap.failures.last.is_some(), "{bytes}-byte span: no reason");
    }
    let heap = small_heap((COMPACT_CHUNKS + 1) * CHUNK_SIZE, 0);
    let block = heap.allocate(64, 8).unwrap();
    assert!(!heap.is_compact(), "a span of {COMPACT_CHUNKS} whole chunks runs on chunks");
    // SAFETY: a live block of this heap.
    unsafe { heap.deallocate(block, 64, 8) };
}

/// A full slab page's remote free goes through the owner's delayed list, which the owner
/// drains on its next refill: the drain must find the slab of each block in compact mode
/// too (it read a chunk header below the span before: a fault or a corrupted heap, seen
/// with 8 CPUs under QEMU).
#[test]
fn remote_frees_into_a_full_slab_page_are_drained_in_compact_mode() {
    let heap = small_heap(256 * 1024, 0);
    // Fill slab pages of the 64-byte class on this thread until one is FULL: its blocks
    // are all handed out and the next allocation had to refill.
    let mut mine: Vec<usize> = (0..200).map(|_| heap.allocate(64, 8).unwrap().as_ptr() as usize).collect();
    let page_of = |address: usize| address & !4095;
    let first_page = page_of(mine[0]);
    let on_first: Vec<usize> = mine.iter().copied().filter(|&block| page_of(block) == first_page).collect();
    assert!(on_first.len() > 8 && mine.len() > on_first.len(), "the first page filled and another began");
    // Another thread frees two blocks of the full page: remote frees into a FULL slab.
    let theirs = [on_first[0], on_first[1]];
    mine.retain(|block| !theirs.contains(block));
    std::thread::spawn(move || {
        for block in theirs {
            // SAFETY: blocks handed to this thread, freed once.
            unsafe { heap.deallocate(NonNull::new(block as *mut u8).unwrap(), 64, 8) };
        }
        heap.collect();
    })
    .join()
    .unwrap();
    // Refills on the owner drain the delayed list; the freed blocks come back to it.
    let again: Vec<usize> = (0..300).map(|_| heap.allocate(64, 8).unwrap().as_ptr() as usize).collect();
    assert!(theirs.iter().all(|block| again.contains(block)), "the delayed frees were not drained");
    heap.check_invariants().unwrap();
    for block in mine.into_iter().chain(again) {
        // SAFETY: live blocks of this heap, freed once.
        unsafe { heap.deallocate(NonNull::new(block as *mut u8).unwrap(), 64, 8) };
    }
    heap.collect();
    assert_eq!(heap.stats().live_allocations(), 0);
    heap.check_invariants().unwrap();
}

/// A failed allocation is recorded without taking a second slot inside the first: a platform
/// whose slots are locks (the testkit's, like a kernel's one slot per CPU without levels)
/// deadlocked when a tiny span had no room for the arena (found by the fuzzer). Runs in a
/// thread, so that a deadlock fails the test instead of hanging it.
#[test]
fn failures_are_recorded_inside_a_slot_without_taking_another() {
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for bytes in [512, 1024, 2048, 4096, 8192, 16384] {
            let span = vec![0u128; bytes / 16].leak();
            // SAFETY: the leaked, zeroed span is used by this heap alone.
            let region = unsafe { FixedRegion::<1>::new(span.as_mut_ptr().cast(), bytes, true) };
            let heap = Allocator::new(region, core_alloc::testkit::TestPlatform::new());
            let mut blocks = Vec::new();
            while let Some(block) = heap.allocate(24, 8) {
                blocks.push(block);
            }
            assert!(heap.stats().heap.failures.last.is_some(), "{bytes}-byte span: no reason");
            assert!(heap.allocate(100_000, 8).is_none());
            for block in blocks {
                // SAFETY: live blocks of this heap.
                unsafe { heap.free(block) };
            }
        }
        done.send(()).unwrap();
    });
    finished
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("an allocation that failed never returned (a slot taken twice?)");
}
