//! Workloads 1-3 of DESIGN.md on core-alloc, glibc malloc and linked_list_allocator (behind
//! a spin lock over a fixed 1 GiB arena), side by side in one run; medians of several runs,
//! with ratios to core-alloc.
//!
//! `cargo run --release --manifest-path bench/Cargo.toml [-- --runs N]`

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::time::Instant;

use core_alloc::host::HostAlloc;

/// xorshift64*.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// linked_list_allocator::Heap behind a spin lock over a 1 GiB anonymous mapping, made on
/// first use.
struct LinkedList(spin::Mutex<Option<linked_list_allocator::Heap>>);

impl LinkedList {
    const ARENA: usize = 1 << 30;
    fn with<R>(&self, f: impl FnOnce(&mut linked_list_allocator::Heap) -> R) -> R {
        let mut heap = self.0.lock();
        let heap = heap.get_or_insert_with(|| {
            // SAFETY: a fresh private anonymous mapping, used only by this heap.
            unsafe {
                let arena = libc::mmap(
                    std::ptr::null_mut(),
                    Self::ARENA,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    -1,
                    0,
                );
                assert_ne!(arena, libc::MAP_FAILED);
                linked_list_allocator::Heap::new(arena.cast(), Self::ARENA)
            }
        });
        f(heap)
    }
}

// SAFETY: blocks come from the linked-list heap, which hands out disjoint aligned blocks.
unsafe impl GlobalAlloc for LinkedList {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.with(|heap| heap.allocate_first_fit(layout).map_or(std::ptr::null_mut(), |block| block.as_ptr()))
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's promise: a live block of this heap.
        self.with(|heap| unsafe { heap.deallocate(std::ptr::NonNull::new_unchecked(ptr), layout) })
    }
}

static LINKED_LIST: LinkedList = LinkedList(spin::Mutex::new(None));

/// Workload 1: malloc + free of 16..128 bytes, freed at once; ns per pair.
fn small_pairs<A: GlobalAlloc>(heap: &A, pairs: usize) -> f64 {
    let start = Instant::now();
    for i in 0..pairs {
        let size = 16 + (i * 7) % 113;
        // SAFETY: non-zero sizes; each block is freed with its layout.
        unsafe {
            let layout = Layout::from_size_align_unchecked(size, 8);
            let block = heap.alloc(layout);
            *block = i as u8;
            heap.dealloc(black_box(block), layout);
        }
    }
    start.elapsed().as_nanos() as f64 / pairs as f64
}

/// Workload 2: `live` objects of 8 B..4 KiB (log-uniform), replaced at random; ns per
/// replacement (a free and an allocation).
fn live_set<A: GlobalAlloc>(heap: &A, live: usize, replacements: usize, seed: u64) -> f64 {
    let mut rng = Rng(seed);
    let mut size_of = move || {
        let shift = 3 + rng.next() % 9;
        ((1u64 << shift) + rng.next() % (1 << shift)) as usize
    };
    let mut slots: Vec<(*mut u8, Layout)> = Vec::with_capacity(live);
    // SAFETY: non-zero sizes; each block is freed with its layout.
    unsafe {
        for _ in 0..live {
            let layout = Layout::from_size_align_unchecked(size_of(), 8);
            let block = heap.alloc(layout);
            *block = 1;
            slots.push((block, layout));
        }
        let mut picker = Rng(seed ^ 0xABCD);
        let start = Instant::now();
        for _ in 0..replacements {
            let index = (picker.next() % live as u64) as usize;
            let (block, layout) = slots[index];
            heap.dealloc(block, layout);
            let layout = Layout::from_size_align_unchecked(size_of(), 8);
            let block = heap.alloc(layout);
            *block = 1;
            slots[index] = (block, layout);
        }
        let elapsed = start.elapsed().as_nanos() as f64;
        for (block, layout) in slots {
            heap.dealloc(block, layout);
        }
        elapsed / replacements as f64
    }
}

/// Workload 3: workload 2 on `threads` threads at once; aggregate replacements per second.
fn live_set_parallel<A: GlobalAlloc + Sync>(heap: &A, threads: usize, live: usize, replacements: usize) -> f64 {
    let start = Instant::now();
    std::thread::scope(|scope| {
        for thread in 0..threads {
            scope.spawn(move || live_set(heap, live, replacements, 0x5EED + thread as u64));
        }
    });
    // Includes the fill of the live sets, identically for every allocator.
    (threads * replacements) as f64 / start.elapsed().as_secs_f64()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

struct Row {
    name: &'static str,
    small_pair_ns: f64,
    live_set_ns: f64,
    one_thread_ops: f64,
    all_threads_ops: f64,
}

fn measure<A: GlobalAlloc + Sync>(name: &'static str, heap: &A, runs: usize, scale: usize) -> Row {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let pairs = 20_000_000 / scale;
    let replacements = 2_000_000 / scale;
    let small_pair_ns = median((0..runs).map(|_| small_pairs(heap, pairs)).collect());
    let live_set_ns = median((0..runs).map(|run| live_set(heap, 100_000, replacements, run as u64 + 1)).collect());
    let one_thread_ops = median((0..runs).map(|_| live_set_parallel(heap, 1, 100_000, replacements)).collect());
    let all_threads_ops = median((0..runs).map(|_| live_set_parallel(heap, threads, 100_000, replacements)).collect());
    Row { name, small_pair_ns, live_set_ns, one_thread_ops, all_threads_ops }
}

fn main() {
    let runs = std::env::args()
        .skip_while(|argument| argument != "--runs")
        .nth(1)
        .and_then(|value| value.parse().ok())
        .unwrap_or(5);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    println!("workloads 1-3 of DESIGN.md; medians of {runs} runs; {threads} threads for workload 3");
    let rows = [
        measure("core-alloc", &HostAlloc, runs, 1),
        measure("glibc malloc", &System, runs, 1),
        // linked_list_allocator is O(free holes) per operation: fewer operations.
        measure("linked_list_allocator", &LINKED_LIST, runs.min(3), 100),
    ];
    let ours = &rows[0];
    println!(
        "{:<24} {:>14} {:>10} {:>16} {:>10} {:>18} {:>10}",
        "allocator", "W1 pair ns", "vs ours", "W2 ns/replace", "vs ours", "W3 scaling", "vs ours"
    );
    for row in &rows {
        let scaling = row.all_threads_ops / row.one_thread_ops;
        println!(
            "{:<24} {:>14.1} {:>9.2}x {:>16.1} {:>9.2}x {:>12.2} ({}t) {:>9.2}x",
            row.name,
            row.small_pair_ns,
            row.small_pair_ns / ours.small_pair_ns,
            row.live_set_ns,
            row.live_set_ns / ours.live_set_ns,
            scaling,
            threads,
            scaling / (ours.all_threads_ops / ours.one_thread_ops),
        );
    }
    println!("(ratios: the peer's figure over core-alloc's; above 1x means core-alloc is faster for W1/W2 and scales better for W3)");
}
