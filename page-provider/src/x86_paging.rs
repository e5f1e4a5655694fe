//! Chunks mapped through a kernel's own paging code, the `x86_64` crate's (feature
//! `x86_64`): the kernel hands over its [`Mapper`] (an `OffsetPageTable`, say) and its
//! frame allocator, and the provider maps chunks of a virtual window the kernel chose, on
//! demand, with frames from that allocator. Nothing is split by hand: the heap takes frames
//! from the kernel's allocator as it grows, and the kernel keeps using both through
//! [`PagingProvider::with_paging`].
//!
//! How a chunk is backed:
//! - with one 2 MiB page when the huge-frame allocator (a `FrameAllocator<Size2MiB>`) has a
//!   frame: one page-directory entry, huge-page TLB reach;
//! - otherwise with 512 pages of 4 KiB from the `FrameAllocator<Size4KiB>`, frames one by
//!   one, as the frame allocators of tutorial kernels hand them out ([`NoHugeFrames`] when
//!   there is no huge-frame allocator).
//!
//! Page tables come from the 4 KiB allocator, through the mapper. A chunk stays mapped once
//! backed: given back, it returns to the provider's free chunks and is handed out again
//! without touching the page tables. So a mapping never changes its frame (no TLB shootdown
//! is ever needed, on any CPU), and frame allocators that cannot take frames back (most
//! tutorial ones) lose nothing. The provider does not give memory back to the kernel. Runs of
//! backed chunks are handed out before chunks that need frames; a run that no free backed
//! run fits takes fresh frames even when enough backed chunks are free but scattered.
//!
//! Running out of frames in the middle of a chunk loses nothing either: the pages mapped so
//! far stay in the page tables, which are the record of them, and backing that chunk again
//! maps only the pages still missing; a frame the mapper could not use (it ran out of frames
//! for tables) is kept for the next try.
//!
//! A tutorial kernel (an `OffsetPageTable` and a frame allocator of 4 KiB frames) adopts it
//! like this; `qemu-tests/x86_64/src/paged.rs` does it with 2 MiB frames too:
//!
//! ```ignore
//! type Pages = PagingProvider<OffsetPageTable<'static>, BootInfoFrameAllocator>;
//! static PAGES: Pages = PagingProvider::new(0xFFFF_9000_0000_0000, 512); // any free, 2 MiB-aligned window
//! #[global_allocator]
//! static HEAP: Allocator<&Pages, KernelPlatform> = Allocator::new(&PAGES, KernelPlatform::new());
//!
//! // At boot, before the first allocation:
//! unsafe {
//!     init_cpu(0);
//!     PAGES.init(mapper, frame_allocator, NoHugeFrames);
//! }
//! // Later, the kernel maps other memory with the same mapper and frames:
//! PAGES.with_paging(|paging| unsafe { paging.mapper.map_to(page, frame, flags, &mut paging.frames) });
//! ```
//!
//! Concurrency: one spin lock around the mapper, the frame allocators and the chunk
//! bitmaps; the allocator calls providers only on its slow paths, with interrupts masked on
//! kernels. New mappings go from not present to present, which no TLB caches, so none
//! needs invalidation.

use core::ptr::NonNull;

use x86_64::VirtAddr;
use x86_64::structures::paging::{
    FrameAllocator, Mapper, Page, PageSize, PageTableFlags, PhysFrame, Size2MiB, Size4KiB,
};

use crate::bitmap::Bitmap;
use crate::{CHUNK_SIZE, Capabilities, Chunks, PageProvider};

/// 4 KiB pages in a chunk.
const PAGES_PER_CHUNK: u64 = (CHUNK_SIZE / 4096) as u64;

/// A huge-frame allocator that never has a frame: every chunk is backed with 4 KiB pages.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHugeFrames;

// SAFETY: it never returns a frame, so it never returns one twice.
unsafe impl FrameAllocator<Size2MiB> for NoHugeFrames {
    fn allocate_frame(&mut self) -> Option<PhysFrame<Size2MiB>> {
        None
    }
}

/// What the kernel hands over: its mapper and its frame allocators. The kernel keeps using
/// them through [`PagingProvider::with_paging`].
#[derive(Debug)]
pub struct Paging<M, A, H = NoHugeFrames> {
    /// The kernel's page-table mapper (the tables every CPU uses).
    pub mapper: M,
    /// The kernel's 4 KiB frame allocator: page tables, and chunks without a huge frame.
    pub frames: A,
    /// The kernel's 2 MiB frame allocator, or [`NoHugeFrames`].
    pub huge_frames: H,
}

/// How the provider's chunks are backed so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PagingStats {
    /// Chunks of the window that are mapped (handed out or free).
    pub backed_chunks: usize,
    /// Of those, chunks mapped with one 2 MiB page.
    pub huge_chunks: usize,
    /// Chunks not handed out (backed or not).
    pub free_chunks: usize,
}

