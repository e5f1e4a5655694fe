//! The tests every bare-metal test kernel runs, written once for both architectures.
//!
//! A kernel boots, brings up its CPUs, installs the allocator as `#[global_allocator]`,
//! implements [`Machine`], and calls [`run`] with the allocator and a count of its provider's
//! free frames. Each test prints one line, `<arch>: test <name> ... ok` or
//! `<arch>: test <name> ... FAILED: <why>`; the comparison with `linked_list_allocator` and
//! the allocator's statistics print `<arch>: bench ...` and `<arch>: stats ...` lines; the
//! run ends with `<arch>: suite done: N passed, M failed`. The host-side runner parses these.
//!
//! The torture test (`torture_every_path_on_every_cpu_and_in_interrupts`) runs a few seconds
//! of guest time; a kernel built with `QEMU_TORTURE_SECONDS=N` in the environment runs it
//! for `N` seconds (`QEMU_TORTURE_SECONDS=180 cargo qemu`).
#![no_std]

extern crate alloc;

mod compare;
mod heap;
mod small;
mod small_global;
mod smoke;
mod speed;
mod torture;

use alloc::string::String;
use core::fmt::Write;

use core_alloc::Allocator;
use page_provider::PageProvider;
use platform::Platform;

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

/// What the allocator tests need besides the machine.
pub struct HeapUnderTest<'a, P, Pl> {
    /// The kernel's global allocator.
    pub allocator: &'a Allocator<P, Pl>,
    /// The number of 2 MiB frames the allocator's provider has not handed out.
    pub free_frames: &'a (dyn Fn() -> usize + Sync),
}

/// The allocator tests that need nothing of the provider, for a kernel's second heap (another
/// `Allocator` instance over another provider): every alignment up to 2 MiB, huge blocks
/// spanning chunks (grown and shrunk), the cross-CPU stress on every CPU, and the heap's
/// invariants on every CPU. Stops at the first failure, naming the test. The heap needs about
/// 300 MiB on 4 CPUs.
pub fn second_heap<P: PageProvider, Pl: Platform>(
    machine: &dyn Machine,
    heap: &HeapUnderTest<'_, P, Pl>,
) -> Outcome {
    heap::alignments_up_to_2_mib(machine, heap).map_err(|why| alloc::format!("alignments: {why}"))?;
    heap::huge_allocations_span_chunks(machine, heap).map_err(|why| alloc::format!("huge: {why}"))?;
    heap::concurrent_stress(machine, heap).map_err(|why| alloc::format!("stress: {why}"))?;
    heap::invariants_on_every_cpu(machine, heap).map_err(|why| alloc::format!("invariants: {why}"))
}

/// The set for a kernel whose `#[global_allocator]` is a small heap in compact mode (the
/// README's shortest route: a `FixedRegion` over a span the kernel mapped, at most a few
/// MiB), in place of [`run`]: the smoke tests, collections on every CPU, allocation in
/// interrupt handlers, a cross-CPU stress, out of memory with its reason, and the heap's
/// invariants, each sized from the span's free bytes. The tests that need tens or hundreds
/// of MiB or 2 MiB alignments are not run (by design; a line before the summary names them).
/// A few seconds under emulation.
pub fn run_small_global<P: PageProvider, Pl: Platform>(
    machine: &dyn Machine,
    heap: &Allocator<P, Pl>,
) -> Summary {
    run_small_global_with(machine, heap, |_| {})
}

/// As [`run_small_global`], with the kernel's own tests in `more`, as in [`run_with`].
pub fn run_small_global_with<P: PageProvider, Pl: Platform>(
    machine: &dyn Machine,
    heap: &Allocator<P, Pl>,
    more: impl FnOnce(&mut dyn FnMut(&str, Outcome)),
) -> Summary {
    small_global::run(machine, heap, more)
}

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
pub(crate) use ensure;

/// xorshift64*: deterministic pseudo-random test inputs.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub(crate) fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }
}

/// Runs every test and prints the summary line; the kernel exits with success only if
/// `failed` is zero.
pub fn run<P: PageProvider, Pl: Platform>(machine: &dyn Machine, heap: &HeapUnderTest<'_, P, Pl>) -> Summary {
    run_with(machine, heap, |_| {})
}

/// As [`run`], and before the statistics and the summary line, `more` runs the kernel's
/// own tests, reporting each through the function it is given (`test(name, outcome)`): they
/// print and count like the suite's.
pub fn run_with<P: PageProvider, Pl: Platform>(
    machine: &dyn Machine,
    heap: &HeapUnderTest<'_, P, Pl>,
    more: impl FnOnce(&mut dyn FnMut(&str, Outcome)),
) -> Summary {
    let mut summary = Summary::default();
    let mut test = |name: &str, outcome: Outcome| record(machine, &mut summary, name, outcome);
    test("cpus_online", smoke::cpus_online(machine));
    test("clock_advances", smoke::clock_advances(machine));
    test("timer_interrupts_on_every_cpu", smoke::timer_interrupts_on_every_cpu(machine));
    test("collections_on_every_cpu", smoke::collections_on_every_cpu(machine));
    test("alignments_up_to_2_mib", heap::alignments_up_to_2_mib(machine, heap));
    test("huge_allocations_span_chunks", heap::huge_allocations_span_chunks(machine, heap));
    test("concurrent_stress_with_cross_cpu_frees", heap::concurrent_stress(machine, heap));
    test("allocation_from_interrupt_context", heap::allocation_from_interrupts(machine, heap));
    test("out_of_memory_returns_null_and_recovers", heap::out_of_memory(machine, heap));
    test("memory_returned_to_the_provider", heap::memory_returned(machine, heap));
    test("torture_every_path_on_every_cpu_and_in_interrupts", torture::torture(machine, heap));
    test("compare_with_linked_list_allocator", compare::against_linked_list(machine, heap));
    test("heap_invariants_on_every_cpu", heap::invariants_on_every_cpu(machine, heap));
    test("small_heaps_in_compact_mode", small::small_heaps(machine, heap));
    test("compare_with_talc_and_linked_list_allocator", speed::against_peers(machine, heap));
    more(&mut test);
    let stats = heap.allocator.stats();
    for line in alloc::format!("{stats}").lines() {
        say(machine, format_args!("stats {line}"));
    }
    say(machine, format_args!("suite done: {} passed, {} failed", summary.passed, summary.failed));
    summary
}
