//! Threads sharing one allocator, small enough for Miri (`.ci/miri` runs them with several
//! scheduling seeds and preemption, so Miri's data-race detector and its checks of every
//! pointer use see many interleavings) and for ThreadSanitizer (`.ci/tsan`).
//!
//! Each thread enters an explicit slot of the test platform. Covered: remote frees batched
//! and handed over by `collect`; a thread giving its slot up with live blocks, which other
//! threads then free (abandoned slabs) and adopt by allocating the same size class; huge
//! blocks grown with `reallocate` (remapped by the simulation provider) and freed by another
//! thread; the chunk map's shortcut to its first leaf published while another thread looks
//! addresses up; fresh slabs' class bytes written while another thread frees their blocks
//! without sizes and a third checks the heap. Every block carries a pattern, written by its owner and checked by whoever frees
//! it, so the allocator must order the handover of memory between threads.

use std::ptr::NonNull;
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread;

use core_alloc::size_class::{class_for, slab_capacity};
use core_alloc::testkit::{SimProvider, TestPlatform};
use core_alloc::{Allocator, MisuseReport};
use page_provider::CHUNK_SIZE;
use platform::Platform;

type Heap = Allocator<SimProvider, TestPlatform>;

/// Operations per thread: small under Miri (about 1000 times slower), more natively.
const SCALE: usize = if cfg!(miri) { 1 } else { 20 };

static MISUSES: Mutex<Vec<MisuseReport>> = Mutex::new(Vec::new());

fn record_misuse(report: &MisuseReport) {
    MISUSES.lock().unwrap().push(*report);
}

/// A fresh heap of `chunks` chunks (2 MiB each), leaked so that threads can share it.
fn heap(chunks: usize) -> &'static Heap {
    Box::leak(Box::new(
        Allocator::new(SimProvider::new(chunks), TestPlatform::new()).with_misuse_hook(record_misuse),
    ))
}

/// A live block and the byte it is filled with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Block {
    address: usize,
    size: usize,
    align: usize,
    fill: u8,
}

impl Block {
    /// Allocates and fills a block.
    fn new(heap: &Heap, size: usize, align: usize, fill: u8) -> Self {
        let pointer = heap.allocate(size, align).expect("out of memory");
        assert!((pointer.as_ptr() as usize).is_multiple_of(align), "misaligned block");
        // SAFETY: a fresh block of `size` bytes, ours alone.
        unsafe { pointer.as_ptr().write_bytes(fill, size) };
        Self { address: pointer.as_ptr() as usize, size, align, fill }
    }

    /// Checks the block's pattern: its first and last bytes, and one in 4096 between (every
    /// byte of a small block is written by `new`, which is where races would show).
    fn check(&self) {
        let offsets =
            (0..self.size.min(64)).chain((64..self.size).step_by(4096)).chain(self.size - 1..self.size);
        for offset in offsets {
            // SAFETY: the block is live with `size` bytes, and the caller holds it.
            let byte = unsafe { *(self.address as *const u8).add(offset) };
            assert_eq!(
                byte, self.fill,
                "block {:#x} ({} bytes) changed at {offset}",
                self.address, self.size
            );
        }
    }

    /// Checks and frees the block.
    fn free(self, heap: &Heap) {
        self.check();
        // SAFETY: the block is live, allocated with this size and alignment, and freed once
        // (a `Block` is consumed by its free).
        unsafe { heap.deallocate(NonNull::new(self.address as *mut u8).unwrap(), self.size, self.align) };
    }

    /// The slab (or chunk) this block's memory lies in, at the granularity of `span`.
    fn span(&self, span: usize) -> usize {
        self.address & !(span - 1)
    }
}

/// xorshift64*: deterministic sizes.
struct Rng(u64);

impl Rng {
    fn below(&mut self, bound: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as usize % bound
    }
}

/// Runs `work` on a new thread in `slot`.
fn spawn_in<T: Send + 'static>(
    slot: usize,
    work: impl FnOnce() -> T + Send + 'static,
) -> thread::JoinHandle<T> {
    thread::spawn(move || {
        TestPlatform::enter(slot);
        work()
    })
}

/// Runs `work` on a new thread in `slot`, to the end.
fn run_in<T: Send + 'static>(slot: usize, work: impl FnOnce() -> T + Send + 'static) -> T {
    spawn_in(slot, work).join().expect("the thread panicked")
}

