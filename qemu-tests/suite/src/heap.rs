//! The allocator on bare metal: alignments, huge allocations, concurrent stress with
//! cross-CPU frees, allocation from interrupt handlers, out of memory, and memory going back
//! to the frame provider.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use page_provider::{CHUNK_SIZE, PageProvider};
use platform::Platform;

use crate::{HeapUnderTest, Machine, Outcome, Rng, ensure, say};

/// A block under test: where it is, its layout, and the seed of its pattern.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Block {
    pub(crate) address: usize,
    pub(crate) size: usize,
    pub(crate) align: usize,
    pub(crate) id: u64,
}

fn word_of(id: u64, index: usize) -> u64 {
    id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (index as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93)
}

/// The words of a block that carry its pattern: the first eight, one a page, the last.
fn pattern_words(size: usize) -> impl Iterator<Item = usize> {
    let words = size / 8;
    (0..words.min(8)).chain((8..words).step_by(512)).chain((words > 8).then(|| words - 1))
}

impl Block {
    fn fill(&self) {
        for index in pattern_words(self.size) {
            // SAFETY: the block is live with `size` bytes; the word lies inside it.
            unsafe { ((self.address + index * 8) as *mut u64).write_unaligned(word_of(self.id, index)) };
        }
        if self.size < 8 {
            // SAFETY: as above; the block has at least one byte.
            unsafe { *(self.address as *mut u8) = self.id as u8 };
        }
    }

    fn intact(&self) -> bool {
        self.intact_within(self.size)
    }

    /// Whether the pattern written over the block's size is intact in its first `length`
    /// bytes (after a shrinking reallocation).
    fn intact_within(&self, length: usize) -> bool {
        let words_ok = pattern_words(self.size).filter(|index| index * 8 + 8 <= length).all(|index| {
            // SAFETY: as in `fill`.
            unsafe { ((self.address + index * 8) as *const u64).read_unaligned() == word_of(self.id, index) }
        });
        // SAFETY: as in `fill`.
        words_ok && (self.size >= 8 || unsafe { *(self.address as *const u8) } == self.id as u8)
    }
}

/// Allocates a block and fills it; `None` when out of memory.
pub(crate) fn make<P: PageProvider, Pl: Platform>(
    heap: &HeapUnderTest<'_, P, Pl>,
    size: usize,
    align: usize,
    id: u64,
) -> Option<Block> {
    let address = heap.allocator.allocate(size, align)?.as_ptr() as usize;
    let block = Block { address, size, align, id };
    block.fill();
    Some(block)
}

/// Checks a block's pattern and frees it; returns whether it was intact.
pub(crate) fn release<P: PageProvider, Pl: Platform>(heap: &HeapUnderTest<'_, P, Pl>, block: Block) -> bool {
    let intact = block.intact();
    // SAFETY: a live block of this allocator with this size and alignment.
    unsafe {
        heap.allocator.deallocate(NonNull::new_unchecked(block.address as *mut u8), block.size, block.align)
    };
    intact
}

/// A size log-uniform between 8 bytes and 1 MiB.
fn random_size(rng: &mut Rng) -> usize {
    let shift = 3 + rng.below(17);
    (1 << shift) + rng.below(1 << shift)
}

pub(crate) fn alignments_up_to_2_mib<P: PageProvider, Pl: Platform>(
    _machine: &dyn Machine,
    heap: &HeapUnderTest<'_, P, Pl>,
) -> Outcome {
    let mut blocks = Vec::with_capacity(22 * 7);
    let mut id = 1;
    for shift in 0..=21 {
        let align = 1usize << shift;
        for size in [1, 24, 100, 3000, 40_000, 300_000, (3 << 20) + 5] {
            let Some(block) = make(heap, size, align, id) else {
                return Err(alloc::format!("no memory for {size} bytes aligned to {align}"));
            };
            ensure!(
                block.address % align == 0,
                "{size} bytes at {:#x} not aligned to {align}",
                block.address
            );
            blocks.push(block);
            id += 1;
        }
    }
    blocks.sort_by_key(|block| block.address);
    for pair in blocks.windows(2) {
        ensure!(
            pair[0].address + pair[0].size <= pair[1].address,
            "blocks {:?} and {:?} overlap",
            pair[0],
            pair[1]
        );
    }
    let damaged = blocks.iter().filter(|block| !release(heap, **block)).count();
    ensure!(damaged == 0, "{damaged} blocks lost their contents");
    Ok(())
}

