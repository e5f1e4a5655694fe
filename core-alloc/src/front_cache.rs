//! The front cache: in each arena, a stack of freed blocks per size class, in front of the
//! slabs.
//!
//! A small free pushes the block on its class's stack in the freeing slot's arena, and a
//! small allocation pops from it: neither reads the slab. A free given the block's size
//! (`GlobalAlloc::dealloc`, [`Allocator::deallocate`]) finds the class from the size alone
//! and reads no chunk or run header at all; an unsized free (`free`, the C library's) reads
//! the class from the chunk header's byte for the block's page. The stack holds blocks of
//! any slab: its own slot's, another slot's (the free of a block allocated elsewhere), an
//! abandoned one's. For its slab a
//! cached block is still handed out, so the slab's bookkeeping and the remote-free protocol
//! (`slab`, `arena`) see a cached block exactly as a live one; it is freed into its slab
//! only when it leaves the cache:
//!
//! - a push that finds the stack full first frees the older half of it into the slabs; if
//!   that emptied a slab, the program is freeing in bulk: the whole cache goes, and no class
//!   is cached (frees go straight to the slabs, which can then empty and go back) until the
//!   arena next refills it for an allocation;
//! - `collect()`, an idle arena's `decay()`, and the release of the slot (a thread's exit)
//!   free the whole cache;
//! - an allocation about to fail for want of memory frees the whole cache and tries again.
//!
//! How many blocks a class keeps: at most [`FRONT_CACHE_BLOCKS`] (a setting,
//! `Allocator::with_front_cache`), and at most [`FRONT_CACHE_BYTES`] of blocks; in compact
//! mode, whose heaps are small, at most 8 blocks and 512 bytes; a class where that comes to
//! fewer than two blocks is not cached. The stacks' storage follows the arena in its
//! metadata block (about 10 KiB on a heap of chunks, 800 bytes in compact mode).
//!
//! The statistics count a cached block as freed (it was, by the program), and report the
//! cached blocks per class (`ClassStats::cached`).
//!
//! Concurrency: a stack is used only by the holder of its arena's slot. Its count and
//! capacity are atomics written with relaxed loads and stores (no read-modify-write) only so
//! that a statistics snapshot on another CPU may read the count meanwhile (tested under
//! ThreadSanitizer and Miri: `tests/miri_threads.rs`, `statistics_read_while_caches_change`).
//!
//! [`Allocator::deallocate`]: crate::Allocator::deallocate
//! [`FRONT_CACHE_BLOCKS`]: crate::config::FRONT_CACHE_BLOCKS
//! [`FRONT_CACHE_BYTES`]: crate::config::FRONT_CACHE_BYTES

use core::ptr;
use core::sync::atomic::{AtomicU32, Ordering};

use page_provider::PageProvider;
use platform::Platform;

use crate::allocator::Allocator;
use crate::arena::Arena;
use crate::config::{
    COMPACT_FRONT_CACHE_BLOCKS, COMPACT_FRONT_CACHE_BYTES, FRONT_CACHE_BYTES, LARGE_GROWTH_MIN,
};
use crate::size_class::{CLASS_COUNT, MAX_SMALL, class_for, class_size};

/// One class's cached blocks: a stack of block addresses.
#[repr(C)]
pub(crate) struct CacheBin {
    /// Blocks on the stack (see the module documentation for why it is atomic).
    count: AtomicU32,
    /// The most the stack holds now: the arena's `cache_nominal` for the class, or 0 when the
    /// class is not cached or while it drains (see [`drain`](Self::drain)). Atomic (relaxed
    /// loads and stores, the slot holder's only) so that the bins are only ever used through shared references, which
    /// a statistics snapshot on another CPU may hold at the same time.
    capacity: AtomicU32,
    /// The stack's entries in the storage after the arena (`Arena::cache_nominal` of them).
    blocks: *mut *mut u8,
    /// x86-64 finds a bin of 24 bytes with one `lea` (an index times 3, then times 8 in
    /// the address); 16 takes a copy and a shift there.
    #[cfg(target_arch = "x86_64")]
    _pad: u64,
}

// The size the fast paths find a class's bin with in one instruction: 16 bytes on AArch64
// (an add with a shift; 24 took a move and a multiply-add), 24 on x86-64. The stack's size,
// read on slow paths only, lives in the arena.
static_assertions::const_assert_eq!(
    core::mem::size_of::<CacheBin>(),
    if cfg!(target_arch = "x86_64") { 24 } else { 16 }
);

impl CacheBin {
    /// Pops the most recently cached block, `len` being what [`len`](Self::len) just said
    /// (one atomic load for the check and the pop).
    ///
    /// # Safety
    ///
    /// The caller holds the slot of the bin's arena, and `len` is the bin's length, not 0.
    #[inline(always)]
    pub(crate) unsafe fn take(&self, len: usize) -> *mut u8 {
        debug_assert!(len > 0 && len == self.len());
        self.count.store(len as u32 - 1, Ordering::Relaxed);
        // SAFETY: entries below the length hold cached blocks; `len - 1 < capacity`.
        unsafe { *self.blocks.add(len - 1) }
    }

