//! The torture test (issue 8): for a bounded guest time every CPU does random operations
//! over every path of the allocator at once, while its timer interrupt allocates too.
//!
//! Each CPU loops until the deadline, picking at random among: small blocks near many size
//! classes, large runs (up to 1 MiB), huge blocks (up to 12 MiB), alignments up to 2 MiB,
//! zeroed and zero-size allocations, reallocations that grow and shrink across classes and
//! across the small, large and huge paths (sometimes to another alignment), frees of its own
//! blocks and of blocks other CPUs or interrupt handlers allocated (they travel through
//! shared exchange slots), `collect()`, and requests that cannot succeed. Now and then one
//! CPU takes every free frame for a while, so that every CPU and interrupt handler runs out
//! of memory: null results are counted, never an error, and must not panic or hang. The
//! periodic timer interrupt allocates, fills, reallocates and checks a block in interrupt
//! context and swaps it with an exchange slot, freeing there whatever thread code or another
//! handler left.
//!
//! Every block carries a pattern computed from its id and each byte's offset: every byte of
//! blocks up to 32 KiB; the first 4 KiB, the first 64 bytes of every further page and the
//! last 64 bytes of larger ones. The pattern is checked before every free and reallocation,
//! the preserved prefix after a reallocation, zeroes after a zeroed allocation, and the
//! alignment, ownership and usable size of every result. At the end every block is freed,
//! every CPU collects twice and checks the allocator's invariants, and the live statistics
//! and the provider's free frames must be back where they were. Any fault fails the test
//! with the first one's description.
//!
//! Every CPU's timer handler must run at least [`MIN_INTERRUPTS`] times during the run. How
//! often interrupts arrive depends on the machine (under emulation with 64 vCPUs on two host
//! cores, a vCPU takes a few a second, not the timer's 1000), so a CPU whose handler has not
//! run that often by the deadline keeps going while its interrupts keep arriving: it stops
//! when it has seen enough, after [`STALL_NS`] without one (a lost timer, or interrupts left
//! masked), or [`OVERTIME_LIMIT_NS`] after the start. The bar is the same count everywhere;
//! the time it takes follows the arrivals measured on each CPU.
//!
//! The run lasts [`QUICK_SECONDS`] of guest time unless the kernels were built with
//! `QEMU_TORTURE_SECONDS=N` in the environment (`QEMU_TORTURE_SECONDS=300 cargo qemu`: the
//! runner passes its environment to the kernel builds and waits that much longer for each
//! boot).

use alloc::string::String;
use alloc::vec::Vec;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use core_alloc::Allocator;
use page_provider::{CHUNK_SIZE, PageProvider};
use platform::Platform;

use crate::{HeapUnderTest, Machine, Outcome, Rng, say};

/// Guest seconds of the default run (`cargo qemu`, `cargo test`).
pub(crate) const QUICK_SECONDS: u64 = 4;
/// CPUs the static per-CPU counters cover.
const MAX_CPUS: usize = 64;
/// Shared slots through which blocks change CPUs (and go to and from interrupt handlers).
const SLOTS: usize = 64;
/// Blocks a CPU keeps at most; past it (or past [`HELD_BYTES`]) it frees.
const LIVE: usize = 192;
/// Bytes of blocks a CPU keeps at most before it prefers frees.
const HELD_BYTES: usize = 64 << 20;
/// The largest small, large and huge requests.
const SMALL_MAX: usize = 32 << 10;
const LARGE_MAX: usize = 1 << 20;
const HUGE_MAX: usize = 12 << 20;
/// Blocks up to this size carry the pattern in every byte.
const DENSE: usize = 32 << 10;
/// Larger blocks carry it in their first page, the first [`STRIPE`] bytes of every further
/// page and their last [`STRIPE`] bytes.
const PAGE: usize = 4096;
const STRIPE: usize = 64;
/// The timer interrupt's period on every CPU.
const TIMER_PERIOD_US: u32 = 1000;
/// Runs of its timer handler every CPU must see.
const MIN_INTERRUPTS: usize = 10;
/// After the deadline, a CPU whose handler ran fewer than [`MIN_INTERRUPTS`] times gives up
/// when none arrived for this long...
const STALL_NS: u64 = 10_000_000_000;
/// ... or this long after the start.
const OVERTIME_LIMIT_NS: u64 = 300_000_000_000;
/// Out-of-memory rounds: the first starts this long after the start, one CPU then holds
/// every frame it can get for [`HOG_HOLD_NS`], and the next starts [`HOG_PERIOD_NS`] after
/// the previous one ended.
const HOG_FIRST_NS: u64 = 300_000_000;
const HOG_HOLD_NS: u64 = 100_000_000;
const HOG_PERIOD_NS: u64 = 1_000_000_000;
/// The sizes a hogging CPU takes, each until the allocator refuses it or up to a number of
/// blocks per pass (at every later step of its round, the huge chunk, large run and page
/// run sizes again: what other CPUs free), and the most blocks it records.
const HOG_SIZES: [(usize, usize); 6] =
    [(64 << 20, 128), (8 << 20, 64), (2 << 20, 64), (1 << 20, 256), (128 << 10, 1024), (32 << 10, 4096)];
