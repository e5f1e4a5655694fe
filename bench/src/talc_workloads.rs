//! talc's own benchmark workloads, as ANCHORS.md describes them, so that core-alloc is also
//! measured on a peer's home ground: "random actions" (throughput of a random mix of
//! allocations, frees and reallocations) and "heap efficiency" (how much of a fixed heap
//! holds live data when the first request fails).

use std::alloc::{GlobalAlloc, Layout};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use crate::workloads::Rng;

/// Random actions' largest request per run (talc's published set and ANCHORS.md's 200).
pub const MAX_SIZES: [usize; 5] = [200, 1000, 3000, 10_000, 30_000];
/// Reallocations go up to this many times the largest request.
const REALLOC_FACTOR: usize = 3;
/// Below this many live allocations, random actions always allocates.
const MIN_LIVE: usize = 300;
/// Heap efficiency's largest request, and its reallocation factor.
const EFFICIENCY_MAX_SIZE: usize = 10_000;
const EFFICIENCY_REALLOC_FACTOR: usize = 10;

/// A size biased to small values: a cap uniform in `16..max`, then a size uniform in
/// `4..cap`.
fn biased_size(rng: &mut Rng, max: usize) -> usize {
    let cap = rng.range(16, max);
    rng.range(4, cap.max(5))
}

/// An alignment mostly of 8 bytes: 8 shifted left by half the trailing zeros of 16 random
/// bits (75% 8 B, 19% 16 B, 4% 32 B, and rarer higher ones).
fn biased_align(rng: &mut Rng) -> usize {
    8 << ((rng.next() as u16).trailing_zeros() / 2)
}

/// Live allocations of one thread, freed when dropped.
struct Live<'a, A: GlobalAlloc> {
    heap: &'a A,
    blocks: Vec<(*mut u8, Layout)>,
}

impl<'a, A: GlobalAlloc> Live<'a, A> {
    fn new(heap: &'a A) -> Self {
        Self { heap, blocks: Vec::with_capacity(100_000) }
    }

    /// Allocates; false if the allocator said no.
    fn allocate(&mut self, size: usize, align: usize) -> bool {
        let Ok(layout) = Layout::from_size_align(size, align) else { return false };
        // SAFETY: sizes here are at least 1.
        let block = unsafe { self.heap.alloc(layout) };
        if block.is_null() {
            return false;
        }
        self.blocks.push((block, layout));
        true
    }

    /// Frees the block at `index`.
    fn free(&mut self, index: usize) {
        let (block, layout) = self.blocks.swap_remove(index);
        // SAFETY: a live block with its layout, removed from the list so freed once.
        unsafe { self.heap.dealloc(block, layout) };
    }

    /// Reallocates the block at `index`; false if the allocator said no (the block stays).
    fn reallocate(&mut self, index: usize, new_size: usize) -> bool {
        let (block, layout) = self.blocks[index];
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else { return false };
        // SAFETY: a live block with its layout; the new size is non-zero and valid for the
        // alignment (checked above).
        let moved = unsafe { self.heap.realloc(block, layout, new_size) };
        if moved.is_null() {
            return false;
        }
        self.blocks[index] = (moved, new_layout);
        true
    }

    /// Requested bytes live.
    fn live_bytes(&self) -> usize {
        self.blocks.iter().map(|(_, layout)| layout.size()).sum()
    }
}

impl<A: GlobalAlloc> Drop for Live<'_, A> {
    fn drop(&mut self) {
        while !self.blocks.is_empty() {
            self.free(self.blocks.len() - 1);
        }
    }
}

/// One thread of random actions for `duration`: 1/7 reallocate (to up to 3x `max`), 3/7
/// free, 3/7 allocate, always allocating while fewer than 300 are live; returns the
/// successful operations.
fn random_actions_thread<A: GlobalAlloc>(heap: &A, max: usize, duration: Duration, seed: u64) -> u64 {
    let mut rng = Rng::new(seed);
    let mut live = Live::new(heap);
    let mut score = 0u64;
    let start = Instant::now();
    while start.elapsed() < duration {
        for _ in 0..100 {
            let action = rng.range(0, 7);
            let succeeded = if action == 6 {
                if live.blocks.is_empty() {
                    false
                } else {
                    let index = rng.range(0, live.blocks.len());
                    let new_size = rng.range(1, max * REALLOC_FACTOR);
                    live.reallocate(index, new_size)
                }
            } else if action < 3 || live.blocks.len() < MIN_LIVE {
                let size = biased_size(&mut rng, max);
                let align = biased_align(&mut rng);
                live.allocate(size, align)
            } else {
                let index = rng.range(0, live.blocks.len());
                live.free(index);
                true
            };
            score += u64::from(succeeded);
        }
    }
    score
}

/// Random actions with largest request `max` on `threads` threads: each thread warms up
/// for `warm_up`, then all run together for `trial`; successful operations per second.
pub fn random_actions<A: GlobalAlloc + Sync>(
    heap: &A,
    max: usize,
    threads: usize,
    warm_up: Duration,
    trial: Duration,
    seed: u64,
) -> f64 {
    let barrier = Barrier::new(threads);
    let score: u64 = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|thread| {
                let barrier = &barrier;
                scope.spawn(move || {
                    let seed = seed + 7919 * thread as u64;
                    random_actions_thread(heap, max, warm_up, seed ^ 0xFFFF);
                    barrier.wait();
                    random_actions_thread(heap, max, trial, seed)
                })
            })
            .collect();
        workers.into_iter().map(|worker| worker.join().unwrap_or(0)).sum()
    });
    score as f64 / trial.as_secs_f64()
}

/// Heap efficiency over a heap of `heap_size` bytes: `rounds` rounds of 5/10 allocate (up
/// to 10000 B), 1/10 free, 4/10 reallocate (up to 10x that) until the first failure, then
/// free everything; returns the requested bytes live at the failures over the heap bytes
/// offered, summed over the rounds (talc's score, a fraction).
pub fn heap_efficiency<A: GlobalAlloc>(heap: &A, heap_size: usize, rounds: usize, seed: u64) -> f64 {
    let mut rng = Rng::new(seed);
    let mut used = 0usize;
    for _ in 0..rounds {
        let mut live = Live::new(heap);
        loop {
            let action = rng.range(0, 10);
            let succeeded = match action {
                0..=4 => {
                    let size = biased_size(&mut rng, EFFICIENCY_MAX_SIZE);
                    let align = biased_align(&mut rng);
                    live.allocate(size, align)
                }
                5 => {
                    if !live.blocks.is_empty() {
                        let index = rng.range(0, live.blocks.len());
                        live.free(index);
                    }
                    true
                }
                _ => {
                    if live.blocks.is_empty() {
                        true
                    } else {
                        let index = rng.range(0, live.blocks.len());
                        let new_size = rng.range(1, EFFICIENCY_MAX_SIZE * EFFICIENCY_REALLOC_FACTOR);
                        live.reallocate(index, new_size)
                    }
                }
            };
            if !succeeded {
                break;
            }
        }
        used += live.live_bytes();
    }
    used as f64 / (heap_size * rounds) as f64
}
