//! The layout of a chunk that holds slabs and large runs: a header at offset 0 describing
//! its pages and the runs carved from them.
//!
//! ```text
//! chunk (2 MiB, 2 MiB-aligned)
//! +-----------------+----------------------------------------------------------+
//! | header (2 pages)| pages 2..512: free, or runs (slabs of blocks, large runs) |
//! +-----------------+----------------------------------------------------------+
//! ```
//!
//! The header holds one 64-byte [`Run`] descriptor per run (up to 63), a byte per page
//! naming the run that covers it (0: none), a byte per page naming the size class of the
//! slab on it (class + 1; 0: no slab), and the central heap's bitmaps of free pages and of
//! pages that may hold non-zero bytes. A block's run is found with two loads from the
//! block's address: `chunk = ptr & !CHUNK_MASK`, `run = runs[page_run[page of ptr]]`; a slab
//! block's class with one, `page_class[page of ptr]`.
//!
//! Huge allocations start at offset 0 of their first chunk and have no header; no block of
//! a slab or large run can start at offset 0, so `ptr & CHUNK_MASK == 0` tells them apart.
//!
//! Concurrency: the page map, the bitmaps and the run descriptors' `kind`, `first_page` and
//! `pages` are written under the central heap lock when a run is created or destroyed, and a
//! slab's class bytes by its owner before it hands out a block (cleared under the lock when
//! the run is destroyed); nobody else holds a block of a run at those times, so readers who
//! hold a block see stable values. A slab's free-list fields belong to the arena that owns
//! it (see `slab`); `remote` and `owner` are atomics shared with other CPUs.

use crate::sync::{AtomicU16, AtomicU64, Ordering};
use core::ptr;

use page_provider::bitmap::Bitmap;

use crate::config::{CHUNK_MASK, CHUNK_SIZE, PAGE, PAGE_SHIFT, PAGES_PER_CHUNK, RUNS_PER_CHUNK};

/// What a run descriptor describes. A byte, so that a descriptor read through a misused
/// pointer holds some kind (possibly none of these) rather than an invalid value.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(transparent)]
pub(crate) struct RunKind(u8);

/// A run descriptor that describes nothing.
pub(crate) const RUN_FREE: RunKind = RunKind(0);
/// A slab: `pages` pages carved into blocks of one size class.
pub(crate) const RUN_SLAB: RunKind = RunKind(1);
/// A large allocation: `pages` pages handed out whole.
pub(crate) const RUN_LARGE: RunKind = RunKind(2);
/// The heap's own metadata (arenas, chunk-map nodes; see `heap::meta`): never freed, so
/// its chunk stays a slab chunk for good.
pub(crate) const RUN_META: RunKind = RunKind(3);

/// Which list holds a slab (its owner's bin lists, or the central orphan lists).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(transparent)]
pub(crate) struct ListTag(u8);

/// A slab held by no arena list (being set up, or released).
pub(crate) const LIST_NONE: ListTag = ListTag(0);
/// The slab its bin allocates from.
pub(crate) const LIST_CURRENT: ListTag = ListTag(1);
/// A slab with free blocks, waiting in its bin's partial list.
pub(crate) const LIST_PARTIAL: ListTag = ListTag(2);
/// A slab with no free block the owner knows of, in its bin's full list.
pub(crate) const LIST_FULL: ListTag = ListTag(3);
/// An abandoned slab on the central heap's orphan list of its class, waiting for adoption
/// or for its last block to be freed; touched only under the central lock.
pub(crate) const LIST_ORPHAN: ListTag = ListTag(4);

impl ListTag {
    /// Whether a local free into a slab its owner holds on this list (current, partial or
    /// full) needs the list changed: the slab left the full list, or a partial slab
    /// `emptied`. The current slab stays put either way. One add and one compare on the free
    /// path, from the tag values (checked below).
    #[inline(always)]
    pub(crate) fn moves_after_local_free(self, emptied: bool) -> bool {
        debug_assert!(self == LIST_CURRENT || self == LIST_PARTIAL || self == LIST_FULL);
        self.0 + u8::from(emptied) >= LIST_FULL.0
    }
}

