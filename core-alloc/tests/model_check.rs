//! The allocator's concurrent protocols under the shuttle model checker: the real code, its
//! every atomic operation and lock a scheduling point (`core-alloc/src/sync.rs`), run over
//! many random and PCT schedules of small scenarios, each ending with the heap checked.
//!
//! ```sh
//! cargo test -p core-alloc --features shuttle --test model_check --release
//! MODEL_CHECK_ITERATIONS=100000 cargo test -p core-alloc --features shuttle --test model_check --release
//! ```
//!
//! A failure prints the schedule; `shuttle::replay` with it reproduces the failure.
//! Scenarios, and the protocols they cover:
//! - `adoption_vs_remote_free`: slab remote word (ACTIVE/FULL/ABANDONED), adoption, orphan
//!   lists, the last free of an abandoned slab, delayed lists (issue 8, defect 1).
//! - `full_slab_free_vs_owner_exit` (and `..._and_slot_reuse`): FULL -> ACTIVE hand-off
//!   racing the owner's slot release, delayed-list closing, and its reopening by the slot's
//!   next holder (issue 8, first suspected defect).
//! - `huge_remap_vs_new_chunks`: chunk map under insert, forget and remap; node reserve
//!   (issue 8, defect 2).
//! - `orphans_under_churn`: orphan lists, batched remote frees, abandonment and adoption by
//!   several slots at once, the last free releasing a slab.
//! - `chunk_map_under_churn`: large, huge and cached chunks recorded and forgotten while
//!   other threads look pointers up.
//! - `compact_mode_under_churn`: the mode decided by racing first allocations, one-page
//!   slabs in a span (remote frees, abandonment, release to the fit heap), fit blocks.
//! - `compact_full_slab_page_vs_owner_refills`: remote frees into a FULL slab page (the
//!   owner's delayed list) racing the owner's refills, which drain it.
//! - `large_cache_double_free_and_collect`: the arenas' large caches, the `owner` exchange
//!   that decides between two frees of one large run, collect giving cached runs back.
//! - `decay_and_purge_under_churn`: decay and purging on the clock.
//! - `bulk_free_vs_remote_free`: bulk-free mode giving current slabs back (and purging the
//!   drained chunk's free pages) while a remote free of one of their blocks is in flight.
//! - `bulk_purge_vs_carve`: the bulk purge of a drained chunk racing another slot carving
//!   new runs from its free pages.
//! - `bulk_block_purge_vs_reuse`: the purge of a block's own pages as it is freed in bulk,
//!   racing another slot carving new slabs from the pages its slab gives back.
//! - `bulk_pass_vs_carve`: the pass over mostly free chunks well into a bulk free racing
//!   another slot carving new slabs from their free pages.
//! - `dense_chunk_hugify_vs_chunk_release`: the huge-page request for a dense chunk, made
//!   outside the lock, racing frees and collects that give empty chunks back.
//! - `metadata_vs_last_resort`: new arenas' metadata runs carved in the chunk that holds
//!   metadata while another slot, the provider's chunks all taken, carves large runs there
//!   as the last resort.
//!
//! Every scenario runs twice: without front caches (frees go straight into the slab
//! protocols) and with tiny ones (frees reach the slabs from the cache: on overflow, and as
//! each thread empties its cache when it finishes).
#![cfg(feature = "shuttle")]

use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use core_alloc::size_class::{class_for, slab_capacity};
use core_alloc::testkit::shuttle::{self, thread};
use core_alloc::testkit::{SimProvider, TestPlatform};
use core_alloc::{Allocator, Misuse, MisuseReport};
use platform::Platform;

type Heap = Allocator<SimProvider, TestPlatform>;

fn panic_on_misuse(report: &MisuseReport) {
    panic!("the allocator reported a misuse nobody made: {report:?}");
}

fn heap(chunks: usize) -> Arc<Heap> {
    Arc::new(
        Allocator::new(SimProvider::new(chunks), TestPlatform::new())
            .with_misuse_hook(panic_on_misuse)
            .with_front_cache(front_cache()),
    )
}

/// The front-cache setting of the heaps the scenario being explored makes: every scenario
/// runs with none (each free goes straight into the slab protocols) and with a tiny one (a
/// free is cached; a third free of a class flushes, and every thread empties its cache as
/// it finishes, so the frees reach the slabs inside the concurrent part, from the cache).
static FRONT_CACHE: AtomicUsize = AtomicUsize::new(0);

fn front_cache() -> usize {
    FRONT_CACHE.load(Ordering::Relaxed)
}

/// Schedules per scenario and scheduler: quick in CI, more with MODEL_CHECK_ITERATIONS.
fn iterations() -> usize {
    std::env::var("MODEL_CHECK_ITERATIONS").ok().and_then(|text| text.parse().ok()).unwrap_or(300)
}

/// Schedules run so far by this test binary (to say how many it took to find a bug).
static SCHEDULES: AtomicUsize = AtomicUsize::new(0);

/// Explores `scenario` with the random scheduler and with PCT (depth 3); on a failure,
/// says how many schedules it took.
fn explore(scenario: fn()) {
    let counted = move || {
        SCHEDULES.fetch_add(1, Ordering::Relaxed);
        scenario();
    };
    let start = SCHEDULES.load(Ordering::Relaxed);
    for cache in [0, 2] {
        FRONT_CACHE.store(cache, Ordering::Relaxed);
        let explored = std::panic::catch_unwind(|| {
            shuttle::check_random(counted, iterations());
            shuttle::check_pct(counted, iterations(), 3);
        });
        if let Err(failure) = explored {
            eprintln!(
                "model check: failed at schedule {} (front cache {cache})",
                SCHEDULES.load(Ordering::Relaxed) - start
            );
            std::panic::resume_unwind(failure);
        }
    }
}

