//! The workloads of DESIGN.md, generic over the allocator so that each is compiled for each
//! allocator without dispatch. Each returns its figure; the child process prints it.
//!
//! Timed workloads write the first byte of each block (as a program initialising a header
//! would); the memory workload writes every byte, so resident memory reflects real use.

use std::alloc::{GlobalAlloc, Layout};
use std::hint::black_box;
use std::ptr;
use std::sync::Barrier;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use crate::memory;

/// xorshift64*: fast, and the same sequence for every allocator.
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed (any value; zero is remapped).
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `low..high` (`low < high`).
    pub fn range(&mut self, low: usize, high: usize) -> usize {
        low + (self.next() % (high - low) as u64) as usize
    }
}

/// A size log-uniform over `2^low_shift .. 2^(high_shift + 1)`: a power-of-two band picked
/// uniformly, then a size uniform inside the band.
fn log_uniform(rng: &mut Rng, low_shift: u32, high_shift: u32) -> usize {
    let shift = low_shift + (rng.next() % u64::from(high_shift - low_shift + 1)) as u32;
    (1usize << shift) + (rng.next() % (1u64 << shift)) as usize
}

/// Workload 2's sizes: 8 B up to 4 KiB.
fn small_size(rng: &mut Rng) -> usize {
    log_uniform(rng, 3, 11)
}

/// Workload 5's sizes: 4 KiB up to 1 MiB.
fn large_size(rng: &mut Rng) -> usize {
    log_uniform(rng, 12, 19)
}

fn layout(size: usize) -> Layout {
    // 8 is a power of two and every size here is far below isize::MAX.
    Layout::from_size_align(size, 8).unwrap_or(Layout::new::<u64>())
}

/// Allocates or aborts: a null from a host allocator here is a harness bug or a broken peer.
///
/// # Safety
///
/// `layout` has a non-zero size.
unsafe fn allocate<A: GlobalAlloc>(heap: &A, layout: Layout) -> *mut u8 {
    // SAFETY: the caller's promise: a non-zero size.
    let block = unsafe { heap.alloc(layout) };
    if block.is_null() {
        eprintln!("allocation of {} bytes failed", layout.size());
        std::process::abort();
    }
    block
}

/// Workload 1: malloc + free of 16..128 bytes, freed at once, one thread; ns per pair.
pub fn small_pairs<A: GlobalAlloc>(heap: &A, pairs: usize) -> f64 {
    let start = Instant::now();
    for i in 0..pairs {
        let size = 16 + (i * 7) % 113;
        // SAFETY: a non-zero size; the block is written inside its bounds and freed once
        // with its layout.
        unsafe {
            let layout = Layout::from_size_align_unchecked(size, 8);
            let block = allocate(heap, layout);
            block.write(i as u8);
            heap.dealloc(black_box(block), layout);
        }
    }
    start.elapsed().as_nanos() as f64 / pairs as f64
}

/// A live set of blocks with their layouts.
struct LiveSet {
    slots: Vec<(*mut u8, Layout)>,
}

impl LiveSet {
    /// `live` blocks of sizes from `size`, first byte written.
    fn fill<A: GlobalAlloc>(heap: &A, live: usize, rng: &mut Rng, size: fn(&mut Rng) -> usize) -> Self {
        let mut slots = Vec::with_capacity(live);
        for _ in 0..live {
            let layout = layout(size(rng));
            // SAFETY: non-zero sizes; the write is inside the block.
            unsafe {
                let block = allocate(heap, layout);
                block.write(1);
                slots.push((block, layout));
            }
        }
        Self { slots }
    }