/// Gives the calling thread's slot up, as a host thread does when it exits.
fn exit_slot(heap: &'static Heap) {
    // SAFETY: inside the slot closure, the slot is this thread's alone; not inside another
    // allocator call.
    heap.platform().with_slot(|slot| unsafe { heap.release_slot(slot) });
}

/// Frees `blocks` in slot 0, gathers every slot's pending frees, and checks that nothing is
/// live, stranded or reported.
fn finish(heap: &'static Heap, blocks: Vec<Block>, slots: &[usize]) {
    run_in(0, move || {
        for block in blocks {
            block.free(heap);
        }
        heap.collect();
    });
    // Twice: a slot's collect hands its batched frees over, the owner's gathers them.
    for _ in 0..2 {
        for &slot in slots {
            run_in(slot, move || {
                heap.collect();
                heap.check_invariants().unwrap();
            });
        }
    }
    let stats = heap.stats();
    assert_eq!(stats.live_allocations(), 0, "{stats}");
    assert_eq!(stats.live_bytes(), 0, "{stats}");
    assert_eq!(stats.heap.orphan_slabs, 0, "an abandoned slab was stranded: {stats}");
    let misuses: Vec<MisuseReport> = MISUSES
        .lock()
        .unwrap()
        .iter()
        .filter(|report| heap.owns(report.address as *const u8))
        .copied()
        .collect();
    assert!(misuses.is_empty(), "{misuses:?}");
}

/// Three threads in a ring: each round every thread allocates small blocks of mixed sizes,
/// frees some itself, sends the rest to the next thread, and frees what the previous one
/// sent (remote frees, batched, handed over by `collect` every other round).
#[test]
fn remote_frees_in_a_ring_are_flushed_by_collect() {
    const THREADS: usize = 3;
    let rounds = 4 * SCALE;
    let per_round = 12;
    let heap = heap(8);
    type Batches = (Vec<Sender<Vec<Block>>>, Vec<Receiver<Vec<Block>>>);
    let (senders, receivers): Batches = (0..THREADS).map(|_| channel()).unzip();
    let mut receivers: Vec<Option<Receiver<Vec<Block>>>> = receivers.into_iter().map(Some).collect();
    let threads: Vec<_> = (0..THREADS)
        .map(|index| {
            let next = senders[(index + 1) % THREADS].clone();
            let inbox = receivers[index].take().unwrap();
            spawn_in(index + 1, move || {
                let mut rng = Rng(0x9E37_79B9 * (index as u64 + 1));
                for round in 0..rounds {
                    let mut mine = Vec::new();
                    let mut theirs = Vec::new();
                    for count in 0..per_round {
                        let size = 1 + rng.below(if count % 4 == 0 { 2048 } else { 160 });
                        let align = 1 << rng.below(5);
                        let block = Block::new(heap, size, align, (index * 64 + round * 8 + count) as u8);
                        if rng.below(3) == 0 { mine.push(block) } else { theirs.push(block) }
                    }
                    next.send(theirs).unwrap();
                    for block in mine {
                        block.free(heap);
                    }
                    for block in inbox.recv().unwrap() {
                        block.free(heap);
                    }
                    if round % 2 == 1 {
                        heap.collect();
                    }
                }
                heap.collect();
            })
        })
        .collect();
    drop(senders);
    for thread in threads {
        thread.join().expect("a ring thread panicked");
    }
    finish(heap, Vec::new(), &[1, 2, 3]);
}