const BLOCK: usize = 64;

fn allocate(heap: &Heap, size: usize) -> usize {
    heap.allocate(size, 8).expect("out of memory").as_ptr() as usize
}

fn free(heap: &Heap, block: usize) {
    // SAFETY: every scenario frees each of its blocks once.
    unsafe { heap.free(NonNull::new(block as *mut u8).unwrap()) }
}

fn exit_slot(heap: &Heap) {
    // SAFETY: inside the slot closure the slot is this thread's alone; not inside another
    // allocator call.
    heap.platform().with_slot(|slot| unsafe { heap.release_slot(slot) });
}

/// Runs `work` on a new shuttle thread in `slot`.
fn spawn<T: Send + 'static>(
    heap: &Arc<Heap>,
    slot: usize,
    work: impl FnOnce(&Heap) -> T + Send + 'static,
) -> thread::JoinHandle<T> {
    let heap = Arc::clone(heap);
    thread::spawn(move || {
        TestPlatform::enter(slot);
        let result = work(&heap);
        heap.flush_cache();
        result
    })
}

/// Frees `blocks` from slot 0, gathers the remote frees of every slot still in use (not
/// the `exited` ones: nobody would collect those), and checks the heap: no block live, no
/// slab stranded, bookkeeping consistent.
fn free_all_and_check(heap: &Arc<Heap>, blocks: Vec<usize>, exited: &[usize]) {
    TestPlatform::enter(0);
    for block in blocks {
        free(heap, block);
    }
    for slot in (0..core_alloc::testkit::TEST_SLOTS).filter(|slot| !exited.contains(slot)) {
        TestPlatform::enter(slot);
        heap.collect();
        heap.check_invariants().unwrap();
    }
    TestPlatform::enter(0);
    let stats = heap.stats();
    assert_eq!(stats.live_allocations(), 0, "{stats}");
    assert_eq!(stats.heap.orphan_slabs, 0, "an abandoned slab was stranded");
    assert_eq!(stats.heap.huge_live + stats.heap.large_live, 0);
}

/// Allocates `count` blocks of `size` bytes and fills each with its own byte (1, 2, ...);
/// returns them with their fills, for [`check_filled`].
fn allocate_filled(heap: &Heap, size: usize, count: u8) -> Vec<(usize, u8)> {
    (1..=count)
        .map(|fill| {
            let block = allocate(heap, size);
            // SAFETY: a live block of `size` bytes, the caller's.
            unsafe { (block as *mut u8).write_bytes(fill, size) };
            (block, fill)
        })
        .collect()
}

/// Checks that every block of [`allocate_filled`] still holds its fill.
fn check_filled(blocks: &[(usize, u8)], size: usize, failure: &str) {
    for &(block, fill) in blocks {
        // SAFETY: a live block of `size` bytes.
        let bytes = unsafe { std::slice::from_raw_parts(block as *const u8, size) };
        assert!(bytes.iter().all(|&byte| byte == fill), "{failure}");
    }
}

fn slab_blocks() -> usize {
    slab_capacity(class_for(BLOCK, 8).unwrap())
}

/// A slab abandoned with one free block left: one slot frees a block of it while another
/// adopts it, takes the last block and marks it FULL.
fn adoption_vs_remote_free() {
    let heap = heap(8);
    TestPlatform::enter(1);
    let mut blocks: Vec<usize> = (1..slab_blocks()).map(|_| allocate(&heap, BLOCK)).collect();
    exit_slot(&heap);
    let victim = blocks.remove(0);
    let consumer = spawn(&heap, 2, move |heap| free(heap, victim));
    let taker = spawn(&heap, 3, |heap| [allocate(heap, BLOCK), allocate(heap, BLOCK)]);
    consumer.join().unwrap();
    blocks.extend(taker.join().unwrap());
    free_all_and_check(&heap, blocks, &[1]);
}

#[test]
fn model_adoption_vs_remote_free() {
    explore(adoption_vs_remote_free);
}

/// A slab marked FULL by its owner: another slot frees a block of it (winning FULL ->
/// ACTIVE) while the owner gives its slot up.
fn full_slab_free_vs_owner_exit() {
    let heap = heap(8);
    TestPlatform::enter(1);
    let mut blocks: Vec<usize> = (0..=slab_blocks()).map(|_| allocate(&heap, BLOCK)).collect();
    let victim = blocks.remove(0);
    let consumer = spawn(&heap, 2, move |heap| {
        free(heap, victim);
        heap.collect(); // hands the batched free over
    });
    let owner = spawn(&heap, 1, exit_slot);
    consumer.join().unwrap();
    owner.join().unwrap();
    free_all_and_check(&heap, blocks, &[1]);
}

#[test]
fn model_full_slab_free_vs_owner_exit() {
    explore(full_slab_free_vs_owner_exit);
}

