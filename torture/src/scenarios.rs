//! The scenarios, each a set of threads that run until the shared stop flag is set:
//!
//! - `mix`: N workers doing random operations (alloc, alloc_zeroed, realloc, dealloc) of
//!   random sizes (1 B to 8 MiB, log-uniform, mostly small) and alignments (up to 2 MiB),
//!   passing blocks to each other through shared exchange slots (cross-thread frees) and
//!   freeing what short-lived threads left behind; a collector thread calls `collect()`.
//! - `churn`: short-lived threads, four at a time, that make, resize and free blocks and
//!   exit with some still live; the blocks go to a pool that other threads free from.
//! - `adopt`: the producer/consumer pattern that once broke slab adoption: short-lived
//!   producers allocate 64-byte blocks and exit with them live in a queue, two consumers free
//!   them, and another thread keeps allocating 64-byte blocks.
//! - `huge`: two threads resize a block, one between 16 and 24 MiB, one between 6 and 10 MiB
//!   (and now and then to another size from 2 to 32 MiB), while two others allocate and free
//!   4 MiB and 600 KiB blocks and a collector gives cached chunks back to the system every
//!   20 ms: the pattern of a real crash.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use core_alloc::host::HostAlloc;

use crate::block::Block;
use crate::report::{COUNTERS, Counters, fail, seed};
use crate::rng::Rng;

/// The scenarios, by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scenario {
    Mix,
    Churn,
    Adopt,
    Huge,
}

impl Scenario {
    pub(crate) const ALL: [Scenario; 4] = [Scenario::Mix, Scenario::Churn, Scenario::Adopt, Scenario::Huge];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Scenario::Mix => "mix",
            Scenario::Churn => "churn",
            Scenario::Adopt => "adopt",
            Scenario::Huge => "huge",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|scenario| scenario.name() == name)
    }
}

/// Slots of the mix workers.
const SLOTS: usize = 48;
/// Live bytes a mix worker keeps at most.
const WORKER_BUDGET: usize = 48 << 20;
/// Shared exchange slots.
const EXCHANGE: usize = 32;
/// Blocks the orphan pool keeps at most (beyond, the churn spawner frees them).
const ORPHAN_LIMIT: usize = 8192;
/// Blocks the producer queue holds at most (beyond, producers wait).
const QUEUE_LIMIT: usize = 65536;

/// What the threads share.
pub(crate) struct Shared {
    pub(crate) stop: AtomicBool,
    /// Set to make mix worker 0 corrupt one of its blocks (to show that checks catch it).
    pub(crate) inject_fault: bool,
    /// One heartbeat per scenario, for the watchdog.
    pub(crate) progress: [AtomicU64; 4],
    /// Scenario threads that have returned.
    pub(crate) finished: AtomicUsize,
    exchange: Vec<Mutex<Option<Block>>>,
    orphans: Mutex<Vec<Block>>,
    queue: Mutex<VecDeque<Block>>,
}

/// Locks `mutex`, whether or not a thread panicked holding it (a panic ends the run anyway).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    pub(crate) fn new(inject_fault: bool) -> Self {
        Shared {
            stop: AtomicBool::new(false),
            inject_fault,
            progress: Default::default(),
            finished: AtomicUsize::new(0),
            exchange: (0..EXCHANGE).map(|_| Mutex::new(None)).collect(),
            orphans: Mutex::new(Vec::new()),
            queue: Mutex::new(VecDeque::new()),
        }
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn beat(&self, scenario: Scenario) {
        self.progress[scenario as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Frees every block still in the exchange, the orphan pool and the queue (checking
    /// each), once the threads have stopped.
    pub(crate) fn drain(&self) {
        for slot in &self.exchange {
            if let Some(block) = lock(slot).take() {
                block.free();
            }
        }
        for block in std::mem::take(&mut *lock(&self.orphans)) {
            block.free();
        }
        for block in std::mem::take(&mut *lock(&self.queue)) {
            block.free();
        }
    }
}

/// Starts a named thread; a scenario thread (`counted`) adds itself to `finished` when done.
fn spawn(name: String, shared: Option<Arc<Shared>>, work: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            work();
            if let Some(shared) = shared {
                shared.finished.fetch_add(1, Ordering::Release);
            }
        })
        .unwrap_or_else(|error| fail!("cannot start thread {name}: {error}"))
}

