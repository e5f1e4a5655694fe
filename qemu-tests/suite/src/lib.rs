//! The tests every bare-metal test kernel runs, written once for both architectures.
//!
//! A kernel boots, brings up its CPUs, installs the allocator as `#[global_allocator]`,
//! implements [`Machine`], and calls [`run`]. Each test prints one line,
//! `<arch>: test <name> ... ok` or `<arch>: test <name> ... FAILED: <why>`, and the run ends
//! with `<arch>: suite done: N passed, M failed`; the host-side runner parses these lines.
#![no_std]

extern crate alloc;

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;
use core::sync::atomic::{AtomicUsize, Ordering};

/// What a test kernel provides to the suite.
pub trait Machine: Sync {
    /// `"x86_64"` or `"aarch64"`: the prefix of every result line.
    fn arch(&self) -> &'static str;
    /// CPUs brought up; the boot CPU is CPU 0.
    fn cpu_count(&self) -> usize;
    /// The calling CPU's index, below `cpu_count()`.
    fn current_cpu(&self) -> usize;
    /// Runs `work(cpu)` at the same time on CPUs `0..cpus` (the caller, CPU 0, included)
    /// and returns once every call has returned. Interrupts are enabled on every CPU while
    /// `work` runs, so timer interrupts can arrive in the middle of it.
    fn run_on_cpus(&self, cpus: usize, work: &(dyn Fn(usize) + Sync));
    /// Sets the function the periodic timer interrupt calls, in interrupt context, with the
    /// index of the interrupted CPU; `None` makes timer interrupts do nothing.
    fn set_timer_handler(&self, handler: Option<fn(usize)>);
    /// Starts the calling CPU's periodic timer interrupt, every `period_us` microseconds.
    fn start_timer(&self, period_us: u32);
    /// Stops the calling CPU's periodic timer interrupt.
    fn stop_timer(&self);
    /// Monotonic time in nanoseconds, within a few percent of real time.
    fn now_ns(&self) -> u64;
    /// Writes to the serial console. Callers write whole lines with one call.
    fn write_str(&self, text: &str);
}

/// Counts of the tests run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Tests that passed.
    pub passed: usize,
    /// Tests that failed.
    pub failed: usize,
}

/// A test's verdict: `Err` carries the reason it failed.
pub type Outcome = Result<(), String>;

/// Prints one line, prefixed with the architecture, in a single console write.
pub fn say(machine: &dyn Machine, args: core::fmt::Arguments<'_>) {
    let mut line = String::new();
    let _ = write!(line, "{}: ", machine.arch());
    let _ = line.write_fmt(args);
    line.push('\n');
    machine.write_str(&line);
}

fn record(machine: &dyn Machine, summary: &mut Summary, name: &str, outcome: Outcome) {
    match outcome {
        Ok(()) => {
            summary.passed += 1;
            say(machine, format_args!("test {name} ... ok"));
        }
        Err(why) => {
            summary.failed += 1;
            say(machine, format_args!("test {name} ... FAILED: {why}"));
        }
    }
}

/// Fails the enclosing test with a formatted reason unless `condition` holds.
macro_rules! ensure {
    ($condition:expr, $($reason:tt)+) => {
        if !$condition {
            return Err(alloc::format!($($reason)+));
        }
    };
}

/// Runs every test and prints the summary line; the kernel exits with success only if
/// `failed` is zero.
pub fn run(machine: &dyn Machine) -> Summary {
    let mut summary = Summary::default();
    record(machine, &mut summary, "cpus_online", cpus_online(machine));
    record(machine, &mut summary, "clock_advances", clock_advances(machine));
    record(machine, &mut summary, "timer_interrupts_on_every_cpu", timer_interrupts_on_every_cpu(machine));
    record(machine, &mut summary, "collections_on_every_cpu", collections_on_every_cpu(machine));
    say(machine, format_args!("suite done: {} passed, {} failed", summary.passed, summary.failed));
    summary
}

fn cpus_online(machine: &dyn Machine) -> Outcome {
    let cpus = machine.cpu_count();
    ensure!(cpus >= 1, "no CPU reported");
    let seen: Vec<AtomicUsize> = (0..cpus).map(|_| AtomicUsize::new(usize::MAX)).collect();
    machine.run_on_cpus(cpus, &|cpu| {
        seen[cpu].store(machine.current_cpu(), Ordering::Relaxed);
    });
    for (cpu, reported) in seen.iter().enumerate() {
        let reported = reported.load(Ordering::Relaxed);
        ensure!(reported == cpu, "work for CPU {cpu} ran on CPU {reported}");
    }
    say(machine, format_args!("{cpus} CPUs online"));
    Ok(())
}

fn clock_advances(machine: &dyn Machine) -> Outcome {
    let start = machine.now_ns();
    let mut spins = 0u64;
    while machine.now_ns() < start + 1_000_000 {
        spins += 1;
        ensure!(spins < 1 << 32, "the clock did not advance by 1 ms");
    }
    Ok(())
}

static TICKS: [AtomicUsize; 64] = [const { AtomicUsize::new(0) }; 64];

fn count_tick(cpu: usize) {
    TICKS[cpu % 64].fetch_add(1, Ordering::Relaxed);
}

fn timer_interrupts_on_every_cpu(machine: &dyn Machine) -> Outcome {
    let cpus = machine.cpu_count();
    machine.set_timer_handler(Some(count_tick));
    machine.run_on_cpus(cpus, &|_| {
        machine.start_timer(1000);
        let start = machine.now_ns();
        while machine.now_ns() < start + 30_000_000 {
            core::hint::spin_loop();
        }
        machine.stop_timer();
    });
    machine.set_timer_handler(None);
    for (cpu, ticks) in TICKS.iter().enumerate().take(cpus) {
        let ticks = ticks.load(Ordering::Relaxed);
        ensure!(ticks > 0, "no timer interrupt on CPU {cpu} in 30 ms at 1 kHz");
    }
    Ok(())
}

fn collections_on_every_cpu(machine: &dyn Machine) -> Outcome {
    let failures = AtomicUsize::new(0);
    machine.run_on_cpus(machine.cpu_count(), &|cpu| {
        let mut map = BTreeMap::new();
        let mut numbers = Vec::new();
        for i in 0..2000usize {
            numbers.push(i * cpu);
            map.insert(i, alloc::format!("cpu {cpu} item {i}"));
        }
        let boxed = Box::new([cpu as u8; 100]);
        let ok = numbers.iter().enumerate().all(|(i, &n)| n == i * cpu)
            && map.get(&1999).is_some_and(|text| text.ends_with("item 1999"))
            && boxed.iter().all(|&byte| byte == cpu as u8);
        if !ok {
            failures.fetch_add(1, Ordering::Relaxed);
        }
    });
    ensure!(failures.load(Ordering::Relaxed) == 0, "collections held wrong contents");
    Ok(())
}
