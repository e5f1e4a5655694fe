//! TEMPORARY global allocator, until core-alloc's `Allocator` is ready: linked_list_allocator's
//! `Heap` behind a spin lock taken with interrupts masked, over a run of chunks from the
//! kernel's `FrameProvider`. Kept in this one file so that swapping it is a one-file change.
//!
//! Concurrency: one lock for every CPU; interrupts are masked while it is held, so an
//! interrupt handler that allocates cannot deadlock against its own CPU.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::{self, NonNull};

use linked_list_allocator::Heap;
use page_provider::{CHUNK_SIZE, PageProvider};
use platform::arch::aarch64::InterruptGuard;

/// Chunks (2 MiB each) the heap takes at start-up: 64 MiB.
const HEAP_CHUNKS: usize = 32;

/// A locked linked-list heap; empty (every allocation fails) until [`init`](Self::init).
pub(crate) struct KernelHeap {
    heap: spin::Mutex<Heap>,
}

impl KernelHeap {
    pub(crate) const fn new() -> Self {
        Self { heap: spin::Mutex::new(Heap::empty()) }
    }

    /// Takes [`HEAP_CHUNKS`] chunks from `provider` for the heap; returns the bytes.
    ///
    /// # Panics
    ///
    /// If the provider cannot give them, or the heap was already set up.
    pub(crate) fn init(&self, provider: &impl PageProvider) -> usize {
        let chunks = provider.alloc_chunks(HEAP_CHUNKS).expect("no RAM for the kernel heap");
        let size = HEAP_CHUNKS * CHUNK_SIZE;
        let _masked = InterruptGuard::new();
        let mut heap = self.heap.lock();
        assert_eq!(heap.size(), 0, "heap set up twice");
        // SAFETY: the provider handed out this run for good (it is never given back), mapped
        // read/write and used by nothing else.
        unsafe { heap.init(chunks.base.as_ptr(), size) };
        size
    }
}

// SAFETY: every allocation comes from `Heap`, which hands out disjoint blocks that fit the
// layout, under a lock held with interrupts masked, so no two calls ever run on it at once.
unsafe impl GlobalAlloc for KernelHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _masked = InterruptGuard::new();
        self.heap.lock().allocate_first_fit(layout).map_or(ptr::null_mut(), NonNull::as_ptr)
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        let _masked = InterruptGuard::new();
        if let Some(block) = NonNull::new(block) {
            // SAFETY: GlobalAlloc's caller gives back a block from `alloc` with its layout.
            unsafe { self.heap.lock().deallocate(block, layout) };
        }
    }
}