pub(crate) fn huge_allocations_span_chunks<P: PageProvider, Pl: Platform>(
    _machine: &dyn Machine,
    heap: &HeapUnderTest<'_, P, Pl>,
) -> Outcome {
    let mut blocks = Vec::new();
    for (id, (size, align)) in
        [(5 << 20, 16), ((9 << 20) + 123, CHUNK_SIZE), (64 << 20, CHUNK_SIZE), (6 << 20, 8 << 20)]
            .into_iter()
            .enumerate()
    {
        let Some(block) = make(heap, size, align, id as u64 + 1) else {
            return Err(alloc::format!("no memory for a huge block of {size} bytes"));
        };
        ensure!(block.address % align == 0, "huge block not aligned to {align}");
        // SAFETY: a live block.
        let usable = unsafe { heap.allocator.usable_size(NonNull::new_unchecked(block.address as *mut u8)) };
        ensure!(usable >= size && usable % CHUNK_SIZE == 0, "usable size {usable} for {size}");
        blocks.push(block);
    }
    // Grow one in place or by moving, then shrink: contents survive.
    let grown = blocks[1];
    // SAFETY: a live block with this alignment.
    let moved = unsafe {
        heap.allocator.reallocate(NonNull::new_unchecked(grown.address as *mut u8), grown.align, 20 << 20)
    };
    let Some(moved) = moved else { return Err("no memory to grow a huge block to 20 MiB".into()) };
    let moved = Block { address: moved.as_ptr() as usize, ..grown };
    ensure!(moved.intact(), "growing a huge block lost its contents");
    // SAFETY: a live block with this alignment.
    let shrunk = unsafe {
        heap.allocator.reallocate(NonNull::new_unchecked(moved.address as *mut u8), moved.align, 3 << 20)
    };
    let Some(shrunk) = shrunk else { return Err("shrinking a huge block failed".into()) };
    ensure!(shrunk.as_ptr() as usize == moved.address, "shrinking a huge block moved it");
    ensure!(moved.intact_within(3 << 20), "shrinking a huge block lost its contents");
    blocks[1] = Block { address: moved.address, size: 3 << 20, ..moved };
    blocks[1].fill();
    let damaged = blocks.into_iter().filter(|block| !release(heap, *block)).count();
    ensure!(damaged == 0, "{damaged} huge blocks lost their contents");
    Ok(())
}