/// As above, and the exited slot is taken again at once by a new thread that allocates the
/// same class: the free may reach the delayed list closed (then it frees through the slab)
/// or reopened by the new holder (which then frees the block), never lose it, and the new
/// holder may adopt the abandoned slab meanwhile.
fn full_slab_free_vs_owner_exit_and_slot_reuse() {
    let heap = heap(8);
    TestPlatform::enter(1);
    let mut blocks: Vec<usize> = (0..=slab_blocks()).map(|_| allocate(&heap, BLOCK)).collect();
    let victim = blocks.remove(0);
    let consumer = spawn(&heap, 2, move |heap| {
        free(heap, victim);
        heap.collect(); // hands the batched free over
    });
    let owner = spawn(&heap, 1, |heap| {
        exit_slot(heap);
        // A new thread in the same slot.
        (0..3).map(|_| allocate(heap, BLOCK)).collect::<Vec<usize>>()
    });
    consumer.join().unwrap();
    blocks.extend(owner.join().unwrap());
    free_all_and_check(&heap, blocks, &[]);
}

#[test]
fn model_full_slab_free_vs_owner_exit_and_slot_reuse() {
    explore(full_slab_free_vs_owner_exit_and_slot_reuse);
}

/// One slot grows a huge block (the provider moves it and frees the old range at once)
/// while another maps and frees a huge block of the same size, which the provider places at
/// the lowest free addresses: the old range, once it is free.
fn huge_remap_vs_new_chunks() {
    let heap = heap(16);
    TestPlatform::enter(1);
    let block = allocate(&heap, 3 << 20);
    let blocker = allocate(&heap, 3 << 20); // growing in place is impossible
    let grower = spawn(&heap, 1, move |heap| {
        // SAFETY: a live block of this heap, used by nothing else.
        let grown = unsafe { heap.reallocate(NonNull::new(block as *mut u8).unwrap(), 8, 5 << 20) };
        grown.unwrap().as_ptr() as usize
    });
    let other = spawn(&heap, 2, |heap| {
        let other = allocate(heap, 3 << 20);
        assert!(heap.owns(other as *const u8));
        free(heap, other);
        let again = allocate(heap, 3 << 20);
        assert!(heap.owns(again as *const u8));
        again
    });
    let grown = grower.join().unwrap();
    let again = other.join().unwrap();
    assert!(heap.owns(grown as *const u8) && heap.owns(again as *const u8));
    free_all_and_check(&heap, vec![grown, again, blocker], &[]);
}

#[test]
fn model_huge_remap_vs_new_chunks() {
    explore(huge_remap_vs_new_chunks);
}

/// Two slots allocate blocks of two classes and exit (abandoning their slabs); two slots
/// free them, batching, while a fifth allocates the same classes (adopting).
fn orphans_under_churn() {
    let heap = heap(8);
    let sizes = [BLOCK, 3 * BLOCK];
    let producers: Vec<_> = (1..=2)
        .map(|slot| {
            spawn(&heap, slot, move |heap| {
                let blocks: Vec<usize> = (0..24).map(|index| allocate(heap, sizes[index % 2])).collect();
                exit_slot(heap);
                blocks
            })
        })
        .collect();
    let mut blocks: Vec<usize> =
        producers.into_iter().flat_map(|producer| producer.join().unwrap()).collect();
    let second_half = blocks.split_off(blocks.len() / 2);
    let first_half = std::mem::take(&mut blocks);
    let consumers = [(3, first_half), (4, second_half)].map(|(slot, mine)| {
        spawn(&heap, slot, move |heap| {
            for (index, block) in mine.into_iter().enumerate() {
                free(heap, block);
                if index % 7 == 0 {
                    heap.collect();
                }
            }
        })
    });
    let adopter = spawn(&heap, 5, move |heap| (0..8).map(|index| allocate(heap, sizes[index % 2])).collect());
    for consumer in consumers {
        consumer.join().unwrap();
    }
    let kept: Vec<usize> = adopter.join().unwrap();
    free_all_and_check(&heap, kept, &[1, 2]);
}

#[test]
fn model_orphans_under_churn() {
    explore(orphans_under_churn);
}

/// Large runs, single-chunk huge blocks (the empty-chunk cache) and a growing huge block,
/// on three slots, while a fourth checks that live blocks stay known to the chunk map.
fn chunk_map_under_churn() {
    let heap = heap(24);
    TestPlatform::enter(0);
    let watched = allocate(&heap, 1 << 20 | 1); // one chunk, huge
    let large = spawn(&heap, 1, |heap| {
        for size in [200_000, 600_000, 64_000] {
            let block = allocate(heap, size);
            assert!(heap.owns(block as *const u8));
            free(heap, block);
        }
    });
    let huge = spawn(&heap, 2, |heap| {
        for _ in 0..2 {
            let block = allocate(heap, 1 << 20 | 1);
            free(heap, block);
        }
    });
    let grower = spawn(&heap, 3, |heap| {
        let block = allocate(heap, 3 << 20);
        // SAFETY: a live block of this heap, used by nothing else.
        let grown = unsafe { heap.reallocate(NonNull::new(block as *mut u8).unwrap(), 8, 7 << 20) };
        grown.unwrap().as_ptr() as usize
    });
    let watcher = spawn(&heap, 4, move |heap| {
        for _ in 0..4 {
            assert!(heap.owns(watched as *const u8), "a live block lost its record");
        }
    });
    large.join().unwrap();
    huge.join().unwrap();
    watcher.join().unwrap();
    let grown = grower.join().unwrap();
    free_all_and_check(&heap, vec![watched, grown], &[]);
}

#[test]
fn model_chunk_map_under_churn() {
    explore(chunk_map_under_churn);
}

/// Double frees reported in the current schedule.
static DOUBLE_FREES: AtomicUsize = AtomicUsize::new(0);