const HOG_CAPACITY: usize = 16384;
/// Marks the origin of a block allocated by an interrupt handler.
const INTERRUPT_ORIGIN: usize = 1 << 16;

/// What the summary line counts.
#[derive(Debug, Clone, Copy)]
enum Op {
    Steps,
    Small,
    Large,
    Huge,
    Aligned,
    Zeroed,
    ZeroSize,
    Reallocs,
    Grown,
    Shrunk,
    AcrossPaths,
    FreesOwn,
    FreesOther,
    Exchanged,
    Collects,
    Nulls,
    Impossible,
    HogRounds,
    HogKib,
    HogMs,
    Interrupts,
    InterruptAllocs,
    InterruptReallocs,
    InterruptFreesOther,
    InterruptNulls,
    Obtained,
    Released,
}

/// Kinds of [`Op`].
const OPS: usize = Op::Released as usize + 1;

/// The names of the [`Op`] counts in the summary line.
const NAMES: [&str; OPS] = [
    "operations",
    "small",
    "large",
    "huge",
    "aligned 4 KiB-2 MiB",
    "zeroed",
    "zero-size",
    "reallocs",
    "grown",
    "shrunk",
    "across small/large/huge",
    "own frees",
    "frees of other CPUs'/handlers' blocks",
    "exchanged",
    "collects",
    "null results",
    "impossible requests",
    "out-of-memory rounds",
    "KiB taken by them",
    "ms taking it",
    "interrupts",
    "interrupt allocations",
    "interrupt reallocs",
    "interrupt frees of others' blocks",
    "interrupt null results",
    "blocks obtained",
    "blocks released",
];

/// Counts of the whole run: interrupt handlers add to them directly, CPUs at the end.
static TOTALS: [AtomicU64; OPS] = [const { AtomicU64::new(0) }; OPS];
/// Ids of blocks, unique across CPUs and handlers.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);
/// The exchange slots.
static EXCHANGE: [spin::Mutex<Option<Block>>; SLOTS] = [const { spin::Mutex::new(None) }; SLOTS];
/// Faults seen, and the first one described.
static FAULTS: AtomicUsize = AtomicUsize::new(0);
static FIRST_FAULT: spin::Mutex<Option<Fault>> = spin::Mutex::new(None);
/// The allocator under test, for the interrupt handler, while [`INTERRUPTS_ON`] is set.
static INTERRUPT_HEAP: AtomicPtr<()> = AtomicPtr::new(core::ptr::null_mut());
static INTERRUPTS_ON: AtomicBool = AtomicBool::new(false);
/// Interrupt handlers inside [`on_timer`] now.
static INTERRUPTS_INSIDE: AtomicUsize = AtomicUsize::new(0);
/// Interrupts handled, per CPU.
static INTERRUPT_RUNS: [AtomicUsize; MAX_CPUS] = [const { AtomicUsize::new(0) }; MAX_CPUS];

fn bump(op: Op, by: u64) {
    TOTALS[op as usize].fetch_add(by, Ordering::Relaxed);
}

/// A live block: where it is, its layout, the id its pattern comes from, who allocated it,
/// and whether it carries the sparse pattern (the first and last 64 bytes only).
#[derive(Debug, Clone, Copy)]
struct Block {
    address: usize,
    size: usize,
    align: usize,
    id: u64,
    origin: usize,
    sparse: bool,
}

impl Block {
    fn pointer(&self) -> NonNull<u8> {
        // SAFETY: blocks are made from non-null results only.
        unsafe { NonNull::new_unchecked(self.address as *mut u8) }
    }
}

/// Who is running: a CPU's thread code or its interrupt handler.
#[derive(Debug, Clone, Copy)]
struct Context {
    cpu: usize,
    interrupt: bool,
}

impl Context {
    fn origin(&self) -> usize {
        if self.interrupt { INTERRUPT_ORIGIN | self.cpu } else { self.cpu }
    }
}

/// A fault: what was wrong, where, with which block, and a detail (an offset, a size).
#[derive(Debug, Clone, Copy)]
struct Fault {
    what: &'static str,
    context: Context,
    block: Block,
    detail: usize,
}

/// Records a fault without allocating; an interrupt handler only tries the lock, so the
/// description may be lost (never the count) if it interrupted thread code holding it.
fn fault(context: Context, what: &'static str, block: Block, detail: usize) {
    FAULTS.fetch_add(1, Ordering::Relaxed);
    let first = if context.interrupt { FIRST_FAULT.try_lock() } else { Some(FIRST_FAULT.lock()) };
    if let Some(mut first) = first
        && first.is_none()
    {
        *first = Some(Fault { what, context, block, detail });
    }
}

