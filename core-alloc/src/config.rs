//! Every build-time knob of the allocator in one place.
#![forbid(unsafe_code)]

pub use page_provider::{CHUNK_SHIFT, CHUNK_SIZE};

/// log2 of [`PAGE`].
pub const PAGE_SHIFT: u32 = 12;
/// The allocator's page: 4 KiB, the granule of runs inside a chunk. Hardware pages may be
/// larger (16 or 64 KiB on some AArch64 hosts); that only changes how purges are rounded,
/// and the provider reports it at run time.
pub const PAGE: usize = 1 << PAGE_SHIFT;
/// Pages in a chunk.
pub const PAGES_PER_CHUNK: usize = CHUNK_SIZE / PAGE;
/// `ptr & CHUNK_MASK` is a pointer's offset inside its chunk.
pub const CHUNK_MASK: usize = CHUNK_SIZE - 1;

/// The smallest slab, in pages (64 KiB).
pub const MIN_SLAB_PAGES: usize = 16;
/// The largest slab, in pages (256 KiB).
pub const MAX_SLAB_PAGES: usize = 64;

/// Requests above this many bytes (or aligned beyond it) are huge: whole chunks of their
/// own rather than page runs inside shared chunks.
pub const MAX_LARGE: usize = 1 << 20;

/// A block that reallocation grows to at least this many bytes moves to a page run rather
/// than a size class (a size class serves up to 32 KiB), so that it can grow again in place
/// while the pages after it are free, or inside a bigger run from the arena's large cache
/// (`large_cache`): a `Vec` doubling past 4 KiB copies nothing more. Page runs round up to
/// 4 KiB: a grown block of 4-16 KiB may take up to a page more than its size class would.
pub const LARGE_GROWTH_MIN: usize = 4 * 1024;

/// Freed large runs each arena keeps for its next large allocations (see `large_cache`).
pub const LARGE_CACHE_RUNS: usize = 8;
/// Pages those runs may hold together (512 KiB).
pub const LARGE_CACHE_PAGES: usize = 128;
/// The largest run an arena caches, in pages (256 KiB); bigger ones go back to the central
/// heap at once.
pub const LARGE_CACHE_MAX_RUN: usize = 64;
/// A plain large allocation takes a run from its arena's large cache with at most half
/// this many times the pages it needs.
pub const LARGE_SLACK: usize = 4;
/// Reallocation growth that takes a run from the arena's large cache keeps up to this many
/// times the pages its block needs (the rest is cut off, under the lock, and follows the
/// run): a `Vec` grown from 4 KiB to 64 KiB, dropped and grown again finds the 64 KiB run it
/// left and grows inside it without the central lock (it cut the run to 16 KiB and grew
/// twice under the lock before). A large block's run has at most this many times the pages
/// its size needs.
pub const LARGE_GROWTH_SLACK: usize = 16;

/// A provider with a bounded supply of chunks (a fixed region, a kernel's RAM; see
/// `PageProvider::supply`) with more than `1 / TIGHT_SUPPLY_DIVISOR` of it in use puts the
/// large path in its tight mode: runs get exactly the pages their blocks need (no room to
/// grow into, a shrink gives its spare pages back, a cached run serves only a request of its
/// own size). Room for growth saves copies while memory is plentiful; kept until half the
/// supply was in use, it cost 1.4 points of talc's heap-efficiency score in a region that
/// fills up (`examples/efficiency.rs 5`: 90.1% then, 91.5% from a quarter; 92.2% always
/// tight).
/// Kernels, whose heaps use a small part of their RAM, keep the room.
pub const TIGHT_SUPPLY_DIVISOR: usize = 4;

/// Whether a bounded supply with `available` of its `total` chunks left puts the allocator
/// in its tight mode (see [`TIGHT_SUPPLY_DIVISOR`]).
pub const fn tight_supply(available: usize, total: usize) -> bool {
    total.saturating_sub(available).saturating_mul(TIGHT_SUPPLY_DIVISOR) > total
}

/// The most freed blocks of one size class an arena's front cache keeps (see `front_cache`);
/// a setting: `Allocator::with_front_cache`.
pub const FRONT_CACHE_BLOCKS: usize = 64;
/// And at most this many bytes of them per class; a class where that comes to fewer than
/// two blocks (above 4 KiB) is not cached.
pub const FRONT_CACHE_BYTES: usize = 8 * 1024;
/// In compact mode (small heaps) at most this many blocks per class ...
pub const COMPACT_FRONT_CACHE_BLOCKS: usize = 8;
/// ... and this many bytes (classes above 256 bytes are not cached).
pub const COMPACT_FRONT_CACHE_BYTES: usize = 512;

/// Run descriptors in a chunk header; one is reserved, so a chunk holds at most
/// `RUNS_PER_CHUNK - 1` slabs and large runs at once.
pub const RUNS_PER_CHUNK: usize = 64;

/// Empty chunks kept for reuse are at most `1 + chunks in use / RETAIN_DIVISOR` (at least
/// one, so that a heap going up and down by a chunk does not map and unmap every time); the
/// rest go back to the provider at once, and with a platform clock the kept ones too once
/// they have stayed unused for `DECAY_NS`.
pub const RETAIN_DIVISOR: usize = 8;
/// And never more than this many.
pub const RETAIN_MAX: usize = 64;

/// With a platform clock, an empty chunk the heap keeps for reuse goes back to the provider
/// once it has stayed unused this long (nanoseconds; one second). A setting:
/// `Allocator::with_decay`.
pub const DECAY_NS: u64 = 1_000_000_000;

/// A slab chunk with at least this many of its pages in runs is dense enough to be backed by
/// a huge page (`PageProvider::hugify`): until then it costs only the pages it touches,
/// so that a small heap is not 2 MiB per chunk, and from then on its TLB reach is a huge
/// page's (three quarters: the worst case keeps a quarter of a huge page more than in use).
pub const HUGIFY_PAGES: usize = PAGES_PER_CHUNK * 3 / 4;
/// A heap with at least this many slab chunks (16 MiB) backs its new chunks with huge pages
/// from the start: its chunks fill up, and collapsing each once dense would copy its pages.
pub const HUGE_HEAP_CHUNKS: usize = 8;

/// The purge pass (with a clock, on providers that purge) looks at most at this many of the
/// most-free slab chunks ...
pub const PURGE_SCAN_CHUNKS: usize = 64;
/// ... and makes at most this many provider calls.
pub const PURGE_CALLS: usize = 64;

/// The purge of mostly free chunks when an arena is well into a bulk free (once per bulk
/// free; see `Heap::purge_mostly_free`) looks at this many chunks and makes this many provider
/// calls at most: the program frees much and may then idle, so it goes further than the
/// idle pass, but the pass holds the central lock (a purge is a system call of a few
/// microseconds: 128 of them keep other CPUs' slow paths waiting a millisecond or so).
pub const BULK_PURGE_LIMITS: (usize, usize) = (256, 128);

/// A chunk left with at least this many free pages by a run an arena gives back while
/// freeing in bulk has them purged at once, without waiting for the decay period (half a
/// chunk, the decay pass's threshold; see `Heap::free_run_in_bulk`).
pub const BULK_PURGE_FREE: usize = PAGES_PER_CHUNK / 2;

/// Bytes reserved for each arena's block of metadata; arenas start on this boundary too,
/// which is at least a cache line on every machine we know (128 on some AArch64 servers).
pub const ARENA_ALIGN: usize = 256;
