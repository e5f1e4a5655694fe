//! The no_std peers as kernels use them today: one heap over a fixed arena behind one spin
//! lock (talc, rlsf, buddy_system_allocator, linked_list_allocator), and core-alloc over a
//! fixed region for talc's heap-efficiency workload.
//!
//! Every heap here is made on first use (the Rust runtime allocates before `main`, and the
//! arena is an anonymous mapping made then), so each can serve as the global allocator.
//!
//! Concurrency: each heap is behind its own `spinning_top` spin lock (talc's `TalcLock` over
//! the same raw lock) and is made under that lock, or in a `spin::Once` for talc and
//! core-alloc; nothing here allocates from the global allocator.

use std::alloc::{GlobalAlloc, Layout};
use std::ptr::{self, NonNull};

use page_provider::fixed::FixedRegion;
use platform::host::HostPlatform;
use spinning_top::{RawSpinlock, Spinlock};

/// The arena of the fixed-arena peers when they serve the process (1 GiB, as in ANCHORS.md).
pub const GLOBAL_ARENA: usize = 1 << 30;
/// The arena of talc's heap-efficiency workload (talc's `HEAP_SIZE`, 128 MiB).
pub const EFFICIENCY_ARENA: usize = 1 << 27;

/// Alignment of every arena: a 2 MiB boundary, so that core-alloc's fixed region can use all
/// of it and the buddy allocator starts with large blocks.
const ARENA_ALIGN: usize = 2 << 20;

/// Maps `size` bytes of private anonymous memory aligned to 2 MiB, never unmapped. Pages
/// become resident only when touched, as with a kernel's heap window over fresh RAM.
pub fn map_arena(size: usize) -> *mut u8 {
    // SAFETY: a fresh private anonymous mapping with no file and no fixed address; the
    // result is checked before use.
    let base = unsafe {
        libc::mmap(
            ptr::null_mut(),
            size + ARENA_ALIGN,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        // Nothing sensible is left to do without memory; abort like an allocator would.
        std::process::abort();
    }
    (base as usize).next_multiple_of(ARENA_ALIGN) as *mut u8
}

/// A heap over one span of memory, used behind [`Locked`].
pub trait ArenaHeap: Send {
    /// A heap owning `size` bytes at `base`.
    ///
    /// # Safety
    ///
    /// The span is mapped, writable, and used by nothing else for the life of the process.
    unsafe fn over(base: *mut u8, size: usize) -> Self;

    /// A block for `layout`, or null.
    fn allocate(&mut self, layout: Layout) -> *mut u8;

    /// Frees a block.
    ///
    /// # Safety
    ///
    /// `block` is a live block of this heap allocated with `layout`.
    unsafe fn deallocate(&mut self, block: *mut u8, layout: Layout);

    /// Resizes in the heap's own way if it has one (`Some`, null on failure); `None` lets the
    /// caller allocate, copy outside the lock and free, as `GlobalAlloc`'s default does.
    ///
    /// # Safety
    ///
    /// As [`GlobalAlloc::realloc`].
    unsafe fn reallocate(&mut self, _block: *mut u8, _layout: Layout, _new_size: usize) -> Option<*mut u8> {
        None
    }
}

/// One heap over a fixed arena of `SIZE` bytes behind a spin lock, made on first use.
pub struct Locked<H, const SIZE: usize> {
    heap: Spinlock<Option<H>>,
}

impl<H: ArenaHeap, const SIZE: usize> Locked<H, SIZE> {
    /// An unmade heap.
    pub const fn new() -> Self {
        Self { heap: Spinlock::new(None) }
    }

    fn with<R>(&self, f: impl FnOnce(&mut H) -> R) -> R {
        let mut heap = self.heap.lock();
        let heap = heap.get_or_insert_with(|| {
            // SAFETY: a fresh mapping owned by this heap alone, never unmapped.
            unsafe { H::over(map_arena(SIZE), SIZE) }
        });
        f(heap)
    }
}

// SAFETY: blocks come from the heap behind the lock, which hands out disjoint blocks that fit
// their layouts (each crate's promise); every access to the heap holds the lock.
unsafe impl<H: ArenaHeap, const SIZE: usize> GlobalAlloc for Locked<H, SIZE> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.with(|heap| heap.allocate(layout))
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        // SAFETY: the caller's GlobalAlloc promise: a live block of this heap.
        self.with(|heap| unsafe { heap.deallocate(block, layout) })
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's GlobalAlloc promises carry over.
        if let Some(moved) = self.with(|heap| unsafe { heap.reallocate(block, layout, new_size) }) {
            return moved;
        }
        // SAFETY: the caller's promises: `new_size` is non-zero and fits the alignment;
        // `block` is live with `layout`, so both blocks hold `min(old, new)` bytes.
        unsafe {
            let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
            let moved = self.alloc(new_layout);
            if !moved.is_null() {
                ptr::copy_nonoverlapping(block, moved, layout.size().min(new_size));
                self.dealloc(block, layout);
            }
            moved
        }
    }
}