fn count_double_free(report: &MisuseReport) {
    assert_eq!(report.kind, Misuse::DoubleFree, "the allocator reported a misuse nobody made: {report:?}");
    DOUBLE_FREES.fetch_add(1, Ordering::Relaxed);
}

/// The arenas' large caches (issue 10): two slots free one large block at once (a double
/// free: exactly one wins the run's exchange and caches it, the other is told), while a
/// third frees another large block, takes its run back for a smaller request and frees it
/// again, and a fourth allocates and frees large blocks and collects. Then the racers' slots
/// are given up (the winner's cache flushed to the central heap) while the third and fourth
/// may still run, new holders allocate and free, and everything goes back.
fn large_cache_double_free_and_collect() {
    DOUBLE_FREES.store(0, Ordering::Relaxed);
    let heap = Arc::new(
        Allocator::new(SimProvider::new(8), TestPlatform::new())
            .with_misuse_hook(count_double_free)
            .with_front_cache(front_cache()),
    );
    TestPlatform::enter(0);
    let shared = allocate(&heap, 64_000);
    let other = allocate(&heap, 100_000);
    let racers = [1, 2].map(|slot| spawn(&heap, slot, move |heap| free(heap, shared)));
    let reuser = spawn(&heap, 3, move |heap| {
        free(heap, other);
        let again = allocate(heap, 90_000);
        assert_eq!(again, other, "the cached run did not serve a request it fits");
        free(heap, again);
    });
    let collector = spawn(&heap, 4, |heap| {
        for size in [40_000, 200_000] {
            let block = allocate(heap, size);
            free(heap, block);
            heap.collect();
        }
    });
    for racer in racers {
        racer.join().unwrap();
    }
    assert_eq!(DOUBLE_FREES.load(Ordering::Relaxed), 1, "one of two frees of a block must be reported");
    // Once both frees are done (a double free that came after the run went back to the
    // central heap and was carved again could not be told from a free of the new block), the
    // racers' slots are given up, the winner's cache going back to the central heap while the
    // reuser and the collector work; then new holders of the slots use them.
    let phase_two = [1, 2].map(|slot| {
        spawn(&heap, slot, |heap| {
            exit_slot(heap);
            let block = allocate(heap, 60_000);
            free(heap, block);
        })
    });
    reuser.join().unwrap();
    collector.join().unwrap();
    for thread in phase_two {
        thread.join().unwrap();
    }
    free_all_and_check(&heap, Vec::new(), &[]);
    assert_eq!(heap.stats().large_cached, 0, "collect left large runs cached");
}

#[test]
fn model_large_cache_double_free_and_collect() {
    explore(large_cache_double_free_and_collect);
}

type CompactHeap = Allocator<page_provider::fixed::FixedRegion, TestPlatform>;

/// An allocator over a span of `bytes` (leaked): compact mode.
fn compact_heap(bytes: usize) -> Arc<CompactHeap> {
    let span = vec![0u128; bytes / 16].leak();
    // SAFETY: the leaked, zeroed vector is used by nothing else.
    let region = unsafe { page_provider::fixed::FixedRegion::new(span.as_mut_ptr().cast(), bytes, true) };
    Arc::new(
        Allocator::new(region, TestPlatform::new())
            .with_misuse_hook(panic_on_misuse)
            .with_front_cache(front_cache()),
    )
}

/// Compact mode (issue 9): two slots' first allocations race the decision of the mode;
/// slab blocks and fit blocks are freed by other slots while their owner exits (remote
/// frees into one-page slabs, abandonment, the last free releasing a slab page to the fit
/// heap) and while a fourth slot takes and gives back slab pages and fit blocks.
fn compact_mode_under_churn() {
    let heap = compact_heap(64 * 1024);
    let sizes = [48, 600, 48, 200];
    let producers: Vec<_> = (1..=2)
        .map(|slot| {
            let heap = Arc::clone(&heap);
            thread::spawn(move || {
                TestPlatform::enter(slot);
                let blocks: Vec<usize> = (0..12)
                    .map(|index| heap.allocate(sizes[index % 4], 8).expect("out of memory").as_ptr() as usize)
                    .collect();
                if slot == 1 {
                    heap.platform().with_slot(|slot| {
                        // SAFETY: the slot is this thread's alone, and not inside another call.
                        unsafe { heap.release_slot(slot) }
                    });
                }
                blocks
            })
        })
        .collect();
    let mut blocks: Vec<usize> =
        producers.into_iter().flat_map(|producer| producer.join().unwrap()).collect();
    let theirs = blocks.split_off(blocks.len() / 2);
    let freer = {
        let heap = Arc::clone(&heap);
        thread::spawn(move || {
            TestPlatform::enter(3);
            for block in theirs {
                // SAFETY: each block is freed once.
                unsafe { heap.free(NonNull::new(block as *mut u8).unwrap()) };
            }
            heap.collect();
        })
    };
    let churner = {
        let heap = Arc::clone(&heap);
        thread::spawn(move || {
            TestPlatform::enter(4);
            for round in 0..3 {
                let block = heap.allocate(sizes[round % 4] + 8, 8).expect("out of memory");
                // SAFETY: a fresh block, freed once.
                unsafe { heap.free(block) };
                heap.collect();
            }
        })
    };
    freer.join().unwrap();
    churner.join().unwrap();
    TestPlatform::enter(0);
    for block in blocks {
        // SAFETY: each block is freed once.
        unsafe { heap.free(NonNull::new(block as *mut u8).unwrap()) };
    }
    for slot in [0, 2, 3, 4] {
        TestPlatform::enter(slot);
        heap.collect();
        heap.check_invariants().unwrap();
    }
    TestPlatform::enter(0);
    let stats = heap.stats();
    assert!(heap.is_compact());
    assert_eq!(stats.live_allocations(), 0, "{stats}");
    assert_eq!(stats.heap.orphan_slabs, 0, "an abandoned slab page was stranded");
    assert_eq!(stats.heap.region.slab_pages, 0, "a slab page was not given back: {stats}");
}

