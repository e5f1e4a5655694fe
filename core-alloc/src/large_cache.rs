//! Each arena's cache of freed large runs: the large path without the central lock.
//!
//! A large run (a page run of 4 KiB to 1 MiB inside a slab chunk) freed by a slot goes to
//! that slot's cache when it is at most `LARGE_CACHE_MAX_RUN` pages and there is room; the
//! slot's next large allocation of a size the run fits takes it back without the lock. A
//! program that keeps a constant set of large blocks (buffers freed and allocated again,
//! a `Vec` grown and dropped in a loop) then neither takes the lock nor carves runs.
//!
//! Which run serves a request: a plain allocation takes the smallest cached run of at least
//! the pages needed and at most twice them (a run taken bigger stays bigger while its block
//! lives). Reallocation growth takes the biggest, cut down under the lock to at most
//! `LARGE_GROWTH_SLACK` times the pages: a block that grew once is likely to grow again, in
//! place now, first inside the run and then into the pages cut off after it. A
//! reallocation keeps a block in place while its run has the pages (a shrink: while the
//! size needs at least half of them). In the allocator's tight mode (a bounded provider
//! running low: `Allocator::short_of_memory`) a cached run serves only requests of exactly
//! its pages, and nothing gets room to grow.
//!
//! The cache holds at most `LARGE_CACHE_RUNS` runs and `LARGE_CACHE_PAGES` pages; the
//! oldest go back to the central heap first. Everything goes back on `collect()`, when the
//! slot is given up, and when the program starts freeing in bulk (`Arena::bulk_free`, which
//! also keeps the cache empty until the next allocation).
//!
//! Concurrency: the cache is the slot holder's alone. What other CPUs can do to a run in it
//! is free it again (a double free, or a stale pointer): a large run's `owner` word says
//! whether the run is live (`NO_OWNER`) or freed (`LARGE_FREED`: in a cache or on its way to
//! the central heap), and every free of a large run first exchanges `NO_OWNER` for
//! `LARGE_FREED`, so of two frees of one run exactly one wins and the other is reported. A
//! run taken from the cache is live again (`NO_OWNER`) before its block is handed out; the
//! central heap sets `NO_OWNER` when it carves a large run (`check_invariants` checks that a
//! large run's word is one of the two). A second free that arrives after the run was handed
//! out again, from the cache or carved anew, cannot be told from a free of the new block: as
//! before the cache, double frees are caught while the run stays freed. (Model check:
//! `tests/model_check.rs`, `model_large_cache_double_free_and_collect`; the checker found that
//! limit when a scenario let the run be reused before the second free.)

use core::ptr;

use page_provider::PageProvider;
use platform::Platform;

use crate::allocator::Allocator;
use crate::arena::Arena;
use crate::chunk::{NO_OWNER, RUN_LARGE, Run, page_address};
use crate::config::{LARGE_CACHE_MAX_RUN, LARGE_CACHE_PAGES, LARGE_CACHE_RUNS, LARGE_SLACK, PAGE};
use crate::sync::Ordering;

/// The `owner` word of a large run that was freed: in an arena's cache, or on its way to
/// the central heap. Slots are below it (`Allocator::new` checks the slot count).
pub(crate) const LARGE_FREED: u16 = NO_OWNER - 1;

/// Freed large runs of one arena, oldest first; see the module documentation.
#[repr(C)]
pub(crate) struct LargeCache {
    runs: [*mut Run; LARGE_CACHE_RUNS],
    count: usize,
    pages: usize,
}

