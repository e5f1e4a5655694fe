//! Per-slot arenas: the small-block fast paths, slab refills, frees from other CPUs, and
//! what happens when a thread gives its slot up.
//!
//! An arena has one bin per size class. A bin allocates from its `current` slab, keeps slabs
//! with free blocks on a `partial` list and slabs with none on a `full` list. The fast path
//! of an allocation is a pop from the current slab's free list; of a free by the owning slot,
//! a push on the slab's local free list. Neither takes a lock or an atomic read-modify-write.
//!
//! Blocks a slot frees into a slab another slot owns are chained in the arena's remote batch
//! while they belong to the same slab (up to `MAX_REMOTE_BATCH`), then handed over with one
//! compare-exchange onto the slab's remote list; the batch is also handed over on the slot's
//! next refill, `collect()` and release. (Frees into abandoned slabs are not batched: the
//! last one releases the slab.) A pending batch keeps its one slab until then. If the owner had marked that slab FULL, the first
//! block goes to the owner arena's `delayed` list instead, which the owner drains on its
//! next refill, freeing the blocks locally and so moving the slab back to `partial`. See
//! `slab` for the remote word.
//!
//! Empty slabs: the bin keeps its current slab even when empty (so a free-then-allocate loop
//! does not take and return a slab every time); other slabs that empty go back to the
//! central heap at once, and every `IDLE_CHECK_INTERVAL` refills the arena gives back the
//! current slabs of other classes that are empty, and (with a platform clock) lets the
//! central heap give back the empty chunks that stayed unused for the decay period. While
//! the program frees in bulk (`Arena::bulk_free`: a flush of the front cache emptied a
//! slab, a free emptied one of a class whose cache an earlier bulk free turned off, or
//! `UNCACHED_BULK_FREES` blocks of uncached classes were freed with no slow-path
//! allocation between them; and no refill since), current slabs go back as soon as they
//! empty too, and from its `BULK_PURGE_AFTER_FREES`th free on its frees purge
//! (`Arena::purges_in_bulk`).
//!
//! When a slot is given up (`release_slot`, at thread exit on hosts), every slab of the arena
//! is abandoned: empty ones go back to the heap, the others become ABANDONED and go back when
//! their last block is freed.
//!
//! Concurrency: everything but `delayed` and the statistics is touched only by the holder
//! of the arena's slot. `delayed` is a stack pushed by any CPU (compare-exchange with
//! release) and emptied whole by the owner (swap with acquire), so it has no ABA problem.
//! A free that won a FULL slab's exchange pushes to the arena its FULL word named, and may
//! get there only after that slot was given up (`release_slot`), its slabs abandoned and
//! the thread gone. So `release_slot` ends by closing the list (`delayed_closed()`); a push
//! that finds it closed frees its block again through the slab's remote word, which by then
//! is no longer FULL for that slot (abandoned, or adopted by a live arena). The next holder
//! of the slot reopens the list on its first refill, before it owns any slab. (Deterministic
//! test: `tests/races.rs`, `full_slab_free_racing_owner_exit`; model:
//! `tests/model_check.rs`.)

use crate::sync::{AtomicPtr, Ordering};
use core::ptr;

use page_provider::PageProvider;
use platform::{Platform, SlotExit};

use crate::allocator::Allocator;
use crate::chunk::{LIST_CURRENT, LIST_FULL, LIST_NONE, LIST_PARTIAL, ListTag, RUN_SLAB, Run};
use crate::config::ARENA_ALIGN;
use crate::front_cache::CacheBin;
use crate::heap::{Clock, SlabFit};
use crate::large_cache::LargeCache;
use crate::size_class::{CLASS_COUNT, class_index, class_size, first_slab_pages, slab_pages};
use crate::slab::{self, RemoteFree};
use crate::stats::{ArenaCounters, count_one};

/// The first size class whose blocks span two pages: an arena freeing in bulk purges the
/// pages inside such blocks as it frees them (`Heap::purge_freed_block`).
const PURGED_BLOCK_CLASS: usize = class_index(2 * crate::config::PAGE);

/// Small frees into a bulk free before it purges (the pages of freed blocks, chunks its
/// releases leave mostly free: see `Arena::purges_in_bulk`): a short run of frees between
/// allocations (a program churning, not shrinking) makes no system call and splits no huge
/// page. The model checker's scenarios purge from the first, so that their few frees reach
/// the purges.
#[cfg(not(feature = "shuttle"))]
const BULK_PURGE_AFTER_FREES: u32 = 64;
#[cfg(feature = "shuttle")]
const BULK_PURGE_AFTER_FREES: u32 = 0;

/// Frees of uncached classes (above 4 KiB) with no allocation through a slow path between
/// them that make a bulk free (see `Arena::uncached_frees`); a few under the model checker,
/// whose scenarios without front caches free a handful of blocks.
#[cfg(not(feature = "shuttle"))]
const UNCACHED_BULK_FREES: u32 = 64;
#[cfg(feature = "shuttle")]
const UNCACHED_BULK_FREES: u32 = 4;

/// Small frees into one bulk free after which the heap's mostly free chunks are purged
/// (see `Allocator::note_bulk_free`); the second under the model checker, so that its
/// scenarios reach the pass while slabs of the bulk free still hold blocks.
#[cfg(not(feature = "shuttle"))]
const BULK_PASS_FREES: u32 = 1024;
#[cfg(feature = "shuttle")]
const BULK_PASS_FREES: u32 = 2;