/// The pattern word at word `index` of block `id`.
fn word_of(id: u64, index: usize) -> u64 {
    let mixed = (id ^ 0x5851_F42D_4C95_7F2D)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(index as u64)
        .wrapping_mul(0xD6E8_FEB8_6659_FD93);
    mixed ^ (mixed >> 32)
}

/// The pattern byte at `offset` of block `id`: byte `offset % 8` of its word, little-endian
/// as both architectures are.
fn byte_of(id: u64, offset: usize) -> u8 {
    (word_of(id, offset / 8) >> (offset % 8 * 8)) as u8
}

/// What a pass over a block's pattern does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// Writes the pattern.
    Fill,
    /// Compares with the pattern.
    Check,
    /// Compares with zeroes.
    Zero,
}

/// Runs `pass` over bytes `from..to` of the block (words where aligned); `Err` carries the
/// offset of the first byte that differs.
fn pass_over(block: &Block, from: usize, to: usize, pass: Pass) -> Result<(), usize> {
    let mut offset = from;
    if block.address.is_multiple_of(8) && from.is_multiple_of(8) {
        while offset + 8 <= to {
            let word = (block.address + offset) as *mut u64;
            let expected = if pass == Pass::Zero { 0 } else { word_of(block.id, offset / 8) };
            if pass == Pass::Fill {
                // SAFETY: the block is live with `size` bytes, `to` is at most `size`, and
                // the word is aligned; only its holder touches it.
                unsafe { word.write(expected) };
            } else {
                // SAFETY: as above; volatile, so that memory is read, not a value the
                // compiler remembers from the fill.
                let found = unsafe { word.read_volatile() };
                if found != expected {
                    return Err(offset + ((found ^ expected).trailing_zeros() / 8) as usize);
                }
            }
            offset += 8;
        }
    }
    while offset < to {
        let byte = (block.address + offset) as *mut u8;
        let expected = if pass == Pass::Zero { 0 } else { byte_of(block.id, offset) };
        if pass == Pass::Fill {
            // SAFETY: as above, for one byte.
            unsafe { byte.write(expected) };
        } else {
            // SAFETY: as above, for one byte.
            if unsafe { byte.read_volatile() } != expected {
                return Err(offset);
            }
        }
        offset += 1;
    }
    Ok(())
}

/// Runs `pass` over the bytes of the block's pattern that lie below `upto` (at most its
/// size): all of a dense block; the first page (64 bytes if sparse), 64 bytes of every
/// further page (not if sparse) and the last 64 bytes of a larger one.
fn over_pattern(block: &Block, upto: usize, pass: Pass) -> Result<(), usize> {
    let size = block.size;
    let region = |from: usize, to: usize| {
        let to = to.min(upto);
        if from < to { pass_over(block, from, to, pass) } else { Ok(()) }
    };
    if !block.sparse && size <= DENSE {
        return region(0, size);
    }
    region(0, if block.sparse { STRIPE } else { PAGE })?;
    if !block.sparse {
        for page in (PAGE..size).step_by(PAGE) {
            region(page, page + STRIPE)?;
        }
    }
    region(size.saturating_sub(STRIPE) & !7, size)
}

fn fill(block: &Block) {
    let _ = over_pattern(block, block.size, Pass::Fill);
}

/// Whether the pattern is intact in the block's first `upto` bytes; `Err` has the offset.
fn intact(block: &Block, upto: usize) -> Result<(), usize> {
    over_pattern(block, upto, Pass::Check)
}

/// Checks what the allocator says about a block it just returned: alignment, ownership,
/// usable size.
fn validate<P: PageProvider, Pl: Platform>(heap: &Allocator<P, Pl>, context: Context, block: &Block) {
    if !block.address.is_multiple_of(block.align) {
        fault(context, "a misaligned result", *block, block.address % block.align);
    }
    if !heap.owns(block.address as *const u8) {
        fault(context, "a result the allocator says it does not own", *block, 0);
        return;
    }
    // SAFETY: a live block of this allocator.
    let usable = unsafe { heap.usable_size(block.pointer()) };
    if usable < block.size {
        fault(context, "a usable size below the request", *block, usable);
    }
}

/// Allocates and fills a block; `None` when the allocator refused.
fn obtain<P: PageProvider, Pl: Platform>(
    heap: &Allocator<P, Pl>,
    context: Context,
    (size, align): (usize, usize),
    zeroed: bool,
    sparse: bool,
) -> Option<Block> {
    let result = if zeroed { heap.allocate_zeroed(size, align) } else { heap.allocate(size, align) };
    let pointer = result?;
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let block =
        Block { address: pointer.as_ptr() as usize, size, align, id, origin: context.origin(), sparse };
    validate(heap, context, &block);
    if zeroed && let Err(offset) = over_pattern(&block, size, Pass::Zero) {
        fault(context, "a zeroed block that is not zero", block, offset);
    }
    fill(&block);
    Some(block)
}

