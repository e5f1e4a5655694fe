//! One measurement in its own process: the harness re-executes itself with `--child`, the
//! allocator under test named in `BENCH_ALLOCATOR` (so it is also the process's global
//! allocator), runs one workload on it and prints its figures as lines on standard output:
//!
//! ```text
//! result <workload> <threads> <metric> <value>
//! series <phase> <progress> <resident bytes>
//! timeline <seconds> <live bytes> <resident bytes>
//! ```

#![forbid(unsafe_code)]

use std::fmt;
use std::time::Duration;

use crate::fixed::{self, EFFICIENCY_ARENA, Locked};
use crate::orchestrate;
use crate::peers::{self, Peer};
use crate::preload;
use crate::talc_workloads;
use crate::with_peer;
use crate::workloads;

/// A unit of work the parent schedules: one workload (at one thread count) on one allocator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Unit {
    /// Workload 1.
    SmallPairs,
    /// Workload 2.
    LiveSet,
    /// Workload 3 on this many threads.
    LiveSetThreads(usize),
    /// Workload 4.
    ProducerConsumer,
    /// Workload 5.
    Large,
    /// Workload 6.
    Fragmentation,
    /// Workload 7.
    ReallocGrowth,
    /// Workload 8: the long fragmentation workload (first run only).
    LongFragmentation,
    /// talc's random actions, every largest-request size, on this many threads.
    RandomActions(usize),
    /// talc's heap efficiency (fixed-arena allocators and core-alloc over a fixed region).
    HeapEfficiency,
    /// Workload 1 with this many pairs, for callgrind's instruction counts.
    Instructions(usize),
    /// The preload family: program `preload::PROGRAMS[i]` run with the allocator preloaded.
    Preload(usize),
}

impl Unit {
    /// Parses the command-line form written by `Display`.
    pub fn parse(text: &str) -> Option<Unit> {
        let (name, count) = match text.split_once(':') {
            Some((name, count)) => (name, count.parse().ok()?),
            None => (text, 0),
        };
        Some(match name {
            "w1" => Unit::SmallPairs,
            "w2" => Unit::LiveSet,
            "w3" => Unit::LiveSetThreads(count),
            "w4" => Unit::ProducerConsumer,
            "w5" => Unit::Large,
            "w6" => Unit::Fragmentation,
            "w7" => Unit::ReallocGrowth,
            "w8" => Unit::LongFragmentation,
            "random-actions" => Unit::RandomActions(count),
            "heap-efficiency" => Unit::HeapEfficiency,
            "instructions" => Unit::Instructions(count),
            "preload" if count < preload::PROGRAMS.len() => Unit::Preload(count),
            _ => return None,
        })
    }

    /// Whether the unit applies to `peer`.
    pub fn applies_to(self, peer: Peer) -> bool {
        match self {
            Unit::HeapEfficiency => peer == Peer::CoreAlloc || peer.is_fixed_arena(),
            Unit::Preload(_) => preload::applies(peer),
            _ => true,
        }
    }

    /// The workload filter name (`--workloads`).
    pub fn family(self) -> &'static str {
        match self {
            Unit::SmallPairs => "w1",
            Unit::LiveSet => "w2",
            Unit::LiveSetThreads(_) => "w3",
            Unit::ProducerConsumer => "w4",
            Unit::Large => "w5",
            Unit::Fragmentation => "w6",
            Unit::ReallocGrowth => "w7",
            Unit::LongFragmentation => "w8",
            Unit::RandomActions(_) => "random-actions",
            Unit::HeapEfficiency => "heap-efficiency",
            Unit::Instructions(_) => "instructions",
            Unit::Preload(_) => "preload",
        }
    }
}

impl fmt::Display for Unit {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unit::LiveSetThreads(count)
            | Unit::RandomActions(count)
            | Unit::Instructions(count)
            | Unit::Preload(count) => {
                write!(formatter, "{}:{count}", self.family())
            }
            _ => formatter.write_str(self.family()),
        }
    }
}

/// How much work each workload does: the full run, or `--quick` (for CI: the same code
/// paths in a fraction of the time).
#[derive(Debug, Clone, Copy)]
pub struct Size {
    /// `--quick`.
    pub quick: bool,
}

