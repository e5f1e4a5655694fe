//! Retention: a program that allocates and frees the same amount over and over must not
//! make the provider map and unmap every time: each path keeps what the next round needs
//! (the bin's current slab, the empty-chunk cache), counted at the provider.

mod common;

#[test]
fn alloc_free_loops_do_not_thrash_the_provider() {
    // (size, alignment): a small block, a large run, a one-chunk huge block, a big huge one.
    for (size, align) in [(48, 8), (600_000, 8), (1_500_000, 8), (1 << 21, 1 << 21)] {
        let heap = common::mmap_heap();
        for _ in 0..1000 {
            let block = heap.allocate(size, align).expect("out of memory");
            // SAFETY: a fresh block of `size` bytes, freed right after.
            unsafe {
                block.as_ptr().write_bytes(1, size);
                heap.deallocate(block, size, align);
            }
        }
        let provider = heap.provider();
        // Metadata, plus one chunk in use at a time, plus one for alignment slack.
        assert!(
            provider.obtained() <= 4,
            "{size} bytes at {align}: 1000 rounds took {} chunks from the provider and gave back {}",
            provider.obtained(),
            provider.returned()
        );
    }
}