#[test]
fn model_compact_mode_under_churn() {
    explore(compact_mode_under_churn);
}

/// Compact mode's FULL slab pages (issue 9's README kernel found this path broken): one
/// slot fills a slab page, which its next refill marks FULL; another slot frees two of its
/// blocks and hands them over (remote frees into a FULL slab go to the owner's delayed
/// list) while the owner keeps allocating and refilling, draining that list. The drain must
/// find each block's slab in its page: if it does not, the page's count of used blocks never
/// returns to 0 and the page is never given back, which the end of the scenario checks.
fn compact_full_slab_page_vs_owner_refills() {
    let heap = compact_heap(64 * 1024);
    TestPlatform::enter(1);
    let mut mine: Vec<usize> =
        (0..100).map(|_| heap.allocate(48, 8).expect("out of memory").as_ptr() as usize).collect();
    let first_page = mine[0] & !4095;
    assert!(mine.iter().any(|&block| block & !4095 != first_page), "the first page did not fill");
    let theirs: Vec<usize> =
        mine.iter().copied().filter(|&block| block & !4095 == first_page).take(2).collect();
    mine.retain(|block| !theirs.contains(block));
    let freer = {
        let heap = Arc::clone(&heap);
        thread::spawn(move || {
            TestPlatform::enter(2);
            for block in theirs {
                // SAFETY: each block is freed once.
                unsafe { heap.free(NonNull::new(block as *mut u8).unwrap()) };
            }
            heap.collect(); // hands the batch over: into the FULL page's delayed list
        })
    };
    let more: Vec<usize> =
        (0..100).map(|_| heap.allocate(48, 8).expect("out of memory").as_ptr() as usize).collect();
    freer.join().unwrap();
    for block in mine.into_iter().chain(more) {
        // SAFETY: each block is freed once.
        unsafe { heap.free(NonNull::new(block as *mut u8).unwrap()) };
    }
    for slot in [2, 1, 2, 1] {
        TestPlatform::enter(slot);
        heap.collect();
        heap.check_invariants().unwrap();
    }
    let stats = heap.stats();
    assert_eq!(stats.live_allocations(), 0, "{stats}");
    assert_eq!(stats.heap.region.slab_pages, 0, "a slab page kept blocks nobody holds: {stats}");
}

#[test]
fn model_compact_full_slab_page_vs_owner_refills() {
    explore(compact_full_slab_page_vs_owner_refills);
}

/// Decay and purging on the clock (issue 10), with the real code: a slot fills chunks with
/// large blocks and frees most of them (chunks empty and go to the cache, or stay mostly free
/// and become purge candidates), checking every byte of the blocks it keeps; another slot
/// moves the clock and calls `decay()` (chunks leave the cache, free pages are purged - the
/// simulated provider zeroes them - and its own idle arena is flushed); a third takes cached
/// chunks for single-chunk huge blocks and collects. Live bytes must survive every purge and
/// the heap must stay consistent.
fn decay_and_purge_under_churn() {
    const LARGE: usize = 300 * 1024;
    let heap: Arc<Heap> = Arc::new(
        Allocator::new(SimProvider::new(12), TestPlatform::with_clock())
            .with_decay(10)
            .with_misuse_hook(panic_on_misuse)
            .with_front_cache(front_cache()),
    );
    TestPlatform::enter(0);
    let kept = allocate(&heap, LARGE);
    // SAFETY: a live block of LARGE bytes.
    unsafe { (kept as *mut u8).write_bytes(0x5A, LARGE) };
    let churner = spawn(&heap, 1, |heap| {
        for round in 0..2u8 {
            let blocks: Vec<usize> = (0..8).map(|_| allocate(heap, LARGE)).collect();
            for &block in &blocks {
                // SAFETY: live blocks of LARGE bytes.
                unsafe { (block as *mut u8).write_bytes(round + 1, LARGE) };
            }
            let (keep, rest) = blocks.split_at(1);
            for &block in rest {
                free(heap, block);
            }
            // SAFETY: a live block of LARGE bytes.
            let bytes = unsafe { std::slice::from_raw_parts(keep[0] as *const u8, LARGE) };
            assert!(bytes.iter().all(|&byte| byte == round + 1), "a purge reached a live block");
            free(heap, keep[0]);
        }
    });
    let decayer = spawn(&heap, 2, |heap| {
        let block = allocate(heap, BLOCK); // an arena to go idle
        free(heap, block);
        for _ in 0..4 {
            heap.platform().advance(10);
            heap.decay();
        }
    });
    let huge = spawn(&heap, 3, |heap| {
        for _ in 0..2 {
            let block = allocate(heap, 2 << 20);
            free(heap, block);
        }
        heap.collect();
    });
    churner.join().unwrap();
    decayer.join().unwrap();
    huge.join().unwrap();
    // SAFETY: a live block of LARGE bytes.
    let bytes = unsafe { std::slice::from_raw_parts(kept as *const u8, LARGE) };
    assert!(bytes.iter().all(|&byte| byte == 0x5A), "a purge reached a live block");
    DECAY_PURGED.fetch_add(heap.provider().purged_bytes(), Ordering::Relaxed);
    heap.platform().advance(100);
    TestPlatform::enter(0);
    heap.decay();
    free_all_and_check(&heap, vec![kept], &[]);
}