/// A bin's slabs of one size class.
#[repr(C)]
pub(crate) struct Bin {
    /// The slab allocations come from; `EMPTY_RUN` when there is none.
    current: *mut Run,
    /// Slabs with free blocks (doubly linked through `Run::next`/`prev`).
    partial: *mut Run,
    /// Slabs with no free block the owner knows of.
    full: *mut Run,
}

/// Stands in for a missing current slab: its free list is always empty, so the fast path
/// needs no null check. Never written.
struct EmptyRun(Run);
// SAFETY: nothing ever writes the sentinel; its atomics make it Sync-safe to read.
unsafe impl Sync for EmptyRun {}
static EMPTY_RUN: EmptyRun = EmptyRun(Run::unused());

fn empty_run() -> *mut Run {
    ptr::addr_of!(EMPTY_RUN.0).cast_mut()
}

/// Refills between two looks for idle empty current slabs.
const IDLE_CHECK_INTERVAL: u32 = 256;

/// Remote frees into one slab, chained (newest first) and handed over together.
#[repr(C)]
struct RemoteBatch {
    run: *mut Run,
    first: *mut u8,
    last: *mut u8,
    count: u32,
}

/// Blocks a remote batch holds before it is handed over.
const MAX_REMOTE_BATCH: u32 = 32;

/// Other CPUs write here: keep it off the owner's lines.
#[repr(C, align(128))]
struct Delayed(AtomicPtr<u8>);

/// The `delayed` value of an arena whose slot was given up: pushes fail (see the module
/// documentation). Never a block address (blocks are at least 4-aligned).
fn delayed_closed() -> *mut u8 {
    ptr::without_provenance_mut(1)
}

/// One slot's arena; see the module documentation. Its front cache's storage follows it in
/// its metadata block (see `front_cache`).
#[repr(C, align(256))]
pub(crate) struct Arena {
    /// Freed blocks per class, served before the slabs (see `front_cache`).
    pub(crate) cache: [CacheBin; CLASS_COUNT],
    /// The most blocks each class's stack holds when caching (0: the class is not cached).
    pub(crate) cache_nominal: [u32; CLASS_COUNT],
    bins: [Bin; CLASS_COUNT],
    /// Slow-path refills so far; paces the release of idle empty slabs.
    refills: u32,
    /// Slow-path operations so far (refills, large allocations and frees): `decay` tells an
    /// idle arena by this not moving.
    pub(crate) activity: u32,
    /// Slabs this arena's frees emptied and gave back (wrapping): a flush of the front cache
    /// that moves it is a bulk free (see `front_cache`).
    pub(crate) emptied_slabs: u32,
    /// The program is freeing in bulk (see the module documentation for what starts it) and
    /// has not allocated through a slow path since: an emptied current slab and a freed large run go
    /// back to the central heap at once rather than stay for allocations that are not
    /// coming, so that a program that frees everything holds no chunk for it.
    pub(crate) bulk_free: bool,
    /// Small blocks freed since the bulk free began: at `BULK_PASS_FREES` the heap's mostly
    /// free chunks are purged once (`Heap::purge_mostly_free`).
    bulk_frees: u32,
    /// Blocks of classes that are not cached (above 4 KiB) freed since the arena last
    /// allocated through a slow path: at `UNCACHED_BULK_FREES` a bulk free begins (their
    /// frees never flush a cache, which is how a bulk free of cached classes shows).
    pub(crate) uncached_frees: u32,
    /// `activity` when `decay` last looked, and the clock's time then.
    idle_mark: u32,
    idle_since: u64,
    /// Blocks this slot freed into one slab it does not own, chained and not handed over
    /// yet: a batch costs one compare-exchange on the slab instead of one per block.
    batch: RemoteBatch,
    /// Freed large runs kept for this slot's next large allocations.
    pub(crate) large: LargeCache,
    pub(crate) counters: ArenaCounters,
    delayed: Delayed,
}

impl Arena {
    /// Whether this arena's frees purge: it frees in bulk and has freed
    /// `BULK_PURGE_AFTER_FREES` small blocks since the bulk free began. Its releases then
    /// purge the chunks they leave mostly free (`Heap::free_run_in_bulk`) and its frees the
    /// pages of freed blocks (`Heap::purge_freed_block`).
    #[allow(
        clippy::absurd_extreme_comparisons,
        reason = "the threshold is 0 under the model checker, whose scenarios purge from the first free"
    )]
    pub(crate) fn purges_in_bulk(&self) -> bool {
        self.bulk_free && self.bulk_frees >= BULK_PURGE_AFTER_FREES
    }
}

static_assertions::const_assert!(core::mem::align_of::<Arena>() <= ARENA_ALIGN);

/// Pushes `run` on the front of a list.
///
/// # Safety
///
/// The caller owns the run and the list; the run is on no list.
unsafe fn push_front(list: *mut *mut Run, run: *mut Run, tag: ListTag) {
    // SAFETY: owner-only list fields (caller).
    unsafe {
        (*run).prev = ptr::null_mut();
        (*run).next = *list;
        if !(*list).is_null() {
            (**list).prev = run;
        }
        *list = run;
        (*run).list = tag;
    }
}

/// Takes `run` off a list.
///
/// # Safety
///
/// The caller owns the run and the list, and the run is on it.
unsafe fn unlink(list: *mut *mut Run, run: *mut Run) {
    // SAFETY: owner-only list fields (caller).
    unsafe {
        let (prev, next) = ((*run).prev, (*run).next);
        if prev.is_null() {
            *list = next;
        } else {
            (*prev).next = next;
        }
        if !next.is_null() {
            (*next).prev = prev;
        }
        (*run).list = LIST_NONE;
    }
}

