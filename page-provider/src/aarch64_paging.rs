//! Chunks mapped through a kernel's own AArch64 translation tables, the `aarch64-paging`
//! crate's (feature `aarch64-paging`): the kernel hands over its [`Mapping`] (the tables of
//! TTBR0 or TTBR1 at EL1, with its own [`Translation`] for table frames) and its frame
//! allocator, and the provider maps chunks of a virtual window the kernel chose, on demand,
//! with frames from that allocator. Nothing is split by hand: the heap takes frames from the
//! kernel's allocator as it grows, and the kernel keeps using both through
//! [`PagingProvider::with_paging`].
//!
//! How a chunk is backed:
//! - with one level-2 block of 2 MiB when the allocator has a 2 MiB frame
//!   ([`HeapFrames::allocate_2m`]): huge-page TLB reach;
//! - otherwise with 512 pages of 4 KiB ([`HeapFrames::allocate_4k`]), frames one by one, as
//!   simple frame allocators hand them out.
//!
//! `aarch64-paging` works with the 4 KiB granule only; a kernel with 16 KiB or 64 KiB pages
//! uses `platform::arch::aarch64::HeapMapper` (any granule), or this provider in a TTBR1
//! range whose granule (TCR_EL1.TG1) is 4 KiB.
//!
//! A chunk stays mapped once backed: given back, it returns to the provider's free chunks and
//! is handed out again without touching the tables. So a mapping never changes its frame
//! (no TLB invalidation is needed for the heap, on any CPU), and frame allocators that cannot
//! take frames back lose nothing. The provider does not give memory back to the kernel.
//! Running out of frames in the middle of a chunk loses nothing either: the pages mapped so
//! far stay in the tables, which are the record of them, and backing that chunk again maps
//! only the pages still missing.
//!
//! Table frames come from the kernel's [`Translation`]. Its `allocate_table` cannot fail, so
//! it must have frames for the window's tables (one 4 KiB table per GiB of window with 2 MiB
//! frames, plus one per 2 MiB of chunks backed with pages), and it must not take them from
//! the heap this provider serves (`aarch64-paging`'s `alloc` feature takes them from the
//! global allocator).
//!
//! Concurrency: one spin lock around the mapping, the frame allocator and the chunk
//! bitmaps; the allocator calls providers only on its slow paths, with interrupts masked on
//! kernels. If the mapping is active (the kernel called `activate` or `mark_active`),
//! `aarch64-paging` makes each new entry visible to every CPU's walker before
//! [`PageProvider::alloc_chunks`] returns; new entries go from invalid to valid, which no TLB
//! caches.

use core::ptr::NonNull;

use ::aarch64_paging::Mapping;
use ::aarch64_paging::descriptor::{El1Attributes, PhysicalAddress};
use ::aarch64_paging::paging::{Constraints, El1And0, MemoryRegion, Translation};

use crate::bitmap::Bitmap;
use crate::{CHUNK_SIZE, Capabilities, Chunks, PageProvider};

/// Bytes of a page of the 4 KiB granule.
const PAGE: usize = 4096;
/// 4 KiB pages in a chunk.
const PAGES_PER_CHUNK: usize = CHUNK_SIZE / PAGE;

/// The kernel's frame allocator, as the heap takes frames from it.
///
/// # Safety
///
/// Every address returned is the physical address of unused RAM, aligned to its size
/// (2 MiB or 4 KiB), that nothing else uses from then on; no frame is returned twice.
pub unsafe trait HeapFrames {
    /// A 2 MiB frame, 2 MiB aligned, if the allocator has one; the default has none.
    fn allocate_2m(&mut self) -> Option<u64> {
        None
    }

    /// A 4 KiB frame, 4 KiB aligned, if the allocator has one.
    fn allocate_4k(&mut self) -> Option<u64>;
}

/// What the kernel hands over: its mapping, its frame allocator, and the attributes of heap
/// memory in its MAIR. The kernel keeps using them through [`PagingProvider::with_paging`].
#[derive(Debug)]
pub struct Paging<T: Translation<El1Attributes>, F> {
    /// The kernel's translation tables, which every CPU that may touch the heap uses.
    pub mapping: Mapping<T, El1And0>,
    /// The kernel's frame allocator for heap memory.
    pub frames: F,
    /// The attributes of a heap mapping: normal write-back cacheable memory (the kernel's
    /// MAIR index for it), inner shareable, valid, accessed, execute-never; see
    /// [`heap_attributes`].
    pub attributes: El1Attributes,
}