    /// Frees a random block and allocates a new one in its place, `count` times.
    fn replace<A: GlobalAlloc>(
        &mut self,
        heap: &A,
        count: usize,
        sizes: &mut Rng,
        picker: &mut Rng,
        size: fn(&mut Rng) -> usize,
    ) {
        let live = self.slots.len();
        for _ in 0..count {
            let index = picker.range(0, live);
            let (block, old) = self.slots[index];
            let layout = layout(size(sizes));
            // SAFETY: `block` is live with `old` (each slot holds its block's layout); the
            // new block has a non-zero size and the write is inside it.
            unsafe {
                heap.dealloc(block, old);
                let block = allocate(heap, layout);
                block.write(1);
                self.slots[index] = (block, layout);
            }
        }
    }

    /// Leaves the blocks to the process's exit (each child process runs one workload): the
    /// teardown is not measured, and freeing 200,000 scattered blocks one by one takes the
    /// linear-time peers minutes.
    fn abandon(self) {
        drop(self.slots);
    }
}

/// Workload 2: `live` objects of 8 B..4 KiB (log-uniform), replaced at random; ns per
/// replacement (a free and an allocation). The fill is not timed.
pub fn live_set<A: GlobalAlloc>(heap: &A, live: usize, replacements: usize, seed: u64) -> f64 {
    let mut sizes = Rng::new(seed);
    let mut picker = Rng::new(seed ^ 0xABCD);
    let mut set = LiveSet::fill(heap, live, &mut sizes, small_size);
    let start = Instant::now();
    set.replace(heap, replacements, &mut sizes, &mut picker, small_size);
    let elapsed = start.elapsed().as_nanos() as f64;
    set.abandon();
    elapsed / replacements as f64
}

/// Workload 3: workload 2 on `threads` threads at once; aggregate replacements per second.
/// Each thread fills its own live set, then all start together; the time runs from that
/// start until the last thread is done.
pub fn live_set_threads<A: GlobalAlloc + Sync>(
    heap: &A,
    threads: usize,
    live: usize,
    replacements: usize,
    seed: u64,
) -> f64 {
    let barrier = Barrier::new(threads + 1);
    let elapsed = std::thread::scope(|scope| {
        for thread in 0..threads {
            let barrier = &barrier;
            scope.spawn(move || {
                let seed = seed + 1000 * thread as u64;
                let mut sizes = Rng::new(seed);
                let mut picker = Rng::new(seed ^ 0xABCD);
                let mut set = LiveSet::fill(heap, live, &mut sizes, small_size);
                barrier.wait();
                set.replace(heap, replacements, &mut sizes, &mut picker, small_size);
                barrier.wait();
                set.abandon();
            });
        }
        barrier.wait();
        let start = Instant::now();
        barrier.wait();
        start.elapsed().as_secs_f64()
    });
    (threads * replacements) as f64 / elapsed
}

/// Blocks handed from the producer to the consumer per batch.
const BATCH: usize = 256;
/// Batches in flight at most.
const RING: usize = 16;

/// A single-producer single-consumer ring of batches of block addresses.
struct Ring {
    batches: Box<[[AtomicUsize; BATCH]]>,
    /// Batches published by the producer.
    head: Padded,
    /// Batches taken by the consumer.
    tail: Padded,
}

#[repr(align(128))]
struct Padded(AtomicUsize);