/// Checks a block's pattern and frees it.
fn release<P: PageProvider, Pl: Platform>(heap: &Allocator<P, Pl>, context: Context, block: Block) {
    if let Err(offset) = intact(&block, block.size) {
        fault(context, "a block corrupted before its free", block, offset);
    }
    // SAFETY: a live block of this allocator with this size and alignment, which nothing
    // else uses.
    unsafe { heap.deallocate(block.pointer(), block.size, block.align) };
}

/// Reallocates a block to `size` bytes aligned to `align`, checking its pattern before and
/// its preserved prefix after; `Err` returns the untouched block when the allocator refused.
fn resize<P: PageProvider, Pl: Platform>(
    heap: &Allocator<P, Pl>,
    context: Context,
    block: Block,
    (size, align): (usize, usize),
) -> Result<Block, Block> {
    if let Err(offset) = intact(&block, block.size) {
        fault(context, "a block corrupted before its reallocation", block, offset);
    }
    // SAFETY: a live block of this allocator, which nothing else uses during the call.
    let Some(pointer) = (unsafe { heap.reallocate(block.pointer(), align, size) }) else {
        if let Err(offset) = intact(&block, block.size) {
            fault(context, "a refused reallocation changed the block", block, offset);
        }
        return Err(block);
    };
    let moved = Block { address: pointer.as_ptr() as usize, ..block };
    if let Err(offset) = intact(&moved, size.min(block.size)) {
        fault(context, "a reallocation lost the preserved prefix", moved, offset);
    }
    let origin = if moved.address == block.address { block.origin } else { context.origin() };
    let resized = Block { size, align, origin, ..moved };
    validate(heap, context, &resized);
    fill(&resized);
    Ok(resized)
}

/// 0 for small sizes, 1 for large, 2 for huge.
fn path_of(size: usize) -> usize {
    if size <= SMALL_MAX {
        0
    } else if size <= LARGE_MAX {
        1
    } else {
        2
    }
}

/// A small size: mostly at, just below or just above a size class boundary (four per
/// doubling), sometimes inside a class or tiny.
fn small_size(rng: &mut Rng) -> usize {
    if rng.below(8) == 0 {
        return 1 + rng.below(16);
    }
    let shift = 3 + rng.below(13);
    let class = (1usize << shift) + (rng.below(4) << shift) / 4;
    let size = match rng.below(4) {
        0 => class - 1,
        1 => class,
        2 => class + 1,
        _ => class - rng.below(class / 5 + 1),
    };
    size.clamp(1, SMALL_MAX)
}

fn size_on(path: usize, rng: &mut Rng) -> usize {
    match path {
        0 => small_size(rng),
        1 => SMALL_MAX + 1 + rng.below(LARGE_MAX - SMALL_MAX),
        _ => LARGE_MAX + 1 + rng.below(HUGE_MAX - LARGE_MAX),
    }
}

/// An alignment: mostly up to 16, sometimes up to 2 KiB, now and then 4 KiB..2 MiB.
fn random_align(rng: &mut Rng) -> usize {
    match rng.below(16) {
        0..=9 => 1 << rng.below(5),
        10..=13 => 1 << (5 + rng.below(7)),
        _ => 1 << (12 + rng.below(10)),
    }
}

/// What the CPUs share besides the statics.
struct Shared {
    /// When the CPUs stop.
    deadline: u64,
    /// When a CPU stops even if its handler has not run [`MIN_INTERRUPTS`] times.
    overtime_limit: u64,
    /// The blocks of the current out-of-memory round; only its hogging CPU touches them.
    hog_blocks: spin::Mutex<Vec<Block>>,
    /// Whether a CPU is hogging now.
    hogging: AtomicBool,
    /// When the next out-of-memory round may start.
    hog_next: AtomicU64,
}

/// One CPU's thread code.
struct Worker<'h, P, Pl> {
    heap: &'h Allocator<P, Pl>,
    context: Context,
    rng: Rng,
    mine: Vec<Block>,
    held: usize,
    counts: [u64; OPS],
    /// When this CPU ends its out-of-memory round, if it is in one.
    hog_until: Option<u64>,
}

impl<'h, P: PageProvider, Pl: Platform> Worker<'h, P, Pl> {
    fn new(heap: &'h Allocator<P, Pl>, cpu: usize) -> Self {
        Self {
            heap,
            context: Context { cpu, interrupt: false },
            rng: Rng(0x7087_0000_0000_0001 ^ ((cpu as u64 + 1) * 0x9E37_79B9)),
            mine: Vec::with_capacity(LIVE + 16),
            held: 0,
            counts: [0; OPS],
            hog_until: None,
        }
    }

    fn count(&mut self, op: Op) {
        self.counts[op as usize] += 1;
    }

    /// Keeps a block, or frees it when there is no room to record it (no allocation here:
    /// the record never grows, so it works when memory has run out).
    fn keep(&mut self, block: Block) {
        if self.mine.len() < self.mine.capacity() {
            self.held += block.size;
            self.mine.push(block);
        } else {
            self.free(block);
        }
    }

