//! The parent process: plans the (allocator, workload) units, runs each in a child process
//! of its own with a time limit, rotating the allocators' order from one run to the next,
//! gathers the figures, counts fast-path instructions under callgrind, and hands everything
//! to the report.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::child::Unit;
use crate::peers::{ALLOCATOR_VARIABLE, Peer};
use crate::preload;
use crate::report;

/// What the command line asked for.
pub struct Options {
    /// `--quick`: small workloads, one run, for CI.
    pub quick: bool,
    /// `--runs N` (default 9, or 1 with `--quick`).
    pub runs: Option<usize>,
    /// The allocators to measure.
    pub peers: Vec<Peer>,
    /// Only these workload families, if given.
    pub families: Option<Vec<String>>,
    /// Where the CSV, the table and the plots go.
    pub out: PathBuf,
    /// Count instructions under callgrind.
    pub callgrind: bool,
    /// Also copy the results into `bench/results/`.
    pub publish: bool,
    /// Measure nothing: report again from the files a run wrote into this directory.
    pub from: Option<PathBuf>,
}

/// A figure's identity: one CSV row.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    /// The workload's CSV name.
    pub workload: String,
    /// The allocator.
    pub peer: Peer,
    /// Threads.
    pub threads: usize,
    /// `ns_per_op`, `ops_per_s`, `rss_per_live`, `resident_bytes` or `instructions_per_op`.
    pub metric: String,
}

/// Everything measured.
#[derive(Default)]
pub struct Results {
    /// Every run's value of each figure.
    pub values: BTreeMap<Key, Vec<f64>>,
    /// Workload 6's resident-memory series of the first run, per allocator: (phase,
    /// progress, resident bytes).
    pub series: BTreeMap<Peer, Vec<(usize, f64, u64)>>,
    /// Workload 8's timeline, per allocator: (seconds, live bytes, resident bytes).
    pub timelines: BTreeMap<Peer, Vec<(f64, u64, u64)>>,
    /// Units that timed out or failed: (allocator, unit, what happened).
    pub problems: Vec<(Peer, String, String)>,
    /// Units that could not run here and are left blank (a preloadable library or a program
    /// not installed): (allocator, unit, why), once each.
    pub skipped: Vec<(Peer, String, String)>,
    /// Runs done.
    pub runs: usize,
    /// Seconds the whole run took.
    pub seconds: f64,
    /// `--quick`.
    pub quick: bool,
    /// The machine and the code measured.
    pub machine: Vec<String>,
    /// The command that measured them.
    pub command: String,
}

impl Results {
    fn parse(&mut self, peer: Peer, output: &str, keep_series: bool) {
        let mut series = Vec::new();
        let mut timeline = Vec::new();
        for line in output.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                ["result", workload, threads, metric, value] => {
                    let (Ok(threads), Ok(value)) = (threads.parse(), value.parse()) else { continue };
                    let key =
                        Key { workload: workload.to_string(), peer, threads, metric: metric.to_string() };
                    self.values.entry(key).or_default().push(value);
                }
                ["series", phase, progress, resident] => {
                    if let (Ok(phase), Ok(progress), Ok(resident)) =
                        (phase.parse(), progress.parse(), resident.parse())
                    {
                        series.push((phase, progress, resident));
                    }
                }
                ["timeline", seconds, live, resident] => {
                    if let (Ok(seconds), Ok(live), Ok(resident)) =
                        (seconds.parse(), live.parse(), resident.parse())
                    {
                        timeline.push((seconds, live, resident));
                    }
                }
                _ => {}
            }
        }
        if keep_series && !series.is_empty() {
            self.series.insert(peer, series);
        }
        if !timeline.is_empty() {
            self.timelines.insert(peer, timeline);
        }
    }

    /// Notes, once per allocator and unit, a child's `skipped: <why>` line.
    fn note_skipped(&mut self, peer: Peer, unit: Unit, stderr: &str) {
        let unit = unit.to_string();
        let Some(why) = stderr.lines().find_map(|line| line.strip_prefix("skipped: ")) else { return };
        if !self.skipped.iter().any(|(p, u, _)| *p == peer && *u == unit) {
            eprintln!("  {unit} on {}: skipped: {why}", peer.name());
            self.skipped.push((peer, unit, why.to_string()));
        }
    }
}