/// The attributes of heap memory with normal write-back memory at MAIR_EL1 index
/// `mair_index` (0 to 7): valid, accessed, inner shareable, read/write at EL1 only,
/// execute-never at both levels, global.
pub const fn heap_attributes(mair_index: usize) -> El1Attributes {
    El1Attributes::from_bits_retain((mair_index & 0b111) << 2)
        .union(El1Attributes::VALID)
        .union(El1Attributes::ACCESSED)
        .union(El1Attributes::INNER_SHAREABLE)
        .union(El1Attributes::PXN)
        .union(El1Attributes::UXN)
}

/// How the provider's chunks are backed so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PagingStats {
    /// Chunks of the window that are mapped (handed out or free).
    pub backed_chunks: usize,
    /// Of those, chunks mapped with one 2 MiB block.
    pub block_chunks: usize,
    /// Chunks not handed out (backed or not).
    pub free_chunks: usize,
}

struct State<T: Translation<El1Attributes>, F, const WORDS: usize> {
    paging: Option<Paging<T, F>>,
    /// Chunks of the window not handed out.
    free: Bitmap<WORDS>,
    /// Chunks whose every page is mapped.
    backed: Bitmap<WORDS>,
    /// Chunks that are free and backed: handed out first, so that fresh frames are taken
    /// only when no backed run fits.
    ready: Bitmap<WORDS>,
    /// Frames taken from the allocator that a failed mapping could not use yet.
    spare_2m: Option<u64>,
    spare_4k: Option<u64>,
    stats: PagingStats,
}

/// Chunks of a virtual window, mapped on demand through the kernel's `aarch64-paging`
/// [`Mapping`] with frames from its allocator; see the module documentation. Tracks up to
/// `WORDS * 64` chunks (the default: 4096 chunks, 8 GiB of window).
pub struct PagingProvider<T: Translation<El1Attributes>, F, const WORDS: usize = 64> {
    base: usize,
    chunks: usize,
    state: spin::Mutex<State<T, F, WORDS>>,
}

impl<T: Translation<El1Attributes>, F, const WORDS: usize> core::fmt::Debug for PagingProvider<T, F, WORDS> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PagingProvider").field("base", &self.base).field("chunks", &self.chunks).finish()
    }
}

