//! Compact mode: the allocator over one span too small for 2 MiB chunks (a kernel's heap
//! of 64 KiB to a few MiB, a static array in firmware).
//!
//! In its usual mode the allocator needs whole 2 MiB-aligned chunks, one of them for its
//! metadata, so a heap under 4 MiB could not serve one allocation. A provider whose memory
//! is one span holding fewer than [`COMPACT_CHUNKS`] whole chunks hands it over instead
//! ([`PageProvider::claim_span`], at the first allocation), and the allocator runs it
//! itself:
//!
//! - a best-fit heap (`fit`) manages the whole span, metadata included: arenas, the page
//!   map, and every block above [`COMPACT_SLAB_MAX`] bytes (or aligned beyond 16), each
//!   with a 16-byte header and no rounding to size classes. It works under the central lock;
//! - the small classes keep their slabs, per-CPU arenas and lock-free fast paths: a slab is
//!   one page taken from the fit heap, with its run descriptor in its first 64 bytes, so a
//!   block's descriptor is at `block & !(PAGE - 1)` and every slab protocol (remote frees,
//!   full slabs, adoption) is the same as in chunks. A slab's blocks and descriptor lie in
//!   one page, hence in one 2 MiB window: their chunk-offset links work unchanged;
//! - a byte per page of the span says which pages are slabs, so a free tells a slab block
//!   from a fit block with one load.
//!
//! Nothing is returned to the provider (the span is all there is); an empty slab page goes
//! back to the fit heap at once, as in chunks.
//!
//! Concurrency: the mode is decided once, under the central lock, by the first slow path
//! (the span's bounds and page map are stored before the mode is published with release,
//! and read after an acquire load of it). The fit heap, the page map's bytes and slab pages'
//! creation and release change only under the central lock; a free reads the byte of a page
//! holding its block, which stays a slab page while the block is live.

use core::ptr::{self, NonNull};

use page_provider::PageProvider;
use platform::Platform;

use crate::allocator::{Allocator, Misuse};
use crate::chunk::{RUN_SLAB, Run};
use crate::config::{CHUNK_MASK, PAGE, PAGE_SHIFT};
use crate::fit::{Fit, FitCounters, Refused};
use crate::size_class::{class_align, class_index, class_size};
use crate::sync::{AtomicPtr, AtomicU8, AtomicUsize, Ordering};

/// A provider's span holding fewer whole 2 MiB chunks than this is run in compact mode.
pub const COMPACT_CHUNKS: usize = 8;
/// In compact mode, requests up to this many bytes (aligned to at most 16) come from the
/// small classes' slabs; larger ones are fit blocks.
pub const COMPACT_SLAB_MAX: usize = 256;
/// The largest size class with slabs in compact mode.
const COMPACT_MAX_CLASS: usize = class_index(COMPACT_SLAB_MAX);
/// Reallocation growth in compact mode moves a block to where this many times its bytes
/// are free, when the span has such a piece (see `Fit::alloc_with_room`): a doubling `Vec`
/// then grows in place four times before it could need to move again. (With 4, a `Vec`
/// doubling from 512 bytes still moved at 4 KiB: the 4 KiB holes between slab pages took it.)
const FIT_GROWTH_ROOM: usize = 16;
/// Bytes at the start of a compact slab page that hold its run descriptor.
const SLAB_HEAD: usize = core::mem::size_of::<Run>();

// A slab page holds at least 8 blocks of every class it serves, after its descriptor.
static_assertions::const_assert!(
    (PAGE - SLAB_HEAD.next_multiple_of(class_align(COMPACT_MAX_CLASS))) / class_size(COMPACT_MAX_CLASS) >= 8
);

/// The allocator has not met its provider yet.
pub(crate) const UNDECIDED: u8 = 0;
/// The usual mode: chunks from the provider.
pub(crate) const CHUNKS: u8 = 1;
/// Compact mode: one span, run by the allocator.
pub(crate) const COMPACT: u8 = 2;

/// Page-map values.
const PAGE_FIT: u8 = 0;
const PAGE_SLAB: u8 = 1;

