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