fn wait_until(condition: impl Fn() -> bool) {
    let mut spins = 0u32;
    while !condition() {
        spins += 1;
        if spins < 1000 {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

/// Workload 4: one thread allocates 64-byte objects, another frees them (every free is a
/// remote free); ns per object, from the common start until the consumer's last free.
pub fn producer_consumer<A: GlobalAlloc + Sync>(heap: &A, objects: usize) -> f64 {
    let ring = Ring {
        batches: (0..RING).map(|_| [const { AtomicUsize::new(0) }; BATCH]).collect(),
        head: Padded(AtomicUsize::new(0)),
        tail: Padded(AtomicUsize::new(0)),
    };
    let batches = objects / BATCH;
    let object = layout(64);
    let barrier = Barrier::new(3);
    let elapsed = std::thread::scope(|scope| {
        let (ring, barrier) = (&ring, &barrier);
        scope.spawn(move || {
            barrier.wait();
            for batch in 0..batches {
                wait_until(|| batch - ring.tail.0.load(Ordering::Acquire) < RING);
                for (index, slot) in ring.batches[batch % RING].iter().enumerate() {
                    // SAFETY: a non-zero size; the write is inside the block.
                    let block = unsafe { allocate(heap, object) };
                    // SAFETY: a fresh block of 64 bytes; the write is its first byte.
                    unsafe { block.write(index as u8) };
                    slot.store(block as usize, Ordering::Relaxed);
                }
                ring.head.0.store(batch + 1, Ordering::Release);
            }
        });
        scope.spawn(move || {
            barrier.wait();
            for batch in 0..batches {
                wait_until(|| ring.head.0.load(Ordering::Acquire) > batch);
                for slot in &ring.batches[batch % RING] {
                    let block = slot.load(Ordering::Relaxed) as *mut u8;
                    // SAFETY: the producer published this live 64-byte block (release on
                    // `head`, acquire above) and hands it over to be freed here once.
                    unsafe {
                        black_box(block.read());
                        heap.dealloc(block, object);
                    }
                }
                ring.tail.0.store(batch + 1, Ordering::Release);
            }
        });
        barrier.wait();
        let start = Instant::now();
        // The scope joins both threads before returning; time them from here.
        Timer(start)
    });
    elapsed.0.elapsed().as_nanos() as f64 / (batches * BATCH) as f64
}

/// A start time carried out of the thread scope, read after the threads are joined.
struct Timer(Instant);

/// Workload 5: `live` objects of 4 KiB..1 MiB (log-uniform), replaced at random; ns per
/// replacement.
pub fn large<A: GlobalAlloc>(heap: &A, live: usize, replacements: usize, seed: u64) -> f64 {
    let mut sizes = Rng::new(seed);
    let mut picker = Rng::new(seed ^ 0x1234);
    let mut set = LiveSet::fill(heap, live, &mut sizes, large_size);
    let start = Instant::now();
    set.replace(heap, replacements, &mut sizes, &mut picker, large_size);
    let elapsed = start.elapsed().as_nanos() as f64;
    set.abandon();
    elapsed / replacements as f64
}

/// One resident-memory sample of workload 6.
pub struct Sample {
    /// Phase: 0 fill, 1 replacement, 2 freeing 9 of 10, 3 freeing the rest, 4 after the
    /// explicit collection call.
    pub phase: usize,
    /// Progress through the phase, 0 to 1.
    pub progress: f64,
    /// Resident bytes above the baseline taken before the workload.
    pub resident: u64,
}

/// Workload 6's figures; resident bytes are above the baseline taken before the first
/// allocation of the workload.
pub struct Fragmentation {
    /// Requested bytes live after the replacements.
    pub peak_live: u64,
    /// Resident bytes then.
    pub peak_resident: u64,
    /// Of them, in transparent huge pages (the whole process's).
    pub peak_huge: u64,
    /// Requested bytes live after freeing 9 of every 10 objects.
    pub after_live: u64,
    /// Resident bytes then.
    pub after_resident: u64,
    /// Resident bytes after a second of idleness that follows (no call: allocators that
    /// purge on a timer of their own get their chance).
    pub idle_resident: u64,
    /// Resident bytes after the allocator's own call for giving back memory unused for a
    /// while, where it has one (made around a further idle second; see `peers`).
    pub decayed_resident: Option<u64>,
    /// Resident bytes once everything is freed.
    pub freed_resident: u64,
    /// Resident bytes after the allocator's explicit collection call, if it has one.
    pub collected_resident: Option<u64>,
    /// The time series.
    pub samples: Vec<Sample>,
}

/// Workload 6: workload 2 (fill and `replacements` random replacements, every byte of every
/// block written), then free 9 of every 10 objects, stay idle a second, call the allocator's
/// time-based release where it has one (`decay`), then free the rest, then the allocator's
/// explicit collection call where it has one. Resident memory is sampled all along.
pub fn fragmentation<A: GlobalAlloc>(
    heap: &A,
    live: usize,
    replacements: usize,
    seed: u64,
    decay: impl FnOnce() -> bool,
    collect: impl FnOnce() -> bool,
) -> Fragmentation {
    const STEPS: usize = 25;
    // The slot table is made and touched before the baseline, so only the allocator's
    // memory counts.
    let mut slots: Vec<(*mut u8, Layout)> = vec![(ptr::null_mut(), layout(8)); live];
    black_box(&mut slots);
    let baseline = memory::resident_bytes();
    let mut samples = Vec::new();
    let mut sample = |phase: usize, done: usize, total: usize| {
        let resident = memory::resident_bytes().saturating_sub(baseline);
        samples.push(Sample { phase, progress: done as f64 / total.max(1) as f64, resident });
    };
    let mut sizes = Rng::new(seed);
    let mut picker = Rng::new(seed ^ 0xABCD);
    // Each slot holds a live block and its layout until the block is freed (once).
    sample(0, 0, live);
    for (index, slot) in slots.iter_mut().enumerate() {
        let layout = layout(small_size(&mut sizes));
        // SAFETY: a non-zero size; the write covers exactly the new block.
        unsafe {
            let block = allocate(heap, layout);
            block.write_bytes(0xA5, layout.size());
            *slot = (block, layout);
        }
        if (index + 1) % (live / STEPS).max(1) == 0 {
            sample(0, index + 1, live);
        }
    }
    for done in 0..replacements {
        let index = picker.range(0, live);
        let layout = layout(small_size(&mut sizes));
        // SAFETY: the slot's block is live with the slot's layout and freed once here; the
        // new block has a non-zero size and the write covers exactly it.
        unsafe {
            let (block, old) = slots[index];
            heap.dealloc(block, old);
            let block = allocate(heap, layout);
            block.write_bytes(0x5A, layout.size());
            slots[index] = (block, layout);
        }
        if (done + 1) % (replacements / STEPS).max(1) == 0 {
            sample(1, done + 1, replacements);
        }
    }
    let peak_live: u64 = slots.iter().map(|(_, layout)| layout.size() as u64).sum();
    let peak_resident = memory::resident_bytes().saturating_sub(baseline);
    let peak_huge = memory::anon_huge_bytes();
    let to_free = live - live.div_ceil(10);
    let mut freed = 0;
    for (index, slot) in slots.iter_mut().enumerate() {
        if index % 10 != 0 {
            // SAFETY: the slot's live block and layout; the slot is emptied so it is freed once.
            unsafe { heap.dealloc(slot.0, slot.1) };
            slot.0 = ptr::null_mut();
            freed += 1;
            if freed % (to_free / STEPS).max(1) == 0 {
                sample(2, freed, to_free);
            }
        }
    }
    let after_live: u64 =
        slots.iter().filter(|(block, _)| !block.is_null()).map(|(_, layout)| layout.size() as u64).sum();
    let after_resident = memory::resident_bytes().saturating_sub(baseline);
    std::thread::sleep(std::time::Duration::from_secs(1));
    let idle_resident = memory::resident_bytes().saturating_sub(baseline);
    let decayed_resident = decay().then(|| memory::resident_bytes().saturating_sub(baseline));
    let remaining = live - to_free;
    let mut freed = 0;
    for (block, layout) in slots.iter().filter(|(block, _)| !block.is_null()) {
        // SAFETY: a slot still holding a live block and its layout, freed once here.
        unsafe { heap.dealloc(*block, *layout) };
        freed += 1;
        if freed % (remaining / STEPS).max(1) == 0 {
            sample(3, freed, remaining);
        }
    }
    let freed_resident = memory::resident_bytes().saturating_sub(baseline);
    let collected_resident = collect().then(|| memory::resident_bytes().saturating_sub(baseline));
    sample(4, 1, 1);
    Fragmentation {
        peak_live,
        peak_resident,
        peak_huge,
        after_live,
        after_resident,
        freed_resident,
        collected_resident,
        idle_resident,
        decayed_resident,
        samples,
    }
}

/// One sample of workload 8's timeline.
#[derive(Clone, Copy, Debug)]
pub struct TimelineSample {
    /// Seconds since the workload started.
    pub seconds: f64,
    /// Requested bytes live.
    pub live: u64,
    /// Resident bytes above the baseline.
    pub resident: u64,
}

/// Workload 8's figures; resident bytes are above the baseline taken before its first
/// allocation.
pub struct LongFragmentation {
    /// The samples, every 50 ms through the phases and at each step of the end.
    pub samples: Vec<TimelineSample>,
    /// Resident over live, integrated over the phases (the mean resident bytes over the
    /// mean live bytes).
    pub mean_ratio: f64,
    /// The most resident bytes over the most live bytes, through the phases.
    pub peak_ratio: f64,
    /// After the phases, 9 of every 10 blocks freed: requested bytes live.
    pub after_live: u64,
    /// Resident bytes 1 s and 10 s later, without any call (time-based purging only).
    pub idle_1s: u64,
    /// See `idle_1s`.
    pub idle_10s: u64,
    /// Resident bytes 1 s after freeing everything, without any call.
    pub all_freed_idle_1s: u64,
}

/// Workload 8's sizes, 16 B to 1 MiB: 80% small (16 B-4 KiB), 15% medium (4-64 KiB) and 5%
/// large (64 KiB-1 MiB), each log-uniform.
fn mixed_size(rng: &mut Rng) -> usize {
    match rng.range(0, 100) {
        0..80 => log_uniform(rng, 4, 11),
        80..95 => log_uniform(rng, 12, 15),
        _ => log_uniform(rng, 16, 19),
    }
}

/// Workload 8, a long fragmentation workload: seven phases of `seconds / 7` each, whose live
/// targets go up and down (a quarter of `peak_live`, all of it, an eighth, three quarters, a
/// sixteenth, a half, a quarter). In each phase the program allocates while below the target,
/// frees random blocks while above it, and replaces random blocks around it; every byte of
/// every block is written. Then it frees 9 of every 10 blocks and stays idle 10 s (sampled at
/// 1 s and 10 s: time-based purging gets its chance, nothing is called), frees the rest and
/// stays idle 1 s. Resident memory and live bytes are sampled every 50 ms.
pub fn long_fragmentation<A: GlobalAlloc>(
    heap: &A,
    seconds: f64,
    peak_live: usize,
    idle: std::time::Duration,
    seed: u64,
) -> LongFragmentation {
    const TARGETS: [f64; 7] = [0.25, 1.0, 0.125, 0.75, 0.0625, 0.5, 0.25];
    let mut blocks: Vec<(*mut u8, Layout)> = Vec::with_capacity(peak_live / 4096);
    black_box(&mut blocks);
    let baseline = memory::resident_bytes();
    let start = Instant::now();
    let mut samples = Vec::new();
    let sample = |samples: &mut Vec<TimelineSample>, live: u64| {
        let resident = memory::resident_bytes().saturating_sub(baseline);
        samples.push(TimelineSample { seconds: start.elapsed().as_secs_f64(), live, resident });
    };
    let mut rng = Rng::new(seed);
    let mut live = 0u64;
    let phase_seconds = seconds / TARGETS.len() as f64;
    let mut next_sample = 0.0;
    let free = |blocks: &mut Vec<(*mut u8, Layout)>, index: usize, live: &mut u64| {
        let (block, layout) = blocks.swap_remove(index);
        *live -= layout.size() as u64;
        // SAFETY: a live block with its layout, taken out of `blocks`, so freed once.
        unsafe { heap.dealloc(block, layout) };
    };
    let grow = |blocks: &mut Vec<(*mut u8, Layout)>, rng: &mut Rng, live: &mut u64| {
        let layout = layout(mixed_size(rng));
        // SAFETY: a non-zero size; the write covers exactly the new block.
        unsafe {
            let block = allocate(heap, layout);
            block.write_bytes(0xC3, layout.size());
            blocks.push((block, layout));
        }
        *live += layout.size() as u64;
    };
    for (phase, fraction) in TARGETS.iter().enumerate() {
        let target = (peak_live as f64 * fraction) as u64;
        let end = phase_seconds * (phase + 1) as f64;
        loop {
            for _ in 0..64 {
                if live < target || blocks.is_empty() {
                    grow(&mut blocks, &mut rng, &mut live);
                } else if live > target + target / 10 || rng.range(0, 2) == 0 {
                    let index = rng.range(0, blocks.len());
                    free(&mut blocks, index, &mut live);
                } else {
                    grow(&mut blocks, &mut rng, &mut live);
                }
            }
            let now = start.elapsed().as_secs_f64();
            if now >= next_sample {
                sample(&mut samples, live);
                next_sample = now + 0.05;
            }
            if now >= end {
                break;
            }
        }
    }
    let phases = samples.len().max(1) as f64;
    let mean_live = samples.iter().map(|s| s.live as f64).sum::<f64>() / phases;
    let mean_resident = samples.iter().map(|s| s.resident as f64).sum::<f64>() / phases;
    let peak_live_seen = samples.iter().map(|s| s.live).max().unwrap_or(0);
    let peak_resident = samples.iter().map(|s| s.resident).max().unwrap_or(0);
    // Every tenth block stays (in the order they sit in the list).
    let mut kept = Vec::with_capacity(blocks.len() / 10 + 1);
    for (index, (block, layout)) in blocks.drain(..).enumerate() {
        if index % 10 == 0 {
            kept.push((block, layout));
        } else {
            live -= layout.size() as u64;
            // SAFETY: a live block with its layout, out of `blocks`, freed once.
            unsafe { heap.dealloc(block, layout) };
        }
    }
    blocks = kept;
    let after_live = live;
    sample(&mut samples, live);
    std::thread::sleep(std::time::Duration::from_secs(1));
    sample(&mut samples, live);
    let idle_1s = samples.last().map_or(0, |s| s.resident);
    std::thread::sleep(idle.saturating_sub(std::time::Duration::from_secs(1)));
    sample(&mut samples, live);
    let idle_10s = samples.last().map_or(0, |s| s.resident);
    while let Some(last) = blocks.len().checked_sub(1) {
        free(&mut blocks, last, &mut live);
    }
    sample(&mut samples, live);
    std::thread::sleep(std::time::Duration::from_secs(1));
    sample(&mut samples, live);
    let all_freed_idle_1s = samples.last().map_or(0, |s| s.resident);
    LongFragmentation {
        samples,
        mean_ratio: mean_resident / mean_live.max(1.0),
        peak_ratio: peak_resident as f64 / peak_live_seen.max(1) as f64,
        after_live,
        idle_1s,
        idle_10s,
        all_freed_idle_1s,
    }
}

/// Workload 7: `Vec<u64>` pushed one element at a time to `elements` elements (growth by
/// the global allocator's `realloc`, which in the harness's child processes is the allocator
/// under test), `vectors` times; ns per push.
pub fn realloc_growth(vectors: usize, elements: usize) -> f64 {
    let start = Instant::now();
    for vector in 0..vectors {
        let mut values: Vec<u64> = Vec::new();
        for value in 0..elements as u64 {
            values.push(value ^ vector as u64);
        }
        black_box(&values);
    }
    start.elapsed().as_nanos() as f64 / (vectors * elements) as f64
}
