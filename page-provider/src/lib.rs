//! Where the allocator gets its memory: the [`PageProvider`] trait and its providers.
//!
//! The unit is the **chunk**: [`CHUNK_SIZE`] (2 MiB) bytes aligned to 2 MiB, the size of a
//! huge page on x86-64 and on AArch64 with a 4 KiB granule. A provider hands out runs of
//! contiguous chunks, takes back any chunk-aligned part of what it handed out, and may drop
//! the backing of a range while keeping it reserved (purging). It reports its page sizes at
//! run time: AArch64 Linux hosts with 16 KiB and 64 KiB pages exist, and allocators that
//! assumed 4 KiB at compile time crashed on them.
//!
//! Providers here:
//! - [`linux::MmapProvider`] (feature `linux`): anonymous mmap, transparent huge pages asked
//!   for with `MADV_HUGEPAGE`, purging with `MADV_DONTNEED` or `MADV_FREE`;
//! - [`fixed::FixedRegion`]: chunks of a caller-given span (a static array in firmware
//!   without an MMU, a region in tests);
//! - [`bare_metal::FrameProvider`]: 2 MiB RAM frames of a kernel, mapped with 2 MiB
//!   page-table entries through the architecture's [`platform::HugeMapper`].
#![no_std]

#[cfg(any(test, feature = "aarch64-paging"))]
pub mod aarch64_paging;
pub mod bare_metal;
pub mod bitmap;
pub mod fixed;
#[cfg(feature = "linux")]
pub mod linux;
#[cfg(any(test, feature = "x86_64"))]
pub mod x86_paging;

use core::ptr::NonNull;

/// log2 of [`CHUNK_SIZE`].
pub const CHUNK_SHIFT: u32 = 21;
/// Bytes in a chunk: 2 MiB, the unit of provisioning and of huge-page backing.
pub const CHUNK_SIZE: usize = 1 << CHUNK_SHIFT;

bitflags::bitflags! {
    /// What a provider can do beyond handing out and taking back chunks.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct Capabilities: u32 {
        /// [`PageProvider::purge`] drops the backing of a range, giving it back to the
        /// system, while the range stays reserved and usable.
        const PURGE = 1 << 0;
        /// A purged range reads as zero afterwards (`MADV_DONTNEED` on private anonymous
        /// memory; not `MADV_FREE`).
        const PURGE_ZEROES = 1 << 1;
        /// Chunks can be backed by huge pages (where the system allows it): always, or from
        /// the [`hugify`](PageProvider::hugify) call on.
        const HUGE_PAGES = 1 << 2;
        /// [`PageProvider::free_chunks`] gives memory back to the system rather than to a
        /// pool of the provider's own.
        const RELEASE = 1 << 3;
        /// [`PageProvider::remap`] grows a run without copying its bytes.
        const REMAP = 1 << 4;
    }
}

/// A run of chunks handed out by [`PageProvider::alloc_chunks`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunks {
    /// The first byte; aligned to [`CHUNK_SIZE`].
    pub base: NonNull<u8>,
    /// Whether every byte of the run reads as zero.
    pub zeroed: bool,
}

/// How much a provider with a bounded supply of chunks (a fixed region, a kernel's RAM) has
/// left: [`PageProvider::supply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Supply {
    /// Chunks the provider can still hand out (not necessarily contiguous).
    pub available: usize,
    /// Chunks it manages in all, handed out or not.
    pub total: usize,
}

/// One span of memory handed over whole by [`PageProvider::claim_span`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// The first byte (any alignment).
    pub base: NonNull<u8>,
    /// Its length in bytes.
    pub len: usize,
    /// Whether every byte of the span reads as zero.
    pub zeroed: bool,
}

/// A source of 2 MiB-aligned chunks of memory.
///
/// Implementations must not allocate through the allocator they serve: the core calls them
/// with its locks held.
///
/// # Safety
///
/// The allocator builds its heap on these promises:
///
/// - a run returned by `alloc_chunks(count)` starts at a multiple of [`CHUNK_SIZE`], is
///   `count * CHUNK_SIZE` bytes long, is readable and writable, and overlaps no other run
///   that is handed out and not yet given back;
/// - if [`Chunks::zeroed`] is true, every byte of the run reads as zero;
/// - memory stays valid until given back with `free_chunks`, whatever `purge` did to it;
/// - `page_size` and `huge_page_size` return the same values for the provider's lifetime;
/// - a span returned by `claim_span` is readable and writable, overlaps nothing handed out
///   before or after, and stays valid for the provider's lifetime; after a successful
///   claim, `alloc_chunks` returns `None`.
pub unsafe trait PageProvider: Sync {
    /// Whether [`claim_span`](PageProvider::claim_span) can ever return a span. The
    /// allocator reads it at compile time: with `false` (the default) its paths carry no
    /// check for a claimed span at all.
    const MAY_CLAIM_SPAN: bool = false;

    /// Hands over all of the provider's memory as one span, if it is one span holding fewer
    /// than `max_chunks` whole chunks (too little for chunks to pay: a header and a metadata
    /// chunk would take most of it). The allocator then manages the span itself, with no
    /// 2 MiB geometry (its compact mode), and asks for no chunks. Called at most once,
    /// before any other request; providers whose memory is not one fixed span return `None`.
    fn claim_span(&self, max_chunks: usize) -> Option<Span> {
        let _ = max_chunks;
        None
    }

    /// What the provider can do; see [`Capabilities`].
    fn capabilities(&self) -> Capabilities;

    /// The base page size of the memory handed out: the granule of `purge`. A power of two
    /// no larger than [`CHUNK_SIZE`]; read at run time.
    fn page_size(&self) -> usize;