/// Where the allocator stands, readable without the lock: the mode and, in compact mode,
/// the span's page range and page map.
pub(crate) struct Mode {
    mode: AtomicU8,
    /// The first byte of the first page the page map covers.
    page_base: AtomicUsize,
    /// Past the last byte of the span's blocks.
    end: AtomicUsize,
    /// One byte per page from `page_base`: `PAGE_SLAB` or `PAGE_FIT`.
    pages: AtomicPtr<u8>,
}

impl Mode {
    pub(crate) const fn new() -> Self {
        Self {
            mode: AtomicU8::new(UNDECIDED),
            page_base: AtomicUsize::new(0),
            end: AtomicUsize::new(0),
            pages: AtomicPtr::new(ptr::null_mut()),
        }
    }

    /// `UNDECIDED`, `CHUNKS` or `COMPACT` (one load, for paths that test more than one).
    #[inline(always)]
    pub(crate) fn get(&self) -> u8 {
        self.mode.load(Ordering::Acquire)
    }

    /// Whether the allocator runs in compact mode.
    #[inline(always)]
    pub(crate) fn compact(&self) -> bool {
        self.get() == COMPACT
    }

    /// Whether the allocator has decided its mode and it is the usual one.
    #[inline(always)]
    pub(crate) fn chunks(&self) -> bool {
        self.mode.load(Ordering::Acquire) == CHUNKS
    }

    /// Whether a request is served by compact mode's small-class slabs.
    #[inline(always)]
    pub(crate) fn slab_request(size: usize, align: usize) -> bool {
        size <= COMPACT_SLAB_MAX && align <= crate::fit::GRANULE
    }

    /// In compact mode: whether `address` lies in a slab page (`Some(true)`), elsewhere in
    /// the span (`Some(false)`), or outside it (`None`).
    #[inline(always)]
    pub(crate) fn page_kind(&self, address: usize) -> Option<bool> {
        let base = self.page_base.load(Ordering::Relaxed);
        if address.wrapping_sub(base) >= self.end.load(Ordering::Relaxed).wrapping_sub(base) {
            return None;
        }
        let pages = self.pages.load(Ordering::Relaxed);
        // SAFETY: the page map covers every page from `page_base` to `end`; a page's byte
        // is stable while a block in it is live (written under the lock when the page
        // becomes or stops being a slab).
        Some(unsafe { pages.add((address - base) >> PAGE_SHIFT).read() } == PAGE_SLAB)
    }
}

/// Compact mode's state under the central lock.
pub(crate) struct Region {
    fit: NonNull<Fit>,
    page_base: usize,
    pages: *mut u8,
    /// Slab pages in use.
    slab_pages: usize,
    /// Checked builds: one bit per 8-byte granule of the span's pages, set where a live
    /// slab block starts.
    #[cfg(feature = "checked")]
    live_bits: *mut crate::sync::AtomicU64,
}

/// Compact mode's counters, in [`HeapCounters`](crate::stats::HeapCounters).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegionCounters {
    /// Bytes of the span (0 when the allocator is not in compact mode).
    pub span_bytes: usize,
    /// The fit heap's counters: its capacity, free bytes, largest free block, used blocks
    /// (slab pages and arenas included).
    pub fit: FitCounters,
    /// Pages serving as slabs of the small classes.
    pub slab_pages: usize,
    /// Fit blocks handed out to callers and live.
    pub blocks_live: usize,
    /// Bytes usable in them.
    pub blocks_live_bytes: usize,
}

// SAFETY: the pointers are into the span the allocator owns; the region is used only under
// the central lock.
unsafe impl Send for Region {}