/// Bytes `decay_and_purge_under_churn` purged while its threads ran, over its schedules:
/// the probe that the pass purges pages that stayed free a period (`ChunkHeader::aged`)
/// while the churner carves runs from the same chunks (nothing there frees in bulk, so
/// every purge is the clock's).
static DECAY_PURGED: AtomicUsize = AtomicUsize::new(0);

#[test]
fn model_decay_and_purge_under_churn() {
    DECAY_PURGED.store(0, Ordering::Relaxed);
    explore(decay_and_purge_under_churn);
    assert!(DECAY_PURGED.load(Ordering::Relaxed) > 0, "no schedule purged on the clock");
}

/// Bulk frees (`Arena::bulk_free`): with the tiny front cache, the owner's frees flush its
/// cache into the slabs, a flush empties a slab, and the arena goes into bulk-free mode,
/// giving back its empty current slab at once (`release_current_if_empty`) and each one that
/// empties after; meanwhile another slot frees a block of each slab remotely. The
/// interleaving this looks for: a current slab given back (and carved again) while a remote
/// free of one of its blocks is in flight, which would lose that block or reuse its slab.
/// Blocks of 1 KiB: the first slab holds four, the second (current) is a whole one. The
/// owner frees the first slab's four and then the current slab's blocks but one, which the
/// other slot frees: the flush of the first slab's last block empties it (bulk-free mode
/// from then on), and the last local free may find the current slab empty or not,
/// depending on where the remote free is. A 64-byte block stays live in the same chunk, so
/// the releases in bulk-free mode leave the chunk drained but in use, and its free pages are
/// purged at once (`Heap::free_run_in_bulk`, zeroing them in the simulated provider): the live
/// block's bytes must survive.
fn bulk_free_vs_remote_free() {
    const SIZE: usize = 1024;
    let heap = heap(8);
    TestPlatform::enter(1);
    // A block of another class that stays live keeps the chunk in use once the 1 KiB slabs
    // go back, so the bulk free purges the drained chunk's free pages (not its live ones).
    let kept = allocate(&heap, 64);
    // SAFETY: a live block of 64 bytes.
    unsafe { (kept as *mut u8).write_bytes(0x6B, 64) };
    let blocks: Vec<usize> = (0..8).map(|_| allocate(&heap, SIZE)).collect();
    let remote = [blocks[5]];
    let local: Vec<usize> = blocks.iter().copied().filter(|block| !remote.contains(block)).collect();
    let consumer = spawn(&heap, 2, move |heap| {
        for block in remote {
            free(heap, block);
        }
        heap.collect(); // hands the batched frees over
    });
    let owner = spawn(&heap, 1, move |heap| {
        for block in local {
            free(heap, block);
        }
        // Allocating again after the bulk free: the mode ends and the class is cached again.
        let again = allocate(heap, SIZE);
        free(heap, again);
    });
    consumer.join().unwrap();
    owner.join().unwrap();
    BULK_PURGED.fetch_add(heap.provider().purged_bytes(), Ordering::Relaxed);
    // SAFETY: a live block of 64 bytes.
    let bytes = unsafe { std::slice::from_raw_parts(kept as *const u8, 64) };
    assert!(bytes.iter().all(|&byte| byte == 0x6B), "a purge reached a live block");
    free_all_and_check(&heap, vec![kept], &[]);
}

/// Bytes purged in bulk-free mode (`Heap::free_run_in_bulk`: the scenario's heap has no clock,
/// so no other purge runs), summed over the schedules: the probe that the purge of a
/// drained chunk, under the lock while a remote free may be in flight, is reached.
static BULK_PURGED: AtomicUsize = AtomicUsize::new(0);

#[test]
fn model_bulk_free_vs_remote_free() {
    BULK_PURGED.store(0, Ordering::Relaxed);
    explore(bulk_free_vs_remote_free);
    assert!(BULK_PURGED.load(Ordering::Relaxed) > 0, "no schedule purged a drained chunk");
}

/// The purge of a freed block's own pages in a bulk free (`Heap::purge_freed_block`), made
/// before the block goes on a free list, while it is still the freer's alone. Slot 2 frees
/// its 1 KiB blocks until its arena frees in bulk, then its 8 KiB blocks (the second page of
/// each purged, the simulated provider zeroing it); the last of them empties their slab,
/// which goes back to the chunk at once. Meanwhile slot 1 allocates 8 KiB blocks (new slabs
/// carved from the same chunk, the fullest: possibly from the pages just given back) and
/// fills them. A purge made after the free (once the slab can have gone back and been
/// carved again) can zero a block slot 1 filled; the checks at the end find it (that
/// mutation, the purge moved after the release of the emptied slab, fails at schedule 9087-9107
/// with `MODEL_CHECK_ITERATIONS=3000`: a narrow window, beyond CI's default count).
fn bulk_block_purge_vs_reuse() {
    const BIG: usize = 8192;
    const SMALL: usize = 1024;
    let heap = heap(8);
    TestPlatform::enter(2);
    // The 8 KiB slab first, so that its pages are the chunk's first free ones once it goes
    // back: the next slab carved takes them.
    let big: Vec<usize> = (0..4).map(|_| allocate(&heap, BIG)).collect();
    let small: Vec<usize> = (0..8).map(|_| allocate(&heap, SMALL)).collect();
    let freer = spawn(&heap, 2, move |heap| {
        for block in small.into_iter().chain(big) {
            free(heap, block);
        }
    });
    let carver = spawn(&heap, 1, |heap| allocate_filled(heap, BIG, 6));
    freer.join().unwrap();
    let filled = carver.join().unwrap();
    BLOCK_PURGES.fetch_add(heap.stats().heap.block_purges, Ordering::Relaxed);
    check_filled(&filled, BIG, "a block purge zeroed a block in use");
    free_all_and_check(&heap, filled.into_iter().map(|(block, _)| block).collect(), &[]);
}