    /// Pushes `block`; false, pushing nothing, when the stack is full.
    ///
    /// # Safety
    ///
    /// The caller holds the slot of the bin's arena; `block` is a block of this bin's class
    /// that nobody uses any more.
    #[inline(always)]
    pub(crate) unsafe fn push(&self, block: *mut u8) -> bool {
        let count = self.count.load(Ordering::Relaxed);
        if count == self.capacity.load(Ordering::Relaxed) {
            return false;
        }
        // SAFETY: `count < capacity`: an entry of the bin's storage.
        unsafe { *self.blocks.add(count as usize) = block };
        self.count.store(count + 1, Ordering::Relaxed);
        true
    }

    /// Blocks cached now (any CPU may ask; exact for the slot holder).
    #[inline(always)]
    pub(crate) fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed) as usize
    }

    /// The cached block at `index` (0 is the oldest).
    ///
    /// # Safety
    ///
    /// The caller holds the slot of the bin's arena; `index < len()`.
    pub(crate) unsafe fn get(&self, index: usize) -> *mut u8 {
        debug_assert!(index < self.len());
        // SAFETY: entries below the count hold cached blocks (caller).
        unsafe { *self.blocks.add(index) }
    }

    /// The most the stack holds now (0 while the arena frees in bulk).
    pub(crate) fn capacity(&self) -> usize {
        self.capacity.load(Ordering::Relaxed) as usize
    }

    /// Stops caching the class until [`restore`](Self::restore): the program is freeing its
    /// blocks in bulk (a flush emptied a slab), and cached blocks would only keep slabs from
    /// going back. The caller has emptied the stack.
    pub(crate) fn drain(&self) {
        debug_assert_eq!(self.len(), 0);
        self.capacity.store(0, Ordering::Relaxed);
    }

    /// Caches the class again, `nominal` blocks (the arena's `cache_nominal` for it): the
    /// program allocates it (a refill).
    #[inline(always)]
    pub(crate) fn restore(&self, nominal: u32) {
        self.capacity.store(nominal, Ordering::Relaxed);
    }
}

/// Each class's blocks in the byte limit, on chunks (row 0) and in compact mode (row 1):
/// an arena's making reads them instead of dividing for every class.
const BY_BYTES: [[u16; CLASS_COUNT]; 2] = {
    let mut table = [[0u16; CLASS_COUNT]; 2];
    let mut class = 0;
    while class < CLASS_COUNT {
        let (chunks, compact) =
            (FRONT_CACHE_BYTES / class_size(class), COMPACT_FRONT_CACHE_BYTES / class_size(class));
        assert!(chunks <= u16::MAX as usize && compact <= u16::MAX as usize);
        table[0][class] = chunks as u16;
        table[1][class] = compact as u16;
        class += 1;
    }
    table
};

/// How many blocks of `class` an arena caches with the per-class limit `limit`, on a heap
/// of chunks or (`compact`) in compact mode.
pub(crate) const fn capacity(class: usize, limit: usize, compact: bool) -> usize {
    let limit =
        if compact && limit > COMPACT_FRONT_CACHE_BLOCKS { COMPACT_FRONT_CACHE_BLOCKS } else { limit };
    let by_bytes = BY_BYTES[compact as usize][class] as usize;
    let blocks = if by_bytes < limit { by_bytes } else { limit };
    if blocks < 2 { 0 } else { blocks }
}

/// The class of a block freed with `size` and `align`, when the size alone says that it is a
/// slab block: every block allocated (or reallocated in place) with a size below
/// `LARGE_GROWTH_MIN` and an alignment of at most a page is a block of a slab of this class
/// (larger sizes may sit in a page run grown by reallocation, see `LARGE_GROWTH_MIN`).
#[inline(always)]
pub(crate) fn sized_class(size: usize, align: usize) -> Option<usize> {
    if size < LARGE_GROWTH_MIN { class_for(size, align) } else { None }
}

/// Whether a slab block of `class` keeps serving a request shrunk to `size` bytes in place:
/// sizes from `LARGE_GROWTH_MIN` up that still use at least half the block (at most half of
/// it left unused, as for a block of the next class down). Such a block's class may then
/// differ from its size's, which is safe because a size from `LARGE_GROWTH_MIN` up never
/// names a class by itself ([`sized_class`]): its free reads the run's class.
#[inline]
pub(crate) fn shrinks_in_place(class: usize, size: usize) -> bool {
    let block = class_size(class);
    size >= LARGE_GROWTH_MIN && size <= block && size * 2 >= block
}