/// Arenas start zeroed: no run, nothing counted.
impl LargeCache {
    /// Checks the cache's bookkeeping: every run a freed large run, the pages counted right,
    /// within the limits.
    ///
    /// # Safety
    ///
    /// The caller holds the slot of the arena holding the cache.
    pub(crate) unsafe fn check(&self) -> Result<(), &'static str> {
        if self.count > LARGE_CACHE_RUNS || self.pages > LARGE_CACHE_PAGES {
            return Err("an arena's large cache is over its limits");
        }
        let mut pages = 0;
        for &run in &self.runs[..self.count] {
            // SAFETY: cached runs are descriptors of chunks the heap keeps (caller).
            unsafe {
                if (*run).kind != RUN_LARGE || (*run).owner.load(Ordering::Relaxed) != LARGE_FREED {
                    return Err("an arena's large cache holds a run that is not a freed large run");
                }
                pages += (*run).pages as usize;
            }
        }
        if pages != self.pages {
            return Err("an arena's large cache miscounts its pages");
        }
        Ok(())
    }

    /// Takes out the run at `index`, keeping the others in age order.
    fn remove(&mut self, index: usize) -> *mut Run {
        let run = self.runs[index];
        self.runs.copy_within(index + 1..self.count, index);
        self.count -= 1;
        // SAFETY: cached runs are live descriptors (in chunks the heap keeps).
        self.pages -= unsafe { (*run).pages as usize };
        run
    }
}

/// Whether a freed run of `pages` pages may be cached at all.
pub(crate) fn cacheable(pages: usize) -> bool {
    pages <= LARGE_CACHE_MAX_RUN
}

impl<P: PageProvider, Pl: Platform> Allocator<P, Pl> {
    /// A cached run of `slot`'s arena for a request of `pages` pages aligned to
    /// `align_pages`; it is live again (its block is the caller's). A plain request takes the
    /// smallest run of at most twice the pages; growth (`growing`) the biggest run there is,
    /// which the caller cuts down (leaving free pages after it to grow into); in the tight
    /// mode (`tight`) either takes only a run of exactly the pages. `None` when no cached
    /// run fits.
    ///
    /// # Safety
    ///
    /// The caller holds `slot`.
    pub(crate) unsafe fn take_cached_large(
        &self,
        slot: usize,
        pages: usize,
        align_pages: usize,
        growing: bool,
        tight: bool,
    ) -> Option<*mut Run> {
        let arena = self.arenas[slot].load(Ordering::Relaxed);
        if arena.is_null() {
            return None;
        }
        // SAFETY: the slot holder owns the arena and the runs its cache holds.
        unsafe {
            (*arena).activity = (*arena).activity.wrapping_add(1);
            (*arena).bulk_free = false;
            (*arena).uncached_frees = 0;
            let cache = &mut *ptr::addr_of_mut!((*arena).large);
            // Growth prefers the biggest run, plain requests the smallest; the tight mode
            // neither cuts a run down (which would leave a gap) nor keeps spare pages.
            let most = if tight {
                pages
            } else if growing {
                usize::MAX
            } else {
                pages.saturating_mul(LARGE_SLACK / 2)
            };
            let rank = |have: usize| if growing { usize::MAX - have } else { have };
            let mut best: Option<(usize, usize)> = None;
            for (index, &run) in cache.runs[..cache.count].iter().enumerate() {
                let have = (*run).pages as usize;
                let start = page_address(run, (*run).first_page as usize);
                if have >= pages
                    && have <= most
                    && (start / PAGE).is_multiple_of(align_pages)
                    && best.is_none_or(|(_, chosen)| rank(have) < rank(chosen))
                {
                    best = Some((index, have));
                }
            }
            let (index, _) = best?;
            let run = cache.remove(index);
            (*arena).counters.note_large_cache(cache.count, cache.pages);
            // Live again: a free of its block may now win the exchange (see the module
            // documentation). Only this slot touches the run until the block is handed out.
            (*run).owner.store(NO_OWNER, Ordering::Relaxed);
            Some(run)
        }
    }