impl Region {
    /// Formats the span: the fit heap over all of it, then the page map (and the checked
    /// builds' live-bit table) as its first blocks.
    ///
    /// # Safety
    ///
    /// The span is the allocator's alone for its lifetime, readable and writable.
    unsafe fn format(start: usize, len: usize) -> Option<Self> {
        // SAFETY: the caller's promise.
        let fit = unsafe { &mut *Fit::format(start, len)? };
        let page_base = start & !(PAGE - 1);
        let page_count = (start + len).div_ceil(PAGE) - page_base / PAGE;
        let pages = fit.alloc(page_count, 1)? as *mut u8;
        // SAFETY: a fresh fit block of `page_count` bytes.
        unsafe { ptr::write_bytes(pages, PAGE_FIT, page_count) };
        #[cfg(feature = "checked")]
        let live_bits = {
            let bytes = (page_count * PAGE / 8).div_ceil(64) * 8;
            let table = fit.alloc(bytes, 8)? as *mut u8;
            // SAFETY: a fresh fit block of `bytes` bytes.
            unsafe { ptr::write_bytes(table, 0, bytes) };
            table.cast()
        };
        Some(Self {
            fit: NonNull::from(fit),
            page_base,
            pages,
            slab_pages: 0,
            #[cfg(feature = "checked")]
            live_bits,
        })
    }

    fn fit(&mut self) -> &mut Fit {
        // SAFETY: the fit heap lives in the span for the allocator's lifetime; `&mut self`
        // (under the central lock) makes this the only reference.
        unsafe { self.fit.as_mut() }
    }

    fn set_page(&mut self, page: usize, kind: u8) {
        // SAFETY: `page` is a page of the span, covered by the map.
        unsafe { self.pages.add((page - self.page_base) / PAGE).write(kind) };
    }

    /// A slab page for the small classes: its descriptor formatted as a one-page slab run.
    fn alloc_slab_page(&mut self) -> Option<*mut Run> {
        let page = self.fit().alloc(PAGE, PAGE)?;
        self.set_page(page, PAGE_SLAB);
        self.slab_pages += 1;
        let run = page as *mut Run;
        // SAFETY: a fresh page of ours, page-aligned, large enough for the descriptor.
        unsafe {
            run.write(Run::unused());
            (*run).kind = RUN_SLAB;
            (*run).first_page = ((page & CHUNK_MASK) >> PAGE_SHIFT) as u16;
            (*run).pages = 1;
            (*run).head = SLAB_HEAD as u16;
        }
        Some(run)
    }

    /// Gives a slab page back to the fit heap.
    ///
    /// # Safety
    ///
    /// `run` is the descriptor of a live slab page of this region with nothing in it live.
    unsafe fn free_slab_page(&mut self, run: *mut Run) {
        let page = run as usize;
        self.set_page(page, PAGE_FIT);
        self.slab_pages -= 1;
        // SAFETY: the page is a used fit block (its payload starts at the page), unused now.
        let freed = unsafe { self.fit().free(page) };
        debug_assert!(freed.is_ok(), "a slab page was not a fit block");
    }

    /// Checked builds: the live bit of a slab block.
    #[cfg(feature = "checked")]
    fn live_bit(&self, address: usize) -> (&crate::sync::AtomicU64, u64) {
        let granule = (address - self.page_base) >> 3;
        // SAFETY: the table covers every granule of the span's pages and lives as long as
        // the region.
        (unsafe { &*self.live_bits.add(granule / 64) }, 1 << (granule % 64))
    }
}

/// What compact mode's free path found at a pointer.
enum Found {
    /// A block of a slab page, with its descriptor.
    Slab(*mut Run),
    /// Something else in the span: a fit block, if it is one.
    Fit,
    /// Outside the span.
    Outside,
}

impl<P: PageProvider, Pl: Platform> Allocator<P, Pl> {
    /// Decides the mode on the first slow path: asks the provider for its span and, if it
    /// hands one over, formats it. Call inside a slot closure.
    #[cold]
    pub(crate) fn decide_mode(&self) {
        if !P::MAY_CLAIM_SPAN {
            return;
        }
        let mut heap = self.lock_heap();
        if self.mode.mode.load(Ordering::Relaxed) != UNDECIDED {
            return;
        }
        let Some(span) = self.provider.claim_span(COMPACT_CHUNKS) else {
            self.mode.mode.store(CHUNKS, Ordering::Release);
            return;
        };
        let start = span.base.as_ptr() as usize;
        // SAFETY: the provider handed the span over whole and for good (its contract).
        if let Some(region) = unsafe { Region::format(start, span.len) } {
            self.mode.page_base.store(region.page_base, Ordering::Relaxed);
            self.mode.end.store(start + span.len, Ordering::Relaxed);
            self.mode.pages.store(region.pages, Ordering::Relaxed);
            heap.counters.region.span_bytes = span.len;
            heap.region = Some(region);
        }
        // A span too small to format leaves compact mode with nothing: every request fails
        // and says so.
        self.mode.mode.store(COMPACT, Ordering::Release);
    }

