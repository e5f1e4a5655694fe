//! The allocator: the public API and `GlobalAlloc`, and the large and huge paths.
//!
//! Requests up to [`MAX_SMALL`](crate::size_class::MAX_SMALL) bytes (aligned to at most a
//! page) are small: blocks of a size class from the current slot's arena (see `arena`).
//! Larger ones up to [`MAX_LARGE`] are page runs carved from shared chunks under the central
//! lock; beyond that they are huge: whole chunks of their own.
//!
//! Every path runs inside the platform's slot closure, so on kernels interrupts are masked
//! whenever the allocator holds a lock or touches an arena.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicBool, AtomicU64};

use crate::sync::{AtomicPtr, Ordering, SpinGuard, SpinLock};

use page_provider::PageProvider;
use platform::{MAX_SLOTS, Platform};

use crate::arena::Arena;
use crate::chunk::{
    ChunkHeader, NO_OWNER, RUN_LARGE, RUN_SLAB, Run, RunKind, chunk_of, page_address, page_class_of, run_of,
};
use crate::chunk_map::ChunkMap;
use crate::config::{
    CHUNK_MASK, CHUNK_SIZE, HUGE_HEAP_CHUNKS, LARGE_GROWTH_MIN, LARGE_GROWTH_SLACK, MAX_LARGE, PAGE,
    PAGE_SHIFT, tight_supply,
};
use crate::front_cache::{shrinks_in_place, sized_class};
use crate::heap::{Clock, Heap, Release, SlabFit};
use crate::large_cache::LARGE_FREED;
use crate::region::{CHUNKS, COMPACT, FailureHook, Mode, ignore_failure};
#[cfg(not(feature = "checked"))]
use crate::size_class::LOOKUP_LIMIT;
use crate::size_class::{CLASS_COUNT, class_for, table_class};
use crate::stats::Stats;

/// A misuse of the allocator that it noticed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misuse {
    /// A pointer the allocator did not hand out (or no longer knows of) was freed.
    ForeignPointer,
    /// A block was freed twice.
    DoubleFree,
    /// A block was freed or reallocated with a size or alignment that does not fit it.
    WrongLayout,
}

/// What the misuse hook is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MisuseReport {
    /// What went wrong.
    pub kind: Misuse,
    /// The pointer involved.
    pub address: usize,
}

/// Called when the allocator notices a misuse. The allocator then leaves the memory alone
/// (it leaks the block rather than risk corrupting its state) and goes on. The hook runs
/// inside the allocator, possibly with interrupts masked: it must not allocate. It may
/// abort the program, which is what the host allocator's hook does.
pub type MisuseHook = fn(&MisuseReport);

fn ignore_misuse(_: &MisuseReport) {}

/// The allocator over a page provider `P` and a platform `Pl`.
///
/// Construct it in a `static` with [`Allocator::new`] and use it as the
/// `#[global_allocator]`, or call its methods directly.
pub struct Allocator<P, Pl> {
    pub(crate) provider: P,
    pub(crate) platform: Pl,
    /// One arena per slot, made on the slot's first use.
    pub(crate) arenas: [AtomicPtr<Arena>; MAX_SLOTS],
    pub(crate) heap: SpinLock<Heap>,
    pub(crate) map: ChunkMap,
    /// Chunks, or compact mode over one span (see `region`).
    pub(crate) mode: Mode,
    misuse_hook: MisuseHook,
    pub(crate) failure_hook: FailureHook,
    /// Frees counted here when their slot's arena could not be made (out of memory).
    pub(crate) stray_frees: [AtomicU64; CLASS_COUNT],
    /// With a platform clock: how long an empty chunk stays cached (nanoseconds).
    decay_ns: u64,
    /// The most blocks an arena's front cache keeps per size class (see `front_cache`).
    pub(crate) front_cache_limit: usize,
    /// The provider's bounded supply is running low, or it refused memory: the large path's
    /// tight mode (see [`short_of_memory`](Self::short_of_memory)).
    short_of_memory: AtomicBool,
}

/// The central lock, held inside the platform's critical section (see
/// [`Platform::enter_critical`]): on kernels whose slot closures leave interrupts enabled,
/// interrupts stay masked while it is held, so a handler on the same CPU never spins on it.
pub(crate) struct HeapLock<'a, Pl: Platform> {
    guard: core::mem::ManuallyDrop<SpinGuard<'a, Heap>>,
    platform: &'a Pl,
    token: usize,
}

impl<Pl: Platform> core::ops::Deref for HeapLock<'_, Pl> {
    type Target = Heap;
    fn deref(&self) -> &Heap {
        &self.guard
    }
}

impl<Pl: Platform> core::ops::DerefMut for HeapLock<'_, Pl> {
    fn deref_mut(&mut self) -> &mut Heap {
        &mut self.guard
    }
}

impl<Pl: Platform> Drop for HeapLock<'_, Pl> {
    fn drop(&mut self) {
        // SAFETY: the guard is dropped once, here, before the section it was taken in is
        // left with that section's token (sections taken inside it were left already: they
        // are scoped within the guard's lifetime).
        unsafe {
            core::mem::ManuallyDrop::drop(&mut self.guard);
            self.platform.leave_critical(self.token);
        }
    }
}

// SAFETY: the arenas are used only by the holder of their slot (the platform's promise) or
// through their atomic delayed lists; the heap is behind its lock; the map is atomics; the
// provider and platform are Sync.
unsafe impl<P: Sync, Pl: Sync> Sync for Allocator<P, Pl> {}
// SAFETY: as for Sync; nothing in the allocator is tied to the thread that made it.
unsafe impl<P: Send, Pl: Send> Send for Allocator<P, Pl> {}

impl<P: PageProvider, Pl: Platform> Allocator<P, Pl> {
    /// An allocator that gets memory from `provider` and slots from `platform`. Takes no
    /// memory until the first allocation.
    pub const fn new(provider: P, platform: Pl) -> Self {
        Self {
            provider,
            platform,
            arenas: [const { AtomicPtr::new(ptr::null_mut()) }; MAX_SLOTS],
            heap: SpinLock::new(Heap::new()),
            map: ChunkMap::new(),
            mode: Mode::new(),
            misuse_hook: ignore_misuse,
            failure_hook: ignore_failure,
            stray_frees: [const { AtomicU64::new(0) }; CLASS_COUNT],
            decay_ns: crate::config::DECAY_NS,
            front_cache_limit: crate::config::FRONT_CACHE_BLOCKS,
            short_of_memory: AtomicBool::new(false),
        }
    }