    /// Keeps a freed large run in `slot`'s cache (making the slot's arena if it has none),
    /// sending the oldest runs to the central heap when it is full; returns false (keeping
    /// nothing) when the run is too big to cache or there is no memory for an arena.
    ///
    /// # Safety
    ///
    /// The caller holds `slot` and won the run's exchange to `LARGE_FREED`: nothing in it is
    /// live and nobody else will use it.
    pub(crate) unsafe fn cache_large(&self, slot: usize, run: *mut Run) -> bool {
        // SAFETY: the run is ours (caller); its page count is stable while it is.
        let pages = unsafe { (*run).pages as usize };
        if !cacheable(pages) {
            return false;
        }
        // SAFETY: the caller holds the slot.
        let arena = unsafe { self.arena(slot) };
        // SAFETY: the slot holder owns the arena. A program freeing in bulk gets its large
        // runs back to the heap at once (see `Arena::bulk_free`).
        if arena.is_null() || unsafe { (*arena).bulk_free } {
            return false;
        }
        // SAFETY: the slot holder owns the arena.
        unsafe { (*arena).activity = (*arena).activity.wrapping_add(1) };
        let mut evicted = [ptr::null_mut(); LARGE_CACHE_RUNS];
        let mut evicted_count = 0;
        // SAFETY: the slot holder owns the arena and its cache.
        unsafe {
            let cache = &mut *ptr::addr_of_mut!((*arena).large);
            while cache.count == LARGE_CACHE_RUNS || cache.pages + pages > LARGE_CACHE_PAGES {
                evicted[evicted_count] = cache.remove(0);
                evicted_count += 1;
            }
            cache.runs[cache.count] = run;
            cache.count += 1;
            cache.pages += pages;
            (*arena).counters.note_large_cache(cache.count, cache.pages);
            self.free_runs_centrally(&evicted[..evicted_count], false);
        }
        true
    }

    /// Gives `slot`'s cached large runs back to the central heap (an allocation is about to
    /// fail for want of memory); returns whether there were any.
    ///
    /// # Safety
    ///
    /// The caller holds `slot`.
    pub(crate) unsafe fn release_large_cache(&self, slot: usize) -> bool {
        let arena = self.arenas[slot].load(Ordering::Relaxed);
        // SAFETY: the slot holder owns the arena and its cache.
        unsafe {
            if arena.is_null() || (*arena).large.count == 0 {
                return false;
            }
            self.flush_large_cache(arena);
        }
        true
    }

    /// Sends every run of `arena`'s cache to the central heap.
    ///
    /// # Safety
    ///
    /// The caller holds the slot of `arena`.
    pub(crate) unsafe fn flush_large_cache(&self, arena: *mut Arena) {
        // SAFETY: the slot holder owns the arena and its cache.
        unsafe {
            let cache = &mut *ptr::addr_of_mut!((*arena).large);
            if cache.count == 0 {
                return;
            }
            let runs = cache.runs;
            let count = cache.count;
            cache.count = 0;
            cache.pages = 0;
            (*arena).counters.note_large_cache(0, 0);
            self.free_runs_centrally(&runs[..count], false);
        }
    }

    /// Gives freed large runs back to the central heap, under one acquisition of its lock,
    /// and what it lets go of to the provider; with `bulk`, as `Allocator::release_run` does.
    ///
    /// # Safety
    ///
    /// Each run is a large run whose `owner` the caller set to `LARGE_FREED`, held by no
    /// cache, with nothing in it live.
    pub(crate) unsafe fn free_runs_centrally(&self, runs: &[*mut Run], bulk: bool) {
        if runs.is_empty() {
            return;
        }
        let mut release = crate::heap::Release::NOTHING;
        let clock = self.clock();
        let mut heap = self.lock_heap();
        for &run in runs {
            // SAFETY: the caller's promise; the lock is held.
            let freed = unsafe { heap.free_run_in_bulk(run, &self.map, clock, &self.provider, bulk) };
            release = release.and(freed);
        }
        drop(heap);
        self.give_back(release);
    }
}

// Slot numbers, which slabs' `owner` words hold, never equal the freed-large mark.
static_assertions::const_assert!(platform::MAX_SLOTS <= LARGE_FREED as usize);