/// A thread gives its slot up with two slabs' worth of live blocks. Then, at the same time,
/// one thread frees every other block (remote frees into abandoned slabs) while another
/// allocates blocks of the same size class (adopting an abandoned slab once it has room).
/// Both then allocate again: between them, the freed blocks must have been handed out
/// again, which only adoption can do.
#[test]
fn abandoned_slabs_are_freed_remotely_and_adopted() {
    // 16 blocks a slab: few operations per slab under Miri.
    const SIZE: usize = 4096;
    let capacity = slab_capacity(class_for(SIZE, 8).unwrap());
    let heap = heap(8);
    let abandoned = run_in(1, move || {
        let blocks: Vec<Block> =
            (0..2 * capacity).map(|index| Block::new(heap, SIZE, 8, index as u8)).collect();
        exit_slot(heap);
        blocks
    });
    assert!(heap.stats().heap.orphan_slabs > 0, "the exited slot left no abandoned slab");
    let freed: Vec<Block> = abandoned.iter().step_by(2).copied().collect();
    let kept: Vec<Block> = abandoned.iter().skip(1).step_by(2).copied().collect();
    let to_free = freed.clone();
    let freer = spawn_in(2, move || {
        for block in to_free {
            block.free(heap);
        }
        heap.collect();
    });
    let allocator = spawn_in(3, move || {
        let blocks: Vec<Block> =
            (0..capacity / 2).map(|index| Block::new(heap, SIZE, 8, 0xA0 | index as u8)).collect();
        for block in &blocks {
            block.check();
        }
        blocks
    });
    freer.join().expect("the freeing thread panicked");
    let mut reused = allocator.join().expect("the allocating thread panicked");
    // Slot 2's batched frees are handed over. Slot 3 may have adopted a slab before the
    // frees reached it (they are then its own, gathered on a refill): it allocates two slabs'
    // worth more, which exhausts its current slab. A new slot then adopts what is left.
    run_in(2, move || heap.collect());
    reused.extend(run_in(3, move || {
        heap.collect();
        let blocks: Vec<Block> =
            (0..2 * capacity).map(|index| Block::new(heap, SIZE, 8, 0xB0 | index as u8)).collect();
        blocks
    }));
    let late = run_in(4, move || {
        let blocks: Vec<Block> =
            (0..capacity).map(|index| Block::new(heap, SIZE, 8, 0xC0 | index as u8)).collect();
        exit_slot(heap);
        blocks
    });
    reused.extend(late);
    let freed_addresses: Vec<usize> = freed.iter().map(|block| block.address).collect();
    assert!(
        reused.iter().any(|block| freed_addresses.contains(&block.address)),
        "no block freed into an abandoned slab was handed out again: no adoption"
    );
    // Every slab of the exited slot still has blocks in use somewhere.
    assert!(
        kept.iter()
            .all(|block| abandoned.iter().any(|other| other.span(CHUNK_SIZE) == block.span(CHUNK_SIZE)))
    );
    let mut rest = kept;
    rest.extend(reused);
    finish(heap, rest, &[2, 3, 4]);
}

/// Two threads each grow a huge block with `reallocate` (the simulation provider remaps it,
/// in place or by moving it, and gives the old range back at once), check its bytes, and
/// hand it to the other thread to free, while both also allocate and free small blocks.
#[test]
fn huge_blocks_grown_by_reallocate_and_freed_by_another_thread() {
    let heap = heap(16);
    let rounds = if cfg!(miri) { 1 } else { 8 };
    let (to_two, from_one) = channel::<Block>();
    let (to_one, from_two) = channel::<Block>();
    let worker = move |slot: usize, outbox: Sender<Block>, inbox: Receiver<Block>| {
        move || {
            for round in 0..rounds {
                let fill = (slot * 16 + round) as u8;
                let mut block = Block::new(heap, CHUNK_SIZE + 4096 * slot, 4096, fill);
                let small: Vec<Block> =
                    (0..8).map(|index| Block::new(heap, 24 + index * 8, 8, fill)).collect();
                for new_size in [2 * CHUNK_SIZE + 100, 3 * CHUNK_SIZE - 4096 * slot] {
                    block.check();
                    let old_size = block.size;
                    // SAFETY: a live block of this heap with this alignment, ours alone.
                    let moved = unsafe {
                        heap.reallocate(NonNull::new(block.address as *mut u8).unwrap(), 4096, new_size)
                    }
                    .expect("out of memory");
                    block = Block { address: moved.as_ptr() as usize, size: old_size, ..block };
                    block.check();
                    // SAFETY: the block is live with `new_size` bytes, ours alone.
                    unsafe { moved.as_ptr().add(old_size).write_bytes(fill, new_size - old_size) };
                    block.size = new_size;
                }
                for small in small {
                    small.free(heap);
                }
                outbox.send(block).unwrap();
                inbox.recv().unwrap().free(heap);
            }
            heap.collect();
        }
    };
    let one = spawn_in(1, worker(1, to_two, from_two));
    let two = spawn_in(2, worker(2, to_one, from_one));
    one.join().expect("thread one panicked");
    two.join().expect("thread two panicked");
    assert!(heap.provider().remaps() > 0, "no reallocation remapped");
    finish(heap, Vec::new(), &[1, 2]);
    assert_eq!(heap.stats().heap.huge_live, 0);
}

