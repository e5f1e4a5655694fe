//! Realloc growth (a `Vec` pushed to large sizes): contents survive every step, in place
//! or moved, and huge blocks grow by remapping their pages rather than copying them when
//! the provider can (Linux `mremap`).

mod common;

use std::ptr::NonNull;

fn word(index: usize) -> u64 {
    (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

#[test]
fn growing_a_block_to_256_mib_keeps_its_contents_and_remaps_huge_steps() {
    let heap = common::mmap_heap();
    let mut size = 8usize;
    let mut block = heap.allocate(size, 8).unwrap();
    let mut written = 0usize;
    while size < 256 << 20 {
        // Fill the new part, one word a page plus the first words.
        for index in (written / 8..size / 8).filter(|&index| index < 64 || index % 512 == 0) {
            // SAFETY: the block has `size` bytes.
            unsafe { block.as_ptr().cast::<u64>().add(index).write(word(index)) };
        }
        written = size;
        let grown = size * 2;
        // SAFETY: a live block with alignment 8.
        block = unsafe { heap.reallocate(block, 8, grown) }.expect("out of memory");
        for index in (0..size / 8).filter(|&index| index < 64 || index % 512 == 0) {
            // SAFETY: the grown block keeps the first `size` bytes.
            let found = unsafe { block.as_ptr().cast::<u64>().add(index).read() };
            assert_eq!(found, word(index), "growing {size} -> {grown} lost word {index}");
        }
        size = grown;
        assert_eq!(block.as_ptr() as usize % 8, 0);
    }
    // SAFETY: a live block of `size` bytes.
    unsafe { heap.deallocate(NonNull::new(block.as_ptr()).unwrap(), size, 8) };
    assert!(heap.provider().remapped() >= 5, "huge steps were copied, not remapped");
    let stats = heap.stats();
    assert_eq!(stats.live_allocations(), 0, "{stats}");
    heap.check_invariants().unwrap();
}

/// A block grown past 16 KiB moves once to a page run and then grows in place while the
/// pages after it are free: a `Vec` doubling from 16 KiB to 1 MiB copies nothing after the
/// first move, in a fresh chunk where nothing else follows it.
#[test]
fn growth_past_16_kib_happens_in_place() {
    let heap = common::mmap_heap();
    let mut block = heap.allocate(8 * 1024, 8).unwrap();
    // SAFETY: a live block of 8 KiB.
    unsafe { block.as_ptr().write_bytes(0x5A, 8 * 1024) };
    let mut moves = 0;
    let mut size = 8 * 1024;
    while size < 1 << 20 {
        // SAFETY: a live block of `size` bytes, aligned to 8.
        let grown = unsafe { heap.reallocate(block, 8, size * 2) }.unwrap();
        if grown != block {
            moves += 1;
        }
        // SAFETY: the grown block keeps the old bytes and has room for the new ones.
        unsafe {
            assert!(std::slice::from_raw_parts(grown.as_ptr(), size).iter().all(|&b| b == 0x5A));
            grown.as_ptr().add(size).write_bytes(0x5A, size);
        }
        block = grown;
        size *= 2;
    }
    assert_eq!(moves, 1, "every step past the first should have grown in place");
    // SAFETY: the live block, freed once with its size.
    unsafe { heap.deallocate(block, size, 8) };
}

/// Fills `size` bytes of `block` with a pattern that depends on `seed` and the offset.
fn fill(block: NonNull<u8>, size: usize, seed: u8) {
    for offset in 0..size {
        // SAFETY: the block has `size` bytes.
        unsafe { block.as_ptr().add(offset).write(seed.wrapping_add(offset as u8)) };
    }
}

fn holds(block: NonNull<u8>, size: usize, seed: u8) -> bool {
    // SAFETY: the block has `size` readable bytes.
    (0..size).all(|offset| unsafe { block.as_ptr().add(offset).read() } == seed.wrapping_add(offset as u8))
}

#[test]
fn a_slab_block_of_4_kib_or_more_shrunk_by_at_most_half_stays_in_place() {
    let heap = common::mmap_heap();
    let before = heap.stats().live_allocations();
    // A 30,000-byte request takes a 32 KiB slab block.
    let block = heap.allocate(30_000, 8).unwrap();
    fill(block, 30_000, 1);
    // SAFETY: a live block of 30,000 bytes aligned to 8 (here and below: each block is
    // reallocated or freed once, with its current size).
    let shrunk = unsafe { heap.reallocate(block, 8, 20_000) }.unwrap();
    assert_eq!(shrunk, block, "a shrink that keeps more than half of a 32 KiB block moved it");
    assert!(holds(shrunk, 20_000, 1));
    // Below half of the block: moved to a block of its own class.
    // SAFETY: the live block, now of 20,000 bytes.
    let moved = unsafe { heap.reallocate(shrunk, 8, 15_000) }.unwrap();
    assert_ne!(moved, shrunk, "a shrink to less than half of the block stayed in place");
    assert!(holds(moved, 15_000, 1));
    // Below 4 KiB the size alone names the class at free time, so the block moves.
    let small = heap.allocate(5_000, 8).unwrap();
    fill(small, 5_000, 7);
    // SAFETY: a live block of 5,000 bytes.
    let tiny = unsafe { heap.reallocate(small, 8, 3_000) }.unwrap();
    assert_ne!(tiny, small, "a block shrunk below 4 KiB kept a class its size does not name");
    assert!(holds(tiny, 3_000, 7));
    // A block shrunk in place is freed with its new size: it goes back to its own class.
    let again = heap.allocate(30_000, 8).unwrap();
    fill(again, 30_000, 3);
    // SAFETY: a live block of 30,000 bytes.
    let kept = unsafe { heap.reallocate(again, 8, 16_384) }.unwrap();
    assert_eq!(kept, again);
    // SAFETY: three live blocks, each freed once with its current size.
    unsafe {
        heap.deallocate(kept, 16_384, 8);
        heap.deallocate(moved, 15_000, 8);
        heap.deallocate(tiny, 3_000, 8);
    }
    let reused = heap.allocate(30_000, 8).unwrap();
    fill(reused, 30_000, 9);
    assert!(holds(reused, 30_000, 9));
    // SAFETY: a live block of 30,000 bytes.
    unsafe { heap.deallocate(reused, 30_000, 8) };
    heap.check_invariants().unwrap();
    assert_eq!(heap.stats().live_allocations(), before);
}