    /// The same allocator, giving the empty chunks it keeps for reuse (at most `1 + chunks
    /// in use / 8`) back to the provider once they have stayed unused for `nanoseconds`
    /// (default [`DECAY_NS`](crate::config::DECAY_NS), one second), when the platform has a
    /// clock ([`Platform::now_ns`]); 0 keeps none. Without a clock the count-based cache is
    /// all there is. The check runs when a chunk empties, every few hundred slab refills of
    /// each arena, and on [`decay`](Self::decay).
    pub const fn with_decay(mut self, nanoseconds: u64) -> Self {
        self.decay_ns = nanoseconds;
        self
    }

    /// The same allocator, keeping at most `blocks` freed blocks per size class in each
    /// arena's front cache (default [`FRONT_CACHE_BLOCKS`](crate::config::FRONT_CACHE_BLOCKS);
    /// also at most [`FRONT_CACHE_BYTES`](crate::config::FRONT_CACHE_BYTES) of them); 0 turns
    /// the cache off, so that every free goes to its slab at once. The cache serves the
    /// common free-then-allocate pair without reading slab or chunk metadata; what it holds
    /// goes back on `collect()`, an idle arena's `decay()`, the slot's release, and before an
    /// allocation fails. Arenas made before the call keep the limit they were made with.
    pub const fn with_front_cache(mut self, blocks: usize) -> Self {
        self.front_cache_limit = blocks;
        self
    }

    /// The decay period in nanoseconds (see [`with_decay`](Self::with_decay)).
    pub fn decay_period_ns(&self) -> u64 {
        self.decay_ns
    }

    /// The platform clock's reading with the decay period, if the platform has a clock.
    pub(crate) fn clock(&self) -> Option<Clock> {
        self.platform.now_ns().map(|now| Clock { now, decay: self.decay_ns })
    }

    /// Gives back what has stayed unused for the decay period (see
    /// [`with_decay`](Self::with_decay)): the empty chunks the central heap keeps, and, if
    /// the calling CPU's (or thread's) arena has had no slow-path operation since a `decay`
    /// call at least a period ago, what the arena holds unused, as [`collect`](Self::collect)
    /// does for it (its empty slabs, its cached large runs, the frees it batched for other
    /// arenas, and the remote frees into its own slabs). Does nothing without a platform
    /// clock. The central part also runs on the allocator's own slow paths; this call is
    /// what returns memory while the program allocates nothing: call it from every CPU's
    /// idle loop or a periodic timer (it takes the central lock briefly). Memory freed from
    /// one CPU into another's slabs needs both CPUs' calls, so it goes back within about two
    /// periods of calls.
    pub fn decay(&self) {
        let Some(clock) = self.clock() else {
            return;
        };
        self.platform.with_slot(|slot| {
            // SAFETY: the slot closure gives exclusive use of the slot's arena, and no other
            // operation of the slot is under way.
            unsafe { self.decay_arena(slot, clock) };
            self.decay_heap(clock);
        });
    }

    /// The central part of [`decay`](Self::decay), from inside a slot closure: cached empty
    /// chunks that are due go back, and the purge pass runs if it is due.
    pub(crate) fn decay_heap(&self, clock: Clock) {
        let mut heap = self.lock_heap();
        let release = heap.trim_decayed(clock, &self.map);
        heap.purge_idle(clock, &self.provider);
        drop(heap);
        self.give_back(release);
    }

    /// The same allocator, calling `hook` when it notices a misuse (see [`Misuse`]).
    pub const fn with_misuse_hook(mut self, hook: MisuseHook) -> Self {
        self.misuse_hook = hook;
        self
    }

    /// The same allocator, calling `hook` whenever an allocation is about to return null,
    /// with the reason (see [`Failure`](crate::Failure)). The statistics count failures by
    /// reason and keep the last one whether or not a hook is set.
    pub const fn with_failure_hook(mut self, hook: FailureHook) -> Self {
        self.failure_hook = hook;
        self
    }

    /// Whether the allocator runs in compact mode: its provider handed over one span too
    /// small for 2 MiB chunks, which the allocator manages itself (decided at the first
    /// allocation; false before).
    pub fn is_compact(&self) -> bool {
        P::MAY_CLAIM_SPAN && self.mode.compact()
    }

    /// Whether the provider can purge pages (hosts).
    pub(crate) fn can_purge(&self) -> bool {
        self.provider.capabilities().contains(page_provider::Capabilities::PURGE)
    }

    /// The page provider.
    pub fn provider(&self) -> &P {
        &self.provider
    }

    /// The platform.
    pub fn platform(&self) -> &Pl {
        &self.platform
    }