/// A statistics snapshot reads every arena's front-cache counts while their slots push,
/// pop, flush and drain them (`front_cache`): the counts and capacities are atomics and the
/// rest of a bin never changes after the arena is made, so neither Miri nor ThreadSanitizer
/// may see a race, and no snapshot may see a count above its bounds. One slot churns blocks
/// of 4 KiB (16 a slab, 2 cached: each round's frees overflow the stack and empty slabs, which
/// drains the cache; the next round's refills restore it); another frees blocks of the first
/// slot's slabs (cached, then flushed as remote frees).
#[test]
fn statistics_read_while_caches_change() {
    use std::sync::atomic::{AtomicU64, Ordering};
    const SIZE: usize = 4096;
    // Allocations of SIZE begun and done by the churner: the snapshot's count, which is
    // derived for blocks a front cache served, lies between them but for the blocks of the
    // operations in flight (a push or a pop: one; a flush: half a stack) in each arena
    // changing meanwhile (the churner's and the other's).
    static BEGUN: AtomicU64 = AtomicU64::new(0);
    static DONE: AtomicU64 = AtomicU64::new(0);
    let rounds = if cfg!(miri) { 3 } else { 200 };
    let heap = heap(8);
    let (to_other, from_first) = channel::<Vec<Block>>();
    let churner = spawn_in(1, move || {
        for round in 0..rounds {
            let mut blocks: Vec<Block> = (0..40)
                .map(|index| {
                    BEGUN.fetch_add(1, Ordering::SeqCst);
                    let block = Block::new(heap, SIZE, 8, (round * 40 + index) as u8);
                    DONE.fetch_add(1, Ordering::SeqCst);
                    block
                })
                .collect();
            let theirs = blocks.split_off(30);
            for block in blocks {
                block.free(heap);
            }
            to_other.send(theirs).unwrap();
        }
        heap.flush_cache();
    });
    let other = spawn_in(2, move || {
        for blocks in from_first {
            for block in blocks {
                block.free(heap);
            }
        }
        heap.flush_cache();
    });
    let reader = spawn_in(3, move || {
        let limit = core_alloc::config::FRONT_CACHE_BLOCKS as u64;
        let class = class_for(SIZE, 8).unwrap();
        let stack = (core_alloc::config::FRONT_CACHE_BYTES / SIZE).min(limit as usize) as u64;
        let slack = 2 * (stack.div_ceil(2) + 1);
        for _ in 0..rounds {
            let done = DONE.load(Ordering::SeqCst);
            let stats = heap.stats();
            let begun = BEGUN.load(Ordering::SeqCst);
            let allocations = stats.classes[class].allocations;
            assert!(
                allocations + slack >= done && allocations <= begun + slack,
                "{allocations} allocations counted, {done}-{begun} made: {stats}"
            );
            let cached: u64 = stats.classes.iter().map(|class| class.cached).sum();
            assert!(stats.classes.iter().all(|class| class.cached <= limit), "{stats}");
            assert!(cached <= 2 * limit * stats.classes.len() as u64);
        }
    });
    churner.join().expect("the churning thread panicked");
    other.join().expect("the freeing thread panicked");
    reader.join().expect("the reading thread panicked");
    assert_eq!(heap.stats().classes.iter().map(|class| class.cached).sum::<u64>(), 0);
    finish(heap, Vec::new(), &[1, 2, 3]);
}