    fn take(&mut self, index: usize) -> Block {
        let block = self.mine.swap_remove(index);
        self.held -= block.size;
        block
    }

    fn free(&mut self, block: Block) {
        self.count(if block.origin == self.context.origin() { Op::FreesOwn } else { Op::FreesOther });
        self.count(Op::Released);
        release(self.heap, self.context, block);
    }

    /// Takes one of this CPU's blocks at random, if it has any.
    fn pick(&mut self) -> Option<Block> {
        if self.mine.is_empty() {
            return None;
        }
        let index = self.rng.below(self.mine.len());
        Some(self.take(index))
    }

    fn free_random(&mut self) {
        if let Some(block) = self.pick() {
            self.free(block);
        }
    }

    fn allocate(&mut self, size: usize, align: usize) {
        let zeroed = self.rng.below(8) == 0;
        if zeroed {
            self.count(Op::Zeroed);
        }
        match obtain(self.heap, self.context, (size, align), zeroed, false) {
            Some(block) => {
                self.count(Op::Obtained);
                self.keep(block);
            }
            None => self.count(Op::Nulls),
        }
    }

    fn reallocate(&mut self) {
        let Some(block) = self.pick() else { return };
        let path = match self.rng.below(20) {
            0..=9 => 0,
            10..=16 => 1,
            _ if self.held < HELD_BYTES / 2 => 2,
            _ => 1,
        };
        let size = size_on(path, &mut self.rng);
        let align = if self.rng.below(8) == 0 { random_align(&mut self.rng) } else { block.align };
        match resize(self.heap, self.context, block, (size, align)) {
            Ok(resized) => {
                self.count(Op::Reallocs);
                self.count(if size >= block.size { Op::Grown } else { Op::Shrunk });
                if path_of(size) != path_of(block.size) {
                    self.count(Op::AcrossPaths);
                }
                self.keep(resized);
            }
            Err(block) => {
                self.count(Op::Nulls);
                self.keep(block);
            }
        }
    }

    /// Puts one of this CPU's blocks in a random exchange slot (or nothing), and frees or
    /// keeps what was there.
    fn exchange(&mut self) {
        let give = if self.rng.below(4) != 0 { self.pick() } else { None };
        let slot = &EXCHANGE[self.rng.below(SLOTS)];
        let taken = core::mem::replace(&mut *slot.lock(), give);
        if give.is_some() {
            self.count(Op::Exchanged);
        }
        if let Some(block) = taken {
            if self.rng.below(2) == 0 || self.mine.len() >= LIVE {
                self.free(block);
            } else {
                self.keep(block);
            }
        }
    }

    /// A request no allocator can grant in this guest: it must return null (and a
    /// reallocation leave its block untouched).
    fn impossible(&mut self) {
        self.count(Op::Impossible);
        let (size, align) = match self.rng.below(3) {
            0 => (1 << 40, 16),
            1 => (isize::MAX as usize - 4095, 4096),
            _ => (8 << 30, CHUNK_SIZE),
        };
        let victim = if self.rng.below(2) == 0 { self.pick() } else { None };
        if let Some(block) = victim {
            if let Err(offset) = intact(&block, block.size) {
                fault(self.context, "a block corrupted before its reallocation", block, offset);
            }
            // SAFETY: a live block of this allocator, which nothing else uses.
            match unsafe { self.heap.reallocate(block.pointer(), align, size) } {
                None => {
                    if let Err(offset) = intact(&block, block.size) {
                        fault(self.context, "a refused reallocation changed the block", block, offset);
                    }
                    self.keep(block);
                }
                Some(pointer) => {
                    let grown = Block { address: pointer.as_ptr() as usize, size, align, ..block };
                    fault(self.context, "an impossible reallocation succeeded", grown, size);
                    // SAFETY: what the reallocation returned, with its size and alignment.
                    unsafe { self.heap.deallocate(pointer, size, align) };
                }
            }
        } else {
            let zeroed = self.rng.below(2) == 0;
            let result =
                if zeroed { self.heap.allocate_zeroed(size, align) } else { self.heap.allocate(size, align) };
            if let Some(pointer) = result {
                let block =
                    Block { address: pointer.as_ptr() as usize, size, align, id: 0, origin: 0, sparse: true };
                fault(self.context, "an impossible allocation succeeded", block, size);
                // SAFETY: what the allocation returned, with its size and alignment.
                unsafe { self.heap.deallocate(pointer, size, align) };
            }
        }
    }

