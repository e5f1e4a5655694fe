//! Where heap efficiency goes: talc's heap-efficiency workload (the harness's
//! `heap-efficiency` unit) over a fixed 128 MiB region, printing at each round's first
//! failure what failed and what the heap holds. For development; the harness measures.
use std::alloc::{GlobalAlloc, Layout};

use core_alloc::Allocator;
use page_provider::fixed::FixedRegion;
use platform::host::HostPlatform;

const ARENA: usize = 1 << 27;

struct Rng(u64);
impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn range(&mut self, low: usize, high: usize) -> usize {
        low + (self.next() % (high - low) as u64) as usize
    }
}

fn main() {
    let rounds: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(3);
    // SAFETY: a non-zero layout.
    let base = unsafe { std::alloc::alloc_zeroed(Layout::from_size_align(ARENA, 2 << 20).unwrap()) };
    assert!(!base.is_null());
    // SAFETY: fresh zeroed memory owned by this region alone, never freed.
    let region: FixedRegion = unsafe { FixedRegion::new(base, ARENA, true) };
    let heap = Allocator::new(region, HostPlatform::new());
    let mut rng = Rng::new(0x5eed);
    let mut total = 0.0;
    for round in 0..rounds {
        let mut blocks: Vec<(*mut u8, Layout)> = Vec::with_capacity(100_000);
        let (failed, size) = loop {
            let action = rng.range(0, 10);
            match action {
                0..=4 => {
                    let cap = rng.range(16, 10_000);
                    let size = rng.range(4, cap.max(5));
                    let align = 8 << ((rng.next() as u16).trailing_zeros() / 2);
                    let layout = Layout::from_size_align(size, align).unwrap();
                    // SAFETY: non-zero size.
                    let block = unsafe { heap.alloc(layout) };
                    if block.is_null() {
                        break ("alloc", size);
                    }
                    blocks.push((block, layout));
                }
                5 => {
                    if !blocks.is_empty() {
                        let (block, layout) = blocks.swap_remove(rng.range(0, blocks.len()));
                        // SAFETY: live, freed once.
                        unsafe { heap.dealloc(block, layout) };
                    }
                }
                _ => {
                    if !blocks.is_empty() {
                        let index = rng.range(0, blocks.len());
                        let new_size = rng.range(1, 100_000);
                        let (block, layout) = blocks[index];
                        // SAFETY: live block, its layout.
                        let moved = unsafe { heap.realloc(block, layout, new_size) };
                        if moved.is_null() {
                            break ("realloc", new_size);
                        }
                        blocks[index] = (moved, Layout::from_size_align(new_size, layout.align()).unwrap());
                    }
                }
            }
        };
        let run_pages: usize = blocks
            .iter()
            .filter(|(_, l)| l.size() >= 4096 && l.align() <= 4096)
            .map(|(_, l)| l.size().div_ceil(4096))
            .sum();
        println!("pages needed by blocks >= 4 KiB: {run_pages}");
        let live: usize = blocks.iter().map(|(_, l)| l.size()).sum();
        let small: usize = blocks.iter().filter(|(_, l)| l.size() <= 32 * 1024).map(|(_, l)| l.size()).sum();
        total += live as f64 / ARENA as f64;
        println!(
            "round {round}: {failed} of {size} B failed with {} blocks, {:.1}% live ({:.1}% in blocks <= 32 KiB)",
            blocks.len(),
            100.0 * live as f64 / ARENA as f64,
            100.0 * small as f64 / ARENA as f64
        );
        println!("{}", heap.stats().to_string().lines().take(3).collect::<Vec<_>>().join("\n"));
        for (block, layout) in blocks.drain(..) {
            // SAFETY: live, freed once.
            unsafe { heap.dealloc(block, layout) };
        }
    }
    println!("efficiency {:.1}%", 100.0 * total / rounds as f64);
}
