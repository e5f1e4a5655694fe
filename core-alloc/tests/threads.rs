//! Eight threads allocate and free at random, handing about half their blocks to other
//! threads to free. Every block carries a pattern unique to it, checked before its free; at
//! the end the statistics balance to zero live bytes.

mod common;

use std::ptr::NonNull;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use common::Rng;

#[derive(Clone, Copy)]
struct Block {
    address: usize,
    size: usize,
    align: usize,
    id: u64,
}

fn word_of(id: u64, index: usize) -> u64 {
    id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (index as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93)
}

/// Fills the block's first 256 bytes and then one word every 512 bytes.
fn fill(block: &Block) {
    for index in pattern_words(block.size) {
        // SAFETY: the block is live with `size` bytes; the word lies inside it.
        unsafe { ((block.address + index * 8) as *mut u64).write_unaligned(word_of(block.id, index)) };
    }
}

fn check(block: &Block) {
    for index in pattern_words(block.size) {
        // SAFETY: as in `fill`.
        let found = unsafe { ((block.address + index * 8) as *const u64).read_unaligned() };
        assert_eq!(
            found,
            word_of(block.id, index),
            "block {:#x} ({} bytes) corrupted at word {index}",
            block.address,
            block.size
        );
    }
}

fn pattern_words(size: usize) -> impl Iterator<Item = usize> {
    let words = size / 8;
    (0..words.min(32)).chain((32..words).step_by(64))
}

fn random_size(rng: &mut Rng) -> usize {
    match rng.below(1000) {
        0..=1 => (2 << 20) + rng.below(3 << 20),  // huge
        2..=29 => 32 * 1024 + rng.below(1 << 20), // large
        _ => {
            let shift = 3 + rng.below(13);
            (1 << shift) + rng.below(1 << shift)
        }
    }
}

#[test]
fn eight_threads_with_cross_thread_frees_keep_every_block_intact() {
    const THREADS: usize = 8;
    const OPERATIONS: usize = 60_000;
    let heap = common::mmap_heap();
    let mailboxes: Vec<Mutex<Vec<Block>>> = (0..THREADS).map(|_| Mutex::new(Vec::new())).collect();
    let next_id = AtomicU64::new(1);
    let cross_frees = AtomicU64::new(0);

    std::thread::scope(|scope| {
        for me in 0..THREADS {
            let (mailboxes, next_id, cross_frees) = (&mailboxes, &next_id, &cross_frees);
            scope.spawn(move || {
                let mut rng = Rng(0x1234_5678 + me as u64 * 7919);
                let mut mine: Vec<Block> = Vec::new();
                let free = |block: Block| {
                    check(&block);
                    // SAFETY: a live block of this heap with this size and alignment.
                    unsafe {
                        heap.deallocate(
                            NonNull::new(block.address as *mut u8).unwrap(),
                            block.size,
                            block.align,
                        )
                    };
                };
                for _ in 0..OPERATIONS {
                    match rng.below(10) {
                        0..=4 => {
                            let size = random_size(&mut rng);
                            let widest = if rng.below(20) == 0 { 16 } else { 5 };
                            let align = 1 << rng.below(widest);
                            let address =
                                heap.allocate(size, align).expect("out of memory").as_ptr() as usize;
                            assert_eq!(address % align, 0);
                            let block =
                                Block { address, size, align, id: next_id.fetch_add(1, Ordering::Relaxed) };
                            fill(&block);
                            if rng.below(2) == 0 {
                                let other = (me + 1 + rng.below(THREADS - 1)) % THREADS;
                                mailboxes[other].lock().unwrap().push(block);
                            } else {
                                mine.push(block);
                            }
                        }
                        5..=6 if !mine.is_empty() => {
                            let index = rng.below(mine.len());
                            free(mine.swap_remove(index));
                        }
                        _ => {
                            let received: Vec<Block> = std::mem::take(&mut *mailboxes[me].lock().unwrap());
                            cross_frees.fetch_add(received.len() as u64, Ordering::Relaxed);
                            received.into_iter().for_each(free);
                        }
                    }
                }
                mine.into_iter().for_each(free);
            });
        }
    });
    // Blocks still in mailboxes are freed here, by yet another thread.
    for mailbox in &mailboxes {
        for block in mailbox.lock().unwrap().drain(..) {
            check(&block);
            // SAFETY: a live block of this heap with this size and alignment.
            unsafe {
                heap.deallocate(NonNull::new(block.address as *mut u8).unwrap(), block.size, block.align)
            };
        }
    }
    let total = next_id.load(Ordering::Relaxed) - 1;
    let crossed = cross_frees.load(Ordering::Relaxed);
    assert!(crossed * 4 > total, "only {crossed} of {total} blocks were freed by another thread");
    let stats = heap.stats();
    assert_eq!(stats.live_allocations(), 0, "{stats}");
    assert_eq!(stats.live_bytes(), 0, "{stats}");
    heap.collect();
    heap.check_invariants().unwrap();
}