impl<P: PageProvider, Pl: Platform> Allocator<P, Pl> {
    /// Allocates a block of `class` from `slot`'s arena, and gives the slot up (`exit`): on
    /// the slow path the function it calls last does, so that the call is a tail call.
    ///
    /// # Safety
    ///
    /// The caller holds `slot` (inside the platform's slot closure), until `exit` drops.
    #[inline(always)]
    pub(crate) unsafe fn alloc_small(&self, slot: usize, class: usize, exit: SlotExit<'_, Pl>) -> *mut u8 {
        debug_assert!(class < CLASS_COUNT);
        let arena = self.arenas[slot].load(Ordering::Relaxed);
        if !arena.is_null() {
            // SAFETY: the slot holder owns the arena, its cache and the slabs it lists;
            // `class` comes from `class_for`, so it is below CLASS_COUNT.
            unsafe {
                let cache = (*arena).cache.get_unchecked(class);
                let cached = cache.len();
                if cached != 0 {
                    // Not counted: the statistics derive it (see `ArenaCounters`).
                    let block = cache.take(cached);
                    exit.leave();
                    return block;
                }
                let block = slab::pop((*arena).bins.get_unchecked(class).current);
                if !block.is_null() {
                    count_one((*arena).counters.allocations.get_unchecked(class));
                    exit.leave();
                    return block;
                }
            }
        }
        // SAFETY: forwarded slot ownership.
        unsafe { self.alloc_small_slow(slot, class, exit) }
    }

    /// Refills the bin and allocates, making the arena first if needed; then gives the slot
    /// up (`exit` drops on return, after the block is taken). Null when out of memory.
    ///
    /// # Safety
    ///
    /// As for [`alloc_small`](Self::alloc_small).
    #[cold]
    #[inline(never)]
    unsafe fn alloc_small_slow(&self, slot: usize, class: usize, exit: SlotExit<'_, Pl>) -> *mut u8 {
        let _exit = exit;
        // SAFETY: the caller holds the slot.
        let arena = unsafe { self.arena(slot) };
        if arena.is_null() {
            self.failed(crate::size_class::class_size(class), crate::size_class::class_align(class));
            return ptr::null_mut();
        }
        // SAFETY: the slot holder owns the arena, its bins and their slabs.
        unsafe {
            self.hand_over_batch(arena);
            if !(*arena).delayed.0.load(Ordering::Relaxed).is_null() {
                self.drain_delayed(slot, arena);
            }
            (*arena).refills = (*arena).refills.wrapping_add(1);
            (*arena).activity = (*arena).activity.wrapping_add(1);
            (*arena).bulk_free = false;
            (*arena).uncached_frees = 0;
            (*arena).cache[class].restore((*arena).cache_nominal[class]);
            if (*arena).refills % IDLE_CHECK_INTERVAL == 0 {
                self.release_idle_current(arena, class);
                if let Some(clock) = self.clock() {
                    self.decay_heap(clock);
                }
            }
            let bin = ptr::addr_of_mut!((*arena).bins[class]);
            loop {
                let run = (*bin).current;
                if run != empty_run() {
                    if slab::refill(run) {
                        break;
                    }
                    if !slab::mark_full(run, slot) {
                        continue; // remote frees arrived: the next refill collects them
                    }
                    (*bin).current = empty_run();
                    push_front(ptr::addr_of_mut!((*bin).full), run, LIST_FULL);
                }
                let partial = (*bin).partial;
                if !partial.is_null() {
                    unlink(ptr::addr_of_mut!((*bin).partial), partial);
                    (*partial).list = LIST_CURRENT;
                    (*bin).current = partial;
                    continue;
                }
                if let Some(adopted) = self.lock_heap().adopt_orphan(class, slot) {
                    (*adopted).list = LIST_CURRENT;
                    (*bin).current = adopted;
                    continue;
                }
                // The arena's first slab of a class is small: a program's footprint is a few
                // pages per class it uses a little.
                // Later ones may be shorter than the class's slab to fill a gap in a chunk
                // (at least a quarter of it, and a first slab).
                let (pages, gap) = if (*arena).counters.allocations[class].load(Ordering::Relaxed) == 0 {
                    (first_slab_pages(class), None)
                } else {
                    let min_pages = first_slab_pages(class).max(slab_pages(class) / 4);
                    (slab_pages(class), Some(SlabFit { min_pages, block_size: class_size(class) }))
                };
                let Some((run, _)) = self.take_run(pages, 1, RUN_SLAB, gap) else {
                    // Runs in the large cache are free memory, and blocks in the front cache
                    // may be what keeps slabs from emptying: give them back and try again.
                    if self.release_large_cache(slot) || self.release_front_cache(slot) {
                        continue;
                    }
                    if P::MAY_CLAIM_SPAN && self.mode.compact() {
                        // No page for a slab: the block alone, from the span.
                        let block = self.alloc_compact_fallback(class);
                        if !block.is_null() {
                            return block;
                        }
                    }
                    self.failed(crate::size_class::class_size(class), crate::size_class::class_align(class));
                    return ptr::null_mut();
                };
                slab::init(run, class, slot);
                if !(P::MAY_CLAIM_SPAN && self.mode.compact()) {
                    // A chunk's slab (compact mode's slab pages are found another way).
                    crate::chunk::set_page_class(run, class);
                }
                (*run).list = LIST_CURRENT;
                (*bin).current = run;
            }
            let block = slab::pop((*bin).current);
            count_one(&(*arena).counters.allocations[class]);
            block
        }
    }

