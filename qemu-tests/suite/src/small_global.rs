//! The set for a kernel whose global allocator is a small heap (issue 9): the README's
//! shortest route, a `FixedRegion` over a span of at most a few MiB that the kernel mapped,
//! in compact mode. Everything here is sized from the free bytes of the span, so the same
//! tests hold on 1 CPU or many and on 100 KiB or 4 MiB: the machine works, collections on
//! every CPU, allocation in interrupt handlers, a cross-CPU stress, out of memory (a null
//! with its reason in `stats().heap.failures`, and recovery), the heap's invariants. What
//! needs tens or hundreds of MiB or 2 MiB alignments is left out by design ([`SKIPPED`]).

use alloc::vec::Vec;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};

use core_alloc::{Allocator, Failure};
use page_provider::PageProvider;
use platform::Platform;

use crate::heap::{Block, make, release};
use crate::{HeapUnderTest, Machine, Outcome, Rng, Summary, ensure, record, say, smoke};

/// The full suite's tests this set does not run, each of which needs more than a small heap.
pub(crate) const SKIPPED: &str = "alignments_up_to_2_mib, huge_allocations_span_chunks, \
out_of_memory_returns_null_and_recovers (2 MiB frames), memory_returned_to_the_provider, \
torture_every_path_on_every_cpu_and_in_interrupts, small_heaps_in_compact_mode, \
compare_with_linked_list_allocator, compare_with_talc_and_linked_list_allocator";

/// Bytes one CPU's test may keep live: a quarter of the span's free bytes, shared by the
/// CPUs, so that what the tests hold stays far from the end of the heap (the out-of-memory
/// test is the one that goes there, on purpose).
fn budget_per_cpu<P: PageProvider, Pl: Platform>(heap: &Allocator<P, Pl>, cpus: usize) -> usize {
    heap.stats().heap.region.fit.free_bytes / 4 / cpus.max(1)
}

/// Runs the small-heap set, then `more` (the kernel's own tests), the statistics, a line
/// naming the set and what it left out, and the summary line.
pub(crate) fn run<P: PageProvider, Pl: Platform>(
    machine: &dyn Machine,
    allocator: &Allocator<P, Pl>,
    more: impl FnOnce(&mut dyn FnMut(&str, Outcome)),
) -> Summary {
    let no_frames = || 0;
    let heap = HeapUnderTest { allocator, free_frames: &no_frames };
    let mut summary = Summary::default();
    let mut test = |name: &str, outcome: Outcome| record(machine, &mut summary, name, outcome);
    test("global_heap_in_compact_mode", compact_mode(machine, allocator));
    test("cpus_online", smoke::cpus_online(machine));
    test("clock_advances", smoke::clock_advances(machine));
    test("timer_interrupts_on_every_cpu", smoke::timer_interrupts_on_every_cpu(machine));
    let items = (budget_per_cpu(allocator, machine.cpu_count()) / 100).clamp(300, 2000);
    test("collections_on_every_cpu", smoke::collections_of(machine, items));
    test("allocation_from_interrupt_context", allocation_from_interrupts(machine, &heap));
    test("concurrent_stress_with_cross_cpu_frees", concurrent_stress(machine, &heap));
    test("out_of_memory_returns_null_with_a_reason", out_of_memory(machine, allocator));
    test("heap_invariants_on_every_cpu", crate::heap::invariants_on_every_cpu(machine, &heap));
    more(&mut test);
    let stats = allocator.stats();
    for line in alloc::format!("{stats}").lines() {
        say(machine, format_args!("stats {line}"));
    }
    say(
        machine,
        format_args!(
            "suite set: small global heap ({} KiB span, compact mode), {} tests; not run here by design: {SKIPPED}",
            stats.heap.region.span_bytes / 1024,
            summary.passed + summary.failed
        ),
    );
    say(machine, format_args!("suite done: {} passed, {} failed", summary.passed, summary.failed));
    summary
}

/// `collect()` twice on every CPU: the second round gathers the frees the first handed
/// over. Afterwards only the slabs' live blocks hold memory.
fn collect_everywhere<P: PageProvider, Pl: Platform>(machine: &dyn Machine, heap: &Allocator<P, Pl>) {
    for _ in 0..2 {
        machine.run_on_cpus(machine.cpu_count(), &|_| heap.collect());
    }
}