    /// Allocations while the mode is undecided, and compact mode's fit blocks.
    #[cold]
    pub(crate) fn alloc_compact(&self, layout: core::alloc::Layout, zeroed: bool) -> *mut u8 {
        let (size, align) = (layout.size(), layout.align());
        if !self.mode.compact() {
            self.platform.with_slot(|_| self.decide_mode());
            if !self.mode.compact() || Mode::slab_request(size, align) {
                // Decided now: the usual paths take the request.
                return self.alloc_inner(layout, zeroed);
            }
        }
        let block = self.platform.with_slot(|_| self.fit_block(size, align, 1));
        match block {
            Some(block) => {
                if zeroed {
                    // SAFETY: a fresh block of at least `size` bytes, ours to write.
                    unsafe { ptr::write_bytes(block, 0, size) };
                }
                block
            }
            None => {
                // Blocks in this slot's front cache keep slab pages from going back to the
                // span: give them back and try once more (the second try finds none).
                // SAFETY: the slot closure gives exclusive use of the slot's arena.
                if self.platform.with_slot(|slot| unsafe { self.release_front_cache(slot) }) {
                    return self.alloc_compact(layout, zeroed);
                }
                self.failed(size, align);
                ptr::null_mut()
            }
        }
    }

    /// A block of `class` as a fit block, when no slab page can be had for it.
    pub(crate) fn alloc_compact_fallback(&self, class: usize) -> *mut u8 {
        self.fit_block(class_size(class), class_align(class).min(PAGE), 1).unwrap_or(ptr::null_mut())
    }

    /// Reallocation growth in compact mode that moves the block to a fit block: one with
    /// room after it to grow in place (see `Fit::alloc_with_room`). Null when the span has no
    /// room (the caller reports the failure).
    pub(crate) fn alloc_compact_growing(&self, size: usize, align: usize) -> *mut u8 {
        self.platform.with_slot(|_| self.fit_block(size, align, FIT_GROWTH_ROOM)).unwrap_or(ptr::null_mut())
    }

    /// A fit block handed to a caller, counted in the region's live blocks, taken with
    /// `room` (see `Fit::alloc_with_room`). Call inside a slot closure.
    fn fit_block(&self, size: usize, align: usize, room: usize) -> Option<*mut u8> {
        let mut heap = self.lock_heap();
        let region = heap.region.as_mut()?;
        let block = region.fit().alloc_with_room(size, align, room)?;
        let usable = region.fit().used_size(block).unwrap_or(0);
        heap.counters.region.blocks_live += 1;
        heap.counters.region.blocks_live_bytes += usable;
        Some(block as *mut u8)
    }

    /// A slab page for a small class, in compact mode.
    pub(crate) fn take_slab_page(&self) -> Option<(*mut Run, bool)> {
        let run = self.lock_heap().region.as_mut()?.alloc_slab_page()?;
        Some((run, false))
    }

    /// Gives back an empty slab page, in compact mode.
    ///
    /// # Safety
    ///
    /// `run` is a live slab page of the region with nothing in it live.
    pub(crate) unsafe fn release_slab_page(&self, run: *mut Run) {
        // SAFETY: the caller's promise.
        unsafe { Self::free_slab_page_locked(&mut self.lock_heap(), run) }
    }

    /// As [`release_slab_page`](Self::release_slab_page), with the central lock held.
    ///
    /// # Safety
    ///
    /// As for `release_slab_page`.
    pub(crate) unsafe fn free_slab_page_locked(heap: &mut crate::heap::Heap, run: *mut Run) {
        // SAFETY: the caller's promise; an abandoned slab leaves its orphan list first.
        unsafe {
            heap.unlink_orphan(run);
            if let Some(region) = heap.region.as_mut() {
                region.free_slab_page(run);
            }
        }
    }

