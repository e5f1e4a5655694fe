//! Quick probes of workloads 4 (producer/consumer) and 5 (large) against glibc, for
//! development; the benchmark harness in bench/ is the real measurement.
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::mpsc;
use std::time::Instant;

use core_alloc::host::HostAlloc;

fn producer_consumer<A: GlobalAlloc + Sync>(heap: &A, objects: usize) -> f64 {
    let (sender, receiver) = mpsc::sync_channel::<Vec<usize>>(64);
    let layout = Layout::from_size_align(64, 8).unwrap();
    let start = Instant::now();
    std::thread::scope(|scope| {
        scope.spawn(move || {
            for _ in 0..objects / 256 {
                // SAFETY: non-zero layout.
                let batch: Vec<usize> = (0..256).map(|_| unsafe { heap.alloc(layout) } as usize).collect();
                sender.send(batch).unwrap();
            }
        });
        scope.spawn(move || {
            for batch in receiver {
                for block in batch {
                    // SAFETY: allocated by the producer with this layout.
                    unsafe { heap.dealloc(block as *mut u8, layout) };
                }
            }
        });
    });
    start.elapsed().as_nanos() as f64 / objects as f64
}

fn large<A: GlobalAlloc>(heap: &A, operations: usize) -> f64 {
    let mut state = 0x1234_5678_9abc_def0u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut live: Vec<(*mut u8, Layout)> = Vec::with_capacity(1000);
    let start = Instant::now();
    for _ in 0..operations {
        let shift = 12 + next() % 8;
        let size = ((1u64 << shift) + next() % (1 << shift)) as usize;
        let layout = Layout::from_size_align(size.min(1 << 20), 8).unwrap();
        // SAFETY: non-zero layouts; blocks freed with their layouts.
        unsafe {
            let block = heap.alloc(layout);
            *block = 1;
            if live.len() == 1000 {
                let index = (next() % 1000) as usize;
                let (old, old_layout) = live.swap_remove(index);
                heap.dealloc(old, old_layout);
            }
            live.push((block, layout));
        }
    }
    let elapsed = start.elapsed().as_nanos() as f64 / operations as f64;
    for (block, layout) in live {
        // SAFETY: live blocks with their layouts.
        unsafe { heap.dealloc(block, layout) };
    }
    elapsed
}

/// Workload 3 over a whole run (fill of 100k objects, then 2M replacements) on `threads`
/// threads; aggregate replacements per microsecond.
fn live_set<A: GlobalAlloc + Sync>(heap: &A, threads: usize) -> f64 {
    let start = Instant::now();
    std::thread::scope(|scope| {
        for thread in 0..threads {
            scope.spawn(move || {
                let mut state = 0x9E37_79B9 + thread as u64;
                let mut next = move || {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state
                };
                let mut size = || {
                    let shift = 3 + next() % 9;
                    ((1u64 << shift) + next() % (1 << shift)) as usize
                };
                // SAFETY: non-zero layouts; blocks freed with their layouts.
                unsafe {
                    let mut slots: Vec<(*mut u8, Layout)> = (0..100_000)
                        .map(|_| {
                            let layout = Layout::from_size_align_unchecked(size(), 8);
                            let block = heap.alloc(layout);
                            *block = 1;
                            (block, layout)
                        })
                        .collect();
                    for round in 0..2_000_000usize {
                        let index = round.wrapping_mul(2_654_435_761) % slots.len();
                        let (block, layout) = slots[index];
                        heap.dealloc(block, layout);
                        let layout = Layout::from_size_align_unchecked(size(), 8);
                        let block = heap.alloc(layout);
                        *block = 1;
                        slots[index] = (block, layout);
                    }
                    for (block, layout) in slots {
                        heap.dealloc(block, layout);
                    }
                }
            });
        }
    });
    (threads * 2_000_000) as f64 / start.elapsed().as_micros() as f64
}

/// Workload 7: a vector of u64 pushed to 64 Mi elements (512 MiB); milliseconds.
fn vec_growth<A: GlobalAlloc>(heap: &A) -> f64 {
    let start = Instant::now();
    let mut capacity = 4usize;
    // SAFETY: layouts of non-zero size; the block is reallocated with its current layout.
    unsafe {
        let mut block = heap.alloc(Layout::array::<u64>(capacity).unwrap()).cast::<u64>();
        for index in 0..64usize << 20 {
            if index == capacity {
                let old = Layout::array::<u64>(capacity).unwrap();
                capacity *= 2;
                block = heap.realloc(block.cast(), old, capacity * 8).cast();
            }
            block.add(index).write(index as u64);
        }
        assert_eq!(block.add(12345).read(), 12345);
        heap.dealloc(block.cast(), Layout::array::<u64>(capacity).unwrap());
    }
    start.elapsed().as_secs_f64() * 1e3
}

fn main() {
    if std::env::args().any(|argument| argument == "--growth") {
        for _ in 0..3 {
            println!(
                "W7 vec growth to 512 MiB: core-alloc {:.0} ms, glibc {:.0} ms",
                vec_growth(&HostAlloc),
                vec_growth(&System)
            );
        }
        return;
    }
    if std::env::args().any(|argument| argument == "--scaling") {
        for _ in 0..5 {
            let (ours_one, ours_two) = (live_set(&HostAlloc, 1), live_set(&HostAlloc, 2));
            let (glibc_one, glibc_two) = (live_set(&System, 1), live_set(&System, 2));
            println!(
                "W3 whole run: core-alloc {ours_one:.2} -> {ours_two:.2} Mops/s ({:.2}x), glibc {glibc_one:.2} -> {glibc_two:.2} ({:.2}x)",
                ours_two / ours_one,
                glibc_two / glibc_one
            );
        }
        return;
    }
    for _ in 0..3 {
        println!(
            "W4 producer/consumer ns/object: core-alloc {:.1}, glibc {:.1}",
            producer_consumer(&HostAlloc, 4_000_000),
            producer_consumer(&System, 4_000_000)
        );
        println!(
            "W5 large ns/op: core-alloc {:.1}, glibc {:.1}",
            large(&HostAlloc, 300_000),
            large(&System, 300_000)
        );
    }
}
