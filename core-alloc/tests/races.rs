//! Every race the allocator ever had, replayed deterministically: a test-only pause point
//! (feature `pause-points`) stops one thread at a named place inside the allocator while the
//! others make the interleaving happen, then lets it go. Each test failed on the code before
//! its fix; the same races are also explored by the model checker (`tests/model_check.rs`).

use std::cell::RefCell;
use std::ptr::NonNull;
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::{self, JoinHandle};

#[cfg(feature = "checked")]
use core_alloc::Misuse;
use core_alloc::size_class::{class_for, slab_capacity};
use core_alloc::sync::{PausePoint, set_pause_hook};
use core_alloc::testkit::{SimProvider, TestPlatform};
use core_alloc::{Allocator, MisuseReport};
use page_provider::CHUNK_SIZE;
use platform::Platform;

type Heap = Allocator<SimProvider, TestPlatform>;

static MISUSES: Mutex<Vec<MisuseReport>> = Mutex::new(Vec::new());

fn record_misuse(report: &MisuseReport) {
    MISUSES.lock().unwrap().push(*report);
}

/// A fresh heap of `chunks` chunks, leaked so that threads can share it; misuses recorded.
fn heap(chunks: usize) -> &'static Heap {
    heap_with_cache(chunks, core_alloc::config::FRONT_CACHE_BLOCKS)
}

/// The same with front caches of `blocks` per class (0: none, every free goes straight to
/// its slab).
fn heap_with_cache(chunks: usize, blocks: usize) -> &'static Heap {
    set_pause_hook(Some(pause_hook));
    Box::leak(Box::new(
        Allocator::new(SimProvider::new(chunks), TestPlatform::new())
            .with_misuse_hook(record_misuse)
            .with_front_cache(blocks),
    ))
}

/// The races of a free into a slab, replayed twice: once with the free going straight to the
/// slab, once with it going there from the front cache, which the slot's exit (or
/// `collect()`) empties.
const FRONT_CACHES: [usize; 2] = [0, core_alloc::config::FRONT_CACHE_BLOCKS];

/// Misuses reported for pointers in `heap`'s memory (other tests' heaps report too).
fn misuses_in(heap: &Heap) -> Vec<MisuseReport> {
    MISUSES.lock().unwrap().iter().filter(|report| heap.owns(report.address as *const u8)).copied().collect()
}

/// A pause point a thread will stop at, with the channels to say it arrived and to wait on.
type Armed = (PausePoint, Sender<()>, Receiver<()>);

thread_local! {
    /// The point this thread stops at next.
    static ARMED: RefCell<Option<Armed>> = const { RefCell::new(None) };
}

fn pause_hook(point: PausePoint) {
    let armed = ARMED.with(|armed| {
        let mut armed = armed.borrow_mut();
        if armed.as_ref().is_some_and(|(at, ..)| *at == point) { armed.take() } else { None }
    });
    if let Some((_, arrived, resume)) = armed {
        arrived.send(()).unwrap();
        resume.recv().unwrap();
    }
}

/// A thread stopped at a pause point.
struct Paused<T> {
    resume: Sender<()>,
    thread: JoinHandle<T>,
}

impl<T> Paused<T> {
    /// Lets the thread go on and waits for it; panics if it panicked.
    fn finish(self) -> T {
        self.resume.send(()).unwrap();
        self.thread.join().expect("the paused thread panicked")
    }
}

/// Runs `work` on a new thread in `slot`, and returns once it has stopped at `point`.
fn run_until<T: Send + 'static>(
    slot: usize,
    point: PausePoint,
    work: impl FnOnce() -> T + Send + 'static,
) -> Paused<T> {
    let (arrived_sender, arrived) = channel();
    let (resume, resume_receiver) = channel();
    let thread = thread::spawn(move || {
        TestPlatform::enter(slot);
        ARMED.with(|armed| *armed.borrow_mut() = Some((point, arrived_sender, resume_receiver)));
        work()
    });
    arrived.recv().expect("the thread never reached its pause point");
    Paused { resume, thread }
}

/// Runs `work` on a new thread in `slot`, to the end.
fn run_in<T: Send + 'static>(slot: usize, work: impl FnOnce() -> T + Send + 'static) -> T {
    thread::spawn(move || {
        TestPlatform::enter(slot);
        work()
    })
    .join()
    .expect("the thread panicked")
}

/// Gives the calling thread's slot up, as a host thread does when it exits.
fn exit_slot(heap: &'static Heap) {
    // SAFETY: inside the slot closure, the slot is this thread's alone; not inside another
    // allocator call.
    heap.platform().with_slot(|slot| unsafe { heap.release_slot(slot) });
}

const BLOCK: usize = 64;

fn allocate(heap: &Heap) -> usize {
    heap.allocate(BLOCK, 8).expect("out of memory").as_ptr() as usize
}