    /// Takes the central lock inside the platform's critical section.
    #[inline]
    pub(crate) fn lock_heap(&self) -> HeapLock<'_, Pl> {
        let token = self.platform.enter_critical();
        HeapLock { guard: core::mem::ManuallyDrop::new(self.heap.lock()), platform: &self.platform, token }
    }

    /// Runs `f` inside the platform's critical section: every provider call the core makes
    /// outside the central lock goes through here.
    #[inline]
    pub(crate) fn critical<R>(&self, f: impl FnOnce() -> R) -> R {
        let token = self.platform.enter_critical();
        let result = f();
        // SAFETY: the token of the section entered above; sections `f` entered were left
        // before it returned.
        unsafe { self.platform.leave_critical(token) };
        result
    }

    pub(crate) fn report(&self, kind: Misuse, address: usize) {
        (self.misuse_hook)(&MisuseReport { kind, address });
    }

    /// Allocates `size` bytes aligned to `align`; `None` when out of memory or when the
    /// request is impossible (`align` not a power of two, or the size rounded up to the
    /// alignment overflows `isize`).
    ///
    /// A zero-size request gets a unique pointer to a block of the smallest size (8 bytes,
    /// or `align` if larger) that must be freed like any other, as C's `malloc(0)` does in
    /// glibc.
    #[inline(always)]
    pub fn allocate(&self, size: usize, align: usize) -> Option<NonNull<u8>> {
        let layout = Layout::from_size_align(size.max(1), align).ok()?;
        NonNull::new(self.alloc_inner(layout, false))
    }

    /// As [`allocate`](Self::allocate), with the memory zeroed.
    #[inline]
    pub fn allocate_zeroed(&self, size: usize, align: usize) -> Option<NonNull<u8>> {
        let layout = Layout::from_size_align(size.max(1), align).ok()?;
        NonNull::new(self.alloc_inner(layout, true))
    }

    /// Frees a block without saying its size.
    ///
    /// # Safety
    ///
    /// `ptr` came from this allocator and is not freed yet; nothing uses the block any more.
    #[inline]
    pub unsafe fn free(&self, ptr: NonNull<u8>) {
        // The common case inline (C's `free`): a block of a slab, whose class its page's class
        // byte names, goes on the slot's front cache. Checked builds validate every free
        // first, in `free_general`. (This repeats `free_general`'s last lines on purpose: one shared
        // inline helper for both cost the C library's malloc+free pair 6 instructions.)
        #[cfg(not(feature = "checked"))]
        if !(P::MAY_CLAIM_SPAN && self.mode.compact()) && ptr.as_ptr() as usize & CHUNK_MASK != 0 {
            // SAFETY: a live block that does not start a chunk is a slab or large block
            // (huge blocks start their chunk), so a formatted chunk header covers it and its
            // page's class byte is stable (the caller's promise).
            unsafe {
                let class = page_class_of(ptr.as_ptr() as usize);
                if class != 0 {
                    return self.platform.with_slot_exit(
                        #[inline(always)]
                        move |slot, exit| self.free_small(slot, class - 1, ptr.as_ptr(), exit),
                    );
                }
            }
        }
        // SAFETY: the caller's promise.
        unsafe { self.free_inner(ptr.as_ptr(), None) }
    }

    /// Frees a block allocated with `size` and `align` (checked builds verify them).
    ///
    /// # Safety
    ///
    /// As for [`free`](Self::free), and `size` and `align` are those the block was
    /// allocated (or last reallocated) with.
    pub unsafe fn deallocate(&self, ptr: NonNull<u8>, size: usize, align: usize) {
        // SAFETY: the caller's promise.
        unsafe { self.free_inner(ptr.as_ptr(), Some((size.max(1), align))) }
    }

    /// Resizes a block to `new_size` bytes, in place when it can, keeping its contents up
    /// to the smaller size; the result is aligned to `align` (which need not be the
    /// alignment the block was allocated with: C's `realloc` passes its default). Returns
    /// `None` (the block is untouched) when out of memory or the request is impossible.
    ///
    /// # Safety
    ///
    /// `ptr` came from this allocator and is not freed; nothing else uses the block during
    /// the call.
    pub unsafe fn reallocate(&self, ptr: NonNull<u8>, align: usize, new_size: usize) -> Option<NonNull<u8>> {
        let layout = Layout::from_size_align(new_size.max(1), align).ok()?;
        // SAFETY: the caller's promise.
        unsafe {
            let old_size = self.usable_size(ptr);
            NonNull::new(self.realloc_inner(ptr.as_ptr(), old_size, layout))
        }
    }

    /// Whether `ptr` may be a block this allocator handed out: it lies in a slab chunk (the
    /// chunk of every small and large block), or it is the first byte of a huge allocation.
    /// A lookup in the chunk map that never touches the memory at `ptr`, so it is safe for
    /// any address. A pointer for which it is false was not handed out by this allocator,
    /// and freeing it would be a misuse; a pointer inside a huge allocation but not at its
    /// start is one of those (the free paths would otherwise read the huge block's bytes as
    /// a chunk header).
    #[inline]
    pub fn owns(&self, ptr: *const u8) -> bool {
        let address = ptr as usize;
        if P::MAY_CLAIM_SPAN && self.mode.compact() {
            return self.compact_owns(address);
        }
        let kind = crate::chunk_map::kind_of(self.map.get(address));
        kind == crate::chunk_map::KIND_SLAB
            || (kind == crate::chunk_map::KIND_HUGE && address & CHUNK_MASK == 0)
    }

    /// The bytes usable in the block at `ptr` (at least what was asked for).
    ///
    /// # Safety
    ///
    /// `ptr` came from this allocator and is not freed.
    pub unsafe fn usable_size(&self, ptr: NonNull<u8>) -> usize {
        let address = ptr.as_ptr() as usize;
        if P::MAY_CLAIM_SPAN && self.mode.compact() {
            // SAFETY: forwarded caller promise.
            return unsafe { self.compact_usable_size(address) };
        }
        if address & CHUNK_MASK == 0 {
            return Heap::huge_chunks(address, &self.map).map_or(0, |count| count * CHUNK_SIZE);
        }
        // SAFETY: a live block of a slab or large run (caller).
        unsafe {
            let run = run_of(address);
            match (*run).kind {
                RUN_SLAB => (*run).block_size as usize,
                RUN_LARGE => ((*run).pages as usize) << PAGE_SHIFT,
                _ => 0,
            }
        }
    }

    /// The allocation paths shared by every API.
    #[inline(always)]
    pub(crate) fn alloc_inner(&self, layout: Layout, zeroed: bool) -> *mut u8 {
        // Compile-time false unless the provider may hand over a span (see `region`).
        if P::MAY_CLAIM_SPAN {
            let mode = self.mode.get();
            if mode != CHUNKS && (mode != COMPACT || !Mode::slab_request(layout.size(), layout.align())) {
                return self.alloc_compact(layout, zeroed);
            }
        }
        // The common request (at most LOOKUP_LIMIT bytes, aligned to at most 16) takes its
        // class from the table behind one test, straight on; the rest is out of line.
        let class = match table_class(layout.size(), layout.align()) {
            Some(class) => class,
            None => {
                core::hint::cold_path();
                match class_for(layout.size(), layout.align()) {
                    Some(class) => class,
                    None => return self.alloc_big(layout, zeroed, false),
                }
            }
        };
        // SAFETY: the slot closure gives exclusive use of the slot's arena.
        let block = self.platform.with_slot_exit(
            #[inline(always)]
            move |slot, exit| unsafe { self.alloc_small(slot, class, exit) },
        );
        #[cfg(feature = "checked")]
        if !block.is_null() {
            self.mark_live(block);
        }
        if zeroed && !block.is_null() {
            // SAFETY: the block is at least `layout.size()` bytes, ours to write.
            unsafe { ptr::write_bytes(block, 0, layout.size()) };
        }
        block
    }

    /// Large and huge allocations; `growing` when reallocation grows a block (a cached run
    /// up to `LARGE_GROWTH_SLACK` times the size may serve it, see `large_cache`).
    #[cold]
    fn alloc_big(&self, layout: Layout, zeroed: bool, growing: bool) -> *mut u8 {
        let (size, align) = (layout.size(), layout.align());
        let found = if size <= MAX_LARGE && align <= MAX_LARGE {
            let pages = size.div_ceil(PAGE).max(1);
            let align_pages = (align / PAGE).max(1);
            // Growth may take a bigger cached run, cut down to LARGE_GROWTH_SLACK times its pages:
            // the pages cut off follow the run, free for its next growth in place.
            self.platform.with_slot(|slot| {
                // SAFETY: the slot closure gives exclusive use of the slot's arena; a run it
                // returns is a live large run, ours alone.
                if let Some(run) = unsafe {
                    self.take_cached_large(slot, pages, align_pages, growing, self.short_of_memory())
                } {
                    // SAFETY: as above.
                    let (first, have) = unsafe { ((*run).first_page as usize, (*run).pages as usize) };
                    let keep = if self.short_of_memory() {
                        pages
                    } else if growing {
                        pages * LARGE_GROWTH_SLACK
                    } else {
                        have
                    };
                    if have > keep {
                        // SAFETY: as above; shrinking in place always succeeds.
                        let _ = unsafe { self.lock_heap().resize_run(run, keep) };
                    }
                    return Some((page_address(run, first) as *mut u8, false));
                }
                let (run, clean) = self.take_run(pages, align_pages, RUN_LARGE, None)?;
                // SAFETY: a fresh large run, ours alone.
                let first = unsafe { (*run).first_page as usize };
                Some((page_address(run, first) as *mut u8, clean))
            })
        } else {
            self.platform.with_slot(|_| self.critical(|| self.alloc_huge(size, align)))
        };
        match found {
            Some((block, clean)) => {
                #[cfg(feature = "checked")]
                self.mark_live(block);
                if zeroed && !clean {
                    // SAFETY: a fresh allocation of at least `size` bytes.
                    unsafe { ptr::write_bytes(block, 0, size) };
                }
                block
            }
            None => {
                // Runs in this slot's large cache are free memory, and blocks in its front
                // cache may keep slabs from emptying: give them back and try once more before
                // failing (the second try finds the caches empty).
                // SAFETY: the slot closure gives exclusive use of the slot's arena.
                if self.platform.with_slot(|slot| unsafe {
                    self.release_large_cache(slot) | self.release_front_cache(slot)
                }) {
                    return self.alloc_big(layout, zeroed, growing);
                }
                self.failed(size, align);
                ptr::null_mut()
            }
        }
    }

    /// The free paths shared by every API; `layout` is the size and alignment the caller
    /// vouches for, if any.
    ///
    /// # Safety
    ///
    /// `block` came from this allocator and is not freed (a violation is reported where it
    /// is noticed, and is otherwise undefined behaviour).
    #[inline(always)]
    pub(crate) unsafe fn free_inner(&self, block: *mut u8, layout: Option<(usize, usize)>) {
        // The common case inline: a small size gives the class from a table, and the block
        // goes on the slot's front cache without a look at the chunk (see `front_cache`).
        // Checked builds validate every free first, in `free_general`.
        #[cfg(not(feature = "checked"))]
        if !(P::MAY_CLAIM_SPAN && self.mode.compact())
            && let Some(class) = layout.and_then(|(size, align)| table_class(size, align))
        {
            const { assert!(LOOKUP_LIMIT < LARGE_GROWTH_MIN) };
            // SAFETY: a block allocated with a size below LARGE_GROWTH_MIN is a block of a
            // slab of its size's class (see `front_cache::sized_class`).
            return self.platform.with_slot_exit(
                #[inline(always)]
                move |slot, exit| unsafe { self.free_small(slot, class, block, exit) },
            );
        }
        // The layout goes as two words in registers (an alignment of 0 saying there is none):
        // an `Option` of a pair would go through memory, stored on the fast path too.
        let (size, align) = layout.unwrap_or((0, 0));
        // SAFETY: forwarded caller promise.
        unsafe { self.free_general(block, size, align) }
    }

    /// The rest of [`free_inner`](Self::free_inner), with its layout as `size` and `align`
    /// (`align` 0: none given).
    ///
    /// # Safety
    ///
    /// As for [`free_inner`](Self::free_inner).
    #[inline(never)]
    unsafe fn free_general(&self, block: *mut u8, size: usize, align: usize) {
        let layout = (align != 0).then_some((size, align));
        if P::MAY_CLAIM_SPAN && self.mode.compact() {
            // SAFETY: forwarded caller promise.
            return unsafe { self.free_compact(block, layout) };
        }
        let address = block as usize;
        if address & CHUNK_MASK == 0 {
            // SAFETY: forwarded caller promise.
            return unsafe { self.free_huge(address) };
        }
        #[cfg(feature = "checked")]
        if !self.check_free(address, layout) {
            return;
        }
        // A size that only a slab block can have gives the class without reading the chunk.
        if let Some(class) = layout.and_then(|(size, align)| sized_class(size, align)) {
            // SAFETY: a live block of a slab of that class (caller).
            return self
                .platform
                .with_slot_exit(move |slot, exit| unsafe { self.free_small(slot, class, block, exit) });
        }
        // SAFETY: a live block: its chunk is a slab chunk and a run covers it (a slab's
        // pages carry its class, any other page 0).
        unsafe {
            let class = page_class_of(address);
            if class != 0 {
                self.platform.with_slot_exit(move |slot, exit| self.free_small(slot, class - 1, block, exit));
            } else {
                self.free_large(run_of(address), address);
            }
        }
    }

    /// Frees a large run: into the slot's large cache, or to the central heap.
    ///
    /// # Safety
    ///
    /// `address` is in a slab chunk and was handed out by this allocator.
    #[cold]
    unsafe fn free_large(&self, run: *mut Run, address: usize) {
        self.platform.with_slot(|slot| {
            // SAFETY: the caller vouches for the address. The kind and first page of a live
            // large run change only by its owner, the caller; a stale pointer may read them
            // mid-change, and the exchange below is what decides (see `large_cache`).
            unsafe {
                if (*run).kind != RUN_LARGE || page_address(run, (*run).first_page as usize) != address {
                    self.report(
                        if (*run).kind == RUN_LARGE { Misuse::ForeignPointer } else { Misuse::DoubleFree },
                        address,
                    );
                    return;
                }
                if (*run)
                    .owner
                    .compare_exchange(NO_OWNER, LARGE_FREED, Ordering::Acquire, Ordering::Relaxed)
                    .is_err()
                {
                    self.report(Misuse::DoubleFree, address);
                    return;
                }
                if !self.cache_large(slot, run) {
                    let arena = self.arena(slot);
                    self.free_runs_centrally(&[run], !arena.is_null() && (*arena).purges_in_bulk());
                }
            }
        });
    }

    /// Frees a huge allocation, or reports a pointer that starts no huge allocation.
    ///
    /// # Safety
    ///
    /// If a huge allocation starts at `address`, nothing uses it any more.
    #[cold]
    unsafe fn free_huge(&self, address: usize) {
        // Provider calls outside the lock: the whole path in the platform's critical section.
        let known = self.platform.with_slot(|_| {
            self.critical(|| {
                let mut heap = self.lock_heap();
                let count = Heap::huge_chunks(address, &self.map)?;
                // SAFETY: a live huge allocation of `count` chunks starts there (the map says
                // so), and the caller is done with it.
                let cache = unsafe { heap.free_huge(address, count, &self.map) };
                drop(heap);
                let chunk = address as *mut ChunkHeader;
                // SAFETY: the chunks are ours and unused; the header is formatted (touched)
                // outside the lock before the cache takes the chunk.
                unsafe {
                    if cache {
                        ChunkHeader::init(chunk, false);
                        let clock = self.clock();
                        if self.lock_heap().cache_chunk(chunk, &self.provider, &self.map, clock) {
                            return Some(());
                        }
                    }
                    self.provider.free_chunks(NonNull::new_unchecked(chunk.cast()), count);
                    self.note_supply();
                }
                Some(())
            })
        });
        if known.is_none() {
            self.report(Misuse::ForeignPointer, address);
        }
    }

    /// Resizes in place when the block's size class, page run or chunk count allows,
    /// otherwise allocates, copies and frees.
    ///
    /// # Safety
    ///
    /// `block` is a live block of this allocator with at least `old_size` readable bytes
    /// and alignment `layout.align()`.
    pub(crate) unsafe fn realloc_inner(&self, block: *mut u8, old_size: usize, layout: Layout) -> *mut u8 {
        let address = block as usize;
        let new_size = layout.size();
        // The class of a slab block, once read: its free after a move needs no second look.
        let mut slab_class = None;
        if P::MAY_CLAIM_SPAN && self.mode.compact() {
            // SAFETY: a live block of this allocator, the caller's.
            if unsafe { self.compact_resize(address, new_size, layout.align()) } {
                return block;
            }
        } else if address & CHUNK_MASK == 0 {
            if new_size > MAX_LARGE && layout.align() <= CHUNK_SIZE {
                // Provider calls outside the lock: in the platform's critical section.
                let resized = self.platform.with_slot(|_| {
                    self.critical(|| {
                        let mut heap = self.lock_heap();
                        let count = Heap::huge_chunks(address, &self.map)?;
                        let wanted = new_size.div_ceil(CHUNK_SIZE);
                        if wanted > count {
                            drop(heap);
                            // SAFETY: a live huge allocation of `count` chunks, the caller's.
                            return unsafe { self.grow_huge(address, count, wanted) };
                        }
                        if wanted < count {
                            // SAFETY: the chunks past `wanted` hold no byte of the new size.
                            unsafe {
                                heap.shrink_huge(address, count, wanted, &self.provider, &self.map);
                                drop(heap);
                                let spare = (address + wanted * CHUNK_SIZE) as *mut u8;
                                self.provider.free_chunks(NonNull::new_unchecked(spare), count - wanted);
                                self.note_supply();
                            }
                        }
                        Some(block)
                    })
                });
                if let Some(resized) = resized {
                    return resized;
                }
            }
        } else {
            // SAFETY: a live block of a slab or large run (caller).
            unsafe {
                let run = run_of(address);
                if (*run).kind == RUN_SLAB {
                    // In place when the new size's class is the block's, or when it shrinks a
                    // block of 4 KiB or more by at most half (see `shrinks_in_place`).
                    let class = (*run).class as usize;
                    slab_class = Some(class);
                    if class_for(new_size, layout.align()) == Some(class)
                        && address.is_multiple_of(layout.align())
                    {
                        return block;
                    }
                    if new_size < old_size
                        && shrinks_in_place(class, new_size)
                        && address.is_multiple_of(layout.align())
                    {
                        return block;
                    }
                } else if (LARGE_GROWTH_MIN..=MAX_LARGE).contains(&new_size)
                    && layout.align() <= MAX_LARGE
                    && address.is_multiple_of(layout.align())
                {
                    // In place without the lock when the run has the pages: growth inside a
                    // run bigger than its block (one from an arena's cache), or a shrink that
                    // still needs half of it (all of it in the tight mode, which gives the
                    // spare pages back).
                    let (pages, have) = (new_size.div_ceil(PAGE), (*run).pages as usize);
                    let resized = (pages <= have
                        && (new_size >= old_size
                            || pages == have
                            || pages * 2 >= have && !self.short_of_memory()))
                        || self.platform.with_slot(|_| self.lock_heap().resize_run(run, pages));
                    if resized {
                        return block;
                    }
                }
            }
        }
        // Growth to LARGE_GROWTH_MIN and beyond moves to a page run, which can grow in place
        // next time; in compact mode, growth to a fit block moves where it has room to grow
        // in place (see `Fit::alloc_with_room`).
        let compact = P::MAY_CLAIM_SPAN && self.mode.compact();
        let moved = if new_size <= old_size {
            self.alloc_inner(layout, false)
        } else if compact {
            let roomy = if Mode::slab_request(new_size, layout.align()) {
                ptr::null_mut()
            } else {
                self.alloc_compact_growing(new_size, layout.align())
            };
            if roomy.is_null() { self.alloc_inner(layout, false) } else { roomy }
        } else if (LARGE_GROWTH_MIN..=MAX_LARGE).contains(&new_size) && layout.align() <= PAGE {
            self.alloc_big(layout, false, true)
        } else {
            self.alloc_inner(layout, false)
        };
        if !moved.is_null() {
            // SAFETY: both blocks are live and distinct; the copy stays inside both.
            unsafe {
                ptr::copy_nonoverlapping(block, moved, old_size.min(new_size));
                match slab_class {
                    // Checked builds validate every free (in `free_general`).
                    #[cfg(not(feature = "checked"))]
                    // SAFETY: a block of a slab of that class, no longer used.
                    Some(class) => self
                        .platform
                        .with_slot_exit(move |slot, exit| self.free_small(slot, class, block, exit)),
                    _ => self.free_inner(block, None),
                }
            }
        }
        moved
    }

    /// Carves a page run from the central heap, getting a new chunk from the provider
    /// (outside the lock) when no chunk the heap holds has room, and taking the room of the
    /// chunks that hold metadata when the provider has no chunk left. A slab may be shorter, as
    /// `gap` allows, to fill a gap no whole slab fits (`Heap::alloc_slab_in_gap`). Call
    /// inside a slot closure.
    pub(crate) fn take_run(
        &self,
        pages: usize,
        align_pages: usize,
        kind: RunKind,
        gap: Option<SlabFit>,
    ) -> Option<(*mut Run, bool)> {
        if P::MAY_CLAIM_SPAN && self.mode.compact() {
            debug_assert!(kind == RUN_SLAB && pages >= 1);
            return self.take_slab_page();
        }
        let (carved, big) = {
            let mut heap = self.lock_heap();
            let carved = gap
                .and_then(|fit| heap.alloc_slab_in_gap(pages, fit, false))
                .or_else(|| heap.alloc_run(pages, align_pages, kind, false))
                .map(|found| {
                    // SAFETY: a run the heap just carved lies in one of its slab chunks.
                    (found, unsafe { heap.becomes_dense(chunk_of(found.0 as usize)) })
                });
            (carved, heap.counters.slab_chunks >= HUGE_HEAP_CHUNKS)
        };
        if let Some((found, dense)) = carved {
            if dense {
                let chunk = chunk_of(found.0 as usize);
                // SAFETY: the chunk holds the run just carved, which is the caller's and live,
                // so the chunk stays the heap's (not given back) during the call.
                self.critical(|| unsafe {
                    self.provider.hugify(NonNull::new_unchecked(chunk.cast()), CHUNK_SIZE, true)
                });
            }
            return Some(found);
        }
        let Some(fresh) = self.critical(|| self.provider.alloc_chunks(1)) else {
            // The last resort: the room of the chunks that hold metadata (a bounded heap's
            // first chunk, say), kept for metadata while the provider had chunks.
            self.short_of_memory.store(true, Ordering::Relaxed);
            let mut heap = self.lock_heap();
            heap.counters.provider_refusals += 1;
            return gap
                .and_then(|fit| heap.alloc_slab_in_gap(pages, fit, true))
                .or_else(|| heap.alloc_run(pages, align_pages, kind, true));
        };
        self.note_supply();
        // A big heap's chunks fill up (runs go to the fullest chunks): backed by huge pages
        // from the start, before anything touches them, rather than collapsed once dense.
        // SAFETY: a fresh chunk, ours alone.
        let hugified =
            big && self.critical(|| unsafe { self.provider.hugify(fresh.base, CHUNK_SIZE, false) });
        let chunk = fresh.base.as_ptr().cast::<ChunkHeader>();
        // SAFETY: a fresh chunk, known to nobody else: formatting it here, outside the lock,
        // takes its first page faults without holding up other CPUs.
        unsafe {
            ChunkHeader::init(chunk, fresh.zeroed);
            (*chunk).hugified = hugified;
        }
        // SAFETY: the chunk came from the provider, is formatted and known to nobody else.
        let adopted =
            unsafe { self.lock_heap().adopt(chunk, pages, align_pages, kind, &self.provider, &self.map) };
        adopted.unwrap_or_else(|()| {
            // SAFETY: the heap did not take the chunk; it is unused.
            self.critical(|| unsafe { self.provider.free_chunks(fresh.base, 1) });
            None
        })
    }

    /// Gives a run back to the central heap, and what the heap lets go of to the provider.
    /// With `bulk` (the freeing arena is in bulk-free mode), a chunk the run's release leaves
    /// mostly free has its free pages purged at once (see `Heap::free_run_in_bulk`).
    ///
    /// # Safety
    ///
    /// `run` is a live run of this allocator with nothing in it live; call inside a slot
    /// closure.
    pub(crate) unsafe fn release_run(&self, run: *mut Run, bulk: bool) {
        if P::MAY_CLAIM_SPAN && self.mode.compact() {
            // SAFETY: in compact mode every slab is a slab page (the caller's promise).
            return unsafe { self.release_slab_page(run) };
        }
        let clock = self.clock();
        // SAFETY: the caller's promise; the lock is held.
        let release =
            unsafe { self.lock_heap().free_run_in_bulk(run, &self.map, clock, &self.provider, bulk) };
        self.give_back(release);
    }

    /// Hands chunks the heap let go of back to the provider (outside the heap lock).
    pub(crate) fn give_back(&self, release: Release) {
        if release.chunks.is_null() {
            return;
        }
        self.critical(|| {
            let mut chunk = release.chunks;
            while !chunk.is_null() {
                // SAFETY: released chunks are ours, unused, linked through their headers; the
                // link is read before the chunk is given away.
                unsafe {
                    let next = (*chunk).next;
                    self.provider.free_chunks(NonNull::new_unchecked(chunk.cast()), 1);
                    chunk = next;
                }
            }
        });
        self.note_supply();
    }

    /// Whether the large path is in its tight mode: the provider's supply of chunks is
    /// running low (a bounded region or a kernel's RAM with more than
    /// `1 / TIGHT_SUPPLY_DIVISOR` of it in use: [`tight_supply`]), or it refused memory since
    /// the heap last obtained or gave back chunks. Large runs then get exactly the pages their
    /// blocks need: no room to grow into from the arenas' caches, a shrink gives its spare
    /// pages back at once, and a cached run serves only a request of its own size (a bigger
    /// one cut down would leave a gap where it lay). The heap so fills up before it fails
    /// rather than keeping room for growth that may never come. A hint read without the lock:
    /// a stale answer changes only how much room a run keeps.
    #[inline]
    fn short_of_memory(&self) -> bool {
        self.short_of_memory.load(Ordering::Relaxed)
    }

    /// Updates [`short_of_memory`](Self::short_of_memory) from the provider's supply, after
    /// the heap obtained or gave back chunks (providers without a bounded supply: never
    /// short, unless refused).
    ///
    /// The provider is asked inside the platform's critical section, like every other
    /// provider call: a provider may take a lock here (the bare-metal `FrameProvider` takes
    /// its frame lock), and an interrupt handler that allocates on this CPU while it is held
    /// would spin on it for ever. Two callers (`take_run`, `give_back`) run outside any
    /// critical section.
    pub(crate) fn note_supply(&self) {
        let short = self
            .critical(|| self.provider.supply())
            .is_some_and(|supply| tight_supply(supply.available, supply.total));
        self.short_of_memory.store(short, Ordering::Relaxed);
    }

    /// A huge allocation of `size` bytes (whole chunks) aligned to `align`: a cached chunk
    /// when one chunk will do, else fresh chunks from the provider (obtained outside the
    /// lock). Returns the first byte and whether it is zeroed. Call inside a slot closure and
    /// the platform's critical section.
    fn alloc_huge(&self, size: usize, align: usize) -> Option<(*mut u8, bool)> {
        let count = size.div_ceil(CHUNK_SIZE);
        let align_chunks = align.div_ceil(CHUNK_SIZE).max(1);
        if count == 1
            && align_chunks == 1
            && let Some(base) = self.lock_heap().huge_from_cache(&self.provider, &self.map)
        {
            return Some((base.as_ptr(), false));
        }
        let extra = align_chunks - 1;
        let Some(fresh) = count.checked_add(extra).and_then(|total| self.provider.alloc_chunks(total)) else {
            self.lock_heap().counters.provider_refusals += 1;
            self.short_of_memory.store(true, Ordering::Relaxed);
            return None;
        };
        let base = fresh.base.as_ptr() as usize;
        let aligned = base.next_multiple_of(align_chunks * CHUNK_SIZE);
        let head = (aligned - base) / CHUNK_SIZE;
        let tail = extra - head;
        // SAFETY: the head and tail chunks are parts of the fresh run nobody uses.
        unsafe {
            if head > 0 {
                self.provider.free_chunks(fresh.base, head);
            }
            if tail > 0 {
                self.provider
                    .free_chunks(NonNull::new_unchecked((aligned + count * CHUNK_SIZE) as *mut u8), tail);
            }
        }
        self.note_supply();
        // The chunks the block fills are backed by huge pages from the start; not the last
        // chunk a block fills in part (a 1.5 MiB buffer of which a program touches the start
        // would cost 2 MiB at its first touch).
        let filled = size / CHUNK_SIZE;
        if filled > 0 {
            // SAFETY: the chunks were just obtained and are ours alone.
            unsafe {
                self.provider.hugify(NonNull::new_unchecked(aligned as *mut u8), filled * CHUNK_SIZE, false)
            };
        }
        let recorded =
            self.lock_heap().record_huge(aligned, count, count + extra, extra, &self.provider, &self.map);
        if !recorded {
            // SAFETY: the run is unused and was not recorded.
            unsafe { self.provider.free_chunks(NonNull::new_unchecked(aligned as *mut u8), count) };
            return None;
        }
        Some((aligned as *mut u8, fresh.zeroed))
    }

    /// Grows a huge allocation by remapping its pages (no copy), when the provider can.
    /// Returns the new address, or `None` (the block untouched) to fall back to copying.
    ///
    /// # Safety
    ///
    /// A live huge allocation of `count` chunks starts at `address`, and nothing else uses
    /// it during the call; call inside a slot closure and the platform's critical section.
    unsafe fn grow_huge(&self, address: usize, count: usize, wanted: usize) -> Option<*mut u8> {
        use crate::sync::{PausePoint, pause};
        if !self.provider.capabilities().contains(page_provider::Capabilities::REMAP)
            || wanted > crate::heap::MAX_REMAP_CHUNKS
        {
            return None;
        }
        let mut heap = self.lock_heap();
        // The nodes the new records may need, set aside now: the move happens without the
        // lock, and other CPUs' metadata allocations must not take them meanwhile.
        let mut reserve = heap.reserve_nodes(&self.provider, &self.map)?;
        // SAFETY: a live huge allocation of `count` chunks, the caller's; it is recorded
        // again below, wherever it ends up.
        unsafe { heap.unrecord_huge(address, count, &self.map) };
        drop(heap);
        pause(PausePoint::BeforeRemap);
        // SAFETY: the run is a huge allocation the provider handed out as one run (or its
        // aligned middle), now the caller's; `wanted > count`.
        let moved = unsafe { self.provider.remap(NonNull::new_unchecked(address as *mut u8), count, wanted) };
        pause(PausePoint::AfterRemap);
        let (new, new_count) = match moved {
            Some(moved) => (moved.as_ptr() as usize, wanted),
            // Not moved: still where it was, whole; the copying path takes over.
            None => (address, count),
        };
        let mut heap = self.lock_heap();
        // SAFETY: unrecorded above, the allocation now lives at `new`; `new_count` is at
        // most MAX_REMAP_CHUNKS, which the reserve covers.
        unsafe { heap.rehome_huge((address, count), (new, new_count), &mut reserve, &self.map) };
        heap.return_nodes(reserve);
        drop(heap);
        moved.map(NonNull::as_ptr)
    }

    /// A snapshot of the statistics.
    pub fn stats(&self) -> Stats {
        let mut stats = Stats::new();
        for arena in &self.arenas {
            let arena = arena.load(Ordering::Acquire);
            if !arena.is_null() {
                // SAFETY: arenas are never freed; their counters and cache counts are atomics.
                unsafe {
                    let bins = &(*arena).cache;
                    (*arena).counters.add_to(&mut stats, |class| bins[class].len() as u64);
                }
                stats.arenas += 1;
            }
        }
        for (class, stray) in stats.classes.iter_mut().zip(&self.stray_frees) {
            class.frees += stray.load(Ordering::Relaxed);
        }
        stats.heap = self.platform.with_slot(|_| {
            let mut heap = self.lock_heap();
            Self::refresh_region_counters(&mut heap);
            heap.counters
        });
        // The central heap counts cached large runs as carved: they are not live blocks.
        stats.heap.large_live = stats.heap.large_live.saturating_sub(stats.large_cached);
        stats.heap.large_live_bytes = stats.heap.large_live_bytes.saturating_sub(stats.large_cached_bytes);
        stats
    }

    /// Gives back what can be given back now: remote frees and empty slabs of the current
    /// slot and of idle slots (threads that exited), and every cached empty chunk. It also
    /// hands over the frees this slot was batching for other slots' slabs, which those slots
    /// gather on their next refill or `collect()`: on kernels, call it from every CPU's idle
    /// loop (two rounds on every CPU return everything freed).
    pub fn collect(&self) {
        // SAFETY: the slot closure gives exclusive use of the slot's arena.
        self.platform.with_slot(|slot| unsafe { self.flush_arena(slot) });
        for slot in 0..self.platform.slot_count() {
            // SAFETY: the platform lends the idle slot exclusively for the closure.
            self.platform.try_with_idle_slot(slot, || unsafe { self.release_slot(slot) });
        }
        self.platform.with_slot(|_| {
            let release = self.lock_heap().trim(0, &self.map);
            self.give_back(release);
        });
    }

    /// Gives the blocks in the calling CPU's (or thread's) front cache back to their slabs
    /// (see [`with_front_cache`](Self::with_front_cache)); [`collect`](Self::collect) and an
    /// idle arena's [`decay`](Self::decay) do it too, and the host allocator at thread exit.
    /// Blocks of other slots' slabs go back to those slots as remote frees.
    pub fn flush_cache(&self) {
        // SAFETY: the slot closure gives exclusive use of the slot's arena.
        self.platform.with_slot(|slot| unsafe { self.release_front_cache(slot) });
    }

    /// Takes the allocator's central lock and keeps it, so that no other thread is inside
    /// the central heap while the process forks: call it from a `pthread_atfork` prepare
    /// handler (after the platform's own fork preparation, which takes the slot locks that
    /// come first in the lock order).
    pub fn lock_for_fork(&self) {
        core::mem::forget(self.heap.lock()); // hosts: no critical section to keep
    }

    /// Releases the lock [`lock_for_fork`](Self::lock_for_fork) took, in the parent and in
    /// the child after `fork`.
    ///
    /// # Safety
    ///
    /// Called once after `lock_for_fork`, by the thread that called it (or its copy in the
    /// child).
    pub unsafe fn unlock_after_fork(&self) {
        // SAFETY: `lock_for_fork` took the lock and forgot its guard; the caller is its
        // holder (or the holder's copy in the child).
        unsafe { self.heap.force_unlock() }
    }

    /// Checks the central heap's bookkeeping and the current slot's arena; returns a
    /// description of the first inconsistency. For tests, at quiet moments.
    pub fn check_invariants(&self) -> Result<(), &'static str> {
        self.platform.with_slot(|slot| {
            let mut heap = self.lock_heap();
            heap.check_invariants()?;
            Self::check_region(&mut heap)?;
            drop(heap);
            // SAFETY: the slot closure gives exclusive use of the slot's arena.
            unsafe { self.check_arena(slot) }
        })
    }
}