// `moves_after_local_free`: current + 1 stays below full, partial + 1 reaches it.
const _: () = assert!(LIST_CURRENT.0 + 1 < LIST_FULL.0 && LIST_PARTIAL.0 + 1 == LIST_FULL.0);

/// The owner value of a slab that no arena owns (abandoned by an exiting thread).
pub(crate) const NO_OWNER: u16 = u16::MAX;

/// A run descriptor: a slab or a large run. 64 bytes, one cache line.
#[repr(C, align(64))]
pub(crate) struct Run {
    /// Slab: chunk offset of the first block of the allocation free list (0: empty).
    pub free: u32,
    /// Slab: chunk offset of the first block the owner freed since `free` was filled.
    pub local_free: u32,
    /// Slab: blocks handed out and not on `free` or `local_free` (remote frees not yet
    /// collected still count).
    pub used: u32,
    /// Slab: chunk offset of the first block never handed out.
    pub bump: u32,
    /// Slab: chunk offset past the last block.
    pub end: u32,
    /// Slab: the block size. (A large run's usable size is its pages.)
    pub block_size: u32,
    /// Slab: the size class.
    pub class: u8,
    /// `RUN_FREE`, `RUN_SLAB`, `RUN_LARGE` or `RUN_META`.
    pub kind: RunKind,
    /// Slab: which list of its owner holds it (`LIST_*`); owner-only.
    pub list: ListTag,
    _padding: u8,
    /// Slab: the slot of the arena that owns it, or `NO_OWNER`. Large: `NO_OWNER` while its
    /// block is live, `LARGE_FREED` once freed (see `large_cache`).
    pub owner: AtomicU16,
    /// The first page of the run.
    pub first_page: u16,
    /// The run's length in pages.
    pub pages: u16,
    /// Slab: bytes at the start of the first page that hold no block (compact mode's
    /// slabs keep their descriptor there; 0 for slabs in chunks).
    pub head: u16,
    /// Slab: blocks freed by other CPUs; see `slab` for the encoding.
    pub remote: AtomicU64,
    /// Owner list links (the arena's bins).
    pub next: *mut Run,
    /// Owner list links (the arena's bins).
    pub prev: *mut Run,
}

static_assertions::const_assert_eq!(core::mem::size_of::<Run>(), 64);

impl Run {
    /// A descriptor describing nothing, as in a freshly formatted header.
    pub(crate) const fn unused() -> Self {
        Self {
            free: 0,
            local_free: 0,
            used: 0,
            bump: 0,
            end: 0,
            block_size: 0,
            class: 0,
            kind: RUN_FREE,
            list: LIST_NONE,
            _padding: 0,
            owner: AtomicU16::new(NO_OWNER),
            first_page: 0,
            pages: 0,
            head: 0,
            remote: AtomicU64::new(0),
            next: ptr::null_mut(),
            prev: ptr::null_mut(),
        }
    }
}