/// The global heap runs in compact mode: the whole span, no metadata chunk. (The span is
/// claimed at the first allocation, which a kernel on one CPU may not have made yet.)
fn compact_mode<P: PageProvider, Pl: Platform>(machine: &dyn Machine, heap: &Allocator<P, Pl>) -> Outcome {
    let Some(first) = heap.allocate(100, 8) else { return Err("the global heap refused 100 bytes".into()) };
    let stats = heap.stats();
    // SAFETY: allocated just above with this size and alignment, freed once.
    unsafe { heap.deallocate(first, 100, 8) };
    let region = stats.heap.region;
    ensure!(heap.is_compact(), "the global heap is not in compact mode: {stats}");
    ensure!(region.span_bytes > 0, "compact mode with an empty span");
    ensure!(stats.heap.meta_chunks == 0, "a compact heap holds {} metadata chunks", stats.heap.meta_chunks);
    say(
        machine,
        format_args!(
            "global heap: compact mode over {} KiB, {} KiB free, largest free piece {} KiB, {} arenas",
            region.span_bytes / 1024,
            region.fit.free_bytes / 1024,
            region.fit.largest_free / 1024,
            stats.arenas
        ),
    );
    Ok(())
}

static IRQ_RUNS: [AtomicUsize; 64] = [const { AtomicUsize::new(0) }; 64];
static IRQ_DAMAGED: AtomicUsize = AtomicUsize::new(0);
static IRQ_REFUSED: AtomicUsize = AtomicUsize::new(0);
/// The size of the bigger block every 16th handler run allocates (set from the budget).
static IRQ_LARGE: AtomicUsize = AtomicUsize::new(0);

