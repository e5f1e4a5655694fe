//! The Rust torture program: many threads doing random allocations of every kind through
//! the host allocator (`HostAlloc` as the global allocator), with every block's bytes
//! checked. Exits 0 with a summary line, or 1 with a message naming the seed. See README.md.

mod block;
mod report;
mod rng;
mod scenarios;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use core_alloc::host::HostAlloc;

use report::{COUNTERS, fail};
use scenarios::{Scenario, Shared};

#[global_allocator]
static GLOBAL: HostAlloc = HostAlloc;

/// Seconds a scenario may go without progress before the run is declared hung.
const STALL_LIMIT: f64 = 60.0;

const USAGE: &str = "usage: torture [--seed N] [--seconds S] [--threads N] [--scenarios mix,churn,adopt,huge] [--inject-fault]";

struct Options {
    seed: u64,
    seconds: f64,
    threads: usize,
    scenarios: Vec<Scenario>,
    inject_fault: bool,
}

fn parse_number(text: &str) -> Option<u64> {
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

fn options() -> Options {
    let clock = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let mut options = Options {
        seed: clock.as_nanos() as u64 ^ u64::from(std::process::id()),
        seconds: 20.0,
        threads: 4,
        scenarios: Scenario::ALL.to_vec(),
        inject_fault: false,
    };
    let mut arguments = std::env::args().skip(1);
    while let Some(argument) = arguments.next() {
        let mut value =
            || arguments.next().unwrap_or_else(|| usage_error(&format!("{argument} needs a value")));
        match argument.as_str() {
            "--seed" => options.seed = parse_number(&value()).unwrap_or_else(|| usage_error("bad --seed")),
            "--seconds" => options.seconds = value().parse().unwrap_or_else(|_| usage_error("bad --seconds")),
            "--threads" => {
                options.threads =
                    value().parse().ok().filter(|&n| n > 0).unwrap_or_else(|| usage_error("bad --threads"))
            }
            "--scenarios" => {
                options.scenarios = value()
                    .split(',')
                    .map(|name| {
                        Scenario::from_name(name)
                            .unwrap_or_else(|| usage_error(&format!("no scenario {name}")))
                    })
                    .collect()
            }
            "--inject-fault" => options.inject_fault = true,
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ => usage_error(&format!("unknown argument {argument}")),
        }
    }
    options
}

fn usage_error(message: &str) -> ! {
    eprintln!("torture: {message}\n{USAGE}");
    std::process::exit(2);
}

fn main() {
    let options = options();
    report::start(options.seed);
    std::panic::set_hook(Box::new(|info| fail!("panic: {info}")));
    let names: Vec<&str> = options.scenarios.iter().map(|scenario| scenario.name()).collect();
    eprintln!(
        "torture: seed {} seconds {} threads {} scenarios {}{}{}",
        options.seed,
        options.seconds,
        options.threads,
        names.join(","),
        if cfg!(feature = "checked") { " (checked build)" } else { "" },
        if options.inject_fault { " (injecting a fault)" } else { "" },
    );

    let shared = Arc::new(Shared::new(options.inject_fault));
    let handles: Vec<_> = options
        .scenarios
        .iter()
        .flat_map(|&scenario| scenarios::start(scenario, &shared, options.threads))
        .collect();
    watch(&shared, &options);

    shared.stop.store(true, Ordering::Relaxed);
    let stopping = Instant::now();
    while shared.finished.load(Ordering::Acquire) < handles.len() {
        if stopping.elapsed() > Duration::from_secs(120) {
            fail!("threads still running 120 s after the stop (a deadlock?)");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for handle in handles {
        handle.join().unwrap_or_else(|_| fail!("a thread panicked"));
    }
    shared.drain();
    drop(shared);

    HostAlloc::collect();
    if let Err(problem) = HostAlloc::allocator().check_invariants() {
        fail!("the allocator's invariants do not hold at the end: {problem}");
    }
    let stats = HostAlloc::stats();
    println!(
        "torture: ok seed={} seconds={:.1} {} live_allocations={} chunks_held={}",
        options.seed,
        report::elapsed(),
        COUNTERS.summary(),
        stats.live_allocations(),
        stats.chunks_held(),
    );
}

/// Waits for the run's duration, failing when a scenario stops making progress; prints the
/// counters every minute in long runs.
fn watch(shared: &Shared, options: &Options) {
    let mut last: Vec<(u64, f64)> =
        shared.progress.iter().map(|beat| (beat.load(Ordering::Relaxed), 0.0)).collect();
    let mut next_report = 60.0;
    while report::elapsed() < options.seconds {
        std::thread::sleep(Duration::from_millis(100));
        let now = report::elapsed();
        for scenario in &options.scenarios {
            let beat = shared.progress[*scenario as usize].load(Ordering::Relaxed);
            let (seen, since) = &mut last[*scenario as usize];
            if beat != *seen {
                *seen = beat;
                *since = now;
            } else if now - *since > STALL_LIMIT {
                fail!("scenario {} made no progress for {STALL_LIMIT} s (a deadlock?)", scenario.name());
            }
        }
        if now >= next_report {
            eprintln!("torture: {now:.0} s: operations={} {}", COUNTERS.operations(), COUNTERS.summary());
            next_report += 60.0;
        }
    }
}
