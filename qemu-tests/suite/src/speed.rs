//! Speed against the heaps kernels use today, in the same boot (issue 9): core-alloc (the
//! kernel's global heap over 2 MiB chunks, and compact mode over a 4 MiB span, as a kernel
//! with a small fixed heap would run it), talc and linked_list_allocator, each behind the
//! spin lock kernels put it behind, on one CPU and on up to four at once. Two patterns: a
//! `Box::new` of 8 bytes and its drop, and a `Vec` grown by doubling reallocations from 8
//! bytes to 64 KiB. Printed as nanoseconds per operation and ratios, never asserted: speed
//! is measured, not tested.

use alloc::string::String;
use core::alloc::{GlobalAlloc, Layout};
use core::fmt::Write;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};

use core_alloc::Allocator;
use page_provider::fixed::FixedRegion;
use page_provider::{CHUNK_SIZE, PageProvider};
use platform::Platform;

use crate::{HeapUnderTest, Machine, Outcome, ensure, say};

/// Chunks lent to each of the peers (64 MiB).
const PEER_CHUNKS: usize = 32;
/// Chunks of compact mode's span (4 MiB: fewer than `COMPACT_CHUNKS`).
const COMPACT_CHUNKS: usize = 2;
/// Chunks of a span big enough to run on chunks (with one more for alignment).
const CHUNK_SPAN: usize = core_alloc::COMPACT_CHUNKS + 1;
/// Box pairs per CPU in one measurement.
const PAIRS: usize = 50_000;
/// Vec growth rounds per CPU in one measurement (13 reallocations each).
const GROWTHS: usize = 100;
/// The largest Vec of the growth pattern.
const VEC_MAX: usize = 64 * 1024;

/// `linked_list_allocator::Heap` behind a spin lock, as kernels use it (reallocation is
/// GlobalAlloc's default: allocate, copy, free, as in its own `LockedHeap`).
struct LockedList(spin::Mutex<linked_list_allocator::Heap>);

// SAFETY: forwards to the locked heap, which hands out disjoint blocks of its region.
unsafe impl GlobalAlloc for LockedList {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.0.lock().allocate_first_fit(layout).map_or(core::ptr::null_mut(), NonNull::as_ptr)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's promise: a live block of this heap with this layout.
        unsafe { self.0.lock().deallocate(NonNull::new_unchecked(ptr), layout) }
    }
}

type Talc = talc::TalcLock<spinning_top::RawSpinlock, talc::source::Claim>;

