//! Every provider call the core makes happens inside the platform's critical section
//! (`Platform::enter_critical`'s contract): a kernel whose slot closures leave interrupts
//! enabled masks them only there, and a provider that takes a lock (the bare-metal
//! `FrameProvider`) must never be interrupted by a handler that allocates on the same CPU
//! while it holds it. The AArch64 test kernel hung that way in its torture test: thread code
//! held the frame lock in `supply()` (asked after a chunk was obtained or given back,
//! outside the section) when the timer interrupt's allocation spun on it.
//!
//! The platform here counts each thread's open critical sections; the provider asserts the
//! count is above zero on every call that may take a lock.

use std::cell::Cell;
use std::ptr::NonNull;

use core_alloc::Allocator;
use page_provider::fixed::FixedRegion;
use page_provider::{CHUNK_SIZE, Capabilities, Chunks, PageProvider, Supply};
use platform::Platform;
use platform::host::HostPlatform;

thread_local! {
    static SECTIONS: Cell<usize> = const { Cell::new(0) };
}

/// The host platform, counting the calling thread's open critical sections.
struct Counting(HostPlatform);

// SAFETY: every slot promise is the host platform's; the critical section adds nothing to
// them on a host (no handler shares a thread's locks), it is only counted.
unsafe impl Platform for Counting {
    fn slot_count(&self) -> usize {
        self.0.slot_count()
    }
    fn with_slot<R>(&self, f: impl FnOnce(usize) -> R) -> R {
        self.0.with_slot(f)
    }
    fn try_with_idle_slot<R>(&self, slot: usize, f: impl FnOnce() -> R) -> Option<R> {
        self.0.try_with_idle_slot(slot, f)
    }
    fn cache_line_size(&self) -> usize {
        self.0.cache_line_size()
    }
    fn now_ns(&self) -> Option<u64> {
        self.0.now_ns()
    }
    fn enter_critical(&self) -> usize {
        SECTIONS.with(|open| open.set(open.get() + 1));
        0
    }
    unsafe fn leave_critical(&self, _token: usize) {
        SECTIONS.with(|open| open.set(open.get() - 1));
    }
}

/// A provider that fails the test when called outside a critical section.
struct MustBeCritical(FixedRegion);

fn check(call: &str) {
    assert!(SECTIONS.with(Cell::get) > 0, "provider call `{call}` outside the platform's critical section");
}

// SAFETY: every call goes to the wrapped provider unchanged.
unsafe impl PageProvider for MustBeCritical {
    fn capabilities(&self) -> Capabilities {
        self.0.capabilities()
    }
    fn page_size(&self) -> usize {
        self.0.page_size()
    }
    fn huge_page_size(&self) -> Option<usize> {
        self.0.huge_page_size()
    }
    fn alloc_chunks(&self, count: usize) -> Option<Chunks> {
        check("alloc_chunks");
        self.0.alloc_chunks(count)
    }
    fn supply(&self) -> Option<Supply> {
        check("supply");
        self.0.supply()
    }
    unsafe fn free_chunks(&self, base: NonNull<u8>, count: usize) {
        check("free_chunks");
        // SAFETY: the caller's promise, passed on.
        unsafe { self.0.free_chunks(base, count) }
    }
    unsafe fn purge(&self, base: NonNull<u8>, len: usize) -> bool {
        check("purge");
        // SAFETY: as above.
        unsafe { self.0.purge(base, len) }
    }
    unsafe fn hugify(&self, base: NonNull<u8>, len: usize, populated: bool) -> bool {
        check("hugify");
        // SAFETY: as above.
        unsafe { self.0.hugify(base, len, populated) }
    }
    unsafe fn unhugify(&self, base: NonNull<u8>, len: usize) {
        check("unhugify");
        // SAFETY: as above.
        unsafe { self.0.unhugify(base, len) }
    }
    unsafe fn remap(&self, base: NonNull<u8>, old_count: usize, new_count: usize) -> Option<NonNull<u8>> {
        check("remap");
        // SAFETY: as above.
        unsafe { self.0.remap(base, old_count, new_count) }
    }
}

#[test]
fn every_provider_call_is_inside_the_critical_section() {
    let chunks = 64;
    let bytes = vec![0u8; (chunks + 1) * CHUNK_SIZE].leak();
    // SAFETY: the leaked, zeroed vector is used by nothing else.
    let region = unsafe { FixedRegion::new(bytes.as_mut_ptr(), bytes.len(), true) };
    let heap = Allocator::new(MustBeCritical(region), Counting(HostPlatform::new()));
    // Small, large and huge blocks, freed, then collected: chunks are obtained (`take_run`,
    // `alloc_huge`) and given back (`give_back`, `free_huge`), each followed by `supply()`.
    for round in 0..4 {
        let mut blocks = Vec::new();
        for (index, size) in
            [64, 4096, 40 << 10, 300 << 10, 3 << 20, 9 << 20].into_iter().cycle().take(60).enumerate()
        {
            if let Some(block) = heap.allocate(size + round, 16) {
                blocks.push((block, size + round));
            }
            if index % 7 == 0
                && let Some((block, size)) = blocks.pop()
            {
                // SAFETY: allocated above with this size and alignment.
                unsafe { heap.deallocate(block, size, 16) };
            }
        }
        for (block, size) in blocks {
            // SAFETY: as above.
            unsafe { heap.deallocate(block, size, 16) };
        }
        heap.collect();
    }
    assert_eq!(SECTIONS.with(Cell::get), 0, "critical sections left open");
}