    /// Starts an out-of-memory round if it is time and no other CPU is in one; in its own
    /// round, takes whatever memory other CPUs freed since the last step, and ends the round
    /// when its time is up.
    fn hog_step(&mut self, machine: &dyn Machine, now: u64, shared: &Shared) {
        match self.hog_until {
            Some(until) if now >= until => self.end_hog(now, shared),
            Some(_) => self.hog(shared, &HOG_SIZES[2..5]),
            None if now >= shared.hog_next.load(Ordering::Relaxed)
                && now + HOG_HOLD_NS < shared.deadline
                && shared
                    .hogging
                    .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok() =>
            {
                self.count(Op::HogRounds);
                self.hog(shared, &HOG_SIZES);
                let taken = machine.now_ns();
                self.counts[Op::HogMs as usize] += (taken - now) / 1_000_000;
                self.hog_until = Some(taken + HOG_HOLD_NS);
            }
            None => {}
        }
    }

    /// Takes blocks of each size until the allocator refuses one (or the record is full).
    fn hog(&mut self, shared: &Shared, sizes: &[(usize, usize)]) {
        let mut blocks = shared.hog_blocks.lock();
        for &(size, most) in sizes {
            for _ in 0..most.min(HOG_CAPACITY - blocks.len()) {
                let Some(block) = obtain(self.heap, self.context, (size, 16), false, true) else {
                    self.count(Op::Nulls);
                    break;
                };
                self.count(Op::Obtained);
                self.counts[Op::HogKib as usize] += (size >> 10) as u64;
                blocks.push(block);
            }
        }
    }

    fn end_hog(&mut self, now: u64, shared: &Shared) {
        for block in shared.hog_blocks.lock().drain(..) {
            self.count(Op::Released);
            release(self.heap, self.context, block);
        }
        self.hog_until = None;
        shared.hog_next.store(now + HOG_PERIOD_NS, Ordering::Relaxed);
        shared.hogging.store(false, Ordering::Release);
    }

    /// One random operation.
    fn step(&mut self) {
        self.count(Op::Steps);
        let full = self.mine.len() >= LIVE || self.held >= HELD_BYTES;
        let roll = self.rng.below(100);
        match roll {
            _ if full && roll < 60 => self.free_random(),
            0..=29 => {
                self.count(Op::Small);
                let size = small_size(&mut self.rng);
                let align = random_align(&mut self.rng).min(1 << 11);
                self.allocate(size, align);
            }
            30..=37 => {
                self.count(Op::Large);
                let size = size_on(1, &mut self.rng);
                let align = 1 << self.rng.below(7);
                self.allocate(size, align);
            }
            38..=39 => {
                self.count(Op::Huge);
                let size = size_on(2, &mut self.rng);
                let align = 1 << self.rng.below(7);
                self.allocate(size, align);
            }
            40..=42 => {
                self.count(Op::Aligned);
                let path = self.rng.below(3);
                let size = size_on(path, &mut self.rng);
                let align = 1 << (12 + self.rng.below(10));
                self.allocate(size, align);
            }
            43..=44 => {
                self.count(Op::ZeroSize);
                let align = random_align(&mut self.rng);
                self.allocate(0, align);
            }
            45..=56 => self.reallocate(),
            57..=79 => self.free_random(),
            80..=91 => self.exchange(),
            92 => {
                self.count(Op::Collects);
                self.heap.collect();
            }
            93 => self.impossible(),
            _ => self.free_random(),
        }
    }

    /// Random operations until the deadline (and, after it, until this CPU's handler has run
    /// [`MIN_INTERRUPTS`] times, while its interrupts keep arriving), then every block of this
    /// CPU freed.
    fn run(&mut self, machine: &dyn Machine, shared: &Shared) {
        let (mut seen, mut arrival) = (0, machine.now_ns());
        loop {
            let now = machine.now_ns();
            let runs = INTERRUPT_RUNS[self.context.cpu % MAX_CPUS].load(Ordering::Relaxed);
            if runs != seen {
                (seen, arrival) = (runs, now);
            }
            let enough = runs >= MIN_INTERRUPTS || now - arrival > STALL_NS || now >= shared.overtime_limit;
            if now >= shared.deadline && enough {
                break;
            }
            self.hog_step(machine, now, shared);
            self.step();
        }
        if self.hog_until.is_some() {
            self.end_hog(machine.now_ns(), shared);
        }
        while !self.mine.is_empty() {
            let block = self.take(self.mine.len() - 1);
            self.free(block);
        }
        for (total, count) in TOTALS.iter().zip(self.counts) {
            total.fetch_add(count, Ordering::Relaxed);
        }
    }
}

/// The timer interrupt's handler during the test, for the allocator type under test.
fn on_timer<P: PageProvider, Pl: Platform>(cpu: usize) {
    INTERRUPTS_INSIDE.fetch_add(1, Ordering::SeqCst);
    let heap = INTERRUPT_HEAP.load(Ordering::SeqCst).cast::<Allocator<P, Pl>>();
    if INTERRUPTS_ON.load(Ordering::SeqCst) && !heap.is_null() {
        // SAFETY: while INTERRUPTS_ON is set, INTERRUPT_HEAP points to the allocator under
        // test, whose type is the one this instance of the handler was made for (the test
        // installs both together), and the test waits for INTERRUPTS_INSIDE to drop to zero
        // after clearing INTERRUPTS_ON before it lets go of the allocator.
        interrupt_work(unsafe { &*heap }, cpu);
    }
    INTERRUPTS_INSIDE.fetch_sub(1, Ordering::SeqCst);
}