pub(crate) fn concurrent_stress<P: PageProvider, Pl: Platform>(
    machine: &dyn Machine,
    heap: &HeapUnderTest<'_, P, Pl>,
) -> Outcome {
    const OPERATIONS: usize = 20_000;
    const LIVE: usize = 200;
    let cpus = machine.cpu_count();
    let live_before = heap.allocator.stats().live_allocations();
    let mailboxes: Vec<spin::Mutex<Vec<Block>>> =
        (0..cpus).map(|_| spin::Mutex::new(Vec::with_capacity(4096))).collect();
    let next_id = AtomicUsize::new(1);
    let (damaged, crossed, refused) = (AtomicUsize::new(0), AtomicUsize::new(0), AtomicUsize::new(0));
    machine.run_on_cpus(cpus, &|cpu| {
        let mut rng = Rng(0x5EED_0000 + cpu as u64 * 7919);
        let mut mine: Vec<Block> = Vec::with_capacity(LIVE + 1);
        for operation in 0..OPERATIONS {
            if operation % 8 == 7 {
                let received: Vec<Block> = core::mem::take(&mut *mailboxes[cpu].lock());
                crossed.fetch_add(received.len(), Ordering::Relaxed);
                for block in received {
                    if !release(heap, block) {
                        damaged.fetch_add(1, Ordering::Relaxed);
                    }
                }
            } else if mine.len() >= LIVE {
                let block = mine.swap_remove(rng.below(mine.len()));
                if !release(heap, block) {
                    damaged.fetch_add(1, Ordering::Relaxed);
                }
            } else {
                let size = random_size(&mut rng);
                let align = 1 << rng.below(7);
                let id = next_id.fetch_add(1, Ordering::Relaxed) as u64;
                let Some(block) = make(heap, size, align, id) else {
                    refused.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let other = (cpu + 1 + rng.below(cpus.max(2) - 1)) % cpus;
                if cpus > 1 && rng.below(2) == 0 && mailboxes[other].lock().len() < 4096 {
                    mailboxes[other].lock().push(block);
                } else {
                    mine.push(block);
                }
            }
        }
        for block in mine {
            if !release(heap, block) {
                damaged.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    for mailbox in &mailboxes {
        for block in mailbox.lock().drain(..) {
            crossed.fetch_add(1, Ordering::Relaxed);
            if !release(heap, block) {
                damaged.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    drop(mailboxes);
    let made = next_id.load(Ordering::Relaxed) - 1;
    let crossed = crossed.load(Ordering::Relaxed);
    say(
        machine,
        format_args!("stress: {made} blocks of 8 B..1 MiB on {cpus} CPUs, {crossed} freed on another CPU"),
    );
    ensure!(
        damaged.load(Ordering::Relaxed) == 0,
        "{} blocks were corrupted",
        damaged.load(Ordering::Relaxed)
    );
    ensure!(refused.load(Ordering::Relaxed) == 0, "{} allocations failed", refused.load(Ordering::Relaxed));
    ensure!(cpus == 1 || crossed * 4 >= made, "only {crossed} of {made} blocks crossed CPUs");
    let live_after = heap.allocator.stats().live_allocations();
    ensure!(
        live_after == live_before,
        "statistics do not balance: {live_before} live before, {live_after} after"
    );
    Ok(())
}

static IRQ_RUNS: [AtomicUsize; 64] = [const { AtomicUsize::new(0) }; 64];
static IRQ_DAMAGED: AtomicUsize = AtomicUsize::new(0);

/// Runs in the timer interrupt: allocates, fills, checks and frees, through the global
/// allocator, while the interrupted code may be anywhere (including just outside the
/// allocator, whose own critical sections mask interrupts).
fn allocate_in_interrupt(cpu: usize) {
    let run = IRQ_RUNS[cpu % 64].fetch_add(1, Ordering::Relaxed);
    let size = 8 << (run % 12);
    let mut bytes: Vec<u8> = Vec::with_capacity(size);
    bytes.resize(size, run as u8);
    let boxed = Box::new([cpu as u64; 4]);
    let large = run.is_multiple_of(16).then(|| alloc::vec![0x5Au8; 100_000]);
    let intact = bytes.iter().all(|&byte| byte == run as u8)
        && boxed.iter().all(|&word| word == cpu as u64)
        && large.as_ref().is_none_or(|large| large[99_999] == 0x5A);
    if !intact {
        IRQ_DAMAGED.fetch_add(1, Ordering::Relaxed);
    }
}

pub(crate) fn allocation_from_interrupts<P: PageProvider, Pl: Platform>(
    machine: &dyn Machine,
    heap: &HeapUnderTest<'_, P, Pl>,
) -> Outcome {
    // Every CPU's handler must allocate this many times while the CPU allocates too. How
    // fast timer interrupts arrive depends on the machine: under emulation with 64 vCPUs on
    // two host cores a vCPU takes about 2 a second, not the timer's 2000. So a CPU goes on as
    // long as its handler keeps running, and gives up (failing the test) only if its handler
    // has not run for STALL_NS (a lost timer, or interrupts left masked), or after LIMIT_NS
    // in all: the bar is the same count everywhere, the time it takes is measured.
    const WANTED_INTERRUPTS: usize = 50;
    const STALL_NS: u64 = 10_000_000_000;
    const LIMIT_NS: u64 = 300_000_000_000;
    let cpus = machine.cpu_count();
    let started = machine.now_ns();
    let slowest_ns = AtomicU64::new(0);
    let damaged = AtomicUsize::new(0);
    let operations = AtomicUsize::new(0);
    machine.set_timer_handler(Some(allocate_in_interrupt));
    machine.run_on_cpus(cpus, &|cpu| {
        let mut rng = Rng(0xA110_C000 + cpu as u64);
        let mut mine: Vec<Block> = Vec::with_capacity(65);
        let start = machine.now_ns();
        let mut id = (cpu as u64) << 40;
        machine.start_timer(500);
        let (mut seen, mut progress_at) = (0, start);
        loop {
            let (runs, now) = (IRQ_RUNS[cpu].load(Ordering::Relaxed), machine.now_ns());
            if runs != seen {
                (seen, progress_at) = (runs, now);
            }
            if runs >= WANTED_INTERRUPTS || now - progress_at > STALL_NS || now - start > LIMIT_NS {
                slowest_ns.fetch_max(now - start, Ordering::Relaxed);
                break;
            }
            if mine.len() >= 64 {
                if !release(heap, mine.swap_remove(rng.below(64))) {
                    damaged.fetch_add(1, Ordering::Relaxed);
                }
            } else {
                id += 1;
                let size = if rng.below(10) == 0 { random_size(&mut rng) } else { 8 + rng.below(512) };
                if let Some(block) = make(heap, size, 8, id) {
                    mine.push(block);
                }
            }
            operations.fetch_add(1, Ordering::Relaxed);
        }
        machine.stop_timer();
        for block in mine {
            if !release(heap, block) {
                damaged.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    machine.set_timer_handler(None);
    let runs: Vec<usize> = (0..cpus).map(|cpu| IRQ_RUNS[cpu].load(Ordering::Relaxed)).collect();
    say(
        machine,
        format_args!(
            "interrupt handlers allocated on each CPU {runs:?} times, during {} operations; the slowest CPU took {} ms (the test: {} ms)",
            operations.load(Ordering::Relaxed),
            slowest_ns.load(Ordering::Relaxed) / 1_000_000,
            (machine.now_ns() - started) / 1_000_000
        ),
    );
    ensure!(
        runs.iter().all(|&count| count >= WANTED_INTERRUPTS),
        "some CPU's handler ran too rarely: {runs:?}"
    );
    ensure!(
        IRQ_DAMAGED.load(Ordering::Relaxed) == 0,
        "blocks allocated in interrupt handlers were corrupted"
    );
    ensure!(damaged.load(Ordering::Relaxed) == 0, "blocks of the interrupted code were corrupted");
    Ok(())
}

pub(crate) fn out_of_memory<P: PageProvider, Pl: Platform>(
    machine: &dyn Machine,
    heap: &HeapUnderTest<'_, P, Pl>,
) -> Outcome {
    const CAPACITY: usize = 100_000;
    let free_at_start = (heap.free_frames)();
    // Room to record every block, taken before memory runs out.
    let mut blocks: Vec<(NonNull<u8>, usize)> = Vec::with_capacity(CAPACITY);
    let mut taken = 0usize;
    let mut refusals = 0;
    for size in [64 << 20, 4 << 20, 256 << 10, 16 << 10, 1 << 10] {
        loop {
            if blocks.len() == CAPACITY {
                break;
            }
            match heap.allocator.allocate(size, 16) {
                Some(block) => {
                    // SAFETY: a fresh block of `size` bytes.
                    unsafe {
                        *block.as_ptr() = 1;
                        *block.as_ptr().add(size - 1) = 1;
                    }
                    taken += size;
                    blocks.push((block, size));
                }
                None => {
                    refusals += 1;
                    break;
                }
            }
        }
    }
    let free_at_bottom = (heap.free_frames)();
    let count = blocks.len();
    for (block, size) in blocks.drain(..) {
        // SAFETY: allocated above with this size and alignment 16.
        unsafe { heap.allocator.deallocate(block, size, 16) };
    }
    drop(blocks);
    heap.allocator.collect();
    let again = heap.allocator.allocate(64 << 20, 16);
    let recovered = again.is_some();
    if let Some(block) = again {
        // SAFETY: allocated just above.
        unsafe { heap.allocator.deallocate(block, 64 << 20, 16) };
    }
    heap.allocator.collect();
    say(
        machine,
        format_args!(
            "out of memory after {count} blocks, {} MiB (provider had {} MiB free); {refusals} null returns",
            taken >> 20,
            (free_at_start * CHUNK_SIZE) >> 20
        ),
    );
    ensure!(refusals == 5, "not every size ran out ({refusals} of 5): the record filled up first");
    ensure!(free_at_bottom == 0, "{free_at_bottom} frames were still free when allocation failed");
    ensure!(taken * 10 >= free_at_start * CHUNK_SIZE * 9, "only {taken} bytes fit in {free_at_start} frames");
    ensure!(recovered, "64 MiB could not be allocated after freeing everything");
    Ok(())
}

pub(crate) fn memory_returned<P: PageProvider, Pl: Platform>(
    machine: &dyn Machine,
    heap: &HeapUnderTest<'_, P, Pl>,
) -> Outcome {
    let cpus = machine.cpu_count();
    machine.run_on_cpus(cpus, &|_| heap.allocator.collect());
    machine.run_on_cpus(cpus, &|_| heap.allocator.collect());
    let free_before = (heap.free_frames)();
    let meta_before = heap.allocator.stats().heap.meta_chunks;
    // Every CPU fills its slot of the table; another CPU frees it.
    let table: Vec<spin::Mutex<Vec<Block>>> =
        (0..cpus).map(|_| spin::Mutex::new(Vec::with_capacity(3000))).collect();
    machine.run_on_cpus(cpus, &|cpu| {
        let mut rng = Rng(0xF4EE + cpu as u64);
        let mut blocks = table[cpu].lock();
        for id in 0..3000u64 {
            let size = if id % 500 == 0 { (3 << 20) + rng.below(1 << 20) } else { random_size(&mut rng) / 8 };
            if let Some(block) = make(heap, size, 8, id) {
                blocks.push(block);
            }
        }
    });
    let free_at_peak = (heap.free_frames)();
    let damaged = AtomicUsize::new(0);
    machine.run_on_cpus(cpus, &|cpu| {
        for block in table[(cpu + 1) % cpus].lock().drain(..) {
            if !release(heap, block) {
                damaged.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    drop(table);
    let free_retained = (heap.free_frames)();
    // With a platform clock, `decay()` from every CPU (as idle loops would call it) gives
    // back what stayed unused for the decay period, without `collect()`: a first round marks
    // the arenas, after a period a second flushes them (handing over the frees batched for
    // other CPUs' slabs), a third gathers those, and after another period the chunks they
    // emptied go back.
    let decayed = heap.allocator.platform().now_ns().map(|_| {
        let period = heap.allocator.decay_period_ns();
        let wait = || {
            let due = machine.now_ns() + period + 1_000_000;
            while machine.now_ns() < due {
                core::hint::spin_loop();
            }
        };
        let round = || machine.run_on_cpus(cpus, &|_| heap.allocator.decay());
        round();
        wait();
        round();
        round();
        wait();
        round();
        ((heap.free_frames)(), heap.allocator.stats().heap.meta_chunks - meta_before, period)
    });
    // Two rounds: in the first every CPU also hands over the frees it was batching for other
    // CPUs' slabs, which those CPUs may already have passed; the second gathers them.
    machine.run_on_cpus(cpus, &|_| heap.allocator.collect());
    machine.run_on_cpus(cpus, &|_| heap.allocator.collect());
    let free_after = (heap.free_frames)();
    let meta_growth = heap.allocator.stats().heap.meta_chunks - meta_before;
    say(
        machine,
        format_args!(
            "memory: {} frames in use at peak; after freeing {} retained; after collect on every CPU {} (metadata grew by {meta_growth})",
            free_before - free_at_peak,
            free_before.saturating_sub(free_retained),
            free_before.saturating_sub(free_after)
        ),
    );
    match decayed {
        Some((free_decayed, meta_growth, period)) => {
            say(
                machine,
                format_args!(
                    "memory: after two decay periods ({} ms) with decay() on every CPU, without collect: {} retained (metadata grew by {meta_growth})",
                    period / 1_000_000,
                    free_before.saturating_sub(free_decayed)
                ),
            );
            ensure!(
                free_decayed + meta_growth >= free_before,
                "{} frames not returned by decay() on every CPU after the decay period",
                free_before - free_decayed - meta_growth
            );
        }
        None => say(machine, format_args!("memory: no platform clock on this heap: decay() not tested")),
    }
    ensure!(damaged.load(Ordering::Relaxed) == 0, "blocks were corrupted");
    // The workload's point is memory to give back: every CPU allocates six blocks of 3-4 MiB
    // (12 frames or more) besides its small ones, so at least 8 frames a CPU must be in use.
    ensure!(
        free_before - free_at_peak >= 8 * cpus,
        "the workload used only {} frames on {cpus} CPUs",
        free_before - free_at_peak
    );
    ensure!(
        free_after + meta_growth >= free_before,
        "{} frames not returned after everything was freed and collected",
        free_before - free_after - meta_growth
    );
    Ok(())
}

pub(crate) fn invariants_on_every_cpu<P: PageProvider, Pl: Platform>(
    machine: &dyn Machine,
    heap: &HeapUnderTest<'_, P, Pl>,
) -> Outcome {
    let broken = spin::Mutex::new(None);
    machine.run_on_cpus(machine.cpu_count(), &|cpu| {
        if let Err(why) = heap.allocator.check_invariants() {
            *broken.lock() = Some((cpu, why));
        }
    });
    if let Some((cpu, why)) = broken.into_inner() {
        return Err(alloc::format!("CPU {cpu}: {why}"));
    }
    Ok(())
}
