//! A provider and a platform for tests that drive races on purpose: deterministic
//! interleaving tests (pause points), the shuttle model checker and Miri.
//!
//! - [`SimProvider`] hands out chunks of one zeroed host allocation, lowest address first,
//!   and *remaps* by moving a run to the lowest free range and giving the old range back at
//!   once, as `mremap` unmaps it: the next request gets the old addresses again, which is
//!   exactly the reuse a racing thread may see on a real system.
//! - [`TestPlatform`] has slots chosen by the test: each thread says which slot it is
//!   ([`TestPlatform::enter`]), and a lock per slot keeps the [`Platform`] promise.

use core::cell::Cell;
use std::alloc::{Layout, alloc_zeroed};
use std::ptr::NonNull;
use std::vec::Vec;

use page_provider::{CHUNK_SIZE, Capabilities, Chunks, PageProvider};
use platform::Platform;

use crate::sync::SpinLock;

/// Chunks of one host allocation; see the module documentation.
pub struct SimProvider {
    base: *mut u8,
    /// The allocation the chunks come from, given back when the provider is dropped.
    allocation: (*mut u8, Layout),
    state: SpinLock<SimState>,
}

struct SimState {
    /// Per chunk: handed out?
    used: Vec<bool>,
    /// Per chunk: may hold non-zero bytes?
    dirty: Vec<bool>,
    /// Refuse every request for new chunks (out-of-memory tests); remaps are still served.
    refuse: bool,
    /// Remaps move runs to the highest free range instead of the lowest.
    remap_far: bool,
    remaps: usize,
    /// Bytes purged so far.
    purged_bytes: usize,
    /// Purges zero the range (`MADV_DONTNEED`), or leave its bytes (as `MADV_FREE` may).
    purge_zeroes: bool,
    /// Chunks asked for huge pages so far (`hugify`), and of them the ones asked while
    /// populated (dense chunks collapsed in place).
    hugified: usize,
    collapsed: usize,
}

impl SimProvider {
    /// A provider of `chunks` chunks, taken from the host allocator (zeroed) and given back
    /// when the provider is dropped (with the allocator that owns it: leak the allocator to
    /// share it between threads, or drop it only after every thread using it is done).
    ///
    /// # Panics
    ///
    /// If the host allocator refuses the memory.
    pub fn new(chunks: usize) -> Self {
        // Over-allocated and aligned by hand: a zeroed allocation with a small alignment comes
        // straight from fresh (untouched) pages, where a 2 MiB-aligned one is zeroed by
        // writing every byte.
        let layout = Layout::from_size_align((chunks + 1) * CHUNK_SIZE, 16).expect("a valid layout");
        // SAFETY: a non-zero-sized layout; the memory is leaked on purpose.
        let start = unsafe { alloc_zeroed(layout) };
        assert!(!start.is_null(), "the host allocator refused {chunks} chunks");
        let offset = start.align_offset(CHUNK_SIZE);
        Self {
            // Keeps the allocation's provenance (Miri checks it).
            base: start.wrapping_add(offset),
            allocation: (start, layout),
            state: SpinLock::new(SimState {
                used: std::vec![false; chunks],
                dirty: std::vec![false; chunks],
                refuse: false,
                remap_far: false,
                remaps: 0,
                purged_bytes: 0,
                purge_zeroes: true,
                hugified: 0,
                collapsed: 0,
            }),
        }
    }

    /// Makes every later request for new chunks fail (`true`) or be served again
    /// (`false`). Remaps are still served: memory pressure that hits the allocator's own
    /// metadata while a huge block can still grow.
    pub fn set_refuse(&self, refuse: bool) {
        self.state.lock().refuse = refuse;
    }

    /// Makes remaps move runs to the highest free range (`true`), far from the old one (in
    /// another part of the chunk map, for a provider of more than 4 GiB), or to the lowest
    /// (`false`, the default).
    pub fn set_remap_far(&self, far: bool) {
        self.state.lock().remap_far = far;
    }

    /// Chunks handed out and not given back.
    pub fn outstanding(&self) -> usize {
        self.state.lock().used.iter().filter(|&&used| used).count()
    }

    /// Runs moved (or grown) by `remap`.
    pub fn remaps(&self) -> usize {
        self.state.lock().remaps
    }

    /// Bytes purged so far (the allocator purges only with a platform clock).
    pub fn purged_bytes(&self) -> usize {
        self.state.lock().purged_bytes
    }

    /// Chunks asked for huge pages so far, and of them those asked while populated (the
    /// dense-chunk collapse); every call was checked to name chunks handed out.
    pub fn hugified(&self) -> (usize, usize) {
        let state = self.state.lock();
        (state.hugified, state.collapsed)
    }