impl Size {
    fn scaled(self, full: usize, quick: usize) -> usize {
        if self.quick { quick } else { full }
    }

    /// Workload 2 and 3's live set per thread, and workload 6's.
    pub fn live(self) -> usize {
        100_000
    }

    /// Replacements in workloads 2 and 3; peers with linear-time operations do a hundredth
    /// (their figure is per operation, and they would take hours).
    pub fn replacements(self, peer: Peer) -> usize {
        let count = self.scaled(2_000_000, 300_000);
        if peer.is_slow() { count / 100 } else { count }
    }
}

fn result(workload: &str, threads: usize, metric: &str, value: f64) {
    println!("result {workload} {threads} {metric} {value}");
}

/// Runs `unit` on `peer` in this process and prints the figures.
pub fn run(peer: Peer, unit: Unit, size: Size, seed: u64) {
    if peers::selected() != peer {
        eprintln!(
            "the process allocator is {} but {} is under test: set {}",
            peers::selected().name(),
            peer.name(),
            peers::ALLOCATOR_VARIABLE
        );
        std::process::exit(2);
    }
    if let Unit::Preload(index) = unit {
        // A little under the parent's limit, so that the child ends the program itself.
        let limit = orchestrate::time_limit(size.quick).saturating_sub(Duration::from_secs(2));
        return preload::run(peer, index, size.quick, limit);
    }
    with_peer!(peer, |heap| run_on(heap, peer, unit, size, seed))
}

fn run_on<A: std::alloc::GlobalAlloc + Sync>(heap: &A, peer: Peer, unit: Unit, size: Size, seed: u64) {
    match unit {
        Unit::SmallPairs => {
            let pairs = size.scaled(20_000_000, 2_000_000);
            result("w1_small_pairs", 1, "ns_per_op", workloads::small_pairs(heap, pairs));
        }
        Unit::Instructions(pairs) => {
            std::hint::black_box(workloads::small_pairs(heap, pairs));
        }
        Unit::LiveSet => {
            let ns = workloads::live_set(heap, size.live(), size.replacements(peer), seed);
            result("w2_live_set", 1, "ns_per_op", ns);
        }
        Unit::LiveSetThreads(threads) => {
            let ops = workloads::live_set_threads(heap, threads, size.live(), size.replacements(peer), seed);
            result("w3_live_set_threads", threads, "ops_per_s", ops);
        }
        Unit::ProducerConsumer => {
            let objects = size.scaled(10_000_000, 1_000_000);
            result("w4_producer_consumer", 2, "ns_per_op", workloads::producer_consumer(heap, objects));
        }
        Unit::Large => {
            let replacements = size.scaled(200_000, 50_000);
            result("w5_large", 1, "ns_per_op", workloads::large(heap, 1000, replacements, seed));
        }
        Unit::Fragmentation => fragmentation(heap, peer, size, seed),
        Unit::ReallocGrowth => {
            let vectors = size.scaled(8, 2);
            result("w7_realloc_growth", 1, "ns_per_op", workloads::realloc_growth(vectors, 8 << 20));
        }
        Unit::LongFragmentation => {
            let (seconds, peak_live, idle) = if size.quick {
                (1.4, 8 << 20, Duration::from_secs(1))
            } else {
                (60.0, 256 << 20, Duration::from_secs(10))
            };
            let figures = workloads::long_fragmentation(heap, seconds, peak_live, idle, seed);
            result("w8_phases", 1, "rss_per_live_mean", figures.mean_ratio);
            result("w8_phases", 1, "rss_per_live_peak", figures.peak_ratio);
            let ratio = |resident: u64| resident as f64 / figures.after_live.max(1) as f64;
            result("w8_9_of_10_freed_idle_1s", 1, "rss_per_live", ratio(figures.idle_1s));
            result("w8_9_of_10_freed_idle_10s", 1, "rss_per_live", ratio(figures.idle_10s));
            result("w8_all_freed_idle_1s", 1, "resident_bytes", figures.all_freed_idle_1s as f64);
            for sample in &figures.samples {
                println!("timeline {} {} {}", sample.seconds, sample.live, sample.resident);
            }
        }
        Unit::RandomActions(threads) => {
            let trial = Duration::from_millis(size.scaled(200, 20) as u64);
            for max in talc_workloads::MAX_SIZES {
                let warm_up = Duration::from_millis(2);
                let ops = talc_workloads::random_actions(heap, max, threads, warm_up, trial, seed);
                result(&format!("talc_random_actions_max{max}"), threads, "ops_per_s", ops);
            }
        }
        Unit::HeapEfficiency => heap_efficiency(peer, size, seed),
        Unit::Preload(_) => unreachable!("run() runs the preload units"),
    }
}