    /// Gives back the current slabs of other classes that are empty: a bin keeps an empty
    /// current slab so that allocate-free loops do not churn, but one left empty for a whole
    /// interval of refills is idle.
    ///
    /// # Safety
    ///
    /// The caller holds the slot owning `arena`.
    unsafe fn release_idle_current(&self, arena: *mut Arena, refilling: usize) {
        for class in (0..CLASS_COUNT).filter(|&class| class != refilling) {
            // SAFETY: forwarded.
            unsafe { self.release_current_if_empty(arena, class) };
        }
    }

    /// Gives back `class`'s current slab if it is empty.
    ///
    /// # Safety
    ///
    /// The caller holds the slot owning `arena`.
    unsafe fn release_current_if_empty(&self, arena: *mut Arena, class: usize) {
        // SAFETY: the slot holder owns the arena, its bins and their slabs.
        unsafe {
            let bin = ptr::addr_of_mut!((*arena).bins[class]);
            let run = (*bin).current;
            if run == empty_run() {
                return;
            }
            slab::collect_remote(run);
            if (*run).used == 0 {
                (*bin).current = empty_run();
                (*run).list = LIST_NONE;
                self.release_run(run, (*arena).purges_in_bulk());
            }
        }
    }

    /// The arena of `slot`, made on first use; null when out of memory.
    ///
    /// # Safety
    ///
    /// The caller holds `slot`.
    pub(crate) unsafe fn arena(&self, slot: usize) -> *mut Arena {
        let existing = self.arenas[slot].load(Ordering::Relaxed);
        if !existing.is_null() {
            return existing;
        }
        if P::MAY_CLAIM_SPAN && !self.mode.chunks() {
            self.decide_mode();
        }
        // The front cache's storage follows the arena (its size depends on the mode).
        let storage_offset = core::mem::size_of::<Arena>();
        let size = (storage_offset + self.cache_entries() * core::mem::size_of::<*mut u8>())
            .next_multiple_of(ARENA_ALIGN);
        // Only the arena is zeroed: the cache's stacks are read only below their counts,
        // after pushes wrote them (on chunks they are most of the arena's 10 KiB).
        let memory = if P::MAY_CLAIM_SPAN && self.mode.compact() {
            self.compact_meta_alloc(size, storage_offset, ARENA_ALIGN)
        } else {
            self.lock_heap().meta_alloc_zeroing(size, storage_offset, ARENA_ALIGN, &self.provider, &self.map)
        };
        if !(P::MAY_CLAIM_SPAN && self.mode.compact()) {
            // The metadata run may have come from a new chunk (the first arena's does).
            self.note_supply();
        }
        let Some(memory) = memory else {
            return ptr::null_mut();
        };
        let arena = memory.as_ptr().cast::<Arena>();
        // SAFETY: fresh metadata memory, aligned for an Arena, zeroed over the Arena, with
        // room for the cache storage after it; zero is a valid value for every field but
        // `current` and the cache bins, set here before the arena is published.
        unsafe {
            for class in 0..CLASS_COUNT {
                (*arena).bins[class].current = empty_run();
            }
            self.init_cache(arena, memory.as_ptr().add(storage_offset).cast());
        }
        // Release: other CPUs that push to `delayed` read the pointer with acquire.
        self.arenas[slot].store(arena, Ordering::Release);
        arena
    }

    /// Frees a small block of `class`, from `slot`: a push on the slot's front cache (see
    /// `front_cache`), which reads neither the slab nor the chunk. Gives the slot up (`exit`)
    /// as [`alloc_small`](Self::alloc_small) does.
    ///
    /// # Safety
    ///
    /// The caller holds `slot` until `exit` drops; `block` is a live block of a slab of
    /// `class`.
    #[inline(always)]
    pub(crate) unsafe fn free_small(
        &self,
        slot: usize,
        class: usize,
        block: *mut u8,
        exit: SlotExit<'_, Pl>,
    ) {
        debug_assert!(class < CLASS_COUNT);
        let arena = self.arenas[slot].load(Ordering::Relaxed);
        if !arena.is_null() {
            // SAFETY: the slot holder owns the arena and its cache; `class` is below
            // CLASS_COUNT (caller); the block is of that class and no longer used.
            unsafe {
                if (*arena).cache.get_unchecked(class).push(block) {
                    count_one((*arena).counters.frees.get_unchecked(class));
                    exit.leave();
                    return;
                }
            }
        }
        // SAFETY: forwarded.
        unsafe { self.free_small_slow(slot, class, block, exit) }
    }