static_assertions::const_assert!(LARGE_GROWTH_MIN <= MAX_SMALL);

impl<P: PageProvider, Pl: Platform> Allocator<P, Pl> {
    /// Entries of cache storage an arena made now needs (see [`init_cache`](Self::init_cache)).
    pub(crate) fn cache_entries(&self) -> usize {
        let compact = P::MAY_CLAIM_SPAN && self.mode.compact();
        (0..CLASS_COUNT).map(|class| capacity(class, self.front_cache_limit, compact)).sum()
    }

    /// Points `arena`'s bins at `storage`, which holds [`cache_entries`](Self::cache_entries)
    /// entries.
    ///
    /// # Safety
    ///
    /// `arena` is a fresh arena not yet published; `storage` is valid for that many entries
    /// for as long as the arena lives, and used by nothing else.
    pub(crate) unsafe fn init_cache(&self, arena: *mut Arena, storage: *mut *mut u8) {
        let compact = P::MAY_CLAIM_SPAN && self.mode.compact();
        let mut next = storage;
        for class in 0..CLASS_COUNT {
            let capacity = capacity(class, self.front_cache_limit, compact);
            // SAFETY: the arena is ours alone (caller); the entries handed to this bin are
            // within the storage (their sum is `cache_entries`).
            unsafe {
                let bin = ptr::addr_of_mut!((*arena).cache[class]);
                let capacity = capacity as u32;
                bin.write(CacheBin {
                    count: AtomicU32::new(0),
                    capacity: AtomicU32::new(capacity),
                    blocks: next,
                    #[cfg(target_arch = "x86_64")]
                    _pad: 0,
                });
                ptr::addr_of_mut!((*arena).cache_nominal[class]).write(capacity);
                next = next.add(capacity as usize);
            }
        }
    }

    /// Frees the `count` oldest blocks of `class`'s stack into their slabs, keeping the rest.
    ///
    /// # Safety
    ///
    /// The caller holds `slot`, whose arena is `arena`.
    pub(crate) unsafe fn flush_cache_bin(&self, slot: usize, arena: *mut Arena, class: usize, count: usize) {
        // SAFETY: the slot holder owns the arena and the blocks in its cache, each a block
        // that a slab still counts as handed out.
        unsafe {
            let bin = &*ptr::addr_of!((*arena).cache[class]);
            let cached = bin.len();
            let count = count.min(cached);
            for index in 0..count {
                let block = *bin.blocks.add(index);
                self.free_into_slab(slot, arena, self.slab_of(block), block);
            }
            ptr::copy(bin.blocks.add(count), bin.blocks, cached - count);
            bin.count.store((cached - count) as u32, Ordering::Relaxed);
            let flushed = &(*arena).counters.flushed[class];
            flushed.store(flushed.load(Ordering::Relaxed) + count as u64, Ordering::Relaxed);
        }
    }

    /// Frees every cached block of `arena` into its slab; returns whether there was any.
    ///
    /// # Safety
    ///
    /// The caller holds `slot`, whose arena is `arena`.
    pub(crate) unsafe fn flush_front_cache(&self, slot: usize, arena: *mut Arena) -> bool {
        let mut any = false;
        for class in 0..CLASS_COUNT {
            // SAFETY: the slot holder owns the arena (caller).
            let cached = unsafe { (*arena).cache[class].len() };
            if cached > 0 {
                any = true;
                // SAFETY: forwarded.
                unsafe { self.flush_cache_bin(slot, arena, class, cached) };
            }
        }
        // Blocks freed into other slots' slabs may wait in the remote batch: hand it over,
        // so that a flush leaves nothing behind in this arena.
        // SAFETY: forwarded.
        unsafe { self.hand_over_batch(arena) };
        any
    }

    /// Frees every cached block of `arena` into its slab and stops caching every class until
    /// its next refill (see [`CacheBin::drain`]).
    ///
    /// # Safety
    ///
    /// The caller holds `slot`, whose arena is `arena`.
    pub(crate) unsafe fn drain_front_cache(&self, slot: usize, arena: *mut Arena) {
        // SAFETY: forwarded; the slot holder owns the arena.
        unsafe {
            self.flush_front_cache(slot, arena);
            for class in 0..CLASS_COUNT {
                (*arena).cache[class].drain();
            }
        }
    }

    /// Gives back `slot`'s front cache for an allocation about to fail: returns whether any
    /// block went back (so that trying again may succeed).
    ///
    /// # Safety
    ///
    /// The caller holds `slot`.
    pub(crate) unsafe fn release_front_cache(&self, slot: usize) -> bool {
        let arena = self.arenas[slot].load(crate::sync::Ordering::Relaxed);
        // SAFETY: the slot holder owns the arena.
        !arena.is_null() && unsafe { self.flush_front_cache(slot, arena) }
    }
}