/// linked_list_allocator 0.10: first fit over a sorted list of holes.
pub struct LinkedList(linked_list_allocator::Heap);

// SAFETY: the heap's hole list points only into its own arena; it moves between threads
// only behind the lock.
unsafe impl Send for LinkedList {}

impl ArenaHeap for LinkedList {
    unsafe fn over(base: *mut u8, size: usize) -> Self {
        // SAFETY: the caller's promise: the span is this heap's alone.
        Self(unsafe { linked_list_allocator::Heap::new(base, size) })
    }
    fn allocate(&mut self, layout: Layout) -> *mut u8 {
        self.0.allocate_first_fit(layout).map_or(ptr::null_mut(), NonNull::as_ptr)
    }
    unsafe fn deallocate(&mut self, block: *mut u8, layout: Layout) {
        // SAFETY: the caller's promise: a live block of this heap with this layout.
        unsafe { self.0.deallocate(NonNull::new_unchecked(block), layout) }
    }
}

/// buddy_system_allocator 0.13 with orders up to 2^31 bytes.
pub struct Buddy(buddy_system_allocator::Heap<32>);

impl ArenaHeap for Buddy {
    unsafe fn over(base: *mut u8, size: usize) -> Self {
        let mut heap = buddy_system_allocator::Heap::<32>::empty();
        // SAFETY: the caller's promise: the span is this heap's alone.
        unsafe { heap.init(base as usize, size) };
        Self(heap)
    }
    fn allocate(&mut self, layout: Layout) -> *mut u8 {
        self.0.alloc(layout).map_or(ptr::null_mut(), NonNull::as_ptr)
    }
    unsafe fn deallocate(&mut self, block: *mut u8, layout: Layout) {
        // SAFETY: the caller's promise: a live block of this heap with this layout.
        unsafe { self.0.dealloc(NonNull::new_unchecked(block), layout) }
    }
}

/// rlsf 0.2 with the parameters talc's benchmarks use for it (52 first-level and 64
/// second-level lists).
type Tlsf = rlsf::Tlsf<'static, usize, usize, { usize::BITS as usize - 12 }, { usize::BITS as usize }>;

/// rlsf: two-level segregated fit.
pub struct Rlsf(Tlsf);

// SAFETY: the TLSF's lists point only into its own arena; it moves between threads only
// behind the lock.
unsafe impl Send for Rlsf {}

