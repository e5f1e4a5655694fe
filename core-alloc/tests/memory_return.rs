//! Memory goes back: after a multi-threaded workload frees everything, the provider has
//! received back every chunk but the documented retention, counted at the provider.
//!
//! Documented retention (see `heap` and `arena`): the central heap keeps at most
//! `1 + chunks in use / 8` empty chunks; metadata chunks (arenas, chunk map) are never
//! returned; a live slot keeps its current slab per size class until its next refill pass,
//! `collect()`, or its release at thread exit, up to `LARGE_CACHE_RUNS` freed large runs
//! (`LARGE_CACHE_PAGES` pages; each may keep its chunk) and up to `FRONT_CACHE_BLOCKS` freed
//! small blocks per size class in its front cache (each may keep its slab, and so its chunk)
//! until `collect()`, an idle `decay()` or its release; a bulk free (a flush of the front
//! cache that empties a slab) gives the cache, the empty current slabs and the large runs
//! back at once. The allocator here is a process-wide static
//! whose platform releases a thread's slot when the thread exits, as the host allocator's does.

mod common;

use std::ptr::NonNull;

use common::{Metered, Rng};
use core_alloc::Allocator;
use page_provider::linux::MmapProvider;
use platform::host::HostPlatform;

static HEAP: Allocator<Metered<MmapProvider>, HostPlatform> =
    Allocator::new(Metered::new(MmapProvider::new()), HostPlatform::with_exit_hook(release));

fn release(slot: usize) {
    // SAFETY: the exit hook runs with the exiting thread's slot held, outside allocator calls.
    unsafe { HEAP.release_slot(slot) }
}

#[test]
fn freed_memory_goes_back_to_the_provider_on_its_own() {
    let workers: Vec<_> = (0..4u64)
        .map(|seed| {
            std::thread::spawn(move || {
                let mut rng = Rng(seed + 1);
                let mut live: Vec<(usize, usize)> = Vec::new();
                for round in 0..200_000 {
                    let size = match rng.below(100) {
                        0 => 64 * 1024 + rng.below(900 * 1024),
                        1 if round % 64 == 0 => (2 << 20) + rng.below(4 << 20),
                        _ => 8 + rng.below(2048),
                    };
                    let block = HEAP.allocate(size, 8).expect("out of memory");
                    // SAFETY: the block is live with `size` bytes.
                    unsafe { block.as_ptr().write_bytes(round as u8, size) };
                    live.push((block.as_ptr() as usize, size));
                    if live.len() > 20_000 {
                        let (address, size) = live.swap_remove(rng.below(live.len()));
                        // SAFETY: allocated above with this size.
                        unsafe { HEAP.deallocate(NonNull::new(address as *mut u8).unwrap(), size, 8) };
                    }
                }
                // Hand the rest to the main thread: they are freed after this thread exits.
                live
            })
        })
        .collect();
    let leftovers: Vec<Vec<(usize, usize)>> =
        workers.into_iter().map(|worker| worker.join().unwrap()).collect();
    let provider = HEAP.provider();
    let peak = provider.obtained();
    for (address, size) in leftovers.into_iter().flatten() {
        // SAFETY: live blocks of HEAP, freed here by another thread than their allocator's.
        unsafe { HEAP.deallocate(NonNull::new(address as *mut u8).unwrap(), size, 8) };
    }
    let stats = HEAP.stats();
    assert_eq!(stats.live_allocations(), 0, "{stats}");
    // Workers' slots were released at exit: their slabs and cached large runs are back
    // already. The main thread only freed: its arena holds no slab of its own, and the large
    // runs and small blocks it freed last are in its caches, each keeping at most its chunk.
    // What is left is that, the empty-chunk cache (at most 1 + chunks in use / 8) and
    // metadata.
    let held = provider.outstanding();
    assert!(stats.large_cached <= core_alloc::config::LARGE_CACHE_RUNS, "{stats}");
    assert!(stats.large_cached_bytes <= core_alloc::config::LARGE_CACHE_PAGES * 4096, "{stats}");
    let small_cached: u64 = stats.classes.iter().map(|class| class.cached).sum();
    for class in &stats.classes {
        assert!(class.cached as usize <= core_alloc::config::FRONT_CACHE_BLOCKS, "{stats}");
        assert!(class.cached as usize * class.block_size <= core_alloc::config::FRONT_CACHE_BYTES, "{stats}");
    }
    let in_caches = stats.large_cached + small_cached as usize;
    let allowed = 1 + in_caches / 8 + in_caches + stats.heap.meta_chunks;
    assert!(peak > 50, "the workload should have used many chunks, used {peak}");
    assert!(
        held <= allowed,
        "{held} chunks still held after everything was freed (allowed {allowed}); {stats}"
    );
    // An explicit collect gives back the cached chunk as well.
    HEAP.collect();
    assert_eq!(provider.outstanding(), HEAP.stats().heap.meta_chunks);
}

/// A program that frees everything in bulk holds no chunk for it, without any call: once a
/// flush of the front cache empties a slab (`Arena::bulk_free`), the front cache drains, empty
/// current slabs and freed large runs go back at once, until the program allocates again.
#[test]
fn a_bulk_free_of_everything_keeps_no_chunk_without_a_call() {
    let heap = common::mmap_heap();
    let mut rng = Rng(0x5EED_0007);
    let blocks: Vec<(NonNull<u8>, usize)> = (0..100_000)
        .map(|index| {
            let size = if index % 100 == 0 { 8192 + rng.below(100_000) } else { 8 + rng.below(4000) };
            (heap.allocate(size, 8).expect("out of memory"), size)
        })
        .collect();
    for (block, size) in blocks {
        // SAFETY: allocated above with this size, freed once.
        unsafe { heap.deallocate(block, size, 8) };
    }
    let stats = heap.stats();
    assert_eq!(stats.live_allocations(), 0, "{stats}");
    assert_eq!(stats.large_cached, 0, "freed large runs stayed cached: {stats}");
    assert!(stats.holds_nothing_but_metadata(), "chunks stayed in use with nothing live: {stats}");
    assert!(stats.classes.iter().all(|class| class.cached == 0), "{stats}");
    // Allocating again caches again.
    let block = heap.allocate(64, 8).unwrap();
    let other = heap.allocate(64, 8).unwrap();
    // SAFETY: live blocks, freed once.
    unsafe {
        heap.deallocate(block, 64, 8);
        heap.deallocate(other, 64, 8);
    }
    assert!(heap.stats().classes.iter().any(|class| class.cached > 0), "{}", heap.stats());
}