    /// The rest of [`free_small`](Self::free_small): makes the arena, frees the older half
    /// of a full stack into the slabs, or frees a block of a class that is not cached; then
    /// gives the slot up (`exit` drops on return).
    ///
    /// # Safety
    ///
    /// As for [`free_small`](Self::free_small).
    #[cold]
    #[inline(never)]
    unsafe fn free_small_slow(&self, slot: usize, class: usize, block: *mut u8, exit: SlotExit<'_, Pl>) {
        let _exit = exit;
        // SAFETY: the caller's promises; the arena is the slot holder's.
        unsafe {
            let arena = self.arena(slot);
            if arena.is_null() {
                // No arena (out of memory): this slot owns no slab, so the free is remote.
                self.stray_frees[class].fetch_add(1, Ordering::Relaxed);
                self.free_remote(self.slab_of(block), block, block, 1);
                return;
            }
            count_one(&(*arena).counters.frees[class]);
            let bin = ptr::addr_of_mut!((*arena).cache[class]);
            if (*bin).capacity() == 0 {
                if !(*arena).bulk_free && (*arena).cache_nominal[class] == 0 {
                    (*arena).uncached_frees = (*arena).uncached_frees.saturating_add(1);
                    if (*arena).uncached_frees == UNCACHED_BULK_FREES {
                        self.begin_bulk_free(slot, arena);
                    }
                }
                if (*arena).bulk_free {
                    self.note_bulk_free(arena, class, block);
                }
                count_one(&(*arena).counters.frees_to_slabs[class]);
                let emptied = (*arena).emptied_slabs;
                self.free_into_slab(slot, arena, self.slab_of(block), block);
                // A cached class whose cache an earlier bulk free turned off (it stays off
                // until the class's next refill) while the mode ended by an allocation of
                // another class: its frees reach the slabs directly, so a free that empties
                // one is what a flush emptying one would be. (Without this, a program that
                // allocated a little between two bulk frees freed the second one with no
                // purge: W6's last tenth left 21 chunks of 2 MiB huge pages holding a slab
                // or two each.)
                if !(*arena).bulk_free
                    && (*arena).cache_nominal[class] > 0
                    && (*arena).emptied_slabs != emptied
                {
                    self.begin_bulk_free(slot, arena);
                }
                if (*arena).bulk_free {
                    self.release_current_if_empty(arena, class);
                }
                return;
            }
            if !(*bin).push(block) {
                let emptied = (*arena).emptied_slabs;
                self.flush_cache_bin(slot, arena, class, (*bin).capacity().div_ceil(2));
                if (*arena).emptied_slabs != emptied {
                    self.begin_bulk_free(slot, arena);
                    count_one(&(*arena).counters.frees_to_slabs[class]);
                    self.free_into_slab(slot, arena, self.slab_of(block), block);
                    self.release_current_if_empty(arena, class);
                    return;
                }
                let pushed = (*bin).push(block);
                debug_assert!(pushed);
            }
        }
    }

    /// A bulk free begins: a flush of the front cache emptied a slab, or the arena freed
    /// `UNCACHED_BULK_FREES` blocks of uncached classes without allocating. Caching stops
    /// until the program allocates again (each class until its next refill), so that what it
    /// frees can go back, and what waits for allocations that are not coming (empty current
    /// slabs, cached large runs) goes back now and as the frees go on.
    ///
    /// # Safety
    ///
    /// The caller holds `slot`, whose arena is `arena`.
    unsafe fn begin_bulk_free(&self, slot: usize, arena: *mut Arena) {
        // SAFETY: the caller's promise; the slot holder owns the arena.
        unsafe {
            (*arena).bulk_free = true;
            (*arena).bulk_frees = 0;
            self.drain_front_cache(slot, arena);
            self.release_idle_current(arena, CLASS_COUNT);
            self.release_large_cache(slot);
        }
    }

    /// A small block freed while the arena frees in bulk, before it goes to its slab: once the
    /// bulk free purges (`Arena::purges_in_bulk`), a block with pages of its own has them
    /// purged (`Heap::purge_freed_block`), and at the
    /// `BULK_PASS_FREES`th free of this bulk free the heap's mostly free chunks are purged
    /// (`Heap::purge_mostly_free`): a program freeing that much is likely to free a large
    /// part of its heap, and chunks it left mostly free earlier (while it also allocated) see
    /// no run released now, so nothing else would purge them if it then idles. A short run
    /// of frees between allocations stays below the count and purges nothing of that kind.
    ///
    /// # Safety
    ///
    /// The caller holds the slot owning `arena`; `block` is a live block of class `class`
    /// being freed by the caller (nobody else uses its bytes).
    unsafe fn note_bulk_free(&self, arena: *mut Arena, class: usize, block: *mut u8) {
        if !self.can_purge() || self.is_compact() {
            return;
        }
        // SAFETY: the caller's promises; the slot holder owns the arena.
        unsafe {
            if class >= PURGED_BLOCK_CLASS && (*arena).purges_in_bulk() {
                self.lock_heap().purge_freed_block(block as usize, class_size(class), &self.provider);
            }
            (*arena).bulk_frees = (*arena).bulk_frees.saturating_add(1);
            if (*arena).bulk_frees == BULK_PASS_FREES
                && let Some(clock) = self.clock()
            {
                self.lock_heap().purge_mostly_free(clock, &self.provider);
            }
        }
    }

    /// Frees a block into its slab, not counting it (it was counted when the program freed
    /// it): a block leaving the front cache, or one of a class that is not cached.
    ///
    /// # Safety
    ///
    /// The caller holds `slot`, whose arena is `arena`; `block` is a block of the slab
    /// `run` that the slab counts as handed out and nobody uses any more.
    pub(crate) unsafe fn free_into_slab(
        &self,
        slot: usize,
        arena: *mut Arena,
        run: *mut Run,
        block: *mut u8,
    ) {
        // SAFETY: the caller's promises. The relaxed load of `owner` is exact for this
        // comparison: only the holder of a slot sets a slab's owner to that slot
        // (`slab::init`, `slab::adopt`) or away from it (`slab::abandon`), so another CPU's
        // change can never make it equal `slot`, nor stop it being `slot`, while this slot
        // is held.
        unsafe {
            if (*run).owner.load(Ordering::Relaxed) as usize == slot {
                self.free_owned(arena, run, block);
            } else {
                self.free_foreign(arena, run, block);
            }
        }
    }

