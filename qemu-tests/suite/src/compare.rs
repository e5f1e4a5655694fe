//! The allocator against `linked_list_allocator` behind a spin lock (the heap most hobby
//! kernels use), in the same boot, on the same workload: ops/s of both and their ratio, on
//! one CPU and on all of them (up to 8). Printed, never asserted: speed is measured, not tested.

use alloc::vec::Vec;
use core::alloc::{GlobalAlloc, Layout};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};

use page_provider::{CHUNK_SIZE, PageProvider};
use platform::Platform;

use crate::{HeapUnderTest, Machine, Outcome, Rng, ensure, say};

/// Allocations each CPU makes in one measurement.
const OPERATIONS: usize = 30_000;
/// Live objects each CPU keeps, replaced at random.
const SLOTS: usize = 512;
/// Chunks lent to the linked-list heap for the comparison (64 MiB).
const LIST_CHUNKS: usize = 32;

/// The two heaps behind one face.
trait BenchHeap: Sync {
    fn allocate(&self, layout: Layout) -> *mut u8;
    /// # Safety
    ///
    /// `ptr` came from `allocate(layout)` on this heap and is not freed.
    unsafe fn free(&self, ptr: *mut u8, layout: Layout);
}

struct Ours<'a, A>(&'a A);

impl<A: GlobalAlloc + Sync> BenchHeap for Ours<'_, A> {
    fn allocate(&self, layout: Layout) -> *mut u8 {
        // SAFETY: layouts here have non-zero sizes.
        unsafe { self.0.alloc(layout) }
    }
    unsafe fn free(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's promise.
        unsafe { self.0.dealloc(ptr, layout) }
    }
}

/// `linked_list_allocator::Heap` behind a spin lock, as kernels use it.
struct LockedList(spin::Mutex<linked_list_allocator::Heap>);

impl BenchHeap for LockedList {
    fn allocate(&self, layout: Layout) -> *mut u8 {
        self.0.lock().allocate_first_fit(layout).map_or(core::ptr::null_mut(), NonNull::as_ptr)
    }
    unsafe fn free(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's promise: a live block of this heap with this layout.
        unsafe { self.0.lock().deallocate(NonNull::new_unchecked(ptr), layout) }
    }
}

/// Replaces random live objects of 8 B..4 KiB; returns allocations per second over `cpus`
/// CPUs, or `None` if an allocation failed or an object was damaged.
fn churn(machine: &dyn Machine, heap: &dyn BenchHeap, cpus: usize) -> Option<f64> {
    let failures = AtomicUsize::new(0);
    let work = |cpu: usize| {
        let mut rng = Rng(0xBE4C_0000 + cpu as u64);
        let mut slots: Vec<Option<(*mut u8, Layout)>> = alloc::vec![None; SLOTS];
        for _ in 0..OPERATIONS {
            let slot = &mut slots[rng.below(SLOTS)];
            if let Some((ptr, layout)) = slot.take() {
                // SAFETY: the object was allocated with this layout and written with its tag.
                unsafe {
                    if *ptr != (layout.size() & 0xFF) as u8 {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                    heap.free(ptr, layout);
                }
            }
            let shift = 3 + rng.below(10);
            let size = (1 << shift) + rng.below(1 << shift);
            let layout = Layout::from_size_align(size, 8).unwrap_or(Layout::new::<u64>());
            let ptr = heap.allocate(layout);
            if ptr.is_null() {
                failures.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            // SAFETY: a fresh object of `size` bytes.
            unsafe { *ptr = (size & 0xFF) as u8 };
            *slot = Some((ptr, layout));
        }
        for (ptr, layout) in slots.into_iter().flatten() {
            // SAFETY: live objects of this heap.
            unsafe { heap.free(ptr, layout) };
        }
    };
    let start = machine.now_ns();
    machine.run_on_cpus(cpus, &work);
    let elapsed = machine.now_ns() - start;
    (failures.load(Ordering::Relaxed) == 0).then(|| (cpus * OPERATIONS) as f64 * 1e9 / elapsed.max(1) as f64)
}

pub(crate) fn against_linked_list<P: PageProvider, Pl: Platform>(
    machine: &dyn Machine,
    heap: &HeapUnderTest<'_, P, Pl>,
) -> Outcome {
    let provider = heap.allocator.provider();
    let Some(region) = provider.alloc_chunks(LIST_CHUNKS) else {
        return Err("no 64 MiB region for the linked-list heap".into());
    };
    let mut list = linked_list_allocator::Heap::empty();
    // SAFETY: the region is fresh memory from the provider, used by nothing else until it is
    // given back below.
    unsafe { list.init(region.base.as_ptr(), LIST_CHUNKS * CHUNK_SIZE) };
    let list = LockedList(spin::Mutex::new(list));
    let ours = Ours(heap.allocator);
    let mut outcome = Ok(());
    // A first pass of each warms caches and maps memory; the second is measured.
    // At most 8 CPUs: beyond, a heap behind one spin lock on emulated CPUs that outnumber
    // the host's measures the host's scheduler (a vCPU preempted holding the lock stops
    // every other), and takes many minutes at 64.
    for cpus in [1, machine.cpu_count().min(8)] {
        let (mut fast, mut slow) = (None, None);
        for pass in 0..2 {
            fast = churn(machine, &ours, cpus);
            slow = churn(machine, &list, cpus);
            if pass == 0 && (fast.is_none() || slow.is_none()) {
                break;
            }
        }
        let (Some(fast), Some(slow)) = (fast, slow) else {
            outcome = Err(alloc::format!("an allocation failed or an object was damaged on {cpus} CPUs"));
            break;
        };
        say(
            machine,
            format_args!(
                "bench churn 8 B..4 KiB, {SLOTS} live per CPU, {cpus} CPU(s): core-alloc {:.2} Mops/s, linked_list_allocator {:.2} Mops/s, ratio {:.1}x",
                fast / 1e6,
                slow / 1e6,
                fast / slow
            ),
        );
    }
    // The linked-list heap holds no resources of its own; nothing is live in the region.
    let _ = list;
    // SAFETY: every block of the linked-list heap was freed; the region is unused.
    unsafe { provider.free_chunks(region.base, LIST_CHUNKS) };
    ensure!(outcome.is_ok(), "{}", outcome.unwrap_err());
    Ok(())
}