/// Block purges `bulk_block_purge_vs_reuse` made, over its schedules (the probe that its
/// freer frees in bulk and purges).
static BLOCK_PURGES: AtomicUsize = AtomicUsize::new(0);

#[test]
fn model_bulk_block_purge_vs_reuse() {
    BLOCK_PURGES.store(0, Ordering::Relaxed);
    explore(bulk_block_purge_vs_reuse);
    assert!(BLOCK_PURGES.load(Ordering::Relaxed) > 0, "no schedule purged a block freed in bulk");
}

/// Dense chunks collapsed into huge pages (summed over schedules: the probe that the
/// scenario below reaches the request at all).
static COLLAPSED: AtomicUsize = AtomicUsize::new(0);

/// Huge pages as a policy: a chunk that becomes dense under the heap lock is handed to the
/// provider's `hugify` after the lock is let go (`Allocator::take_run`). Two slots carve
/// large runs that fill shared chunks past `HUGIFY_PAGES`, free them and collect (empty
/// chunks go back to the provider) while the other asks for its huge page. The simulated
/// provider asserts that every chunk asked for is still handed out: a request for a chunk
/// given back meanwhile (a run whose chunk could empty before the request) fails the
/// schedule. Every byte of each run is checked before it is freed.
fn dense_chunk_hugify_vs_chunk_release() {
    const LARGE: usize = 400 * 1024;
    let heap = heap(8);
    let workers = [(1, 4, 0x11u8), (2, 3, 0x22u8)].map(|(slot, count, fill)| {
        spawn(&heap, slot, move |heap| {
            let blocks: Vec<usize> = (0..count).map(|_| allocate(heap, LARGE)).collect();
            for &block in &blocks {
                // SAFETY: live blocks of LARGE bytes, this thread's alone.
                unsafe { (block as *mut u8).write_bytes(fill, LARGE) };
            }
            for &block in &blocks {
                // SAFETY: as above.
                let bytes = unsafe { std::slice::from_raw_parts(block as *const u8, LARGE) };
                assert!(bytes.iter().all(|&byte| byte == fill), "a large run was handed out twice");
                free(heap, block);
            }
            heap.collect();
        })
    });
    for worker in workers {
        worker.join().unwrap();
    }
    COLLAPSED.fetch_add(heap.provider().hugified().1, Ordering::Relaxed);
    free_all_and_check(&heap, Vec::new(), &[]);
}

#[test]
fn model_dense_chunk_hugify_vs_chunk_release() {
    COLLAPSED.store(0, Ordering::Relaxed);
    explore(dense_chunk_hugify_vs_chunk_release);
    assert!(COLLAPSED.load(Ordering::Relaxed) > 0, "no schedule made a chunk dense enough to collapse");
}

/// The interleaving that would break the bulk purge (`Heap::free_run_in_bulk`): another slot
/// carving a run from the drained chunk's free pages while the purge runs. One slot frees
/// 1 KiB blocks in bulk (its slabs go back and the chunk, kept in use by a 64-byte block,
/// is purged: the simulated provider zeroes the pages), while another allocates 2 KiB
/// blocks (new slabs carved from the same chunk, the fullest) and fills them. A purge that
/// reached pages carved meanwhile (made outside the lock, or from a stale view of the free
/// pages) zeroes a live block, which the checks at the end find.
fn bulk_purge_vs_carve() {
    const FREED: usize = 1024;
    const CARVED: usize = 2048;
    let heap = heap(8);
    TestPlatform::enter(1);
    let kept = allocate(&heap, 64);
    let blocks: Vec<usize> = (0..8).map(|_| allocate(&heap, FREED)).collect();
    let freer = spawn(&heap, 1, move |heap| {
        for block in blocks {
            free(heap, block);
        }
    });
    let carver = spawn(&heap, 2, |heap| allocate_filled(heap, CARVED, 6));
    freer.join().unwrap();
    let carved = carver.join().unwrap();
    BULK_PURGE_VS_CARVE_PURGED.fetch_add(heap.provider().purged_bytes(), Ordering::Relaxed);
    check_filled(&carved, CARVED, "a purge zeroed a block carved meanwhile");
    let mut live = vec![kept];
    live.extend(carved.into_iter().map(|(block, _)| block));
    free_all_and_check(&heap, live, &[]);
}

/// Bytes `bulk_purge_vs_carve` purged, over its schedules (the probe that it purges).
static BULK_PURGE_VS_CARVE_PURGED: AtomicUsize = AtomicUsize::new(0);

#[test]
fn model_bulk_purge_vs_carve() {
    BULK_PURGE_VS_CARVE_PURGED.store(0, Ordering::Relaxed);
    explore(bulk_purge_vs_carve);
    assert!(BULK_PURGE_VS_CARVE_PURGED.load(Ordering::Relaxed) > 0, "no schedule purged a drained chunk");
}