impl<T, F, const WORDS: usize> PagingProvider<T, F, WORDS>
where
    T: Translation<El1Attributes> + Send,
    F: HeapFrames + Send,
{
    /// A provider for the `chunks` chunks of virtual addresses from `base` (in the lower
    /// range for a TTBR0 mapping, the upper one for TTBR1); it hands out nothing until
    /// [`init`](Self::init) gave it the kernel's paging.
    ///
    /// # Panics
    ///
    /// If `base` is not 2 MiB aligned, `chunks` is 0 or more than `WORDS * 64`, or the
    /// window wraps (at compile time in a `static`).
    pub const fn new(base: usize, chunks: usize) -> Self {
        assert!(base.is_multiple_of(CHUNK_SIZE), "the window must be 2 MiB aligned");
        assert!(chunks > 0 && chunks <= Bitmap::<WORDS>::BITS, "the window has 0 or too many chunks");
        assert!(base.checked_add(chunks * CHUNK_SIZE).is_some(), "the window wraps");
        Self {
            base,
            chunks,
            state: spin::Mutex::new(State {
                paging: None,
                free: Bitmap::new(),
                backed: Bitmap::new(),
                ready: Bitmap::new(),
                spare_2m: None,
                spare_4k: None,
                stats: PagingStats { backed_chunks: 0, block_chunks: 0, free_chunks: 0 },
            }),
        }
    }

    /// Hands the provider the kernel's paging: chunks are mapped through `paging.mapping`
    /// with frames from `paging.frames` from now on. Returns false, keeping nothing, if it
    /// ran before or the window lies outside the mapping's address range.
    ///
    /// # Safety
    ///
    /// - `paging.mapping` holds the tables that every CPU which may touch the heap uses (or
    ///   will, once the kernel activates them), and its translation reaches every table;
    /// - the window (`chunks * 2 MiB` bytes from `base`) is not mapped, and nothing else maps
    ///   anything in it, now or later;
    /// - `paging.attributes` describe normal read/write memory in the MAIR_EL1 every such
    ///   CPU uses.
    pub unsafe fn init(&self, paging: Paging<T, F>) -> bool {
        let mut state = self.state.lock();
        if state.paging.is_some() {
            return false;
        }
        // The walk checks the range against the mapping's size and range (and touches
        // nothing but existing tables).
        let window = MemoryRegion::new(self.window().start, self.window().end);
        if paging.mapping.walk_range(&window, &mut |_, _, _| Ok(())).is_err() {
            return false;
        }
        state.paging = Some(paging);
        state.free.set_range(0, self.chunks, true);
        state.stats.free_chunks = self.chunks;
        true
    }

    /// Runs `f` with the kernel's paging (to map other memory, or to look up what the heap
    /// mapped with `walk_range`); `None` before [`init`](Self::init). `f` must not allocate
    /// from an allocator this provider serves: the provider's lock is held.
    pub fn with_paging<R>(&self, f: impl FnOnce(&mut Paging<T, F>) -> R) -> Option<R> {
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

impl<T: Translation<El1Attributes>, F: HeapFrames, const WORDS: usize> State<T, F, WORDS> {
    /// Maps every page of the chunk at `virt` that is not mapped yet; returns whether the
    /// whole chunk is mapped now, and whether with one 2 MiB block.
    fn back(&mut self, virt: usize) -> Option<bool> {
        let paging = self.paging.as_mut()?;
        let chunk = MemoryRegion::new(virt, virt + CHUNK_SIZE);
        // Which pages are mapped already (by an earlier attempt that ran out of frames).
        let mut mapped = [0u64; PAGES_PER_CHUNK / 64];
        let mut any = false;
        paging
            .mapping
            .walk_range(&chunk, &mut |region, descriptor, _level| {
                if descriptor.is_valid() {
                    any = true;
                    let first = region.start().0.saturating_sub(virt) / PAGE;
                    let end = (region.end().0 - virt).min(CHUNK_SIZE) / PAGE;
                    for page in first..end {
                        mapped[page / 64] |= 1 << (page % 64);
                    }
                }
                Ok(())
            })
            .ok()?;
        if !any && let Some(frame) = self.spare_2m.take().or_else(|| paging.frames.allocate_2m()) {
            // One block: the region is 2 MiB aligned and unmapped, and no constraint keeps
            // `aarch64-paging` from using a block.
            let attributes = paging.attributes;
            match paging.mapping.map_range(
                &chunk,
                PhysicalAddress(frame as usize),
                attributes,
                Constraints::empty(),
            ) {
                Ok(()) => return Some(true),
                // A clash or an address the mapping refuses: keep the frame, try pages.
                Err(_) => self.spare_2m = Some(frame),
            }
        }
        for page in 0..PAGES_PER_CHUNK {
            if mapped[page / 64] & (1 << (page % 64)) != 0 {
                continue;
            }
            let frame = self.spare_4k.take().or_else(|| paging.frames.allocate_4k())?;
            let start = virt + page * PAGE;
            let region = MemoryRegion::new(start, start + PAGE);
            let attributes = paging.attributes;
            if paging
                .mapping
                .map_range(&region, PhysicalAddress(frame as usize), attributes, Constraints::empty())
                .is_err()
            {
                self.spare_4k = Some(frame);
                return None;
            }
        }
        Some(false)
    }
}

// SAFETY: chunks are 2 MiB-aligned pieces of the window, which only this provider maps
// (`init`'s contract); the free bitmap hands each out once until given back. A chunk is
// handed out only when every one of its pages maps, through the tables every CPU uses, a
// frame the kernel's allocator gave up for good (`HeapFrames`' contract) as normal read/write
// memory, and it stays mapped to the same frames for the provider's lifetime. Nothing is
// known to read as zero.
unsafe impl<T, F, const WORDS: usize> PageProvider for PagingProvider<T, F, WORDS>
where
    T: Translation<El1Attributes> + Send,
    F: HeapFrames + Send,
{
    fn capabilities(&self) -> Capabilities {
        Capabilities::empty()
    }

    fn page_size(&self) -> usize {
        PAGE
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
                    let block = state.back(self.address(chunk))?;
                    state.backed.set_range(chunk, 1, true);
                    state.ready.set_range(chunk, 1, true);
                    state.stats.backed_chunks += 1;
                    state.stats.block_chunks += usize::from(block);
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