/// How a child process ended.
struct Outcome {
    stdout: String,
    stderr: String,
    /// None: killed at the time limit.
    success: Option<bool>,
    seconds: f64,
}

/// Runs `command` with a time limit, collecting its output.
fn run_limited(mut command: Command, limit: Duration) -> std::io::Result<Outcome> {
    let start = Instant::now();
    let mut child = command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let out_reader = thread::spawn(move || {
        let mut text = String::new();
        if let Some(stdout) = stdout.as_mut() {
            let _ = stdout.read_to_string(&mut text);
        }
        text
    });
    let err_reader = thread::spawn(move || {
        let mut text = String::new();
        if let Some(stderr) = stderr.as_mut() {
            let _ = stderr.read_to_string(&mut text);
        }
        text
    });
    let success = loop {
        if let Some(status) = child.try_wait()? {
            // A preload child that ended its program at the time limit says so.
            break (status.code() != Some(preload::TIMED_OUT)).then(|| status.success());
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(5));
    };
    Ok(Outcome {
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
        success,
        seconds: start.elapsed().as_secs_f64(),
    })
}

fn child_command(peer: Peer, unit: Unit, quick: bool, seed: u64, wrapper: &[&str]) -> Command {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("bench"));
    let mut command = match wrapper.split_first() {
        Some((program, arguments)) => {
            let mut command = Command::new(program);
            command.args(arguments).arg(&exe);
            command
        }
        None => Command::new(&exe),
    };
    command
        .arg("--child")
        .arg(peer.name())
        .arg(unit.to_string())
        .arg(if quick { "1" } else { "0" })
        .arg(seed.to_string())
        .env(ALLOCATOR_VARIABLE, peer.name());
    command
}

/// The thread counts for the scaling workloads: 1, 2, then powers of two up to the CPUs.
fn thread_counts() -> Vec<usize> {
    let cpus = thread::available_parallelism().map_or(2, |count| count.get());
    let mut counts = vec![1];
    let mut count = 2;
    while count <= cpus.max(2) {
        counts.push(count);
        count *= 2;
    }
    if *counts.last().unwrap_or(&1) != cpus && cpus > 2 {
        counts.push(cpus);
    }
    counts
}

fn plan(options: &Options) -> Vec<Unit> {
    let mut units = vec![Unit::SmallPairs, Unit::LiveSet];
    units.extend(thread_counts().into_iter().map(Unit::LiveSetThreads));
    units.extend([
        Unit::ProducerConsumer,
        Unit::Large,
        Unit::Fragmentation,
        Unit::ReallocGrowth,
        Unit::LongFragmentation,
    ]);
    units.extend(thread_counts().into_iter().map(Unit::RandomActions));
    units.push(Unit::HeapEfficiency);
    units.extend(preload::planned(options.quick).map(Unit::Preload));
    units.retain(|unit| {
        options.families.as_ref().is_none_or(|families| families.iter().any(|f| f == unit.family()))
    });
    units
}

/// A child's time limit.
pub fn time_limit(quick: bool) -> Duration {
    Duration::from_secs(if quick { 10 } else { 300 })
}

/// Builds libcorealloc.so and prepares the preload programs, if the plan has any. A failed
/// build is a problem of core-alloc's on every preload unit (and those units skip it).
fn prepare_preload(options: &Options, units: &[Unit], results: &mut Results) -> bool {
    let programs: Vec<usize> = units
        .iter()
        .filter_map(|unit| if let Unit::Preload(index) = unit { Some(*index) } else { None })
        .collect();
    if programs.is_empty() || !options.peers.iter().any(|&peer| preload::applies(peer)) {
        return true;
    }
    if let Some(versions) = preload::versions() {
        results.machine.push(versions);
    }
    for error in preload::prepare_all(&programs, options.quick) {
        eprintln!("bench: preparing the preload programs: {error}");
    }
    if !options.peers.contains(&Peer::CoreAlloc) {
        return true;
    }
    match preload::build_library() {
        Ok(()) => true,
        Err(error) => {
            eprintln!("bench: {error}");
            for index in programs {
                let unit = Unit::Preload(index).to_string();
                results.problems.push((Peer::CoreAlloc, unit, format!("failed: {error}")));
            }
            false
        }
    }
}