/// A vector of `len` copies of `value`, or `None` (counted) if the heap refused.
fn filled<T: Copy>(len: usize, value: T) -> Option<Vec<T>> {
    let mut vector = Vec::new();
    if vector.try_reserve_exact(len).is_err() {
        IRQ_REFUSED.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    vector.resize(len, value);
    Some(vector)
}

/// Runs in the timer interrupt: allocates, fills, checks and frees through the global
/// allocator, 8 B to 2 KiB, and every 16th run a bigger block. A refusal is counted (the
/// test fails on it), never a panic.
fn allocate_in_interrupt(cpu: usize) {
    let run = IRQ_RUNS[cpu % 64].fetch_add(1, Ordering::Relaxed);
    let large_size = if run.is_multiple_of(16) { IRQ_LARGE.load(Ordering::Relaxed) } else { 0 };
    let (Some(bytes), Some(words), Some(large)) =
        (filled(8 << (run % 9), run as u8), filled(4, cpu as u64), filled(large_size, 0x5Au8))
    else {
        return;
    };
    let intact = bytes.iter().all(|&byte| byte == run as u8)
        && words.iter().all(|&word| word == cpu as u64)
        && large.iter().all(|&byte| byte == 0x5A);
    if !intact {
        IRQ_DAMAGED.fetch_add(1, Ordering::Relaxed);
    }
}

/// Every CPU allocates and frees while its timer interrupt allocates too, until each
/// handler ran [`WANTED_INTERRUPTS`] times; no allocation may fail, in the handlers or out.
fn allocation_from_interrupts<P: PageProvider, Pl: Platform>(
    machine: &dyn Machine,
    heap: &HeapUnderTest<'_, P, Pl>,
) -> Outcome {
    // As in the full suite: the same count everywhere, and a CPU gives up only when its
    // handler stopped running (STALL_NS) or after LIMIT_NS in all.
    const WANTED_INTERRUPTS: usize = 50;
    const STALL_NS: u64 = 10_000_000_000;
    const LIMIT_NS: u64 = 300_000_000_000;
    const LIVE: usize = 16;
    let cpus = machine.cpu_count();
    collect_everywhere(machine, heap.allocator);
    let budget = budget_per_cpu(heap.allocator, cpus);
    // The handler's bigger block and the CPU's occasional one: an eighth of the budget.
    let bigger = (budget / 8).clamp(1024, 32 << 10);
    IRQ_LARGE.store(bigger, Ordering::Relaxed);
    let (damaged, refused, operations) = (AtomicUsize::new(0), AtomicUsize::new(0), AtomicUsize::new(0));
    machine.set_timer_handler(Some(allocate_in_interrupt));
    machine.run_on_cpus(cpus, &|cpu| {
        let mut rng = Rng(0x5A11_1000 + cpu as u64);
        let mut mine: Vec<Block> = Vec::with_capacity(LIVE);
        let mut id = (cpu as u64) << 40;
        let start = machine.now_ns();
        machine.start_timer(500);
        let (mut seen, mut progress_at) = (0, start);
        loop {
            let (runs, now) = (IRQ_RUNS[cpu].load(Ordering::Relaxed), machine.now_ns());
            if runs != seen {
                (seen, progress_at) = (runs, now);
            }
            if runs >= WANTED_INTERRUPTS || now - progress_at > STALL_NS || now - start > LIMIT_NS {
                break;
            }
            if mine.len() == LIVE {
                if !release(heap, mine.swap_remove(rng.below(LIVE))) {
                    damaged.fetch_add(1, Ordering::Relaxed);
                }
            } else {
                id += 1;
                let size = if rng.below(10) == 0 { 1 + rng.below(bigger) } else { 1 + rng.below(512) };
                match make(heap, size, 8, id) {
                    Some(block) => mine.push(block),
                    None => {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
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
    let runs: Vec<usize> = (0..cpus).map(|cpu| IRQ_RUNS[cpu % 64].load(Ordering::Relaxed)).collect();
    let after = heap.allocator.stats();
    let region = after.heap.region;
    say(
        machine,
        format_args!(
            "interrupt handlers allocated on each CPU {runs:?} times (blocks of 8 B to 2 KiB, and {bigger} B), during {} operations; then {} arenas, {} slab pages, {} KiB free (largest piece {} KiB), last failure {:?}",
            operations.load(Ordering::Relaxed),
            after.arenas,
            region.slab_pages,
            region.fit.free_bytes / 1024,
            region.fit.largest_free / 1024,
            after.heap.failures.last
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
    ensure!(
        IRQ_REFUSED.load(Ordering::Relaxed) == 0,
        "{} allocations in interrupt handlers failed",
        IRQ_REFUSED.load(Ordering::Relaxed)
    );
    ensure!(damaged.load(Ordering::Relaxed) == 0, "blocks of the interrupted code were corrupted");
    ensure!(refused.load(Ordering::Relaxed) == 0, "{} allocations failed", refused.load(Ordering::Relaxed));
    Ok(())
}

/// Every CPU allocates blocks of log-uniform sizes from 8 bytes up to a size set by its
/// budget (at most 16 KiB) and alignments up to 64, keeps up to `LIVE` of them, and hands
/// half of what it makes to other CPUs (up to `MAILBOX` blocks wait for each; a sender
/// waits for room), which free them. The CPUs start together. No block may lose its contents, no allocation may fail, a
/// quarter of the blocks must cross CPUs, and the live count must balance.
fn concurrent_stress<P: PageProvider, Pl: Platform>(
    machine: &dyn Machine,
    heap: &HeapUnderTest<'_, P, Pl>,
) -> Outcome {
    // A few seconds under emulation on a busy host, where a sender often waits for a
    // descheduled vCPU to drain its mailbox.
    const OPERATIONS: usize = 5_000;
    const LIVE: usize = 24;
    const MAILBOX: usize = 64;
    /// How long a CPU waits for the others to start, for room in a mailbox, and for the
    /// others to finish.
    const WAIT_NS: u64 = 10_000_000_000;
    let cpus = machine.cpu_count();
    collect_everywhere(machine, heap.allocator);
    let budget = budget_per_cpu(heap.allocator, cpus);
    // Sizes from 2^3 to below 2^(top + 1), each power of two as likely: the largest `top`
    // (at most 13) whose mean size puts the blocks a CPU can hold (LIVE + MAILBOX) at half
    // its budget (a 1 MiB heap on 4 CPUs: blocks up to 1 KiB).
    let mean = |top: usize| (3..=top).map(|shift| 3usize << shift >> 1).sum::<usize>() / (top - 2);
    let top = (5..=13).rev().find(|&top| (LIVE + MAILBOX) * mean(top) <= budget / 2).unwrap_or(5);
    let arrived = AtomicUsize::new(0);
    let live_before = heap.allocator.stats().live_allocations();
    let mailboxes: Vec<spin::Mutex<Vec<Block>>> =
        (0..cpus).map(|_| spin::Mutex::new(Vec::with_capacity(MAILBOX))).collect();
    let next_id = AtomicUsize::new(1);
    let (damaged, crossed, refused) = (AtomicUsize::new(0), AtomicUsize::new(0), AtomicUsize::new(0));
    let finished = AtomicUsize::new(0);
    // Frees the blocks waiting in `cpu`'s mailbox.
    let drain = |cpu: usize, received: &mut Vec<Block>| {
        core::mem::swap(&mut *mailboxes[cpu].lock(), received);
        crossed.fetch_add(received.len(), Ordering::Relaxed);
        for block in received.drain(..) {
            if !release(heap, block) {
                damaged.fetch_add(1, Ordering::Relaxed);
            }
        }
    };
    machine.run_on_cpus(cpus, &|cpu| {
        let mut rng = Rng(0x5EED_1000 + cpu as u64 * 7919);
        let mut mine: Vec<Block> = Vec::with_capacity(LIVE);
        let mut received: Vec<Block> = Vec::with_capacity(MAILBOX);
        // Together, or the first CPU could be done before the others start (under
        // emulation a vCPU may wait for a host core).
        arrived.fetch_add(1, Ordering::AcqRel);
        let since = machine.now_ns();
        while arrived.load(Ordering::Acquire) < cpus && machine.now_ns() - since < WAIT_NS {
            core::hint::spin_loop();
        }
        for operation in 0..OPERATIONS {
            if operation % 8 == 7 {
                drain(cpu, &mut received);
            } else if mine.len() == LIVE {
                if !release(heap, mine.swap_remove(rng.below(LIVE))) {
                    damaged.fetch_add(1, Ordering::Relaxed);
                }
            } else {
                let shift = 3 + rng.below(top - 2);
                let size = (1 << shift) + rng.below(1 << shift);
                let align = 1 << rng.below(7);
                let id = next_id.fetch_add(1, Ordering::Relaxed) as u64;
                let Some(block) = make(heap, size, align, id) else {
                    refused.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let mut block = Some(block);
                if cpus > 1 && rng.below(2) == 0 {
                    // A full mailbox: wait for its CPU to drain it (freeing this CPU's
                    // own meanwhile, so that two CPUs waiting on each other both move), and
                    // keep the block after WAIT_NS. The memory in flight stays bounded.
                    let other = (cpu + 1 + rng.below(cpus - 1)) % cpus;
                    let since = machine.now_ns();
                    while block.is_some() && machine.now_ns() - since < WAIT_NS {
                        let mut mailbox = mailboxes[other].lock();
                        if mailbox.len() < MAILBOX {
                            mailbox.extend(block.take());
                        } else {
                            drop(mailbox);
                            drain(cpu, &mut received);
                        }
                    }
                }
                mine.extend(block);
            }
        }
        for block in mine {
            if !release(heap, block) {
                damaged.fetch_add(1, Ordering::Relaxed);
            }
        }
        // Keep draining until every CPU is done: others may still be sending.
        finished.fetch_add(1, Ordering::AcqRel);
        let since = machine.now_ns();
        while finished.load(Ordering::Acquire) < cpus && machine.now_ns() - since < WAIT_NS {
            drain(cpu, &mut received);
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
        format_args!(
            "stress: {made} blocks of 8 B to {} B on {cpus} CPUs, {crossed} freed on another CPU",
            (2usize << top) - 1
        ),
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

/// On the boot CPU, the others idle: fills the heap with blocks of 64 KiB, then 4 KiB, 256
/// and 16 bytes until each size gets a null, chaining the blocks through their own first
/// words (no record outside the heap). Each null must be counted in
/// `stats().heap.failures` as out of memory or fragmentation, the last one naming the
/// 16-byte request; a request bigger than the span must fail as too big; live data must have
/// filled at least 85% of the bytes free at the start; and once everything is freed and
/// collected, 64 KiB can be allocated again and the live count is back where it was.
fn out_of_memory<P: PageProvider, Pl: Platform>(machine: &dyn Machine, heap: &Allocator<P, Pl>) -> Outcome {
    const SIZES: [usize; 4] = [64 << 10, 4 << 10, 256, 16];
    collect_everywhere(machine, heap);
    let before = heap.stats();
    let span = before.heap.region.span_bytes;
    let free_at_start = before.heap.region.fit.free_bytes;
    let failed_before = before.heap.failures;
    let mut head: *mut usize = core::ptr::null_mut();
    let (mut taken, mut count, mut refusals) = (0usize, 0usize, 0usize);
    // Nothing in this loop allocates but the requests themselves.
    for size in SIZES {
        while let Some(block) = heap.allocate(size, 16) {
            let words = block.as_ptr().cast::<usize>();
            // SAFETY: a fresh block of at least 16 bytes, aligned to 16: room for two words.
            unsafe {
                words.write(head as usize);
                words.add(1).write(size);
            }
            head = words;
            taken += size;
            count += 1;
        }
        refusals += 1;
    }
    let at_bottom = heap.stats().heap;
    let too_big = heap.allocate(2 * span.max(1), 16);
    let failures = heap.stats().heap.failures;
    while !head.is_null() {
        // SAFETY: each chained block holds the next one's address and its own size, written
        // above; it is freed once, with the size and alignment it was allocated with.
        unsafe {
            let (next, size) = (head.read() as *mut usize, head.add(1).read());
            heap.deallocate(NonNull::new_unchecked(head.cast()), size, 16);
            head = next;
        }
    }
    if let Some(block) = too_big {
        // SAFETY: allocated above (wrongly: the test fails below), freed once.
        unsafe { heap.free(block) };
    }
    collect_everywhere(machine, heap);
    let again = heap.allocate(64 << 10, 16);
    let recovered = again.is_some();
    if let Some(block) = again {
        // SAFETY: allocated just above, freed once.
        unsafe { heap.deallocate(block, 64 << 10, 16) };
    }
    let live_after = heap.stats().live_allocations();
    let last = at_bottom.failures.last;
    let nulls = (at_bottom.failures.out_of_memory + at_bottom.failures.fragmented)
        - (failed_before.out_of_memory + failed_before.fragmented);
    say(
        machine,
        format_args!(
            "out of memory after {count} blocks, {} KiB of the {} KiB free at the start ({}%); {refusals} nulls, the last: {last:?}",
            taken / 1024,
            free_at_start / 1024,
            taken * 100 / free_at_start.max(1)
        ),
    );
    ensure!(refusals == SIZES.len(), "{refusals} nulls for {} sizes", SIZES.len());
    ensure!(
        nulls == SIZES.len(),
        "{nulls} nulls counted as out of memory or fragmentation, not {}",
        SIZES.len()
    );
    ensure!(
        last.is_some_and(
            |last| matches!(last.reason, Failure::OutOfMemory | Failure::Fragmented) && last.size == 16
        ),
        "the last failure does not name the 16-byte request running out: {last:?}"
    );
    ensure!(too_big.is_none(), "{} bytes were allocated from a span of {span}", 2 * span);
    ensure!(
        failures.too_big == at_bottom.failures.too_big + 1
            && failures.last.is_some_and(|last| last.reason == Failure::TooBig),
        "a request bigger than the span was not reported as too big: {:?}",
        failures.last
    );
    ensure!(
        taken * 100 >= free_at_start * 85,
        "only {taken} bytes of live data fit in {free_at_start} free bytes"
    );
    ensure!(recovered, "64 KiB could not be allocated after everything was freed");
    ensure!(
        live_after == before.live_allocations(),
        "{} live allocations before, {live_after} after",
        before.live_allocations()
    );
    Ok(())
}
