//! allocator-api2's `Allocator` trait (feature `allocator-api2`): any `Allocator` instance
//! serves collections that take an allocator, on stable Rust. A kernel keeps separate
//! heaps (DMA-able memory, a driver's pool) and writes `Vec::new_in(&heap)`.

use core::alloc::Layout;
use core::ptr::NonNull;

use allocator_api2::alloc::{AllocError, Allocator as AllocatorApi};
use page_provider::PageProvider;
use platform::Platform;

use crate::allocator::Allocator;

fn slice(block: NonNull<u8>, len: usize) -> NonNull<[u8]> {
    NonNull::slice_from_raw_parts(block, len)
}

// SAFETY: blocks are disjoint, live until deallocated, at least `layout.size()` bytes and
// aligned to `layout.align()` (the allocator's own contract); a zero-size layout gets a
// unique block like any other and is freed like one; `grow` and `shrink` keep the contents
// up to the smaller size (`reallocate`'s contract) and leave the old block untouched on
// failure. Moving the allocator (a `static` in practice, or a reference) does not move
// its blocks.
unsafe impl<P: PageProvider, Pl: Platform> AllocatorApi for Allocator<P, Pl> {
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        let block = Allocator::allocate(self, layout.size(), layout.align()).ok_or(AllocError)?;
        Ok(slice(block, layout.size()))
    }

    fn allocate_zeroed(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        let block = Allocator::allocate_zeroed(self, layout.size(), layout.align()).ok_or(AllocError)?;
        Ok(slice(block, layout.size()))
    }

    unsafe fn deallocate(&self, block: NonNull<u8>, layout: Layout) {
        // SAFETY: the trait's caller promises a live block of this allocator with `layout`.
        unsafe { Allocator::deallocate(self, block, layout.size(), layout.align()) }
    }

    unsafe fn grow(&self, block: NonNull<u8>, old: Layout, new: Layout) -> Result<NonNull<[u8]>, AllocError> {
        // SAFETY: the trait's caller promises a live block with `old` and `new.size() >=
        // old.size()`.
        unsafe { self.resize(block, old, new) }
    }

    unsafe fn grow_zeroed(
        &self,
        block: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        // SAFETY: as for `grow`; the bytes past the old size are then the caller's to zero.
        unsafe {
            let grown = self.resize(block, old, new)?;
            grown.cast::<u8>().as_ptr().add(old.size()).write_bytes(0, new.size() - old.size());
            Ok(grown)
        }
    }

    unsafe fn shrink(
        &self,
        block: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        // SAFETY: the trait's caller promises a live block with `old`.
        unsafe { self.resize(block, old, new) }
    }
}

impl<P: PageProvider, Pl: Platform> Allocator<P, Pl> {
    /// `grow` and `shrink`: `reallocate` gives a block aligned to the new alignment, in
    /// place when the old one allows it.
    ///
    /// # Safety
    ///
    /// `block` is live with layout `old`.
    unsafe fn resize(
        &self,
        block: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        let _ = old;
        // SAFETY: the caller's promise.
        let moved = unsafe { self.reallocate(block, new.align(), new.size()) }.ok_or(AllocError)?;
        Ok(slice(moved, new.size()))
    }
}