fn fragmentation<A: std::alloc::GlobalAlloc>(heap: &A, peer: Peer, size: Size, seed: u64) {
    // linked_list_allocator would take a quarter of an hour for the million replacements:
    // it does a tenth (one per object on average).
    let replacements = size.scaled(1_000_000, 200_000) / if peer.is_slow() { 10 } else { 1 };
    let figures = workloads::fragmentation(
        heap,
        size.live(),
        replacements,
        seed,
        || peers::explicit_decay(peer).is_some(),
        || peers::explicit_collect(peer).is_some(),
    );
    let ratio = |resident: u64, live: u64| resident as f64 / live.max(1) as f64;
    result("w6_peak", 1, "rss_per_live", ratio(figures.peak_resident, figures.peak_live));
    result("w6_peak", 1, "resident_bytes", figures.peak_resident as f64);
    result("w6_peak_huge_pages", 1, "resident_bytes", figures.peak_huge as f64);
    result("w6_after_free_9_of_10", 1, "rss_per_live", ratio(figures.after_resident, figures.after_live));
    result("w6_after_free_9_of_10", 1, "resident_bytes", figures.after_resident as f64);
    result("w6_after_idle_1s", 1, "resident_bytes", figures.idle_resident as f64);
    if let Some(decayed) = figures.decayed_resident {
        result("w6_after_decay_call", 1, "resident_bytes", decayed as f64);
    }
    result("w6_all_freed", 1, "resident_bytes", figures.freed_resident as f64);
    if let Some(collected) = figures.collected_resident {
        result("w6_collected", 1, "resident_bytes", collected as f64);
    }
    for sample in &figures.samples {
        println!("series {} {} {}", sample.phase, sample.progress, sample.resident);
    }
}

fn heap_efficiency(peer: Peer, size: Size, seed: u64) {
    // Each heap here is private to this call: a fresh arena of talc's size.
    static CORE: fixed::CoreFixed<EFFICIENCY_ARENA> = fixed::CoreFixed::new();
    static TALC: fixed::Talc<EFFICIENCY_ARENA> = fixed::Talc::new();
    static RLSF: Locked<fixed::Rlsf, EFFICIENCY_ARENA> = Locked::new();
    static BUDDY: Locked<fixed::Buddy, EFFICIENCY_ARENA> = Locked::new();
    static LINKED_LIST: Locked<fixed::LinkedList, EFFICIENCY_ARENA> = Locked::new();
    let rounds = size.scaled(100, 5);
    let score = match peer {
        Peer::CoreAlloc => talc_workloads::heap_efficiency(&CORE, EFFICIENCY_ARENA, rounds, seed),
        Peer::Talc => talc_workloads::heap_efficiency(&TALC, EFFICIENCY_ARENA, rounds, seed),
        Peer::Rlsf => talc_workloads::heap_efficiency(&RLSF, EFFICIENCY_ARENA, rounds, seed),
        Peer::Buddy => talc_workloads::heap_efficiency(&BUDDY, EFFICIENCY_ARENA, rounds, seed),
        Peer::LinkedList => talc_workloads::heap_efficiency(&LINKED_LIST, EFFICIENCY_ARENA, rounds, seed),
        _ => return,
    };
    // Heap bytes per live byte at the first failure: 1 / talc's score.
    result("talc_heap_efficiency", 1, "rss_per_live", 1.0 / score);
}