/// Runs everything `options` asks for and writes the report.
pub fn run(options: &Options) -> ExitCode {
    if let Some(directory) = &options.from {
        let written = report::load(directory).and_then(|results| report::write(&results, options));
        return match written {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("bench: reporting from {} failed: {error}", directory.display());
                ExitCode::FAILURE
            }
        };
    }
    let start = Instant::now();
    let runs = options.runs.unwrap_or(if options.quick { 1 } else { 9 });
    let limit = time_limit(options.quick);
    let units = plan(options);
    let compute_scaling = Some(compute_scaling(if options.quick { 20_000_000 } else { 100_000_000 }));
    let machine = report::machine(compute_scaling);
    let command = report::command_line();
    let mut results = Results { runs, quick: options.quick, machine, command, ..Results::default() };
    let library_built = prepare_preload(options, &units, &mut results);
    eprintln!(
        "bench: {} allocators x {} workload units x {runs} run(s){}",
        options.peers.len(),
        units.len(),
        if options.quick { ", quick" } else { "" }
    );
    for run in 0..runs {
        for (index, &unit) in units.iter().enumerate() {
            let mut order = options.peers.clone();
            let turns = (run + index) % order.len().max(1);
            order.rotate_left(turns);
            let unit_start = Instant::now();
            let mut slowest = (0.0, Peer::CoreAlloc);
            for peer in order.into_iter().filter(|&peer| unit.applies_to(peer)) {
                if unit == Unit::Fragmentation && peer.has_slow_bulk_frees() && (options.quick || run > 0) {
                    continue;
                }
                // A minute and more per allocator: a timeline, measured once.
                if unit == Unit::LongFragmentation && run > 0 {
                    continue;
                }
                if matches!(unit, Unit::Preload(_)) && peer == Peer::CoreAlloc && !library_built {
                    continue;
                }
                let command = child_command(peer, unit, options.quick, run as u64 + 1, &[]);
                match run_limited(command, limit) {
                    Ok(outcome) => {
                        if outcome.seconds > slowest.0 {
                            slowest = (outcome.seconds, peer);
                        }
                        results.parse(peer, &outcome.stdout, run == 0);
                        results.note_skipped(peer, unit, &outcome.stderr);
                        let problem = match outcome.success {
                            Some(true) => None,
                            Some(false) => Some(format!("failed: {}", last_line(&outcome.stderr))),
                            None => Some(format!("timed out after {} s", limit.as_secs())),
                        };
                        if let Some(problem) = problem {
                            eprintln!("  {} on {}: {problem}", unit, peer.name());
                            results.problems.push((peer, unit.to_string(), problem));
                        }
                    }
                    Err(error) => {
                        eprintln!("  {} on {}: could not start: {error}", unit, peer.name());
                        results.problems.push((peer, unit.to_string(), format!("could not start: {error}")));
                    }
                }
            }
            eprintln!(
                "run {}/{runs} {unit:<18} {:6.1} s (slowest {} {:.1} s); {:.0} s in all",
                run + 1,
                unit_start.elapsed().as_secs_f64(),
                slowest.1.name(),
                slowest.0,
                start.elapsed().as_secs_f64()
            );
        }
    }
    let counts =
        options.families.as_ref().is_none_or(|families| families.iter().any(|f| f == "instructions"));
    if options.callgrind && counts {
        count_instructions(options, &mut results);
    }
    results.seconds = start.elapsed().as_secs_f64();
    if let Err(error) = report::write(&results, options) {
        eprintln!("bench: writing the results failed: {error}");
        return ExitCode::FAILURE;
    }
    // A crash anywhere, or core-alloc not finishing, fails the run (CI runs `--quick` so
    // that the harness and the allocator's paths under it never rot); a peer too slow for
    // the time limit does not.
    let fatal: Vec<&(Peer, String, String)> = results
        .problems
        .iter()
        .filter(|(peer, unit, what)| {
            let crashed = what.starts_with("failed") || what.starts_with("could not start");
            crashed || (*peer == Peer::CoreAlloc && unit != "instructions")
        })
        .collect();
    if fatal.is_empty() {
        ExitCode::SUCCESS
    } else {
        for (peer, unit, what) in fatal {
            eprintln!("bench: {unit} on {}: {what}", peer.name());
        }
        ExitCode::FAILURE
    }
}

