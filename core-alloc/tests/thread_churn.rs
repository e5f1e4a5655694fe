//! Thread churn: threads that exit leaving a tenth of their blocks live (handed to another
//! thread) must not strand the other nine tenths. Their slabs are abandoned at exit and
//! adopted by the next threads that need slabs of the class, so memory stays proportional
//! to what is live, however many threads come and go.

mod common;

use std::ptr::NonNull;

use common::Metered;
use core_alloc::Allocator;
use page_provider::CHUNK_SIZE;
use page_provider::linux::MmapProvider;
use platform::host::HostPlatform;

static HEAP: Allocator<Metered<MmapProvider>, HostPlatform> =
    Allocator::new(Metered::new(MmapProvider::new()), HostPlatform::with_exit_hook(release));

fn release(slot: usize) {
    // SAFETY: the exit hook runs with the exiting thread's slot held, outside allocator calls.
    unsafe { HEAP.release_slot(slot) }
}

/// One short-lived thread: allocates `count` blocks of 8..200 bytes, frees nine in ten,
/// returns the rest.
fn worker(seed: usize, count: usize) -> Vec<(usize, usize)> {
    std::thread::spawn(move || {
        let mut kept = Vec::with_capacity(count / 10 + 1);
        let mut freed = Vec::with_capacity(count);
        for index in 0..count {
            let size = 8 + (index * 7 + seed) % 192;
            let block = HEAP.allocate(size, 8).expect("out of memory");
            // SAFETY: a fresh block of `size` bytes.
            unsafe { block.as_ptr().write_bytes(seed as u8, size) };
            if index % 10 == 0 {
                kept.push((block.as_ptr() as usize, size));
            } else {
                freed.push((block, size));
            }
        }
        for (block, size) in freed {
            // SAFETY: allocated above with this size.
            unsafe { HEAP.deallocate(block, size, 8) };
        }
        kept
    })
    .join()
    .unwrap()
}

#[test]
fn exited_threads_slabs_are_adopted_not_stranded() {
    const THREADS: usize = 200;
    const BLOCKS: usize = 20_000;
    let mut live: Vec<(usize, usize)> = Vec::new();
    for thread in 0..THREADS {
        live.extend(worker(thread, BLOCKS));
    }
    let stats = HEAP.stats();
    let live_bytes = stats.live_bytes();
    let held = HEAP.provider().outstanding() * CHUNK_SIZE;
    println!("{} live blocks, {} KiB live, {} KiB held; {stats}", live.len(), live_bytes >> 10, held >> 10);
    // Without adoption every thread would leave ~1.7 MiB of 90%-empty slabs: 340 MiB here.
    assert!(
        held <= 3 * live_bytes + 16 * CHUNK_SIZE,
        "{} KiB held for {} KiB live",
        held >> 10,
        live_bytes >> 10
    );
    for (address, size) in live {
        // SAFETY: live blocks of HEAP with these sizes, freed by a thread that did not
        // allocate them (into slabs that may be abandoned or adopted).
        unsafe { HEAP.deallocate(NonNull::new(address as *mut u8).unwrap(), size, 8) };
    }
    let stats = HEAP.stats();
    assert_eq!(stats.live_allocations(), 0, "{stats}");
    // Every orphan slab left is kept by a block in this thread's front cache (freed, not yet
    // back in its slab); the cache gives them back on `collect()` (or at this thread's exit).
    let cached: u64 = stats.classes.iter().map(|class| class.cached).sum();
    assert!(stats.heap.orphan_slabs as u64 <= cached, "orphans left after everything was freed: {stats}");
    HEAP.check_invariants().unwrap();
    HEAP.collect();
    let stats = HEAP.stats();
    assert_eq!(stats.heap.orphan_slabs, 0, "orphans left after collect(): {stats}");
    assert_eq!(HEAP.provider().outstanding(), stats.heap.meta_chunks);
}