/// The header at the start of every slab chunk.
#[repr(C)]
pub(crate) struct ChunkHeader {
    /// Run descriptors; index 0 is never used, so a page-map byte of 0 means "no run".
    pub runs: [Run; RUNS_PER_CHUNK],
    /// For each page, the index of the run covering it, or 0.
    pub page_run: [u8; PAGES_PER_CHUNK],
    /// For each page of a slab, its size class plus one; 0 for every other page (free, in a
    /// large or metadata run, or the header's). An unsized free takes the class from here in
    /// one load, where the page map and then the run descriptor took two dependent ones.
    /// Written by the slab's owner before it hands out a block (see [`set_page_class`]) and
    /// cleared with the page map when the run goes back (under the heap lock). Atomics
    /// (relaxed loads and stores, plain moves) only because the owner writes outside the
    /// lock while `check_invariants` may read the whole map under it; a free reads its page's
    /// byte after the block's allocation, which the program ordered after the write. Core's
    /// atomics, not the model checker's: no protocol of threads runs through these bytes.
    pub page_class: [core::sync::atomic::AtomicU8; PAGES_PER_CHUNK],
    /// Pages not in any run (the header's pages are never free).
    pub free_pages: Bitmap<{ PAGES_PER_CHUNK / 64 }>,
    /// Pages that may hold non-zero bytes.
    pub dirty_pages: Bitmap<{ PAGES_PER_CHUNK / 64 }>,
    /// Bit `i` set: `runs[i]` is unused.
    pub free_runs: u64,
    /// The number of free pages.
    pub free_count: u16,
    /// The longest run of free pages.
    pub longest_free: u16,
    /// The central heap's list this chunk is in (see `heap`).
    pub bucket: u16,
    /// Central heap list links.
    pub next: *mut ChunkHeader,
    /// Central heap list links.
    pub prev: *mut ChunkHeader,
    /// In the empty cache: the platform clock's time when the chunk went there (0 without a
    /// clock); the cache gives it back once it has stayed there for the decay period.
    pub empty_since: u64,
    /// Purging on the clock (see `heap::retention`): the pages that were free when the purge
    /// pass marked the chunk at `aged_at` and have stayed free since (a carve or a run's
    /// growth clears the bits of the pages it takes, so this is always a subset of
    /// `free_pages`). Once `aged_at` is a decay period old, the pass purges these pages
    /// (they have been unused that long) and marks the chunk again.
    pub aged: Bitmap<{ PAGES_PER_CHUNK / 64 }>,
    /// When the pass last marked `aged`; [`NOT_MARKED`] for a chunk it has not seen yet.
    pub aged_at: u64,
    /// Purged since the last change of its runs.
    pub purged: bool,
    /// Asked to be backed by a huge page (see `heap::placement`), and not split by a purge
    /// since.
    pub hugified: bool,
    /// Holds a metadata run (`RUN_META`): never empties.
    pub holds_meta: bool,
    /// Checked builds: one bit per 8-byte granule, set where a live block starts.
    #[cfg(feature = "checked")]
    pub live_bits: *mut AtomicU64,
}

/// `ChunkHeader::aged_at` of a chunk the purge pass has not marked yet.
pub(crate) const NOT_MARKED: u64 = u64::MAX;

/// Checked builds: bytes of a chunk's side table of live-block bits.
#[cfg(feature = "checked")]
pub(crate) const LIVE_BITS_BYTES: usize = CHUNK_SIZE / 8 / 8;

/// Pages taken by the header at the start of a slab chunk.
pub(crate) const HEADER_PAGES: usize = core::mem::size_of::<ChunkHeader>().div_ceil(PAGE);
/// Pages of a slab chunk that runs can use.
pub(crate) const USABLE_PAGES: usize = PAGES_PER_CHUNK - HEADER_PAGES;

static_assertions::const_assert!(HEADER_PAGES <= 2);
static_assertions::const_assert!(RUNS_PER_CHUNK <= 64 && RUNS_PER_CHUNK <= u8::MAX as usize + 1);
static_assertions::const_assert!(CHUNK_SIZE <= u32::MAX as usize);

/// The size class plus one of the slab holding `block`, or 0 if no slab holds its page.
///
/// # Safety
///
/// `block` is in a formatted slab chunk, and a live block (or one freshly carved run) of that
/// chunk covers its page, so that the byte is stable (see `ChunkHeader::page_class`).
#[inline(always)]
pub(crate) unsafe fn page_class_of(block: usize) -> usize {
    let chunk = chunk_of(block);
    let page = (block & CHUNK_MASK) >> PAGE_SHIFT;
    // SAFETY: the header is initialised and the byte stable (caller); a reference to that
    // byte alone, other CPUs reading or writing other bytes of the map meanwhile.
    unsafe { (*ptr::addr_of!((*chunk).page_class[page])).load(Ordering::Relaxed) as usize }
}