/// A loop of xorshift steps and L1-resident stores: no allocation, no sharing.
fn compute(iterations: u64) -> u64 {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut buffer = [0u64; 512];
    for i in 0..iterations {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buffer[(x & 511) as usize] += i;
    }
    x ^ buffer.iter().sum::<u64>()
}

/// Two threads' throughput over one thread's on [`compute`], the median of three tries.
fn compute_scaling(iterations: u64) -> f64 {
    let mut tries: Vec<f64> = (0..3)
        .map(|_| {
            let start = Instant::now();
            std::hint::black_box(compute(iterations));
            let one = start.elapsed().as_secs_f64();
            let start = Instant::now();
            thread::scope(|scope| {
                for _ in 0..2 {
                    scope.spawn(|| std::hint::black_box(compute(iterations)));
                }
            });
            2.0 * one / start.elapsed().as_secs_f64()
        })
        .collect();
    tries.sort_by(f64::total_cmp);
    tries[1]
}

fn last_line(text: &str) -> String {
    text.lines().rev().find(|line| !line.trim().is_empty()).unwrap_or("no message").to_string()
}

/// The allocators whose fast path is counted (snmalloc aborts under valgrind; the fixed-arena
/// peers' counts are in ANCHORS.md).
const COUNTED: [Peer; 4] = [Peer::CoreAlloc, Peer::Mimalloc, Peer::Jemalloc, Peer::Glibc];

/// Instructions per workload-1 pair under callgrind: the difference between runs of n and
/// 2n pairs, over n, so start-up and the process's own allocations cancel out.
fn count_instructions(options: &Options, results: &mut Results) {
    let available =
        Command::new("valgrind").arg("--version").output().is_ok_and(|output| output.status.success());
    if !available {
        eprintln!("bench: valgrind not found; no instruction counts");
        results.problems.push((Peer::CoreAlloc, "instructions".into(), "valgrind not found".into()));
        return;
    }
    let pairs = if options.quick { 200_000 } else { 1_000_000 };
    let wrapper = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"];
    for peer in COUNTED.into_iter().filter(|peer| options.peers.contains(peer)) {
        let mut counts = Vec::new();
        for count in [pairs, 2 * pairs] {
            let command = child_command(peer, Unit::Instructions(count), options.quick, 1, &wrapper);
            let outcome = run_limited(command, Duration::from_secs(300));
            let collected =
                outcome.ok().filter(|outcome| outcome.success == Some(true)).and_then(|outcome| {
                    outcome.stderr.lines().find_map(|line| {
                        let (_, count) = line.split_once("Collected :")?;
                        count.trim().parse::<u64>().ok()
                    })
                });
            counts.push(collected);
        }
        match counts.as_slice() {
            [Some(one), Some(two)] => {
                let per_pair = two.saturating_sub(*one) as f64 / pairs as f64;
                eprintln!("callgrind {}: {per_pair:.1} instructions per pair", peer.name());
                let key = Key {
                    workload: "w1_small_pairs".into(),
                    peer,
                    threads: 1,
                    metric: "instructions_per_op".into(),
                };
                results.values.entry(key).or_default().push(per_pair);
            }
            _ => {
                eprintln!("callgrind {}: no count", peer.name());
                results.problems.push((peer, "instructions".into(), "callgrind gave no count".into()));
            }
        }
    }
}