    /// Frees a block of a slab the slot owns: a push on the local free list.
    ///
    /// # Safety
    ///
    /// The caller holds the slot owning `run` and `arena`; `block` is a live block of `run`.
    #[inline(always)]
    unsafe fn free_owned(&self, arena: *mut Arena, run: *mut Run, block: *mut u8) {
        // SAFETY: the slot holder owns the slab and its lists (caller).
        unsafe {
            let emptied = slab::push_local(run, block);
            // The current slab stays put, empty or not: a loop that allocates and frees one
            // block never leaves this path.
            if (*run).list.moves_after_local_free(emptied) {
                self.after_local_free(arena, run, emptied);
            }
        }
    }

    /// Frees a block of a slab the slot does not own: into the arena's remote batch for
    /// that slab, or straight to the slab's remote word.
    ///
    /// # Safety
    ///
    /// As for [`free_into_slab`](Self::free_into_slab), and the slot does not own `run`.
    unsafe fn free_foreign(&self, arena: *mut Arena, run: *mut Run, block: *mut u8) {
        // SAFETY: the caller's promises; the batch is the slot holder's.
        unsafe {
            // An abandoned slab is released by the free of its last block: that must not wait
            // in a batch. Batches are for slabs whose owner will collect them. (The load is
            // a hint: a slab abandoned just after it keeps its batched blocks counted live
            // until this slot hands the batch over, at its next refill, `collect()` or slot
            // release; the hand-over then counts them out of the abandoned slab.)
            if (*run).owner.load(Ordering::Relaxed) == crate::chunk::NO_OWNER {
                if self.free_remote(run, block, block, 1) {
                    (*arena).emptied_slabs = (*arena).emptied_slabs.wrapping_add(1);
                }
                return;
            }
            let batch = ptr::addr_of_mut!((*arena).batch);
            if (*batch).run == run {
                slab::link_to(block, (*batch).first);
                (*batch).first = block;
                (*batch).count += 1;
                if (*batch).count == MAX_REMOTE_BATCH {
                    self.hand_over_batch(arena);
                }
            } else {
                self.hand_over_batch(arena);
                slab::link_to(block, ptr::null_mut());
                *batch = RemoteBatch { run, first: block, last: block, count: 1 };
            }
        }
    }

    /// Hands the slot's pending remote batch over to its slab.
    ///
    /// # Safety
    ///
    /// The caller holds the slot owning `arena`.
    pub(crate) unsafe fn hand_over_batch(&self, arena: *mut Arena) {
        // SAFETY: the slot holder owns the batch; its blocks are live blocks of its slab,
        // chained, freed by this slot and not yet handed over.
        unsafe {
            let batch = ptr::addr_of_mut!((*arena).batch);
            if (*batch).count == 0 {
                return;
            }
            let RemoteBatch { run, first, last, count } = core::ptr::read(batch);
            *batch =
                RemoteBatch { run: ptr::null_mut(), first: ptr::null_mut(), last: ptr::null_mut(), count: 0 };
            self.free_remote(run, first, last, count);
        }
    }

    /// Frees a block without counting it (it was counted when first freed).
    ///
    /// # Safety
    ///
    /// As for [`free_small`](Self::free_small), and `slot`'s arena exists.
    unsafe fn free_small_uncounted(&self, slot: usize, arena: *mut Arena, run: *mut Run, block: *mut u8) {
        // SAFETY: as for `free_small`.
        unsafe {
            if (*run).owner.load(Ordering::Relaxed) as usize == slot {
                self.free_owned(arena, run, block);
            } else {
                self.free_remote(run, block, block, 1);
            }
        }
    }

    /// A local free emptied a slab or hit one on the full list.
    ///
    /// # Safety
    ///
    /// The caller holds the slot owning `run` and `arena`.
    #[cold]
    unsafe fn after_local_free(&self, arena: *mut Arena, run: *mut Run, emptied: bool) {
        // SAFETY: the slot holder owns the arena, the bin and the slab.
        unsafe {
            let bin = ptr::addr_of_mut!((*arena).bins[(*run).class as usize]);
            let list = (*run).list;
            if emptied {
                (*arena).emptied_slabs = (*arena).emptied_slabs.wrapping_add(1);
                let holder = if list == LIST_FULL {
                    ptr::addr_of_mut!((*bin).full)
                } else {
                    ptr::addr_of_mut!((*bin).partial)
                };
                unlink(holder, run);
                self.release_run(run, (*arena).purges_in_bulk());
            } else if list == LIST_FULL {
                unlink(ptr::addr_of_mut!((*bin).full), run);
                slab::unmark_full(run, (*run).owner.load(Ordering::Relaxed) as usize);
                push_front(ptr::addr_of_mut!((*bin).partial), run, LIST_PARTIAL);
            }
        }
    }