/// Records the pages of `run`, a slab of `class` just set up, as that class's
/// (`ChunkHeader::page_class`).
///
/// # Safety
///
/// `run` is a freshly carved slab run of a chunk (not a compact-mode slab page) whose blocks
/// nobody has been handed yet; the caller owns it.
pub(crate) unsafe fn set_page_class(run: *const Run, class: usize) {
    let chunk = chunk_of(run as usize);
    // SAFETY: the run's pages are inside the chunk; only the run's owner writes their bytes
    // while it is live (carving and uncarving, under the lock, happen before and after).
    unsafe {
        let (first, pages) = ((*run).first_page as usize, (*run).pages as usize);
        debug_assert!(first + pages <= PAGES_PER_CHUNK && class < u8::MAX as usize);
        for page in first..first + pages {
            (*ptr::addr_of!((*chunk).page_class[page])).store(class as u8 + 1, Ordering::Relaxed);
        }
    }
}

/// The chunk containing `address` (for addresses inside slab chunks).
#[inline(always)]
pub(crate) fn chunk_of(address: usize) -> *mut ChunkHeader {
    (address & !CHUNK_MASK) as *mut ChunkHeader
}

/// The run covering the block at `block` in a slab chunk.
///
/// # Safety
///
/// `block` points into a page of a live run of a slab chunk.
#[inline(always)]
pub(crate) unsafe fn run_of(block: usize) -> *mut Run {
    let chunk = chunk_of(block);
    let page = (block & CHUNK_MASK) >> PAGE_SHIFT;
    // SAFETY: the caller promises a live run covers the page, so the header is initialised
    // and the page-map byte is stable while the block is held; it names one of the
    // descriptors, which start at offset 0 of the header (checked below).
    unsafe {
        let index = (*chunk).page_run[page] as usize;
        debug_assert!(index < RUNS_PER_CHUNK);
        (chunk as usize + index * core::mem::size_of::<Run>()) as *mut Run
    }
}

static_assertions::const_assert_eq!(core::mem::offset_of!(ChunkHeader, runs), 0);

/// The address of page `page` of the chunk holding `run`.
#[inline(always)]
pub(crate) fn page_address(run: *const Run, page: usize) -> usize {
    (run as usize & !CHUNK_MASK) + (page << PAGE_SHIFT)
}

/// The index of `run` in its chunk's descriptor table.
pub(crate) fn run_index(run: *const Run) -> usize {
    ((run as usize) & CHUNK_MASK) / core::mem::size_of::<Run>()
}

/// Sets the page-map bytes of `pages` pages from `first` to `index`, without forming a
/// reference to the whole map (other CPUs read other bytes of it at the same time).
///
/// # Safety
///
/// The caller holds the central heap lock and the pages are inside `chunk`.
unsafe fn set_page_run(chunk: *mut ChunkHeader, first: usize, pages: usize, index: u8) {
    debug_assert!(first + pages <= PAGES_PER_CHUNK);
    // SAFETY: the bytes are inside the map (caller), and only the lock holder writes them.
    unsafe { ptr::addr_of_mut!((*chunk).page_run).cast::<u8>().add(first).write_bytes(index, pages) }
}

impl ChunkHeader {
    /// Formats a header at the start of a chunk: all usable pages free, all descriptors
    /// unused; pages dirty unless `zeroed`.
    ///
    /// # Safety
    ///
    /// `chunk` is the start of a chunk the caller owns, with nothing live in it.
    pub(crate) unsafe fn init(chunk: *mut ChunkHeader, zeroed: bool) {
        // SAFETY: the caller owns the chunk; the header fits in its first pages, and all
        // fields are plain data or atomics for which zero bytes are valid values.
        unsafe {
            if !zeroed {
                // The header only: the rest of its pages holds nothing.
                ptr::write_bytes(chunk.cast::<u8>(), 0, core::mem::size_of::<ChunkHeader>());
            }
            (*chunk).free_pages.set_range(HEADER_PAGES, USABLE_PAGES, true);
            (*chunk).dirty_pages.set_range(0, if zeroed { HEADER_PAGES } else { PAGES_PER_CHUNK }, true);
            (*chunk).free_runs = if RUNS_PER_CHUNK == 64 { !1 } else { ((1u64 << RUNS_PER_CHUNK) - 1) & !1 };
            (*chunk).free_count = USABLE_PAGES as u16;
            (*chunk).longest_free = USABLE_PAGES as u16;
            (*chunk).bucket = u16::MAX;
            (*chunk).next = ptr::null_mut();
            (*chunk).prev = ptr::null_mut();
            (*chunk).aged = Bitmap::new();
            (*chunk).aged_at = NOT_MARKED;
            (*chunk).purged = false;
            (*chunk).holds_meta = false;
        }
    }