/// Starts the threads of `scenario`.
pub(crate) fn start(scenario: Scenario, shared: &Arc<Shared>, threads: usize) -> Vec<JoinHandle<()>> {
    let mut handles = Vec::new();
    let mut add = |name: String, work: Box<dyn FnOnce(Arc<Shared>) + Send>| {
        let for_thread = Arc::clone(shared);
        handles.push(spawn(name, Some(Arc::clone(shared)), move || work(for_thread)));
    };
    match scenario {
        Scenario::Mix => {
            for index in 0..threads {
                add(format!("mix-{index}"), Box::new(move |shared| mix_worker(&shared, index)));
            }
            add("collector".into(), Box::new(|shared| collector(&shared)));
        }
        Scenario::Churn => add("churn-spawner".into(), Box::new(|shared| churn_spawner(&shared))),
        Scenario::Adopt => {
            add("producer-spawner".into(), Box::new(|shared| producer_spawner(&shared)));
            for index in 0..2 {
                add(format!("consumer-{index}"), Box::new(|shared| consumer(&shared)));
            }
            add("steady-64".into(), Box::new(|shared| steady_64(&shared)));
        }
        Scenario::Huge => {
            add("huge-realloc-16-24".into(), Box::new(|shared| huge_realloc(&shared, 16 << 20, 24 << 20)));
            add("huge-realloc-6-10".into(), Box::new(|shared| huge_realloc(&shared, 6 << 20, 10 << 20)));
            add("alloc-4MiB".into(), Box::new(|shared| alloc_free_loop(&shared, 4 << 20)));
            add("alloc-600KiB".into(), Box::new(|shared| alloc_free_loop(&shared, 600 << 10)));
            // Gives cached chunks back to the system, so that their addresses come back from
            // mmap to other threads while blocks are being moved by mremap.
            add("collector-huge".into(), Box::new(|shared| collector(&shared)));
        }
    }
    handles
}

/// A mix worker: random operations on its slots, handing blocks over through the exchange.
fn mix_worker(shared: &Shared, index: usize) {
    let mut rng = Rng::new(seed(), 1000 + index as u64);
    let mut slots: Vec<Option<Block>> = (0..SLOTS).map(|_| None).collect();
    let mut live = 0usize;
    let mut operations = 0u64;
    while !shared.stopping() {
        shared.beat(Scenario::Mix);
        operations += 1;
        if shared.inject_fault
            && index == 0
            && operations == 2000
            && let Some(block) = slots.iter_mut().flatten().next()
        {
            block.corrupt();
        }
        let slot = rng.below(SLOTS);
        let Some(mut block) = slots[slot].take() else {
            let size = rng.size();
            if live + size <= WORKER_BUDGET {
                let align = rng.align();
                slots[slot] = Some(Block::new(size, align, rng.percent(30)));
                live += size;
            }
            continue;
        };
        match rng.below(100) {
            0..35 => {
                live -= block.size();
                block.free();
            }
            35..60 => {
                let new_size = rng.size();
                live -= block.size();
                if live + new_size <= WORKER_BUDGET {
                    block.realloc(new_size);
                    live += block.size();
                    slots[slot] = Some(block);
                } else {
                    block.free();
                }
            }
            60..75 => {
                live -= block.size();
                let received = lock(&shared.exchange[rng.below(EXCHANGE)]).replace(block);
                if let Some(received) = received {
                    live += received.size();
                    slots[slot] = Some(received);
                }
            }
            75..80 => {
                slots[slot] = Some(block);
                let taken: Vec<Block> = {
                    let mut orphans = lock(&shared.orphans);
                    let keep = orphans.len().saturating_sub(16);
                    orphans.split_off(keep)
                };
                taken.into_iter().for_each(Block::free);
            }
            _ => {
                block.check("while live");
                slots[slot] = Some(block);
            }
        }
    }
    slots.into_iter().flatten().for_each(Block::free);
}