    /// Frees `count` blocks of a slab the caller's slot does not own, chained `first` to
    /// `last` through their links; returns whether that released the slab (the last blocks of
    /// an abandoned one).
    ///
    /// # Safety
    ///
    /// The blocks are live blocks of the slab `run`, chained as described, not owned by the
    /// caller's slot.
    unsafe fn free_remote(&self, run: *mut Run, first: *mut u8, last: *mut u8, count: u32) -> bool {
        let (mut last, mut count) = (last, count);
        loop {
            // SAFETY: the blocks are the caller's to give back; see `slab::push_remote`.
            let outcome = unsafe { slab::push_remote(run, first, last, count) };
            match outcome {
                RemoteFree::Queued | RemoteFree::CountedOut => return false,
                RemoteFree::WasFull(owner) => {
                    crate::sync::pause(crate::sync::PausePoint::RemoteFreeWonFull);
                    // The FULL word named `owner`, a slot below MAX_SLOTS that owned the slab
                    // then (it made its arena before owning anything; arenas are never freed).
                    let owner_arena = self.arenas[owner as usize].load(Ordering::Acquire);
                    debug_assert!(!owner_arena.is_null());
                    // SAFETY: a live arena; `first` is the caller's block (the rest, if any,
                    // went to the remote list).
                    if unsafe { push_delayed(owner_arena, first) } {
                        return false;
                    }
                    // The owner gave its slot up after marking the slab FULL: free the block
                    // again through the slab, now abandoned or owned by another arena.
                    (last, count) = (first, 1);
                }
                RemoteFree::LastOfAbandoned => {
                    // SAFETY: the slab has no live block and no owner (and can no longer be
                    // adopted): it is ours to release (the heap takes it off its orphan list).
                    unsafe { self.release_run(run, false) };
                    return true;
                }
            }
        }
    }

    /// Frees the blocks other CPUs handed to this arena's delayed list.
    ///
    /// # Safety
    ///
    /// The caller holds `slot`, whose arena is `arena`.
    unsafe fn drain_delayed(&self, slot: usize, arena: *mut Arena) {
        // SAFETY: the caller holds the slot.
        unsafe { self.drain_delayed_into(slot, arena, ptr::null_mut()) }
    }

    /// Empties the delayed list, leaving `then` in its place (null: open, or
    /// `delayed_closed()`), and frees the blocks it held. A closed list counts as empty, and
    /// draining it with null reopens it.
    ///
    /// # Safety
    ///
    /// The caller holds `slot`, whose arena is `arena`.
    unsafe fn drain_delayed_into(&self, slot: usize, arena: *mut Arena, then: *mut u8) {
        // SAFETY: the swap hands the whole list to the owner; each block is a live block
        // whose free was deferred here, linked through its first 8 bytes.
        unsafe {
            let mut block = (*arena).delayed.0.swap(then, Ordering::Acquire);
            if block == delayed_closed() {
                block = ptr::null_mut();
            }
            while !block.is_null() {
                let next = block.cast::<*mut u8>().read_unaligned();
                self.free_small_uncounted(slot, arena, self.slab_of(block), block);
                block = next;
            }
        }
    }

    /// The arena part of `Allocator::decay`: flushes `slot`'s arena (see
    /// [`flush_arena`](Self::flush_arena)) if it has had no slow-path operation since a
    /// `decay` call at least `clock.decay` ago; otherwise marks it, so that a later call can
    /// tell.
    ///
    /// # Safety
    ///
    /// The caller holds `slot`, outside any other allocator operation of the slot.
    pub(crate) unsafe fn decay_arena(&self, slot: usize, clock: Clock) {
        let arena = self.arenas[slot].load(Ordering::Relaxed);
        if arena.is_null() {
            return;
        }
        // SAFETY: the slot holder owns the arena.
        unsafe {
            if (*arena).activity != (*arena).idle_mark || (*arena).idle_since > clock.now {
                (*arena).idle_mark = (*arena).activity;
                (*arena).idle_since = clock.now;
            } else if clock.now - (*arena).idle_since >= clock.decay {
                self.flush_arena(slot);
            }
        }
    }

    /// Collects remote frees of every slab of `slot`'s arena and gives empty ones back.
    ///
    /// # Safety
    ///
    /// The caller holds `slot`.
    pub(crate) unsafe fn flush_arena(&self, slot: usize) {
        let arena = self.arenas[slot].load(Ordering::Relaxed);
        if arena.is_null() {
            return;
        }
        // SAFETY: the slot holder owns the arena, its bins and their slabs.
        unsafe {
            self.flush_front_cache(slot, arena);
            self.flush_large_cache(arena);
            self.hand_over_batch(arena);
            self.drain_delayed(slot, arena);
            self.release_idle_current(arena, CLASS_COUNT);
            for class in 0..CLASS_COUNT {
                let bin = ptr::addr_of_mut!((*arena).bins[class]);
                for list in [ptr::addr_of_mut!((*bin).partial), ptr::addr_of_mut!((*bin).full)] {
                    let mut run = *list;
                    while !run.is_null() {
                        let next = (*run).next;
                        slab::collect_remote(run);
                        if (*run).used == 0 {
                            unlink(list, run);
                            self.release_run(run, false);
                        } else if (*run).list == LIST_FULL && slab::refill(run) {
                            unlink(list, run);
                            slab::unmark_full(run, slot);
                            push_front(ptr::addr_of_mut!((*bin).partial), run, LIST_PARTIAL);
                        }
                        run = next;
                    }
                }
            }
        }
    }