    /// Carves a run of `pages` pages starting at a multiple of `align_pages`; returns the
    /// descriptor and whether all its pages were clean. The descriptor has its kind, pages
    /// and first page set; the caller fills in the rest. Pages become dirty.
    ///
    /// # Safety
    ///
    /// The caller holds the central heap lock and `chunk` is a formatted slab chunk.
    pub(crate) unsafe fn carve(
        chunk: *mut ChunkHeader,
        pages: usize,
        align_pages: usize,
        kind: RunKind,
    ) -> Option<(*mut Run, bool)> {
        // SAFETY: the caller holds the heap lock, which guards every field used here except
        // the chosen descriptor, which is unused and so touched by nobody else.
        unsafe {
            if (*chunk).free_runs == 0 || ((*chunk).longest_free as usize) < pages {
                return None;
            }
            // Best fit inside the chunk too: the shortest free range that holds the run.
            let first = (*chunk).free_pages.find_best_set_run(pages, align_pages, PAGES_PER_CHUNK)?;
            let index = (*chunk).free_runs.trailing_zeros() as usize;
            (*chunk).free_runs &= !(1u64 << index);
            (*chunk).free_pages.set_range(first, pages, false);
            let zeroed = (*chunk).dirty_pages.all_in_range(first, pages, false);
            (*chunk).dirty_pages.set_range(first, pages, true);
            set_page_run(chunk, first, pages, index as u8);
            (*chunk).free_count -= pages as u16;
            (*chunk).longest_free = (*chunk).free_pages.longest_set_run() as u16;
            (*chunk).aged.set_range(first, pages, false);
            (*chunk).purged = false;
            let run = ptr::addr_of_mut!((*chunk).runs[index]);
            (*run).kind = kind;
            // A large run is live (see `large_cache`); a slab's owner is set by `slab::init`.
            (*run).owner.store(NO_OWNER, Ordering::Relaxed);
            (*run).first_page = first as u16;
            (*run).pages = pages as u16;
            Some((run, zeroed))
        }
    }

    /// Returns a run's pages to the chunk's free pages and its descriptor to the unused ones.
    ///
    /// # Safety
    ///
    /// The caller holds the central heap lock, and nothing in the run is live or referenced.
    pub(crate) unsafe fn uncarve(run: *mut Run) {
        let chunk = chunk_of(run as usize);
        // SAFETY: as for `carve`; the run belongs to this chunk's descriptor table.
        unsafe {
            let (first, pages) = ((*run).first_page as usize, (*run).pages as usize);
            if (*run).kind == RUN_SLAB {
                // Only a slab's pages have class bytes (`set_page_class`).
                for page in first..first + pages {
                    (*chunk).page_class[page].store(0, Ordering::Relaxed);
                }
            }
            (*run).kind = RUN_FREE;
            set_page_run(chunk, first, pages, 0);
            (*chunk).free_pages.set_range(first, pages, true);
            (*chunk).free_count += pages as u16;
            (*chunk).longest_free = (*chunk).free_pages.longest_set_run() as u16;
            (*chunk).free_runs |= 1u64 << run_index(run);
            (*chunk).purged = false;
        }
    }