/// Calls `collect()` every 20 ms: gives back empty slabs and chunks, and releases the
/// slots of exited threads, while the others allocate.
fn collector(shared: &Shared) {
    while !shared.stopping() {
        HostAlloc::collect();
        Counters::bump(&COUNTERS.collect);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts short-lived threads four at a time; what they leave live goes to the orphan pool.
fn churn_spawner(shared: &Arc<Shared>) {
    let mut rng = Rng::new(seed(), 2000);
    let mut round = 0u64;
    while !shared.stopping() {
        shared.beat(Scenario::Churn);
        let handles: Vec<JoinHandle<Vec<Block>>> = (0..4)
            .map(|index| {
                let stream = 3000 + round * 4 + index;
                let shared = Arc::clone(shared);
                Counters::bump(&COUNTERS.short_threads);
                std::thread::Builder::new()
                    .name(format!("short-{stream}"))
                    .spawn(move || short_lived(&shared, stream))
                    .unwrap_or_else(|error| fail!("cannot start a short-lived thread: {error}"))
            })
            .collect();
        round += 1;
        for handle in handles {
            let left = handle.join().unwrap_or_else(|_| fail!("a short-lived thread panicked"));
            let mut orphans = lock(&shared.orphans);
            for mut block in left {
                block.owner_exited();
                orphans.push(block);
            }
            // Beyond the limit, free a random stretch here (after the owner exited too).
            if orphans.len() > ORPHAN_LIMIT {
                let from = rng.below(orphans.len() - ORPHAN_LIMIT / 2);
                let freed: Vec<Block> = orphans.drain(from..from + ORPHAN_LIMIT / 2).collect();
                drop(orphans);
                freed.into_iter().for_each(Block::free);
            }
        }
    }
}

/// A short-lived thread: a burst of random operations, some blocks swapped through the
/// exchange; it returns (live) about half of what it holds at the end, frees the rest.
fn short_lived(shared: &Shared, stream: u64) -> Vec<Block> {
    let mut rng = Rng::new(seed(), stream);
    let mut blocks: Vec<Block> = Vec::new();
    for _ in 0..100 + rng.below(1000) {
        match rng.below(10) {
            0..6 => {
                let size = if rng.percent(10) { rng.size() } else { rng.size_up_to(10) };
                let align = if rng.percent(5) { rng.align() } else { 16 };
                blocks.push(Block::new(size, align, rng.percent(20)));
            }
            6 if !blocks.is_empty() => {
                let index = rng.below(blocks.len());
                blocks[index].realloc(rng.size_up_to(14));
            }
            7 if !blocks.is_empty() => {
                let index = rng.below(blocks.len());
                let block = blocks.swap_remove(index);
                if let Some(received) = lock(&shared.exchange[rng.below(EXCHANGE)]).replace(block) {
                    blocks.push(received);
                }
            }
            _ if !blocks.is_empty() => {
                let index = rng.below(blocks.len());
                blocks.swap_remove(index).free();
            }
            _ => {}
        }
    }
    let keep = blocks.len() / 2;
    blocks.split_off(keep).into_iter().for_each(Block::free);
    blocks
}

/// Starts two producers at a time: each allocates 64-byte blocks, queues them (all at the
/// end, or in batches as it goes) and exits with them live.
fn producer_spawner(shared: &Arc<Shared>) {
    let mut round = 0u64;
    while !shared.stopping() {
        shared.beat(Scenario::Adopt);
        let handles: Vec<JoinHandle<()>> = (0..2)
            .map(|index| {
                let stream = 5_000_000 + round * 2 + index;
                let shared = Arc::clone(shared);
                Counters::bump(&COUNTERS.short_threads);
                spawn(format!("producer-{stream}"), None, move || produce(&shared, stream))
            })
            .collect();
        round += 1;
        for handle in handles {
            handle.join().unwrap_or_else(|_| fail!("a producer panicked"));
        }
    }
}

fn produce(shared: &Shared, stream: u64) {
    let mut rng = Rng::new(seed(), stream);
    let count = 256 + rng.below(4096);
    let batch = if rng.percent(50) { count } else { 32 };
    let mut pending = Vec::with_capacity(batch);
    for _ in 0..count {
        pending.push(Block::new(64, if rng.percent(50) { 8 } else { 16 }, false));
        if pending.len() == batch {
            while lock(&shared.queue).len() > QUEUE_LIMIT && !shared.stopping() {
                std::thread::sleep(Duration::from_millis(1));
            }
            lock(&shared.queue).extend(pending.drain(..));
        }
    }
    lock(&shared.queue).extend(pending);
}

/// Frees blocks from the producers' queue, a batch at a time.
fn consumer(shared: &Shared) {
    while !shared.stopping() {
        let batch: Vec<Block> = {
            let mut queue = lock(&shared.queue);
            let take = queue.len().min(64);
            queue.drain(..take).collect()
        };
        if batch.is_empty() {
            std::thread::yield_now();
            continue;
        }
        for block in batch {
            block.free();
            Counters::bump(&COUNTERS.produced_consumed);
        }
    }
}

/// Keeps allocating 64-byte blocks: 1024 live, a random one replaced each time.
fn steady_64(shared: &Shared) {
    let mut rng = Rng::new(seed(), 4000);
    let mut ring: Vec<Option<Block>> = (0..1024).map(|_| None).collect();
    while !shared.stopping() {
        shared.beat(Scenario::Adopt);
        let index = rng.below(ring.len());
        if let Some(block) = ring[index].take() {
            block.free();
        }
        ring[index] = Some(Block::new(64, 16, rng.percent(10)));
    }
    ring.into_iter().flatten().for_each(Block::free);
}

/// Resizes one block between `low` and `high` bytes, and every fourth round through another
/// size of 2 to 32 MiB.
fn huge_realloc(shared: &Shared, low: usize, high: usize) {
    let mut rng = Rng::new(seed(), 6000 + low as u64);
    let mut block = Block::new(low, 16, false);
    let mut round = 0u64;
    while !shared.stopping() {
        shared.beat(Scenario::Huge);
        block.realloc(high);
        block.realloc(low);
        if round % 4 == 3 {
            block.realloc((2 << 20) + rng.below(30 << 20));
            block.realloc(low);
        }
        round += 1;
    }
    block.free();
}

/// Allocates and frees blocks of `size` bytes, two live at a time.
fn alloc_free_loop(shared: &Shared, size: usize) {
    let mut older = Block::new(size, 16, false);
    while !shared.stopping() {
        shared.beat(Scenario::Huge);
        let newer = Block::new(size, 16, false);
        std::mem::replace(&mut older, newer).free();
    }
    older.free();
}