    /// Gives up everything `slot`'s arena holds: empty slabs go back to the heap, the rest
    /// are abandoned and go back when their last block is freed. For a platform's slot
    /// release (a host thread's exit); the arena stays, empty, for the slot's next holder.
    ///
    /// # Safety
    ///
    /// The caller has exclusive use of `slot`, as inside the platform's slot closure or its
    /// slot-release hook, and does not call this from inside another allocator call.
    pub unsafe fn release_slot(&self, slot: usize) {
        let arena = self.arenas.get(slot).map_or(ptr::null_mut(), |arena| arena.load(Ordering::Acquire));
        if arena.is_null() {
            return;
        }
        // SAFETY: exclusive use of the slot (caller): the arena and its slabs are ours.
        unsafe {
            // Cached blocks of the arena's own slabs go back before the slabs are abandoned.
            self.flush_front_cache(slot, arena);
            self.flush_large_cache(arena);
            self.hand_over_batch(arena);
            self.drain_delayed(slot, arena);
            for class in 0..CLASS_COUNT {
                let bin = ptr::addr_of_mut!((*arena).bins[class]);
                let current = (*bin).current;
                (*bin).current = empty_run();
                if current != empty_run() {
                    self.abandon_or_release(current);
                }
                for list in [ptr::addr_of_mut!((*bin).partial), ptr::addr_of_mut!((*bin).full)] {
                    let mut run = *list;
                    *list = ptr::null_mut();
                    while !run.is_null() {
                        let next = (*run).next;
                        self.abandon_or_release(run);
                        run = next;
                    }
                }
            }
            // Frees that found a slab FULL just before it was abandoned handed their block
            // here; they are remote frees into abandoned slabs now. Closing the list makes
            // the frees still on their way to it free through the slab instead.
            self.drain_delayed_into(slot, arena, delayed_closed());
        }
    }

    /// # Safety
    ///
    /// The caller owns `run` and has taken it off its list.
    unsafe fn abandon_or_release(&self, run: *mut Run) {
        // The lock is held across the abandonment, so that the free of the slab's last
        // block, which releases it under the same lock, finds it on the orphan list.
        let clock = self.clock();
        let mut heap = self.lock_heap();
        // SAFETY: forwarded ownership; the lock is held.
        unsafe {
            if slab::abandon(run) {
                heap.push_orphan(run);
            } else if P::MAY_CLAIM_SPAN && self.mode.compact() {
                Self::free_slab_page_locked(&mut heap, run);
            } else {
                let release = heap.free_run(run, &self.map, clock);
                drop(heap);
                self.give_back(release);
            }
        }
    }

    /// Checks `slot`'s arena: list tags, ownership, and every slab's own bookkeeping.
    ///
    /// # Safety
    ///
    /// The caller holds `slot`.
    pub(crate) unsafe fn check_arena(&self, slot: usize) -> Result<(), &'static str> {
        let arena = self.arenas[slot].load(Ordering::Relaxed);
        if arena.is_null() {
            return Ok(());
        }
        // SAFETY: the slot holder owns the arena and its slabs.
        unsafe {
            for class in 0..CLASS_COUNT {
                let bin = ptr::addr_of!((*arena).bins[class]);
                let current = (*bin).current;
                let lists =
                    [(current, LIST_CURRENT), ((*bin).partial, LIST_PARTIAL), ((*bin).full, LIST_FULL)];
                for (head, tag) in lists {
                    let mut run = head;
                    while !run.is_null() && run != empty_run() {
                        if (*run).kind != RUN_SLAB || (*run).class as usize != class {
                            return Err("a bin lists a run that is not a slab of its class");
                        }
                        if (*run).list != tag {
                            return Err("a slab's list tag disagrees with the list holding it");
                        }
                        if (*run).owner.load(Ordering::Relaxed) as usize != slot {
                            return Err("a bin lists a slab its slot does not own");
                        }
                        slab::check_invariants(run)?;
                        run = if tag == LIST_CURRENT { ptr::null_mut() } else { (*run).next };
                    }
                }
            }
            for class in 0..CLASS_COUNT {
                let bin = &(*arena).cache[class];
                if bin.len() > bin.capacity() {
                    return Err("a front cache holds more blocks than it has room for");
                }
                for index in 0..bin.len() {
                    let block = bin.get(index);
                    let run = self.slab_of(block);
                    if (*run).kind != RUN_SLAB || (*run).class as usize != class {
                        return Err("a front cache holds a block that is not of its class");
                    }
                    if (0..index).any(|earlier| bin.get(earlier) == block) {
                        return Err("a front cache holds a block twice");
                    }
                }
                // The statistics derive the allocations the stack served from its counts.
                if (*arena).counters.served_by_cache(class, bin.len() as u64).is_none() {
                    return Err("a front cache holds blocks its counters do not account for");
                }
            }
            (*arena).large.check()?;
        }
        Ok(())
    }
}

/// Pushes a block on an arena's delayed list; returns false, pushing nothing, when the list
/// is closed (its slot was given up).
///
/// # Safety
///
/// `arena` is a live arena; `block` is a live block being freed, at least 8 bytes long.
#[must_use]
unsafe fn push_delayed(arena: *mut Arena, block: *mut u8) -> bool {
    // SAFETY: the block is ours to overwrite until the push publishes it (release).
    unsafe {
        let delayed = &(*arena).delayed.0;
        let mut head = delayed.load(Ordering::Relaxed);
        loop {
            if head == delayed_closed() {
                return false;
            }
            block.cast::<*mut u8>().write_unaligned(head);
            match delayed.compare_exchange_weak(head, block, Ordering::Release, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(current) => head = current,
            }
        }
    }
}