    /// Metadata memory (arenas) in compact mode: fit blocks, never freed, whose first
    /// `zeroed` bytes are zero (see `Heap::meta_alloc_zeroing`).
    pub(crate) fn compact_meta_alloc(&self, size: usize, zeroed: usize, align: usize) -> Option<NonNull<u8>> {
        let mut heap = self.lock_heap();
        let block = heap.region.as_mut()?.fit().alloc(size, align)?;
        debug_assert!(zeroed <= size);
        // SAFETY: a fresh fit block of `size` bytes, at least `zeroed`.
        unsafe { ptr::write_bytes(block as *mut u8, 0, zeroed) };
        NonNull::new(block as *mut u8)
    }

    /// The slab descriptor of a live small block, in either mode: compact mode's slabs are
    /// one page with the descriptor at its start; slabs in chunks are found through the
    /// chunk's page map. Every path that goes from a block to its slab without knowing the
    /// mode (the delayed list) must use this, not `chunk::run_of`.
    ///
    /// # Safety
    ///
    /// `block` is a live block of a slab of this allocator.
    #[inline(always)]
    pub(crate) unsafe fn slab_of(&self, block: *mut u8) -> *mut Run {
        if P::MAY_CLAIM_SPAN && self.mode.compact() {
            (block as usize & !(PAGE - 1)) as *mut Run
        } else {
            // SAFETY: the caller's promise; in the usual mode slabs live in slab chunks.
            unsafe { crate::chunk::run_of(block as usize) }
        }
    }

    fn found(&self, address: usize) -> Found {
        match self.mode.page_kind(address) {
            Some(true) => Found::Slab((address & !(PAGE - 1)) as *mut Run),
            Some(false) => Found::Fit,
            None => Found::Outside,
        }
    }

    /// Compact mode's free path.
    ///
    /// # Safety
    ///
    /// As for `free_inner`.
    #[inline(always)]
    pub(crate) unsafe fn free_compact(&self, block: *mut u8, layout: Option<(usize, usize)>) {
        let address = block as usize;
        match self.found(address) {
            Found::Slab(run) => {
                #[cfg(feature = "checked")]
                if !self.check_compact_slab_free(run, address, layout) {
                    return;
                }
                #[cfg(not(feature = "checked"))]
                let _ = layout;
                // SAFETY: a live block of the slab page `run` (caller), whose class is below
                // CLASS_COUNT.
                self.platform.with_slot_exit(move |slot, exit| unsafe {
                    self.free_small(slot, (*run).class as usize, block, exit)
                });
            }
            // SAFETY: forwarded caller promise.
            Found::Fit => unsafe { self.free_fit(address, layout) },
            Found::Outside => self.report(Misuse::ForeignPointer, address),
        }
    }

    /// Frees a fit block, or reports a pointer that starts none.
    ///
    /// # Safety
    ///
    /// If a used fit block starts at `address`, nothing uses it any more.
    #[cold]
    unsafe fn free_fit(&self, address: usize, layout: Option<(usize, usize)>) {
        let outcome = self.platform.with_slot(|_| {
            let mut heap = self.lock_heap();
            let Some(region) = heap.region.as_mut() else { return Err(Misuse::ForeignPointer) };
            let usable = region.fit().used_size(address).map_err(refused)?;
            if layout.is_some_and(|(size, align)| size > usable || !address.is_multiple_of(align)) {
                return Err(Misuse::WrongLayout);
            }
            // SAFETY: a used block (checked above), the caller's to give up.
            unsafe { region.fit().free(address) }.map_err(refused)?;
            heap.counters.region.blocks_live -= 1;
            heap.counters.region.blocks_live_bytes -= usable;
            Ok(())
        });
        if let Err(misuse) = outcome {
            self.report(misuse, address);
        }
    }