/// The pass over mostly free chunks that an arena well into a bulk free makes
/// (`Heap::purge_mostly_free`, at the bulk free's `BULK_PASS_FREES`th free: the second under
/// the model checker), racing another slot that carves new slabs from those chunks' free
/// pages and fills them. Slot 1 keeps a 64-byte block and frees a 1 MiB run before the bulk
/// free begins (a release outside a bulk free purges nothing: its chunk stays mostly free and
/// unpurged, the pass's case), then frees its 1 KiB blocks in bulk. The pass purges under
/// the central lock (the simulated provider zeroes the pages) while slot 2 allocates 8 KiB
/// blocks from the same chunk, the fullest. A pass that purged pages carved meanwhile (made
/// outside the lock, or from a stale view of the free pages) zeroes a live block; the checks
/// at the end find it.
fn bulk_pass_vs_carve() {
    const FREED: usize = 1024;
    const CARVED: usize = 8192;
    // A clock, which the pass needs, with a decay period no schedule reaches: only the
    // bulk free purges.
    let heap: Arc<Heap> = Arc::new(
        Allocator::new(SimProvider::new(8), TestPlatform::with_clock())
            .with_decay(u64::MAX / 4)
            .with_misuse_hook(panic_on_misuse)
            .with_front_cache(front_cache()),
    );
    TestPlatform::enter(1);
    let kept = allocate_filled(&heap, 64, 1);
    let blocks: Vec<usize> = (0..8).map(|_| allocate(&heap, FREED)).collect();
    free(&heap, allocate(&heap, 1 << 20));
    let freer = spawn(&heap, 1, move |heap| {
        for block in blocks {
            free(heap, block);
        }
    });
    let carver = spawn(&heap, 2, |heap| allocate_filled(heap, CARVED, 4));
    freer.join().unwrap();
    let carved = carver.join().unwrap();
    BULK_PASS_CHUNKS.fetch_add(heap.stats().heap.bulk_pass_chunks, Ordering::Relaxed);
    check_filled(&kept, 64, "a purge zeroed a block kept through the bulk free");
    check_filled(&carved, CARVED, "a purge zeroed a block carved meanwhile");
    let live = kept.into_iter().chain(carved).map(|(block, _)| block).collect();
    free_all_and_check(&heap, live, &[]);
}

/// Chunks the passes of `bulk_pass_vs_carve` purged, over its schedules (the probe that it
/// reaches the pass with a chunk to purge).
static BULK_PASS_CHUNKS: AtomicUsize = AtomicUsize::new(0);

#[test]
fn model_bulk_pass_vs_carve() {
    BULK_PASS_CHUNKS.store(0, Ordering::Relaxed);
    explore(bulk_pass_vs_carve);
    assert!(BULK_PASS_CHUNKS.load(Ordering::Relaxed) > 0, "no bulk pass purged a mostly free chunk");
}

/// Six slots make their arenas (the last ones need a new metadata run, carved in the chunk
/// holding the metadata) while a seventh, the provider's two chunks taken, fills the other
/// chunk with large runs and then takes the metadata chunk's room as the last resort. No
/// block may overlap an arena or another block (each keeps its fill) and the metadata stays
/// in its one chunk.
fn metadata_vs_last_resort() {
    const RUN: usize = 256 * 1024;
    // Full-sized front caches (in both of `explore`'s modes): arenas of about 10 KiB, so
    // that seven of them need a second metadata run.
    let heap = Arc::new(
        Allocator::new(SimProvider::new(2), TestPlatform::new())
            .with_misuse_hook(panic_on_misuse)
            .with_front_cache(core_alloc::config::FRONT_CACHE_BLOCKS),
    );
    TestPlatform::enter(0);
    let first = allocate_filled(&heap, BLOCK, 1);
    let arenas: Vec<_> = (1..=6)
        .map(|slot| spawn(&heap, slot, move |heap| allocate_filled(heap, BLOCK, slot as u8)))
        .collect();
    let large = spawn(&heap, 7, |heap| {
        let mut runs = Vec::new();
        while let Some(block) = heap.allocate(RUN, 8) {
            let fill = 100 + runs.len() as u8;
            // SAFETY: a live block of RUN bytes, this thread's.
            unsafe { block.as_ptr().write_bytes(fill, RUN) };
            runs.push((block.as_ptr() as usize, fill));
        }
        runs
    });
    let small: Vec<Vec<(usize, u8)>> = arenas.into_iter().map(|arena| arena.join().unwrap()).collect();
    let runs = large.join().unwrap();
    check_filled(&first, BLOCK, "a block of slot 0 was overwritten");
    for blocks in &small {
        check_filled(blocks, BLOCK, "a small block was overwritten");
    }
    check_filled(&runs, RUN, "a large run was overwritten");
    let stats = heap.stats();
    assert_eq!(stats.arenas, 7, "{stats}");
    assert!(stats.heap.meta_bytes > 64 * 1024, "no second metadata run: {stats}");
    assert_eq!(stats.heap.meta_chunks, 1, "metadata left its chunk: {stats}");
    assert!(runs.len() > USABLE_RUNS, "the metadata chunk's room was not used: {} runs", runs.len());
    let blocks =
        first.into_iter().chain(small.into_iter().flatten()).chain(runs).map(|(block, _)| block).collect();
    free_all_and_check(&heap, blocks, &[]);
}

/// Runs of `metadata_vs_last_resort` that one chunk without metadata holds.
const USABLE_RUNS: usize = core_alloc::testkit::USABLE_PAGES / 64;

#[test]
fn model_metadata_vs_last_resort() {
    explore(metadata_vs_last_resort);
}