    /// The huge page size backing chunks, when there is one.
    fn huge_page_size(&self) -> Option<usize> {
        None
    }

    /// Hands out `count` (at least 1) contiguous chunks, or `None` when out of memory.
    fn alloc_chunks(&self, count: usize) -> Option<Chunks>;

    /// Asks for the `len` bytes at `base` to be backed by huge pages from now on, and with
    /// `populated` (pages of the range are in use already) to collapse what is there into
    /// huge pages now. Chunks come without that request from [`alloc_chunks`](Self::alloc_chunks)
    /// where the provider can choose (so that sparsely used chunks cost only the pages they
    /// touch); the allocator asks for it when a chunk is dense enough to pay for a whole huge
    /// page. A collapse copies the pages in use (a system call of a few hundred
    /// microseconds per chunk): call it outside locks, once per chunk. Returns whether the
    /// provider did anything; the default does nothing (providers whose chunks are always
    /// huge pages, or never).
    ///
    /// # Safety
    ///
    /// The range is whole chunks this provider handed out and has not taken back.
    unsafe fn hugify(&self, base: NonNull<u8>, len: usize, populated: bool) -> bool {
        let _ = (base, len, populated);
        false
    }

    /// Withdraws a [`hugify`](Self::hugify) request: the range is backed by small pages as
    /// it is used from now on, and nothing (such as Linux's khugepaged, which collapses
    /// advised ranges in the background, filling their holes) makes huge pages of it again,
    /// so that pages purged inside it stay purged. The allocator calls it when it purges a
    /// chunk it had asked huge pages for. The default does nothing.
    ///
    /// # Safety
    ///
    /// The range is whole chunks this provider handed out and has not taken back.
    unsafe fn unhugify(&self, base: NonNull<u8>, len: usize) {
        let _ = (base, len);
    }

    /// What is left of a bounded supply of chunks, or `None` (the default) when the supply
    /// is unbounded or unknown (the host's `mmap`, chunks backed from a kernel's own frame
    /// allocator). The allocator spends memory more tightly once little is left (no room for
    /// large blocks to grow into); it asks rarely (when it obtains or gives back chunks).
    fn supply(&self) -> Option<Supply> {
        None
    }

    /// Takes back `count` chunks starting at `base`.
    ///
    /// # Safety
    ///
    /// The chunks are all part of runs this provider handed out (any chunk-aligned part of
    /// a run may be given back on its own), none was given back before, and nothing uses
    /// them any more.
    unsafe fn free_chunks(&self, base: NonNull<u8>, count: usize);

    /// Drops the backing of `len` bytes at `base`, keeping them usable; returns whether it
    /// did. With [`Capabilities::PURGE_ZEROES`], a range purged with `true` reads as zero.
    ///
    /// # Safety
    ///
    /// `base` and `len` are multiples of [`page_size`](PageProvider::page_size), the range
    /// lies inside chunks handed out and not given back, and the caller does not need its
    /// contents.
    unsafe fn purge(&self, base: NonNull<u8>, len: usize) -> bool {
        let _ = (base, len);
        false
    }

    /// Grows the run of `old_count` chunks at `base` to `new_count` chunks without copying
    /// its bytes (moving page-table entries, where it has to move). On success the old run
    /// is gone and the returned run's first `old_count` chunks hold its contents; the rest
    /// reads as zero. `None` leaves the old run untouched. Providers without
    /// [`Capabilities::REMAP`] return `None`.
    ///
    /// # Safety
    ///
    /// The `old_count` chunks at `base` are one run handed out by this provider (or a part
    /// of one starting at its first chunk), and `new_count > old_count`.
    unsafe fn remap(&self, base: NonNull<u8>, old_count: usize, new_count: usize) -> Option<NonNull<u8>> {
        let _ = (base, old_count, new_count);
        None
    }
}

// SAFETY: forwards every call to the referenced provider, which keeps the promises.
unsafe impl<P: PageProvider> PageProvider for &P {
    const MAY_CLAIM_SPAN: bool = P::MAY_CLAIM_SPAN;
    fn claim_span(&self, max_chunks: usize) -> Option<Span> {
        (**self).claim_span(max_chunks)
    }
    fn capabilities(&self) -> Capabilities {
        (**self).capabilities()
    }
    fn page_size(&self) -> usize {
        (**self).page_size()
    }
    fn huge_page_size(&self) -> Option<usize> {
        (**self).huge_page_size()
    }
    fn alloc_chunks(&self, count: usize) -> Option<Chunks> {
        (**self).alloc_chunks(count)
    }
    fn supply(&self) -> Option<Supply> {
        (**self).supply()
    }
    unsafe fn hugify(&self, base: NonNull<u8>, len: usize, populated: bool) -> bool {
        // SAFETY: the caller's promises are the referenced provider's preconditions.
        unsafe { (**self).hugify(base, len, populated) }
    }
    unsafe fn unhugify(&self, base: NonNull<u8>, len: usize) {
        // SAFETY: the caller's promises are the referenced provider's preconditions.
        unsafe { (**self).unhugify(base, len) }
    }
    unsafe fn free_chunks(&self, base: NonNull<u8>, count: usize) {
        // SAFETY: the caller's promises are the referenced provider's preconditions.
        unsafe { (**self).free_chunks(base, count) }
    }
    unsafe fn purge(&self, base: NonNull<u8>, len: usize) -> bool {
        // SAFETY: the caller's promises are the referenced provider's preconditions.
        unsafe { (**self).purge(base, len) }
    }
    unsafe fn remap(&self, base: NonNull<u8>, old_count: usize, new_count: usize) -> Option<NonNull<u8>> {
        // SAFETY: the caller's promises are the referenced provider's preconditions.
        unsafe { (**self).remap(base, old_count, new_count) }
    }
}