fn free(heap: &Heap, block: usize) {
    // SAFETY: each test frees each of its blocks once.
    unsafe { heap.deallocate(NonNull::new(block as *mut u8).unwrap(), BLOCK, 8) }
}

/// Frees everything from a thread that then exits, and checks that the heap has nothing
/// live and nothing stranded.
fn free_all_and_check(heap: &'static Heap, blocks: Vec<usize>) {
    run_in(0, move || {
        for block in blocks {
            free(heap, block);
        }
        heap.check_invariants().unwrap();
        exit_slot(heap);
    });
    let stats = heap.stats();
    assert_eq!(stats.live_allocations(), 0, "{stats}");
    assert_eq!(stats.heap.orphan_slabs, 0, "an abandoned slab was stranded with a block nobody holds");
    assert!(misuses_in(heap).is_empty(), "{:?}", misuses_in(heap));
}

fn slab_blocks() -> usize {
    slab_capacity(class_for(BLOCK, 8).unwrap())
}

/// Issue 8, defect 1. A remote free read the slab's owner, then its remote word: between the
/// two, the abandoned slab was adopted by another slot, filled and marked FULL, and the free
/// handed its block to the arena of the owner it had read (no owner: an index out of bounds,
/// a panic inside `free`).
#[test]
fn stale_owner_in_a_remote_free() {
    for cache in FRONT_CACHES {
        stale_owner_in_a_remote_free_with(cache);
    }
}

fn stale_owner_in_a_remote_free_with(cache: usize) {
    let heap = heap_with_cache(16, cache);
    // Slot 1 takes all but one block of a slab, then exits with them live.
    let mut blocks = run_in(1, move || {
        let blocks: Vec<usize> = (1..slab_blocks()).map(|_| allocate(heap)).collect();
        exit_slot(heap);
        blocks
    });
    let victim = blocks[0];
    // Slot 2 frees one of them: a remote free into an abandoned slab (from its front cache
    // when its thread exits, if it has one); it stops before it reads the slab's remote word.
    let consumer = run_until(2, PausePoint::RemoteFreeOwnerRead, move || {
        free(heap, victim);
        exit_slot(heap);
    });
    // Slot 3 adopts the slab, takes its last block, and marks it FULL on the next allocation.
    let (last, fresh) = run_in(3, move || (allocate(heap), allocate(heap)));
    let slab = victim & !(CHUNK_SIZE - 1);
    assert_eq!(last & !(CHUNK_SIZE - 1), slab, "slot 3 did not adopt the abandoned slab");
    // The free goes on: it finds the slab FULL, and must wake slot 3, the owner the FULL word
    // names.
    consumer.finish();
    // Slot 3 gets the block back on its next refill.
    let again = run_in(3, move || {
        let blocks: Vec<usize> = (0..slab_blocks()).map(|_| allocate(heap)).collect();
        blocks
    });
    assert!(again.contains(&victim), "slot 3 never got the freed block back");
    blocks.remove(0);
    blocks.extend([last, fresh]);
    blocks.extend(again);
    free_all_and_check(heap, blocks);
}

/// Issue 8, first suspected defect (confirmed). A remote free won a FULL slab's exchange
/// (FULL -> ACTIVE) and, before it pushed its block on the owner's delayed list, the owner's
/// thread exited: the block landed on a dead arena's list and the abandoned slab could never
/// be released.
#[test]
fn full_slab_free_racing_owner_exit() {
    for cache in FRONT_CACHES {
        full_slab_free_racing_owner_exit_with(cache);
    }
}

fn full_slab_free_racing_owner_exit_with(cache: usize) {
    let heap = heap_with_cache(16, cache);
    let capacity = slab_blocks();
    // Slot 1 fills a slab; the next allocation marks it FULL and takes another slab.
    let (tx, rx) = channel::<()>();
    let (done_tx, done_rx) = channel::<Vec<usize>>();
    let owner = thread::spawn(move || {
        TestPlatform::enter(1);
        let blocks: Vec<usize> = (0..=capacity).map(|_| allocate(heap)).collect();
        done_tx.send(blocks).unwrap();
        rx.recv().unwrap(); // exit only when told
        exit_slot(heap);
    });
    let mut blocks = done_rx.recv().unwrap();
    assert_ne!(blocks[0] & !(CHUNK_SIZE - 1), 0);
    let victim = blocks[0];
    // Slot 2 frees a block of the FULL slab (cached if it has a front cache, batched, then
    // handed over by `collect`) and stops right after winning its exchange.
    let consumer = run_until(2, PausePoint::RemoteFreeWonFull, move || {
        free(heap, victim);
        heap.collect();
    });
    // The owner exits meanwhile.
    tx.send(()).unwrap();
    owner.join().unwrap();
    consumer.finish();
    blocks.remove(0);
    // Freeing every other block must release the abandoned slab.
    free_all_and_check(heap, blocks);
}