    /// The usable bytes of a live block in compact mode.
    ///
    /// # Safety
    ///
    /// `address` is a live block of this allocator.
    pub(crate) unsafe fn compact_usable_size(&self, address: usize) -> usize {
        match self.found(address) {
            // SAFETY: a live slab block's descriptor is stable.
            Found::Slab(run) => unsafe { (*run).block_size as usize },
            Found::Fit => self.platform.with_slot(|_| {
                let mut heap = self.lock_heap();
                heap.region.as_mut().map_or(0, |region| region.fit().used_size(address).unwrap_or(0))
            }),
            Found::Outside => 0,
        }
    }

    /// Resizes a compact-mode block in place if it can; `true` when the block now serves
    /// `size` bytes at `align`.
    ///
    /// # Safety
    ///
    /// `address` is a live block of this allocator, the caller's.
    pub(crate) unsafe fn compact_resize(&self, address: usize, size: usize, align: usize) -> bool {
        match self.found(address) {
            // SAFETY: a live slab block's descriptor is stable.
            Found::Slab(run) => unsafe {
                Mode::slab_request(size, align)
                    && crate::size_class::class_for(size, align) == Some((*run).class as usize)
            },
            Found::Fit if !Mode::slab_request(size, align) && address.is_multiple_of(align) => {
                self.platform.with_slot(|_| {
                    let mut heap = self.lock_heap();
                    let Some(region) = heap.region.as_mut() else { return false };
                    let before = region.fit().used_size(address).unwrap_or(0);
                    // SAFETY: a live fit block (the caller's).
                    if !unsafe { region.fit().resize(address, size) } {
                        return false;
                    }
                    let after = region.fit().used_size(address).unwrap_or(0);
                    heap.counters.region.blocks_live_bytes += after;
                    heap.counters.region.blocks_live_bytes -= before;
                    true
                })
            }
            _ => false,
        }
    }

    /// Whether `address` may be a block handed out in compact mode.
    pub(crate) fn compact_owns(&self, address: usize) -> bool {
        match self.found(address) {
            Found::Slab(run) => address >= run as usize + SLAB_HEAD,
            Found::Fit => self.platform.with_slot(|_| {
                let mut heap = self.lock_heap();
                heap.region.as_mut().is_some_and(|region| region.fit().used_size(address).is_ok())
            }),
            Found::Outside => false,
        }
    }

    /// Checked builds: validates a free of a slab block in compact mode.
    #[cfg(feature = "checked")]
    fn check_compact_slab_free(&self, run: *mut Run, address: usize, layout: Option<(usize, usize)>) -> bool {
        // SAFETY: the page map says `run` is a formatted slab page's descriptor; its fields
        // are stable while the page is a slab, and plain bytes otherwise.
        let (class, size, (first, capacity)) = unsafe {
            let class = (*run).class as usize;
            (class, (*run).block_size as usize, crate::slab::blocks_of(run, class))
        };
        let offset = address & CHUNK_MASK;
        if offset < first || !(offset - first).is_multiple_of(size) || offset - first >= size * capacity {
            self.report(Misuse::ForeignPointer, address);
            return false;
        }
        if layout.is_some_and(|(size, align)| crate::size_class::class_for(size, align) != Some(class)) {
            self.report(Misuse::WrongLayout, address);
            return false;
        }
        let cleared = self.platform.with_slot(|_| {
            let heap = self.lock_heap();
            let Some(region) = heap.region.as_ref() else { return false };
            let (word, bit) = region.live_bit(address);
            word.fetch_and(!bit, Ordering::Relaxed) & bit != 0
        });
        if !cleared {
            self.report(Misuse::DoubleFree, address);
        }
        cleared
    }

    /// Checked builds: records a slab block handed out in compact mode as live.
    #[cfg(feature = "checked")]
    pub(crate) fn mark_compact_live(&self, address: usize) {
        if let Found::Slab(_) = self.found(address) {
            self.platform.with_slot(|_| {
                if let Some(region) = self.lock_heap().region.as_ref() {
                    let (word, bit) = region.live_bit(address);
                    word.fetch_or(bit, Ordering::Relaxed);
                }
            });
        }
    }