    /// Grows or shrinks a large run in place to `pages` pages; returns false (changing
    /// nothing) when the pages after it are not free.
    ///
    /// # Safety
    ///
    /// The caller holds the central heap lock, and `run` is a live large run.
    pub(crate) unsafe fn resize_in_place(run: *mut Run, pages: usize) -> bool {
        let chunk = chunk_of(run as usize);
        // SAFETY: as for `carve`; the run's owner is the caller.
        unsafe {
            let (first, current) = ((*run).first_page as usize, (*run).pages as usize);
            let index = run_index(run) as u8;
            if pages > current {
                let extra = pages - current;
                if first + pages > PAGES_PER_CHUNK
                    || !(*chunk).free_pages.all_in_range(first + current, extra, true)
                {
                    return false;
                }
                (*chunk).free_pages.set_range(first + current, extra, false);
                (*chunk).aged.set_range(first + current, extra, false);
                (*chunk).dirty_pages.set_range(first + current, extra, true);
                set_page_run(chunk, first + current, extra, index);
                (*chunk).free_count -= extra as u16;
            } else {
                let spare = current - pages;
                (*chunk).free_pages.set_range(first + pages, spare, true);
                set_page_run(chunk, first + pages, spare, 0);
                (*chunk).free_count += spare as u16;
            }
            (*chunk).longest_free = (*chunk).free_pages.longest_set_run() as u16;
            (*chunk).purged = false;
            (*run).pages = pages as u16;
            true
        }
    }

    /// Checks the header's bookkeeping against itself; returns a description of the first
    /// inconsistency.
    ///
    /// # Safety
    ///
    /// The caller holds the central heap lock and `chunk` is a formatted slab chunk.
    pub(crate) unsafe fn check_invariants(chunk: *const ChunkHeader) -> Result<(), &'static str> {
        // SAFETY: the heap lock keeps the fields read here still; run descriptors are read
        // field by field through raw pointers, as their owners may be using other fields.
        unsafe {
            let free_pages = &(*chunk).free_pages;
            if free_pages.count_ones() != (*chunk).free_count as usize {
                return Err("free page count disagrees with the free page bitmap");
            }
            if free_pages.longest_set_run() != (*chunk).longest_free as usize {
                return Err("cached longest free run is stale");
            }
            if free_pages.next_set(0).is_some_and(|page| page < HEADER_PAGES) {
                return Err("a header page is marked free");
            }
            for page in 0..PAGES_PER_CHUNK {
                let index = (*chunk).page_run[page] as usize;
                let class = (*chunk).page_class[page].load(Ordering::Relaxed);
                // A slab's class is set by its owner once it is set up (`set_page_class`),
                // which may not have happened yet (nor is its descriptor's class ours to read
                // here); every other page's byte is 0.
                if class != 0 && (index == 0 || (*chunk).runs[index].kind != RUN_SLAB) {
                    return Err("a page outside every slab has a class byte");
                }
                let free = free_pages.get(page);
                if free && index != 0 {
                    return Err("a free page is mapped to a run");
                }
                if !free && page >= HEADER_PAGES && index == 0 {
                    return Err("a used page is mapped to no run");
                }
                if !free && (*chunk).aged.get(page) {
                    return Err("a page in a run is marked as aged free");
                }
                if index != 0 {
                    let run = ptr::addr_of!((*chunk).runs[index]);
                    if (*chunk).free_runs & (1 << index) != 0 || (*run).kind == RUN_FREE {
                        return Err("a page is mapped to an unused descriptor");
                    }
                    if (*run).kind == RUN_META && !(*chunk).holds_meta {
                        return Err("a metadata run in a chunk not marked as holding metadata");
                    }
                    let first = (*run).first_page as usize;
                    if page < first || page >= first + (*run).pages as usize {
                        return Err("a page is mapped to a run that does not cover it");
                    }
                    // A large run is live or freed (see `large_cache`), never a slot number.
                    let owner = (*run).owner.load(Ordering::Relaxed);
                    if (*run).kind == RUN_LARGE
                        && owner != NO_OWNER
                        && owner != crate::large_cache::LARGE_FREED
                    {
                        return Err("a large run's owner word is neither live nor freed");
                    }
                }
            }
        }
        Ok(())
    }
}