/// `Box::new(0u64)` and its drop, `PAIRS` times on each CPU; returns nanoseconds per pair
/// (wall time over pairs per CPU), or `None` if an allocation failed.
fn boxes(machine: &dyn Machine, heap: &(dyn GlobalAlloc + Sync), cpus: usize) -> Option<f64> {
    let failures = AtomicUsize::new(0);
    let layout = Layout::new::<u64>();
    let start = machine.now_ns();
    machine.run_on_cpus(cpus, &|cpu| {
        for i in 0..PAIRS {
            // SAFETY: a non-zero-size layout; the block is written within it and freed once.
            unsafe {
                let block = heap.alloc(layout);
                if block.is_null() {
                    failures.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                block.cast::<u64>().write_volatile((cpu + i) as u64);
                heap.dealloc(block, layout);
            }
        }
    });
    let elapsed = machine.now_ns() - start;
    (failures.load(Ordering::Relaxed) == 0).then(|| elapsed as f64 / PAIRS as f64)
}

/// A `Vec<u8>` grown from 8 bytes to `VEC_MAX` by doubling reallocations, its last byte
/// written at each size, `GROWTHS` times on each CPU; returns nanoseconds per reallocation,
/// or `None` if one failed or lost the bytes.
fn growth(machine: &dyn Machine, heap: &(dyn GlobalAlloc + Sync), cpus: usize) -> Option<f64> {
    let failures = AtomicUsize::new(0);
    let steps = (VEC_MAX / 8).ilog2() as usize;
    let start = machine.now_ns();
    machine.run_on_cpus(cpus, &|cpu| {
        for round in 0..GROWTHS {
            let tag = (cpu + round) as u8;
            // SAFETY: every block is used within its layout, reallocated with the layout it
            // has and freed once.
            unsafe {
                let mut size = 8;
                let mut block = heap.alloc(Layout::from_size_align_unchecked(size, 8));
                if block.is_null() {
                    failures.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                block.write(tag);
                while size < VEC_MAX {
                    let grown = heap.realloc(block, Layout::from_size_align_unchecked(size, 8), size * 2);
                    if grown.is_null() || *grown != tag {
                        failures.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    block = grown;
                    size *= 2;
                    block.add(size - 1).write(tag);
                }
                heap.dealloc(block, Layout::from_size_align_unchecked(size, 8));
            }
        }
    });
    let elapsed = machine.now_ns() - start;
    (failures.load(Ordering::Relaxed) == 0).then(|| elapsed as f64 / (GROWTHS * steps) as f64)
}

/// The time of a fresh heap's first allocation (its mode decided, its metadata and first
/// slab formatted), for a span of `chunks` chunks from the provider: microseconds, for the
/// first such heap of the boot and for a second one. Under QEMU the first includes
/// translating the allocator code that runs for the first time (each heap type is its own
/// code); the second is the formatting work alone.
fn first_allocation<P: PageProvider, Pl: Platform>(
    machine: &dyn Machine,
    heap: &HeapUnderTest<'_, P, Pl>,
    chunks: usize,
) -> Result<[f64; 2], String> {
    let provider = heap.allocator.provider();
    let mut times = [0.0; 2];
    for time in &mut times {
        let region = provider.alloc_chunks(chunks).ok_or("no span for a fresh heap")?;
        // SAFETY: fresh memory from the provider, used by this heap alone until given back.
        let fresh = Allocator::new(
            unsafe { FixedRegion::<1>::new(region.base.as_ptr(), chunks * CHUNK_SIZE, region.zeroed) },
            heap.allocator.platform(),
        );
        let start = machine.now_ns();
        let block = fresh.allocate(24, 8);
        let elapsed = machine.now_ns() - start;
        let block = block.ok_or("a fresh heap's first allocation failed")?;
        // SAFETY: a live block of the fresh heap; then nothing of the span is in use.
        unsafe {
            fresh.free(block);
            provider.free_chunks(region.base, chunks);
        }
        *time = elapsed as f64 / 1e3;
    }
    Ok(times)
}

pub(crate) fn against_peers<P: PageProvider, Pl: Platform>(
    machine: &dyn Machine,
    heap: &HeapUnderTest<'_, P, Pl>,
) -> Outcome {
    let compact_first = first_allocation(machine, heap, COMPACT_CHUNKS)?;
    let chunks_first = first_allocation(machine, heap, CHUNK_SPAN)?;
    say(
        machine,
        format_args!(
            "bench first allocation of a fresh heap: compact mode (4 MiB span) {:.0} us, chunks ({} MiB span) {:.0} us; of a second fresh heap (the code translated by QEMU already): {:.1} us and {:.1} us",
            compact_first[0],
            CHUNK_SPAN * 2,
            chunks_first[0],
            compact_first[1],
            chunks_first[1],
        ),
    );
    let provider = heap.allocator.provider();
    let (Some(list_region), Some(talc_region), Some(compact_region)) = (
        provider.alloc_chunks(PEER_CHUNKS),
        provider.alloc_chunks(PEER_CHUNKS),
        provider.alloc_chunks(COMPACT_CHUNKS),
    ) else {
        return Err("no regions for the peers".into());
    };
    let mut list = linked_list_allocator::Heap::empty();
    // SAFETY: each region is fresh memory from the provider, used by nothing else until it
    // is given back below.
    let (list, talc, compact) = unsafe {
        list.init(list_region.base.as_ptr(), PEER_CHUNKS * CHUNK_SIZE);
        (
            LockedList(spin::Mutex::new(list)),
            Talc::new(talc::source::Claim::new(talc_region.base.as_ptr(), PEER_CHUNKS * CHUNK_SIZE)),
            Allocator::new(
                FixedRegion::<1>::new(compact_region.base.as_ptr(), COMPACT_CHUNKS * CHUNK_SIZE, false),
                heap.allocator.platform(),
            ),
        )
    };
    let heaps: [(&str, &(dyn GlobalAlloc + Sync)); 4] = [
        ("core-alloc", heap.allocator),
        ("core-alloc compact", &compact),
        ("talc", &talc),
        ("linked_list", &list),
    ];
    type Pattern = fn(&dyn Machine, &(dyn GlobalAlloc + Sync), usize) -> Option<f64>;
    let patterns: [(&str, Pattern); 2] =
        [("Box<u64> new+drop, ns/pair", boxes), ("Vec growth 8 B..64 KiB, ns/realloc", growth)];
    let mut outcome = Ok(());
    for cpus in [1, machine.cpu_count().min(4)] {
        for (name, pattern) in patterns {
            let mut line = String::new();
            let mut times = [0.0; 4];
            for (index, (heap_name, heap)) in heaps.iter().enumerate() {
                // A first pass warms caches and maps memory; the second is measured.
                let measured = pattern(machine, *heap, cpus).and_then(|_| pattern(machine, *heap, cpus));
                let Some(time) = measured else {
                    outcome =
                        Err(alloc::format!("{heap_name}: an allocation failed in {name} on {cpus} CPUs"));
                    continue;
                };
                times[index] = time;
                let _ = write!(line, "{heap_name} {time:.0}, ");
            }
            let ratio = |peer: usize| if times[0] > 0.0 { times[peer] / times[0] } else { 0.0 };
            say(
                machine,
                format_args!(
                    "bench {name}, {cpus} CPU(s): {line}core-alloc {:.1}x talc's speed, {:.1}x linked_list's; compact {:.1}x talc's",
                    ratio(2),
                    ratio(3),
                    if times[1] > 0.0 { times[2] / times[1] } else { 0.0 }
                ),
            );
        }
    }
    let stats = compact.stats();
    ensure!(compact.is_compact(), "the 4 MiB span did not run in compact mode");
    ensure!(stats.live_allocations() == 0, "compact heap: blocks left live: {stats}");
    // SAFETY: every block of the peers and of the compact heap was freed; the regions are
    // unused (the heaps hold nothing else of them).
    unsafe {
        provider.free_chunks(list_region.base, PEER_CHUNKS);
        provider.free_chunks(talc_region.base, PEER_CHUNKS);
        provider.free_chunks(compact_region.base, COMPACT_CHUNKS);
    }
    outcome
}