/// The chunk header's class bytes: one thread carves fresh slabs of many classes (their owner
/// writes the slabs' class bytes outside the heap lock) and hands their blocks to a second,
/// which frees them without sizes (C's `free`: the class comes from those bytes alone), while
/// a third checks the heap's invariants over and over (reading every class byte under the
/// lock, as the owner writes). Plain bytes race the checker (Miri's detector says so); a
/// class byte the freeing thread did not see would send a block to the wrong class or to the
/// large path, which `finish` and the misuse hook catch.
#[test]
fn class_bytes_of_fresh_slabs_race_unsized_frees_and_checks() {
    let rounds = if cfg!(miri) { 2 } else { 50 };
    let heap = heap(8);
    let (to_freer, from_maker) = channel::<Vec<Block>>();
    let maker = spawn_in(1, move || {
        let mut rng = Rng(0x5EED);
        for round in 0..rounds {
            // Sizes across the classes up to 4 KiB: each round's first blocks of a class
            // start a slab.
            let blocks: Vec<Block> = (0..12 * SCALE)
                .map(|index| Block::new(heap, 16 + rng.below(4080), 8, (round + index) as u8))
                .collect();
            to_freer.send(blocks).unwrap();
        }
    });
    let freer = spawn_in(2, move || {
        for blocks in from_maker {
            for block in blocks {
                block.check();
                // SAFETY: a live block of this heap, handed over by the maker, freed once.
                unsafe { heap.free(NonNull::new(block.address as *mut u8).unwrap()) };
            }
        }
        heap.flush_cache();
    });
    let checker = spawn_in(3, move || {
        for _ in 0..rounds * 4 {
            heap.check_invariants().unwrap();
        }
    });
    maker.join().expect("the making thread panicked");
    freer.join().expect("the freeing thread panicked");
    checker.join().expect("the checking thread panicked");
    finish(heap, Vec::new(), &[1, 2, 3]);
}

/// The chunk map's shortcut to its first leaf, made by one thread's first allocation while
/// another looks addresses up (as `owns`, the C library's `free` and huge frees do). The
/// span is not zeroed, so the leaf is zeroed by plain writes from metadata memory; the reader
/// reaches the leaf only through the shortcut's key (acquire), which must order those
/// writes before its loads of the leaf's entries: with a relaxed key, Miri's data-race
/// detector reports the zeroing against the reader's load.
#[test]
fn a_lookup_races_the_first_leaf_and_its_shortcut() {
    // Several heaps: each schedule gets several chances at the reader reaching the leaf
    // through the shortcut while its key is new.
    for _ in 0..4 {
        lookup_races_the_first_leaf();
    }
}

fn lookup_races_the_first_leaf() {
    use page_provider::fixed::FixedRegion;
    use std::sync::atomic::{AtomicUsize, Ordering};
    // Enough whole chunks to run on chunks (not compact mode), and one for alignment.
    let chunks = core_alloc::COMPACT_CHUNKS + 1;
    let span = vec![0xA5u8; (chunks + 1) * CHUNK_SIZE].leak();
    let base = (span.as_mut_ptr() as usize).next_multiple_of(CHUNK_SIZE);
    // SAFETY: the leaked span is used by this heap alone; its bytes are not zero.
    let region: FixedRegion = unsafe { FixedRegion::new(base as *mut u8, chunks * CHUNK_SIZE, false) };
    let heap: &'static Allocator<FixedRegion, TestPlatform> =
        Box::leak(Box::new(Allocator::new(region, TestPlatform::new())));
    // The block's address, handed over without ordering: the map must provide it.
    let published: &'static AtomicUsize = Box::leak(Box::new(AtomicUsize::new(0)));
    let reader = spawn_in(2, move || {
        // Lookups until the block is seen, then one of it (which may still find nothing:
        // the relaxed handover orders nothing); the map's own orderings are what is checked.
        let mut round = 0;
        loop {
            let block = published.load(Ordering::Relaxed);
            if block != 0 {
                // Its chunk's entry (written with release), then entries of the same leaf
                // that only the leaf's zeroing wrote (the shortcut's key must order that).
                let mut found = heap.owns(block as *const u8);
                for bit in 23..30 {
                    thread::yield_now();
                    found |= heap.owns((block ^ 1 << bit) as *const u8);
                }
                return found;
            }
            let _ = heap.owns((base + (round % chunks) * CHUNK_SIZE + 4096) as *const u8);
            round += 1;
            thread::yield_now();
        }
    });
    let block = run_in(1, move || {
        let block = heap.allocate(64, 8).expect("a fresh heap's first block").as_ptr() as usize;
        published.store(block, Ordering::Relaxed);
        block
    });
    reader.join().expect("the reader panicked");
    assert!(!heap.is_compact());
    assert!(heap.owns(block as *const u8));
    run_in(1, move || {
        // SAFETY: the block is live, freed once.
        unsafe { heap.deallocate(NonNull::new(block as *mut u8).unwrap(), 64, 8) };
        heap.collect();
    });
    assert!(heap.stats().holds_nothing_but_metadata(), "{}", heap.stats());
}