    /// Makes purges zero their range and say so (`true`, the default, as `MADV_DONTNEED`)
    /// or leave the bytes and not promise zeroes (`false`, as `MADV_FREE`).
    pub fn set_purge_zeroes(&self, zeroes: bool) {
        self.state.lock().purge_zeroes = zeroes;
    }

    fn index_of(&self, address: usize) -> usize {
        (address - self.base as usize) / CHUNK_SIZE
    }

    fn chunk(&self, index: usize) -> *mut u8 {
        self.base.wrapping_add(index * CHUNK_SIZE)
    }
}

impl Drop for SimProvider {
    fn drop(&mut self) {
        let (start, layout) = self.allocation;
        // SAFETY: allocated in `new` with this layout; whoever drops the provider (the
        // allocator that owns it, being dropped) holds no block of it any more.
        unsafe { std::alloc::dealloc(start, layout) };
    }
}

// SAFETY: `base` is only a record of the allocation the provider hands chunks out of;
// the state that says which chunks are out is behind the lock.
unsafe impl Sync for SimProvider {}
// SAFETY: as for Sync.
unsafe impl Send for SimProvider {}

impl SimState {
    /// The lowest (or, `far`, the highest) run of `count` free chunks.
    fn find(&self, count: usize, far: bool) -> Option<usize> {
        let chunks = self.used.len();
        let free = |start: &usize| self.used[*start..*start + count].iter().all(|&used| !used);
        let mut starts = 0..=chunks.checked_sub(count)?;
        if far { starts.rev().find(free) } else { starts.find(free) }
    }

    fn take(&mut self, start: usize, count: usize) -> bool {
        let zeroed = self.dirty[start..start + count].iter().all(|&dirty| !dirty);
        for index in start..start + count {
            self.used[index] = true;
            self.dirty[index] = true;
        }
        zeroed
    }

    fn give_back(&mut self, start: usize, count: usize) {
        for used in &mut self.used[start..start + count] {
            assert!(*used, "chunks given back that were not handed out");
            *used = false;
        }
    }
}

// SAFETY: every run handed out lies in the leaked allocation, 2 MiB-aligned (the allocation
// is), and is marked used until given back, so no two live runs overlap; `zeroed` is true
// only for chunks never handed out before. A remap copies the old run's bytes to the new
// one before giving the old run back.
unsafe impl PageProvider for SimProvider {
    fn capabilities(&self) -> Capabilities {
        let zeroes =
            if self.state.lock().purge_zeroes { Capabilities::PURGE_ZEROES } else { Capabilities::empty() };
        Capabilities::REMAP | Capabilities::PURGE | zeroes
    }

    fn page_size(&self) -> usize {
        4096
    }

    fn alloc_chunks(&self, count: usize) -> Option<Chunks> {
        let mut state = self.state.lock();
        if state.refuse || count == 0 {
            return None;
        }
        let start = state.find(count, false)?;
        let zeroed = state.take(start, count);
        Some(Chunks { base: NonNull::new(self.chunk(start))?, zeroed })
    }

    unsafe fn free_chunks(&self, base: NonNull<u8>, count: usize) {
        let start = self.index_of(base.as_ptr() as usize);
        self.state.lock().give_back(start, count);
    }

    /// Zeroes the range (as `MADV_DONTNEED` does) unless told not to, and counts it.
    unsafe fn purge(&self, base: NonNull<u8>, len: usize) -> bool {
        let mut state = self.state.lock();
        let index = self.index_of(base.as_ptr() as usize);
        assert!(state.used[index], "purge of a chunk not handed out");
        assert!(
            (base.as_ptr() as usize).is_multiple_of(4096) && len.is_multiple_of(4096),
            "purge of part of a page"
        );
        if state.purge_zeroes {
            // SAFETY: the caller's promise: the range lies in chunks handed out, unused.
            unsafe { base.as_ptr().write_bytes(0, len) };
        }
        state.purged_bytes += len;
        true
    }

    /// Checks the safety contract (whole chunks, every one handed out and not given back:
    /// a chunk given back while its huge page is requested would be a race in the caller)
    /// and counts the request; backs nothing.
    unsafe fn hugify(&self, base: NonNull<u8>, len: usize, populated: bool) -> bool {
        let mut state = self.state.lock();
        let address = base.as_ptr() as usize;
        assert!(
            address.is_multiple_of(CHUNK_SIZE) && len.is_multiple_of(CHUNK_SIZE) && len > 0,
            "hugify of part of a chunk"
        );
        let first = self.index_of(address);
        let chunks = first..first + len / CHUNK_SIZE;
        assert!(chunks.end <= state.used.len(), "hugify beyond the provider's chunks");
        assert!(state.used[chunks.clone()].iter().all(|&used| used), "hugify of a chunk not handed out");
        state.hugified += chunks.len();
        if populated {
            state.collapsed += chunks.len();
        }
        true
    }