/// Issue 8, defect 2. Growing a huge block by remap moved it outside the lock (the provider
/// unmapped the old range at once) and only then forgot the old range's chunk-map records:
/// another thread mapped a new block at the old addresses meanwhile, and the late forget
/// erased its records (its free then reported a foreign pointer and leaked it).
#[test]
fn huge_remap_never_erases_another_threads_records() {
    let heap = heap(32);
    let (block, blocker) = run_in(1, move || {
        let block = heap.allocate(3 << 20, 8).unwrap(); // two chunks
        // A block right after it, so that growing must move it.
        let blocker = heap.allocate(3 << 20, 8).unwrap();
        // SAFETY: a fresh block of 3 MiB.
        unsafe { block.as_ptr().write_bytes(0x5A, 3 << 20) };
        (block.as_ptr() as usize, blocker.as_ptr() as usize)
    });
    let grower = run_until(1, PausePoint::AfterRemap, move || {
        // SAFETY: a live block of this heap, used by nothing else.
        let grown = unsafe { heap.reallocate(NonNull::new(block as *mut u8).unwrap(), 8, 5 << 20) };
        grown.unwrap().as_ptr() as usize
    });
    // The old range is free at the provider now: the next two-chunk block gets it.
    let other = run_in(2, move || heap.allocate(3 << 20, 8).unwrap().as_ptr() as usize);
    assert_eq!(other, block, "the provider did not hand the old range out again");
    let grown = grower.finish();
    assert_ne!(grown, block);
    assert!(heap.owns(other as *const u8), "the other thread's block lost its chunk-map record");
    assert!(heap.owns(grown as *const u8));
    // SAFETY: the grown block is live and keeps the first 3 MiB.
    let kept = unsafe { std::slice::from_raw_parts(grown as *const u8, 3 << 20) };
    assert!(kept.iter().all(|&byte| byte == 0x5A));
    run_in(2, move || {
        for address in [other, grown, blocker] {
            // SAFETY: live blocks of this heap.
            unsafe { heap.free(NonNull::new(address as *mut u8).unwrap()) };
        }
    });
    assert!(misuses_in(heap).is_empty() && MISUSES.lock().unwrap().iter().all(|m| m.address != other));
    let stats = heap.stats();
    assert_eq!(stats.live_allocations(), 0, "{stats}");
    assert_eq!(stats.heap.huge_live, 0);
}

/// Issue 8, third suspected defect (ruled out). In checked builds, a misuse-free (here a
/// double free) that has found its block's slab stops before it clears the block's live bit;
/// meanwhile the slab empties, its chunk is trimmed and its live-bit table goes to the spare
/// list, linked through the table's first word. The late bit operation must neither corrupt
/// that list (it never touches the first word: those bits are header bytes, where no block
/// starts) nor go unreported, and the table must serve the next chunk.
#[cfg(feature = "checked")]
#[test]
fn checked_double_free_racing_trim() {
    let heap = heap(8);
    let block = run_in(1, move || {
        let block = allocate(heap);
        free(heap, block);
        block
    });
    let misuser = run_until(2, PausePoint::CheckedFreeBeforeBit, move || free(heap, block));
    run_in(1, move || heap.collect()); // the empty slab goes, its chunk is trimmed
    assert!(heap.stats().holds_nothing_but_metadata(), "{}", heap.stats());
    misuser.finish();
    let reports = misuses_in_any(block);
    assert_eq!(reports, [Misuse::DoubleFree], "the double free was not reported as one");
    // The next slab chunk takes the spare table: its link must be intact.
    run_in(1, move || {
        let blocks: Vec<usize> = (0..100).map(|_| allocate(heap)).collect();
        for &other in &blocks {
            free(heap, other);
        }
        heap.check_invariants().unwrap();
    });
    assert_eq!(heap.stats().live_allocations(), 0);
    assert_eq!(misuses_in(heap).len(), 1, "{:?}", misuses_in(heap));
}

/// Misuse kinds reported at `address` by any heap.
#[cfg(feature = "checked")]
fn misuses_in_any(address: usize) -> Vec<Misuse> {
    MISUSES
        .lock()
        .unwrap()
        .iter()
        .filter(|report| report.address == address)
        .map(|report| report.kind)
        .collect()
}

/// Issue 8, defect 4. Resizing a large run in place kept its address even when the new
/// alignment asked for more than the address has.
#[test]
fn large_realloc_in_place_honours_a_larger_alignment() {
    let heap = heap(8);
    run_in(0, move || {
        let block = heap.allocate(200_000, 8).unwrap();
        let address = block.as_ptr() as usize;
        let align = 1usize << (address.trailing_zeros() + 1);
        assert!(align <= 1 << 20, "the block is too well aligned for this test");
        // SAFETY: a live block of this heap.
        let moved = unsafe { heap.reallocate(block, align, 210_000) }.unwrap();
        assert_eq!(moved.as_ptr() as usize % align, 0, "the result is not aligned to {align}");
        // SAFETY: live.
        unsafe { heap.free(moved) };
    });
    assert!(misuses_in(heap).is_empty());
}