struct State<M, A, H, const WORDS: usize> {
    paging: Option<Paging<M, A, H>>,
    /// Chunks of the window not handed out.
    free: Bitmap<WORDS>,
    /// Chunks whose every page is mapped.
    backed: Bitmap<WORDS>,
    /// Chunks that are free and backed: handed out first, so that fresh frames are taken
    /// only when no backed run fits.
    ready: Bitmap<WORDS>,
    /// A frame taken from an allocator that the mapper could not use yet.
    spare_small: Option<PhysFrame<Size4KiB>>,
    spare_huge: Option<PhysFrame<Size2MiB>>,
    stats: PagingStats,
}

/// Chunks of a virtual window, mapped on demand through the kernel's `x86_64`-crate
/// [`Mapper`] with frames from its frame allocators; see the module documentation. Tracks up
/// to `WORDS * 64` chunks (the default: 4096 chunks, 8 GiB of window).
pub struct PagingProvider<M, A, H = NoHugeFrames, const WORDS: usize = 64> {
    base: usize,
    chunks: usize,
    state: spin::Mutex<State<M, A, H, WORDS>>,
}

impl<M, A, H, const WORDS: usize> core::fmt::Debug for PagingProvider<M, A, H, WORDS> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PagingProvider").field("base", &self.base).field("chunks", &self.chunks).finish()
    }
}

impl<M, A, H, const WORDS: usize> PagingProvider<M, A, H, WORDS>
where
    M: Mapper<Size4KiB> + Mapper<Size2MiB> + Send,
    A: FrameAllocator<Size4KiB> + Send,
    H: FrameAllocator<Size2MiB> + Send,
{
    /// A provider for the `chunks` chunks of virtual addresses from `base`; it hands out
    /// nothing until [`init`](Self::init) gave it the kernel's paging.
    ///
    /// # Panics
    ///
    /// If `base` is not 2 MiB aligned, or `chunks` is 0 or more than `WORDS * 64` (at
    /// compile time in a `static`).
    pub const fn new(base: usize, chunks: usize) -> Self {
        assert!(base.is_multiple_of(CHUNK_SIZE), "the window must be 2 MiB aligned");
        assert!(chunks > 0 && chunks <= Bitmap::<WORDS>::BITS, "the window has 0 or too many chunks");
        Self {
            base,
            chunks,
            state: spin::Mutex::new(State {
                paging: None,
                free: Bitmap::new(),
                backed: Bitmap::new(),
                ready: Bitmap::new(),
                spare_small: None,
                spare_huge: None,
                stats: PagingStats { backed_chunks: 0, huge_chunks: 0, free_chunks: 0 },
            }),
        }
    }

    /// Hands the provider the kernel's paging: chunks are mapped through `mapper` with
    /// frames from `frames` and `huge_frames` from now on.
    ///
    /// # Panics
    ///
    /// If it ran before, or the window does not lie in one canonical half of the address
    /// space.
    ///
    /// # Safety
    ///
    /// - `mapper` edits the page tables that every CPU which may touch the heap uses;
    /// - the window (`chunks * 2 MiB` bytes from `base`) is not mapped, and nothing else maps
    ///   anything in it, now or later;
    /// - frames from `frames` and `huge_frames` are unused RAM (their `FrameAllocator`
    ///   promise), which becomes the heap's for good.
    pub unsafe fn init(&self, mapper: M, frames: A, huge_frames: H) {
        let last = self.base.checked_add(self.chunks * CHUNK_SIZE - 1);
        let canonical = |virt: usize| VirtAddr::try_new(virt as u64).is_ok();
        assert!(
            last.is_some_and(|last| canonical(self.base)
                && canonical(last)
                && (self.base >> 47) == (last >> 47)),
            "the heap window {:#x} + {} chunks is not canonical",
            self.base,
            self.chunks
        );
        let mut state = self.state.lock();
        assert!(state.paging.is_none(), "PagingProvider::init ran twice");
        state.paging = Some(Paging { mapper, frames, huge_frames });
        state.free.set_range(0, self.chunks, true);
        state.stats.free_chunks = self.chunks;
    }

    /// Runs `f` with the kernel's mapper and frame allocators (to map other memory, or to
    /// look up what the heap mapped with `Translate`); `None` before [`init`](Self::init).
    /// `f` must not allocate from an allocator this provider serves: the provider's lock is
    /// held.
    pub fn with_paging<R>(&self, f: impl FnOnce(&mut Paging<M, A, H>) -> R) -> Option<R> {
        self.state.lock().paging.as_mut().map(f)
    }

    /// How the window is backed.
    pub fn stats(&self) -> PagingStats {
        self.state.lock().stats
    }

    /// The window's virtual addresses.
    pub fn window(&self) -> core::ops::Range<usize> {
        self.base..self.base + self.chunks * CHUNK_SIZE
    }

    fn address(&self, index: usize) -> usize {
        self.base + index * CHUNK_SIZE
    }
}

/// Present and writable: what a heap page needs (no-execute is left to the kernel: it is a
/// reserved bit unless EFER.NXE is on).
const FLAGS: PageTableFlags = PageTableFlags::PRESENT.union(PageTableFlags::WRITABLE);