    /// Checks the same contract as `hugify`; backs nothing.
    unsafe fn unhugify(&self, base: NonNull<u8>, len: usize) {
        let state = self.state.lock();
        let first = self.index_of(base.as_ptr() as usize);
        assert!(
            (base.as_ptr() as usize).is_multiple_of(CHUNK_SIZE)
                && len.is_multiple_of(CHUNK_SIZE)
                && state.used[first..first + len / CHUNK_SIZE].iter().all(|&used| used),
            "unhugify of a range that is not whole chunks handed out"
        );
    }

    unsafe fn remap(&self, base: NonNull<u8>, old_count: usize, new_count: usize) -> Option<NonNull<u8>> {
        let old = self.index_of(base.as_ptr() as usize);
        let mut state = self.state.lock();
        // Grown in place when the chunks after the run are free, as mremap may.
        let tail = old + old_count..old + new_count;
        let far = state.remap_far;
        if !far && tail.end <= state.used.len() && state.used[tail.clone()].iter().all(|&used| !used) {
            state.take(tail.start, tail.len());
            state.remaps += 1;
            return Some(base);
        }
        // Otherwise moved to the lowest free range, the old range given back at once.
        state.give_back(old, old_count);
        let Some(new) = state.find(new_count, far) else {
            state.take(old, old_count);
            return None;
        };
        state.take(new, new_count);
        state.remaps += 1;
        let new_base = self.chunk(new);
        // SAFETY: both runs lie in the allocation; they may overlap (the new run can start
        // below the old one), which `copy` allows.
        unsafe { std::ptr::copy(base.as_ptr(), new_base, old_count * CHUNK_SIZE) };
        NonNull::new(new_base)
    }
}

/// The most slots a [`TestPlatform`] has.
pub const TEST_SLOTS: usize = 8;

#[cfg(not(feature = "shuttle"))]
std::thread_local! {
    static CURRENT_SLOT: Cell<usize> = const { Cell::new(0) };
}

#[cfg(feature = "shuttle")]
shuttle::thread_local! {
    static CURRENT_SLOT: Cell<usize> = const { Cell::new(0) };
}

/// Slots chosen by the test; see the module documentation.
pub struct TestPlatform {
    locks: [SpinLock<()>; TEST_SLOTS],
    /// The clock's reading (nanoseconds), or `NO_CLOCK`.
    clock: core::sync::atomic::AtomicU64,
}

/// `TestPlatform::clock` of a platform without a clock.
const NO_CLOCK: u64 = u64::MAX;

impl TestPlatform {
    /// A platform with [`TEST_SLOTS`] slots and no clock.
    pub const fn new() -> Self {
        Self {
            locks: [const { SpinLock::new(()) }; TEST_SLOTS],
            clock: core::sync::atomic::AtomicU64::new(NO_CLOCK),
        }
    }

    /// A platform with [`TEST_SLOTS`] slots and a clock that reads 0 until the test moves
    /// it with [`advance`](Self::advance).
    pub const fn with_clock() -> Self {
        Self {
            locks: [const { SpinLock::new(()) }; TEST_SLOTS],
            clock: core::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Moves the clock on by `nanoseconds`.
    ///
    /// # Panics
    ///
    /// If the platform has no clock.
    pub fn advance(&self, nanoseconds: u64) {
        let now = self.clock.load(core::sync::atomic::Ordering::Relaxed);
        assert_ne!(now, NO_CLOCK, "this TestPlatform has no clock");
        self.clock.store(now + nanoseconds, core::sync::atomic::Ordering::Relaxed);
    }

    /// Makes the calling thread use `slot` from now on (0 until it says otherwise).
    ///
    /// # Panics
    ///
    /// If `slot` is not below [`TEST_SLOTS`].
    pub fn enter(slot: usize) {
        assert!(slot < TEST_SLOTS);
        CURRENT_SLOT.with(|current| current.set(slot));
    }
}

impl Default for TestPlatform {
    fn default() -> Self {
        Self::new()
    }
}

// Slots are never idle (threads give theirs up explicitly with `Allocator::release_slot`),
// so `try_with_idle_slot` keeps its default.
// SAFETY: every index is below TEST_SLOTS; a closure for a slot runs only while that slot's
// lock is held, so closures for one slot never overlap, and the lock's release/acquire
// orders each one before the next.
unsafe impl Platform for TestPlatform {
    fn slot_count(&self) -> usize {
        TEST_SLOTS
    }

    fn with_slot<R>(&self, f: impl FnOnce(usize) -> R) -> R {
        let slot = CURRENT_SLOT.with(Cell::get);
        let _held = self.locks[slot].lock();
        f(slot)
    }

    fn now_ns(&self) -> Option<u64> {
        let now = self.clock.load(core::sync::atomic::Ordering::Relaxed);
        (now != NO_CLOCK).then_some(now)
    }
}