// SAFETY: `alloc` returns null or a block of at least `layout.size()` bytes aligned to
// `layout.align()`, disjoint from every other live block; `dealloc` and `realloc` rely on
// the caller's GlobalAlloc promises, which are those of `free_inner` and `realloc_inner`.
unsafe impl<P: PageProvider, Pl: Platform> GlobalAlloc for Allocator<P, Pl> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.alloc_inner(layout, false)
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.alloc_inner(layout, true)
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: GlobalAlloc's caller promises `ptr` is live with this layout.
        unsafe { self.free_inner(ptr, Some((layout.size(), layout.align()))) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: GlobalAlloc's caller promises `ptr` is live with this layout, and that
        // `new_size` rounded up to the alignment does not overflow isize.
        unsafe {
            let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
            self.realloc_inner(ptr, layout.size(), new_layout)
        }
    }
}

#[cfg(all(test, feature = "testkit"))]
mod tests {
    use super::*;
    use crate::testkit::{SimProvider, TestPlatform};

    /// Issue 8, defect 3. The metadata "reservation" before a remap reserved nothing when
    /// the metadata chunk was nearly full, so the records of a block moved to a new part of
    /// the address space needed chunk-map nodes the provider then refused: a panic in debug
    /// builds, a block the chunk map did not know in release builds.
    #[test]
    fn huge_growth_under_memory_pressure_fails_cleanly() {
        // 8 GiB of address space (never touched): its two ends lie under different leaves
        // of the chunk map, so a block moved from one end to the other needs new nodes.
        let heap = Allocator::new(SimProvider::new(4096), TestPlatform::new());
        let block = heap.allocate(3 << 20, 8).unwrap();
        // SAFETY: a fresh block of 3 MiB.
        unsafe { block.as_ptr().write_bytes(0xA5, 3 << 20) };
        heap.heap.lock().use_up_meta(64); // the metadata run is nearly full
        heap.provider().set_refuse(true);
        // A new metadata run could come from the free pages of the slab chunk that holds
        // the current one: fill them with 64 KiB runs (a metadata run needs more than the
        // 15 pages that may be left).
        let mut fillers = [None; 64];
        for filler in &mut fillers {
            *filler = heap.allocate(64 << 10, 8);
        }
        assert!(fillers.iter().any(Option::is_none), "the slab chunk was not filled");
        heap.provider().set_remap_far(true);
        // SAFETY: a live block of this heap.
        let grown = unsafe { heap.reallocate(block, 8, 5 << 20) };
        assert!(grown.is_none(), "grew although no metadata could be had");
        assert!(heap.owns(block.as_ptr()), "the block lost its chunk-map record");
        // SAFETY: the block is live and untouched.
        unsafe {
            assert_eq!(heap.usable_size(block), 4 << 20);
            assert!(core::slice::from_raw_parts(block.as_ptr(), 3 << 20).iter().all(|&byte| byte == 0xA5));
        }
        heap.check_invariants().unwrap();
        // Memory again: the block grows by remap, far away, and keeps its bytes.
        heap.provider().set_refuse(false);
        for filler in fillers.into_iter().flatten() {
            // SAFETY: a live block of this heap, freed once.
            unsafe { heap.free(filler) };
        }
        // SAFETY: a live block of this heap.
        let grown = unsafe { heap.reallocate(block, 8, 5 << 20) }.unwrap();
        assert_ne!(grown, block);
        assert_eq!(heap.provider().remaps(), 1);
        assert!(heap.owns(grown.as_ptr()) && !heap.owns(block.as_ptr()));
        // SAFETY: the grown block keeps the first 3 MiB; then it is freed.
        unsafe {
            assert!(core::slice::from_raw_parts(grown.as_ptr(), 3 << 20).iter().all(|&byte| byte == 0xA5));
            heap.free(grown);
        }
        assert_eq!(heap.stats().heap.huge_live, 0);
        heap.check_invariants().unwrap();
    }