/// In interrupt context: allocates a block (sometimes zeroed, sometimes large), fills it,
/// sometimes reallocates it across classes, and swaps it into a random exchange slot,
/// freeing the block that was there (from thread code or another handler). Allocates
/// nothing else: never a record that could grow.
fn interrupt_work<P: PageProvider, Pl: Platform>(heap: &Allocator<P, Pl>, cpu: usize) {
    let context = Context { cpu, interrupt: true };
    let run = INTERRUPT_RUNS[cpu % MAX_CPUS].fetch_add(1, Ordering::Relaxed) as u64;
    bump(Op::Interrupts, 1);
    let mut rng = Rng((((cpu as u64) + 1) << 48) ^ run.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let sized = |rng: &mut Rng| {
        if rng.below(8) == 0 { SMALL_MAX + 1 + rng.below(224 << 10) } else { small_size(rng) }
    };
    let size = sized(&mut rng);
    let align = 1 << rng.below(7);
    let zeroed = rng.below(4) == 0;
    if zeroed {
        bump(Op::Zeroed, 1);
    }
    let Some(mut block) = obtain(heap, context, (size, align), zeroed, false) else {
        bump(Op::InterruptNulls, 1);
        return;
    };
    bump(Op::InterruptAllocs, 1);
    bump(Op::Obtained, 1);
    if rng.below(2) == 0 {
        let size = sized(&mut rng);
        match resize(heap, context, block, (size, block.align)) {
            Ok(resized) => {
                bump(Op::InterruptReallocs, 1);
                block = resized;
            }
            Err(untouched) => {
                bump(Op::InterruptNulls, 1);
                block = untouched;
            }
        }
    }
    let swapped = EXCHANGE[rng.below(SLOTS)].try_lock().map(|mut slot| slot.replace(block));
    let freed = match swapped {
        Some(Some(other)) => {
            if other.origin != context.origin() {
                bump(Op::InterruptFreesOther, 1);
            }
            other
        }
        Some(None) => return,
        None => block,
    };
    bump(Op::Released, 1);
    release(heap, context, freed);
}

/// Frees the blocks left in the exchange slots, on the calling CPU; returns how many.
fn drain_exchange<P: PageProvider, Pl: Platform>(heap: &Allocator<P, Pl>, cpu: usize) -> u64 {
    let context = Context { cpu, interrupt: false };
    let mut freed = 0;
    for slot in &EXCHANGE {
        if let Some(block) = slot.lock().take() {
            freed += 1;
            release(heap, context, block);
        }
    }
    freed
}

/// The torture run; see the module documentation.
pub(crate) fn torture<P: PageProvider, Pl: Platform>(
    machine: &dyn Machine,
    heap: &HeapUnderTest<'_, P, Pl>,
) -> Outcome {
    let seconds = match option_env!("QEMU_TORTURE_SECONDS") {
        None => QUICK_SECONDS,
        Some(text) => match text.trim().parse::<u64>() {
            Ok(seconds) if seconds > 0 => seconds,
            _ => return Err(alloc::format!("QEMU_TORTURE_SECONDS={text:?} is not a number of seconds")),
        },
    };
    let cpus = machine.cpu_count().min(MAX_CPUS);
    let allocator = heap.allocator;
    for total in &TOTALS {
        total.store(0, Ordering::Relaxed);
    }
    for runs in &INTERRUPT_RUNS {
        runs.store(0, Ordering::Relaxed);
    }
    FAULTS.store(0, Ordering::Relaxed);
    *FIRST_FAULT.lock() = None;
    let leftovers = drain_exchange(allocator, 0);

    machine.run_on_cpus(cpus, &|_| allocator.collect());
    machine.run_on_cpus(cpus, &|_| allocator.collect());
    let stats_before = allocator.stats();
    let free_before = (heap.free_frames)();

    let start = machine.now_ns();
    let shared = Shared {
        deadline: start + seconds * 1_000_000_000,
        overtime_limit: start + OVERTIME_LIMIT_NS.max(2 * seconds * 1_000_000_000),
        hog_blocks: spin::Mutex::new(Vec::with_capacity(HOG_CAPACITY)),
        hogging: AtomicBool::new(false),
        hog_next: AtomicU64::new(start + HOG_FIRST_NS),
    };
    INTERRUPT_HEAP.store(allocator as *const Allocator<P, Pl> as *mut (), Ordering::SeqCst);
    INTERRUPTS_ON.store(true, Ordering::SeqCst);
    machine.set_timer_handler(Some(on_timer::<P, Pl>));
    machine.run_on_cpus(cpus, &|cpu| {
        let mut worker = Worker::new(allocator, cpu);
        machine.start_timer(TIMER_PERIOD_US);
        worker.run(machine, &shared);
        machine.stop_timer();
    });
    INTERRUPTS_ON.store(false, Ordering::SeqCst);
    while INTERRUPTS_INSIDE.load(Ordering::SeqCst) != 0 {
        core::hint::spin_loop();
    }
    machine.set_timer_handler(None);
    INTERRUPT_HEAP.store(core::ptr::null_mut(), Ordering::SeqCst);
    let drained = drain_exchange(allocator, 0);
    bump(Op::Released, drained);
    bump(Op::FreesOther, drained);
    let elapsed = machine.now_ns() - start;
    drop(shared);

    // Two rounds: the first also hands over the frees each CPU batched for other CPUs'
    // slabs, the second gathers them.
    machine.run_on_cpus(cpus, &|_| allocator.collect());
    machine.run_on_cpus(cpus, &|_| allocator.collect());
    let broken = spin::Mutex::new(None);
    machine.run_on_cpus(cpus, &|cpu| {
        if let Err(why) = allocator.check_invariants() {
            *broken.lock() = Some((cpu, why));
        }
    });
    let stats_after = allocator.stats();
    let free_after = (heap.free_frames)();

    let total = |op: Op| TOTALS[op as usize].load(Ordering::Relaxed);
    let mut line = alloc::format!("torture: {cpus} CPUs, {} ms of guest time:", elapsed / 1_000_000);
    for (name, count) in NAMES.iter().zip(&TOTALS) {
        line.push_str(&alloc::format!(" {name} {},", count.load(Ordering::Relaxed)));
    }
    line.pop();
    say(machine, format_args!("{line}"));
    let runs: Vec<usize> = INTERRUPT_RUNS[..cpus].iter().map(|runs| runs.load(Ordering::Relaxed)).collect();
    say(
        machine,
        format_args!("torture: interrupts per CPU {runs:?}, {drained} blocks left in exchange slots"),
    );

    let mut problems: Vec<String> = Vec::new();
    let faults = FAULTS.load(Ordering::Relaxed);
    if faults > 0 {
        let first = FIRST_FAULT.lock().map_or(String::from("not recorded"), |fault| {
            alloc::format!(
                "{} on CPU {}{}: block {} of {} bytes aligned to {} at {:#x} (from {}{}), detail {}",
                fault.what,
                fault.context.cpu,
                if fault.context.interrupt { " in an interrupt handler" } else { "" },
                fault.block.id,
                fault.block.size,
                fault.block.align,
                fault.block.address,
                if fault.block.origin & INTERRUPT_ORIGIN != 0 { "an interrupt on CPU " } else { "CPU " },
                fault.block.origin & !INTERRUPT_ORIGIN,
                fault.detail
            )
        });
        problems.push(alloc::format!("{faults} faults, the first: {first}"));
    }
    if leftovers != 0 {
        problems.push(alloc::format!("{leftovers} blocks were in the exchange slots before the start"));
    }
    if total(Op::Obtained) != total(Op::Released) {
        problems.push(alloc::format!(
            "{} blocks obtained but {} released: the test lost track of blocks",
            total(Op::Obtained),
            total(Op::Released)
        ));
    }
    if let Some((cpu, why)) = broken.into_inner() {
        problems.push(alloc::format!("invariants broken on CPU {cpu}: {why}"));
    }
    let (live_before, live_after) = (stats_before.live_allocations(), stats_after.live_allocations());
    let (bytes_before, bytes_after) = (stats_before.live_bytes(), stats_after.live_bytes());
    if live_before != live_after || bytes_before != bytes_after {
        problems.push(alloc::format!(
            "live statistics do not balance: {live_before} allocations of {bytes_before} bytes before, \
             {live_after} of {bytes_after} after"
        ));
    }
    let meta_growth = stats_after.heap.meta_chunks.saturating_sub(stats_before.heap.meta_chunks);
    if free_after + meta_growth < free_before {
        problems.push(alloc::format!(
            "{} frames not returned to the provider after everything was freed and collected",
            free_before - free_after - meta_growth
        ));
    }
    if let Some(cpu) = runs.iter().position(|&runs| runs < MIN_INTERRUPTS) {
        problems.push(alloc::format!("CPU {cpu}'s timer handler ran only {} times", runs[cpu]));
    }
    let required = [
        Op::Small,
        Op::Large,
        Op::Huge,
        Op::Aligned,
        Op::Zeroed,
        Op::ZeroSize,
        Op::Grown,
        Op::Shrunk,
        Op::AcrossPaths,
        Op::FreesOther,
        Op::Exchanged,
        Op::Collects,
        Op::Nulls,
        Op::HogRounds,
        Op::InterruptAllocs,
        Op::InterruptReallocs,
        Op::InterruptFreesOther,
    ];
    let missing: Vec<&str> =
        required.iter().filter(|&&op| total(op) == 0).map(|&op| NAMES[op as usize]).collect();
    if !missing.is_empty() {
        problems.push(alloc::format!("paths never exercised: {missing:?}"));
    }
    if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
}
