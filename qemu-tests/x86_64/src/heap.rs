//! The kernel's `#[global_allocator]`, for now a stand-in: `linked_list_allocator`'s heap
//! behind a spin lock, taken with interrupts masked, over a run of chunks from
//! [`FRAMES`]. It grows by taking more chunks when they extend the run.
//!
//! Temporary: the intended allocator is `core_alloc::Allocator<&'static Frames,
//! KernelPlatform>`, swapped in here (this file only) once that crate provides it.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::{self, NonNull};

use linked_list_allocator::Heap;
use page_provider::{CHUNK_SIZE, PageProvider};
use platform::arch::x86_64::InterruptGuard;

use crate::memory::FRAMES;

/// Chunks the heap starts with: 16 MiB.
const INITIAL_CHUNKS: usize = 8;

/// A first-fit heap over chunks of [`FRAMES`].
struct LockedHeap(spin::Mutex<Heap>);

#[global_allocator]
static HEAP: LockedHeap = LockedHeap(spin::Mutex::new(Heap::empty()));

/// Gives the heap its first chunks. Boot CPU, once, before the first allocation.
pub(crate) fn init() {
    let chunks = FRAMES.alloc_chunks(INITIAL_CHUNKS).expect("no memory for the initial heap");
    let _masked = InterruptGuard::new();
    // SAFETY: the run is mapped, ours alone, and never given back, so the heap may use it
    // for the rest of the kernel's life.
    unsafe { HEAP.0.lock().init(chunks.base.as_ptr(), INITIAL_CHUNKS * CHUNK_SIZE) };
}

impl LockedHeap {
    /// Takes enough chunks for `layout` if they land right after the heap's top, and
    /// extends the heap over them; returns whether it did.
    fn grow(heap: &mut Heap, layout: Layout) -> bool {
        let needed = (layout.size() + layout.align()).div_ceil(CHUNK_SIZE).max(1);
        let Some(chunks) = FRAMES.alloc_chunks(needed) else { return false };
        if chunks.base.as_ptr() != heap.top() {
            // SAFETY: taken just above and unused.
            unsafe { FRAMES.free_chunks(chunks.base, needed) };
            return false;
        }
        // SAFETY: the chunks are mapped, ours, never given back, and start at the top.
        unsafe { heap.extend(needed * CHUNK_SIZE) };
        true
    }
}

// SAFETY: every call holds the spin lock with interrupts masked (so an interrupt handler on
// the same CPU cannot deadlock on it), and `Heap` hands out each byte once until it is
// deallocated; the memory comes from chunks never given back.
unsafe impl GlobalAlloc for LockedHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _masked = InterruptGuard::new();
        let mut heap = self.0.lock();
        if let Ok(block) = heap.allocate_first_fit(layout) {
            return block.as_ptr();
        }
        if Self::grow(&mut heap, layout) {
            return heap.allocate_first_fit(layout).map_or(ptr::null_mut(), NonNull::as_ptr);
        }
        ptr::null_mut()
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        let _masked = InterruptGuard::new();
        // SAFETY: `GlobalAlloc`'s contract: `block` came from `alloc` with this layout.
        unsafe { self.0.lock().deallocate(NonNull::new_unchecked(block), layout) };
    }
}
