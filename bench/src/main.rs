//! The benchmark harness: the workloads of DESIGN.md and talc's own benchmarks on core-alloc
//! and its peers, one child process per (allocator, workload), medians of several runs with
//! ratios to core-alloc; a table, a CSV, plots and callgrind instruction counts; and programs
//! (two C programs of its own, real ones from Debian) timed with each allocator preloaded.
//!
//! ```text
//! cargo run --release --manifest-path bench/Cargo.toml             # full run (~20 min)
//! cargo run --release --manifest-path bench/Cargo.toml -- --quick  # CI (< 2 min)
//! ```
//!
//! Options: `--runs N`, `--allocators a,b`, `--workloads w1,w3,...`, `--out DIR` (default
//! `target/bench` at the repository root), `--no-callgrind`, `--publish` (also copy the
//! results and plots into `bench/results/`), `--from DIR` (measure nothing: report again
//! from the files of an earlier run).

mod child;
mod fixed;
mod memory;
mod orchestrate;
mod peers;
mod plot;
mod preload;
mod report;
mod talc_workloads;
mod workloads;

use std::path::PathBuf;
use std::process::ExitCode;

use child::{Size, Unit};
use peers::Peer;

#[global_allocator]
static GLOBAL: peers::Dispatch = peers::Dispatch;

const USAGE: &str = "usage: bench [--quick] [--runs N] [--allocators a,b,...] [--workloads w1,w2,...] \
[--out DIR] [--no-callgrind] [--publish] [--from DIR]
workloads: w1 w2 w3 w4 w5 w6 w7 random-actions heap-efficiency instructions preload
allocators: core-alloc glibc jemalloc mimalloc snmalloc talc rlsf buddy_system_allocator linked_list_allocator";

fn main() -> ExitCode {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    if arguments.first().map(String::as_str) == Some("--child") {
        return run_child(&arguments[1..]);
    }
    match parse(&arguments) {
        Ok(options) => orchestrate::run(&options),
        Err(message) => {
            eprintln!("{message}\n{USAGE}");
            ExitCode::FAILURE
        }
    }
}

/// `--child <allocator> <unit> <quick 0|1> <seed>`.
fn run_child(arguments: &[String]) -> ExitCode {
    let [peer, unit, quick, seed] = arguments else {
        eprintln!("--child needs <allocator> <unit> <quick> <seed>");
        return ExitCode::FAILURE;
    };
    let (Some(peer), Some(unit), Ok(seed)) = (Peer::from_name(peer), Unit::parse(unit), seed.parse()) else {
        eprintln!("bad --child arguments: {arguments:?}");
        return ExitCode::FAILURE;
    };
    child::run(peer, unit, Size { quick: quick == "1" }, seed);
    ExitCode::SUCCESS
}

fn parse(arguments: &[String]) -> Result<orchestrate::Options, String> {
    let mut options = orchestrate::Options {
        quick: false,
        runs: None,
        peers: Peer::ALL.to_vec(),
        families: None,
        out: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench"),
        callgrind: true,
        publish: false,
        from: None,
    };
    let mut arguments = arguments.iter();
    while let Some(argument) = arguments.next() {
        let mut value = || arguments.next().ok_or_else(|| format!("{argument} needs a value"));
        match argument.as_str() {
            "--quick" => options.quick = true,
            "--runs" => {
                let runs = value()?.parse().map_err(|_| "--runs needs a number".to_string())?;
                options.runs = Some(runs).filter(|&runs| runs > 0);
            }
            "--allocators" => {
                let names = value()?;
                options.peers = names
                    .split(',')
                    .map(|name| Peer::from_name(name).ok_or_else(|| format!("unknown allocator {name}")))
                    .collect::<Result<_, _>>()?;
            }
            "--workloads" => options.families = Some(value()?.split(',').map(str::to_string).collect()),
            "--out" => options.out = PathBuf::from(value()?),
            "--no-callgrind" => options.callgrind = false,
            "--publish" => options.publish = true,
            "--from" => options.from = Some(PathBuf::from(value()?)),
            "--help" | "-h" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(options)
}