    /// The region's counters, refreshed (call under the lock with the heap's counters).
    pub(crate) fn refresh_region_counters(heap: &mut crate::heap::Heap) {
        if let Some(mut region) = heap.region.take() {
            heap.counters.region.fit = region.fit().counters();
            heap.counters.region.slab_pages = region.slab_pages;
            heap.region = Some(region);
        }
    }

    /// Compact mode's part of the invariant check.
    pub(crate) fn check_region(heap: &mut crate::heap::Heap) -> Result<(), &'static str> {
        match heap.region.as_mut() {
            Some(region) => region.fit().check_invariants(),
            None => Ok(()),
        }
    }

    /// The failure to report for a request of `size` bytes at `align` that found nothing:
    /// records it and calls the hook. Called inside a slot closure or outside one, so it takes
    /// no slot itself (a platform whose slots are locks would deadlock on a second one), only
    /// the central lock.
    #[cold]
    pub(crate) fn failed(&self, size: usize, align: usize) {
        let report = {
            let mut heap = self.lock_heap();
            let reason = match heap.region.as_mut() {
                Some(region) => {
                    let counters = region.fit().counters();
                    let need = crate::fit::block_size(size).and_then(|need| need.checked_add(align));
                    match need {
                        Some(need) if need <= counters.capacity => {
                            if counters.free_bytes >= need {
                                Failure::Fragmented
                            } else {
                                Failure::OutOfMemory
                            }
                        }
                        _ => Failure::TooBig,
                    }
                }
                None if self.mode.compact() => Failure::TooBig,
                None => Failure::OutOfMemory,
            };
            let counters = heap.region.as_mut().map(|region| region.fit().counters()).unwrap_or_default();
            let report = FailureReport {
                reason,
                size,
                align,
                free_bytes: counters.free_bytes,
                largest_free: counters.largest_free,
            };
            heap.counters.failures.count(reason);
            heap.counters.failures.last = Some(report);
            report
        };
        (self.failure_hook)(&report);
    }
}

fn refused(refused: Refused) -> Misuse {
    match refused {
        Refused::NotABlock => Misuse::ForeignPointer,
        Refused::AlreadyFree => Misuse::DoubleFree,
    }
}

/// Why an allocation returned null.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The memory is used up: the provider refused, or (compact mode) fewer bytes are free
    /// than the request needs.
    OutOfMemory,
    /// Compact mode: enough bytes are free in all, but no free piece is big enough.
    Fragmented,
    /// The request is bigger than the heap could ever serve (compact mode: bigger than the
    /// span, or the span too small to hold the allocator's own records).
    TooBig,
}

/// What the failure hook is told, and what the statistics keep of the last failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureReport {
    /// Why it failed.
    pub reason: Failure,
    /// The bytes asked for (for a small request: its size class's block size).
    pub size: usize,
    /// The alignment asked for.
    pub align: usize,
    /// Compact mode: bytes free in the span at the time, headers included (0 otherwise).
    pub free_bytes: usize,
    /// Compact mode: the largest free piece at the time, its header included (0 otherwise).
    pub largest_free: usize,
}

/// Called when an allocation is about to return null, with the reason. It runs inside the
/// allocator, possibly with interrupts masked: it must not allocate.
pub type FailureHook = fn(&FailureReport);

/// The default failure hook: nothing (the reason is in the statistics).
pub(crate) fn ignore_failure(_: &FailureReport) {}

/// Failures counted by reason, and the last one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FailureCounters {
    /// Requests that failed for lack of memory.
    pub out_of_memory: usize,
    /// Requests that failed although enough bytes were free (compact mode).
    pub fragmented: usize,
    /// Requests bigger than the heap could ever serve.
    pub too_big: usize,
    /// The last failure.
    pub last: Option<FailureReport>,
}

impl FailureCounters {
    fn count(&mut self, reason: Failure) {
        match reason {
            Failure::OutOfMemory => self.out_of_memory += 1,
            Failure::Fragmented => self.fragmented += 1,
            Failure::TooBig => self.too_big += 1,
        }
    }
}
