//! The fit heap against a model of live blocks: random allocations (with alignments),
//! frees and in-place resizes, the heap's own invariant walk after every step, and checks
//! that live blocks never overlap and keep their bytes.

extern crate std;

use std::vec;
use std::vec::Vec;

use super::*;

/// A small deterministic generator (xorshift64*), so failures replay.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }
}

struct Span(Vec<u128>);

impl Span {
    fn new(bytes: usize) -> Self {
        Self(vec![0; bytes / 16])
    }

    fn start(&mut self) -> usize {
        self.0.as_mut_ptr() as usize
    }
}

fn fill(address: usize, len: usize, tag: u8) {
    // SAFETY: a live block of at least `len` bytes, the test's own.
    unsafe { core::ptr::write_bytes(address as *mut u8, tag, len) };
}

fn holds(address: usize, len: usize, tag: u8) -> bool {
    // SAFETY: as for `fill`.
    unsafe { core::slice::from_raw_parts(address as *const u8, len).iter().all(|&byte| byte == tag) }
}

#[test]
fn a_tiny_span_is_refused_and_a_small_one_serves_until_full() {
    let mut span = Span::new(64 * 1024);
    // SAFETY: the span is the test's own and outlives the heap.
    unsafe {
        assert!(Fit::format(span.start(), 64).is_none());
        let fit = &mut *Fit::format(span.start(), 64 * 1024).unwrap();
        let capacity = fit.counters().capacity;
        let mut blocks = Vec::new();
        while let Some(block) = fit.alloc(100, 8) {
            blocks.push(block);
        }
        // 100 bytes take 128-byte blocks: all but the last block's worth is used.
        assert!(blocks.len() * 128 + 128 > capacity, "{} blocks in {capacity} bytes", blocks.len());
        fit.check_invariants().unwrap();
        for &block in &blocks {
            fit.free(block).unwrap();
        }
        fit.check_invariants().unwrap();
        let counters = fit.counters();
        assert_eq!(
            (counters.free_bytes, counters.largest_free, counters.used_blocks),
            (capacity, capacity, 0)
        );
    }
}

#[test]
fn refuses_pointers_it_did_not_hand_out_and_double_frees() {
    let mut span = Span::new(16 * 1024);
    // SAFETY: the span is the test's own and outlives the heap.
    unsafe {
        let fit = &mut *Fit::format(span.start(), 16 * 1024).unwrap();
        let block = fit.alloc(40, 8).unwrap();
        let other = fit.alloc(40, 8).unwrap();
        assert_eq!(fit.free(block + 16), Err(Refused::NotABlock));
        assert_eq!(fit.free(block + 8), Err(Refused::NotABlock));
        assert_eq!(fit.free(0x10), Err(Refused::NotABlock));
        assert_eq!(fit.used_size(block), Ok(48));
        fit.free(block).unwrap();
        assert_eq!(fit.free(block), Err(Refused::AlreadyFree));
        fit.free(other).unwrap();
        // Merged with its free neighbours: its header is gone, so no longer a block.
        assert_eq!(fit.free(other), Err(Refused::NotABlock));
        fit.check_invariants().unwrap();
    }
}

#[test]
fn resizes_in_place_into_a_free_successor_and_shrinks() {
    let mut span = Span::new(16 * 1024);
    // SAFETY: the span is the test's own and outlives the heap.
    unsafe {
        let fit = &mut *Fit::format(span.start(), 16 * 1024).unwrap();
        let block = fit.alloc(100, 8).unwrap();
        fill(block, 100, 7);
        assert!(fit.resize(block, 4000));
        assert!(fit.used_size(block).unwrap() >= 4000);
        assert!(holds(block, 100, 7));
        let wall = fit.alloc(16, 8).unwrap();
        assert!(!fit.resize(block, 8000), "grew over a used block");
        assert!(fit.resize(block, 64));
        assert_eq!(fit.used_size(block), Ok(64));
        fit.check_invariants().unwrap();
        assert!(fit.resize(block, 3000), "the space it gave back is free again");
        fit.free(wall).unwrap();
        fit.free(block).unwrap();
        fit.check_invariants().unwrap();
    }
}

#[test]
fn random_operations_keep_every_block_whole_and_the_heap_consistent() {
    for seed in 1..=20u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let bytes = [4096, 64 * 1024, 1 << 20][seed as usize % 3];
        let mut span = Span::new(bytes);
        // SAFETY: the span is the test's own and outlives the heap.
        let fit = unsafe { &mut *Fit::format(span.start(), bytes).unwrap() };
        let mut live: Vec<(usize, usize, u8)> = Vec::new();
        for step in 0..4000 {
            match rng.below(10) {
                0..=4 => {
                    let size = if rng.below(4) == 0 { rng.below(bytes / 8) + 1 } else { rng.below(300) + 1 };
                    let bits = if rng.below(8) == 0 { 13 } else { 5 };
                    let align = 1 << rng.below(bits);
                    if let Some(block) = fit.alloc(size, align) {
                        assert_eq!(block % align, 0, "seed {seed} step {step}: misaligned");
                        assert!(fit.used_size(block).unwrap() >= size);
                        for &(other, len, _) in &live {
                            assert!(block + size <= other || other + len <= block, "seed {seed}: overlap");
                        }
                        let tag = (step % 251) as u8;
                        fill(block, size, tag);
                        live.push((block, size, tag));
                    }
                }
                5..=7 if !live.is_empty() => {
                    let (block, size, tag) = live.swap_remove(rng.below(live.len()));
                    assert!(holds(block, size, tag), "seed {seed} step {step}: a block lost its bytes");
                    // SAFETY: a live block, no longer used.
                    unsafe { fit.free(block).unwrap() };
                }
                8..=9 if !live.is_empty() => {
                    let index = rng.below(live.len());
                    let (block, size, tag) = live[index];
                    let new_size = rng.below(2 * size + 64) + 1;
                    // SAFETY: a live block of this heap.
                    if unsafe { fit.resize(block, new_size) } {
                        assert!(holds(block, size.min(new_size), tag), "seed {seed}: resize lost bytes");
                        assert!(fit.used_size(block).unwrap() >= new_size);
                        fill(block, new_size, tag);
                        live[index].1 = new_size;
                    }
                }
                _ => {}
            }
            fit.check_invariants().unwrap_or_else(|error| panic!("seed {seed} step {step}: {error}"));
        }
        for (block, size, tag) in live.drain(..) {
            assert!(holds(block, size, tag));
            // SAFETY: a live block, no longer used.
            unsafe { fit.free(block).unwrap() };
        }
        let counters = fit.counters();
        assert_eq!(counters.free_bytes, counters.capacity, "seed {seed}: not everything came back");
        assert_eq!(counters.largest_free, counters.capacity, "seed {seed}: free space left split");
    }
}