impl<M, A, H, const WORDS: usize> State<M, A, H, WORDS>
where
    M: Mapper<Size4KiB> + Mapper<Size2MiB>,
    A: FrameAllocator<Size4KiB>,
    H: FrameAllocator<Size2MiB>,
{
    /// Maps every page of the chunk at `virt` that is not mapped yet; returns whether the
    /// whole chunk is mapped now, and whether with one 2 MiB page.
    fn back(&mut self, virt: usize) -> Option<bool> {
        let paging = self.paging.as_mut()?;
        let chunk = Page::<Size2MiB>::from_start_address(VirtAddr::new(virt as u64)).ok()?;
        let first_small = Page::<Size4KiB>::containing_address(chunk.start_address());
        let partly_mapped = paging.mapper.translate_page(first_small).is_ok()
            || (1..PAGES_PER_CHUNK).any(|i| paging.mapper.translate_page(first_small + i).is_ok());
        if !partly_mapped {
            let huge = self.spare_huge.take().or_else(|| paging.huge_frames.allocate_frame());
            if let Some(frame) = huge {
                // SAFETY: the frame is unused RAM from the kernel's allocator (its promise),
                // mapped nowhere else; the page lies in the window, which nothing else maps
                // (`init`'s contract) and which is not mapped at this chunk (checked above).
                match unsafe { paging.mapper.map_to(chunk, frame, FLAGS, &mut paging.frames) } {
                    // Not present to present: nothing to invalidate.
                    Ok(flush) => {
                        flush.ignore();
                        return Some(true);
                    }
                    // No frame for a table, or a clash: keep the frame, try 4 KiB pages.
                    Err(_) => self.spare_huge = Some(frame),
                }
            }
        }
        for i in 0..PAGES_PER_CHUNK {
            let page = first_small + i;
            if paging.mapper.translate_page(page).is_ok() {
                continue;
            }
            let frame = self.spare_small.take().or_else(|| paging.frames.allocate_frame())?;
            // SAFETY: as for the huge page: an unused frame, an unmapped page of the window.
            match unsafe { paging.mapper.map_to(page, frame, FLAGS, &mut paging.frames) } {
                Ok(flush) => flush.ignore(),
                Err(_) => {
                    self.spare_small = Some(frame);
                    return None;
                }
            }
        }
        Some(false)
    }
}

// SAFETY: chunks are 2 MiB-aligned pieces of the window, which only this provider maps
// (`init`'s contract); the free bitmap hands each out once until given back. A chunk is
// handed out only when every one of its pages maps, through the tables every CPU uses, a
// frame the kernel's allocators gave up for good, and it stays mapped to the same frames for
// the provider's lifetime. Nothing is known to read as zero.
unsafe impl<M, A, H, const WORDS: usize> PageProvider for PagingProvider<M, A, H, WORDS>
where
    M: Mapper<Size4KiB> + Mapper<Size2MiB> + Send,
    A: FrameAllocator<Size4KiB> + Send,
    H: FrameAllocator<Size2MiB> + Send,
{
    fn capabilities(&self) -> Capabilities {
        Capabilities::empty()
    }

    fn page_size(&self) -> usize {
        Size4KiB::SIZE as usize
    }

    fn alloc_chunks(&self, count: usize) -> Option<Chunks> {
        let mut state = self.state.lock();
        if count == 0 || count > self.chunks || state.paging.is_none() {
            return None;
        }
        // The lowest run of backed chunks, else the lowest free run, backed now.
        let index = match state.ready.find_set_run(count, 1, self.chunks) {
            Some(index) => index,
            None => {
                let index = state.free.find_set_run(count, 1, self.chunks)?;
                for chunk in index..index + count {
                    if state.backed.get(chunk) {
                        continue;
                    }
                    // The chunks backed before a failure stay free, ready for the next request.
                    let huge = state.back(self.address(chunk))?;
                    state.backed.set_range(chunk, 1, true);
                    state.ready.set_range(chunk, 1, true);
                    state.stats.backed_chunks += 1;
                    state.stats.huge_chunks += usize::from(huge);
                }
                index
            }
        };
        state.free.set_range(index, count, false);
        state.ready.set_range(index, count, false);
        state.stats.free_chunks -= count;
        Some(Chunks { base: NonNull::new(self.address(index) as *mut u8)?, zeroed: false })
    }

    unsafe fn free_chunks(&self, base: NonNull<u8>, count: usize) {
        let index = (base.as_ptr() as usize).wrapping_sub(self.base) / CHUNK_SIZE;
        let mut state = self.state.lock();
        let handed_out = index < self.chunks
            && count <= self.chunks - index
            && state.free.all_in_range(index, count, false);
        debug_assert!(handed_out, "chunks given back that were not handed out");
        if handed_out {
            // Handed-out chunks are all backed.
            state.free.set_range(index, count, true);
            state.ready.set_range(index, count, true);
            state.stats.free_chunks += count;
        }
    }
}

#[cfg(test)]
mod tests;