    /// A record that needs new chunk-map nodes when the chunks holding metadata are full of
    /// it takes a new chunk for a metadata run, and records that chunk before its own write:
    /// nodes are stocked before every write. Made inside the write instead, the new chunk's
    /// record would land in the very leaf the outer write was making (both lie past the
    /// first 512 chunks), and the outer write would replace it: the chunk's blocks unknown
    /// to the map.
    #[test]
    fn a_chunk_obtained_for_metadata_during_a_record_is_recorded_too() {
        let heap = Allocator::new(SimProvider::new(1024), TestPlatform::new());
        let small = heap.allocate(64, 8).unwrap();
        // The chunk holding metadata full: its room taken by runs (the last resort while
        // the provider refuses), its metadata run all but used up.
        heap.provider().set_refuse(true);
        let mut runs = [None; 64];
        for run in &mut runs {
            *run = heap.allocate(64 << 10, 8);
        }
        assert!(runs.iter().any(Option::is_none) && runs.iter().any(Option::is_some));
        heap.heap.lock().use_up_meta(64);
        heap.provider().set_refuse(false);
        let meta_chunks = heap.stats().heap.meta_chunks;
        // Chunks 3 to 602: its records run into the chunk map's second leaf, which the
        // record of the new metadata chunk (the next free one, 603) needs too.
        let huge = heap.allocate(600 * CHUNK_SIZE, 8).unwrap();
        let stats = heap.stats();
        assert_eq!(stats.heap.meta_chunks, meta_chunks + 1, "no chunk obtained for metadata: {stats}");
        assert!(heap.owns(huge.as_ptr()));
        // Blocks in the new chunk's room (the last resort again) are known to the map.
        heap.provider().set_refuse(true);
        let mut blocks = [None; 64];
        for block in &mut blocks {
            *block = heap.allocate(64 << 10, 8);
            if let Some(block) = *block {
                assert!(heap.owns(block.as_ptr()), "a block of the new metadata chunk is not in the map");
            }
        }
        assert!(blocks.iter().any(Option::is_some), "no block in the new metadata chunk");
        heap.check_invariants().unwrap();
        heap.provider().set_refuse(false);
        // SAFETY: every block is live and freed once.
        unsafe {
            for block in blocks.into_iter().chain(runs).flatten() {
                heap.free(block);
            }
            heap.free(huge);
            heap.free(small);
        }
        heap.collect();
        assert!(heap.stats().holds_nothing_but_metadata(), "{}", heap.stats());
        heap.check_invariants().unwrap();
    }
}