impl ArenaHeap for Rlsf {
    unsafe fn over(base: *mut u8, size: usize) -> Self {
        let mut tlsf = Tlsf::new();
        let span = ptr::slice_from_raw_parts_mut(base, size);
        // SAFETY: the caller's promise: the span is mapped and this heap's alone, forever.
        unsafe { tlsf.insert_free_block_ptr(NonNull::new_unchecked(span)) };
        Self(tlsf)
    }
    fn allocate(&mut self, layout: Layout) -> *mut u8 {
        self.0.allocate(layout).map_or(ptr::null_mut(), NonNull::as_ptr)
    }
    unsafe fn deallocate(&mut self, block: *mut u8, layout: Layout) {
        // SAFETY: the caller's promise: a live block of this heap with this alignment.
        unsafe { self.0.deallocate(NonNull::new_unchecked(block), layout.align()) }
    }
    unsafe fn reallocate(&mut self, block: *mut u8, layout: Layout, new_size: usize) -> Option<*mut u8> {
        // SAFETY: the caller's promise: a live block of this heap; the new layout keeps the
        // alignment and a size GlobalAlloc's caller vouched for.
        let moved = unsafe {
            self.0.reallocate(
                NonNull::new_unchecked(block),
                Layout::from_size_align_unchecked(new_size, layout.align()),
            )
        };
        Some(moved.map_or(ptr::null_mut(), NonNull::as_ptr))
    }
}

/// talc 5 as ANCHORS.md sets it up: `TalcLock<spinning_top::RawSpinlock, Claim>`, the arena
/// claimed on the first allocation. The lock is talc's own; the arena is mapped on first use.
pub struct Talc<const SIZE: usize> {
    talc: spin::Once<talc::TalcLock<RawSpinlock, talc::source::Claim>>,
}

impl<const SIZE: usize> Talc<SIZE> {
    /// An unmade heap.
    pub const fn new() -> Self {
        Self { talc: spin::Once::new() }
    }

    fn get(&self) -> &talc::TalcLock<RawSpinlock, talc::source::Claim> {
        self.talc.call_once(|| {
            // SAFETY: a fresh mapping owned by this heap alone, never unmapped: what
            // `Talc::claim` requires of the span `Claim` hands it.
            talc::TalcLock::new(unsafe { talc::source::Claim::new(map_arena(SIZE), SIZE) })
        })
    }
}

// SAFETY: forwards to `TalcLock`, which upholds GlobalAlloc's contract.
unsafe impl<const SIZE: usize> GlobalAlloc for Talc<SIZE> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's GlobalAlloc promises.
        unsafe { self.get().alloc(layout) }
    }
    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        // SAFETY: the caller's GlobalAlloc promises.
        unsafe { self.get().dealloc(block, layout) }
    }
    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's GlobalAlloc promises.
        unsafe { self.get().realloc(block, layout, new_size) }
    }
}

/// core-alloc over a fixed region of `SIZE` bytes (its firmware and test provider) with the
/// host's per-thread slots: the same core as `HostAlloc` with a bounded heap.
pub struct CoreFixed<const SIZE: usize> {
    allocator: spin::Once<core_alloc::Allocator<FixedRegion, HostPlatform>>,
}

impl<const SIZE: usize> CoreFixed<SIZE> {
    /// An unmade heap.
    pub const fn new() -> Self {
        Self { allocator: spin::Once::new() }
    }

    fn get(&self) -> &core_alloc::Allocator<FixedRegion, HostPlatform> {
        self.allocator.call_once(|| {
            // SAFETY: a fresh mapping owned by this provider alone, never unmapped; fresh
            // anonymous memory reads as zero.
            let region = unsafe { FixedRegion::new(map_arena(SIZE), SIZE, true) };
            core_alloc::Allocator::new(region, HostPlatform::new())
        })
    }
}

// SAFETY: forwards to core-alloc's allocator, which upholds GlobalAlloc's contract.
unsafe impl<const SIZE: usize> GlobalAlloc for CoreFixed<SIZE> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's GlobalAlloc promises.
        unsafe { self.get().alloc(layout) }
    }
    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        // SAFETY: the caller's GlobalAlloc promises.
        unsafe { self.get().dealloc(block, layout) }
    }
    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's GlobalAlloc promises.
        unsafe { self.get().realloc(block, layout, new_size) }
    }
}
