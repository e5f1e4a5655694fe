//! What the torture tells: the run's seed and clock, the failure message (which names the
//! seed, the thread and the time, then ends the process with status 1), and the counters of
//! operations done, printed at the end and checked by the tests.

use std::fmt::Arguments;
use std::fmt::Write;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

static SEED: AtomicU64 = AtomicU64::new(0);
static START: OnceLock<Instant> = OnceLock::new();

/// Records the run's seed and starts its clock.
pub(crate) fn start(seed: u64) {
    SEED.store(seed, Ordering::Relaxed);
    START.get_or_init(Instant::now);
}

/// The run's seed.
pub(crate) fn seed() -> u64 {
    SEED.load(Ordering::Relaxed)
}

/// Seconds since the run started.
pub(crate) fn elapsed() -> f64 {
    START.get_or_init(Instant::now).elapsed().as_secs_f64()
}

/// Reports a failure and ends the process at once with status 1 (other threads are not
/// waited for: the heap may be corrupt). The message is formatted on the stack and written
/// with `write(2)`: reporting allocates nothing.
pub(crate) fn fail_with(message: Arguments<'_>) -> ! {
    let mut line = StackLine { buffer: [0; 2048], length: 0 };
    let thread = std::thread::current();
    let _ = write!(
        line,
        "torture: FAILED after {:.1} s (seed {}, thread {}): {message}",
        elapsed(),
        seed(),
        thread.name().unwrap_or("unnamed"),
    );
    line.length = line.length.min(line.buffer.len() - 1);
    line.buffer[line.length] = b'\n';
    // SAFETY: writes initialised bytes of a local buffer to standard error; `_exit` has no
    // preconditions and ends the process without running exit handlers, which could meet a
    // corrupt heap or threads still running.
    unsafe {
        libc::write(2, line.buffer.as_ptr().cast(), line.length + 1);
        libc::_exit(1)
    }
}

/// A line formatted into a fixed buffer; what does not fit is dropped.
struct StackLine {
    buffer: [u8; 2048],
    length: usize,
}

impl std::fmt::Write for StackLine {
    fn write_str(&mut self, text: &str) -> std::fmt::Result {
        let take = text.len().min(self.buffer.len() - self.length);
        self.buffer[self.length..self.length + take].copy_from_slice(&text.as_bytes()[..take]);
        self.length += take;
        Ok(())
    }
}

/// `fail!("...", args)`: [`fail_with`] with format arguments.
macro_rules! fail {
    ($($argument:tt)*) => { $crate::report::fail_with(format_args!($($argument)*)) };
}
pub(crate) use fail;

/// Counts of what the run did. Each field is one kind of operation; the tests require
/// every one to be non-zero after a run with all scenarios.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) alloc: AtomicU64,
    pub(crate) alloc_zeroed: AtomicU64,
    pub(crate) realloc: AtomicU64,
    pub(crate) dealloc: AtomicU64,
    /// Alignments of 4 KiB or more asked for.
    pub(crate) big_align: AtomicU64,
    /// Blocks freed (or resized) by a thread other than the one that allocated them.
    pub(crate) cross_thread: AtomicU64,
    /// Blocks freed after the thread that allocated them had exited (and been joined).
    pub(crate) after_owner_exit: AtomicU64,
    /// Short-lived threads started (churn and producers).
    pub(crate) short_threads: AtomicU64,
    /// Reallocations of blocks of 2 MiB or more to other sizes of 2 MiB or more.
    pub(crate) huge_realloc: AtomicU64,
    /// 64-byte blocks made by producer threads and freed by consumers.
    pub(crate) produced_consumed: AtomicU64,
    /// `collect()` calls of the collector thread.
    pub(crate) collect: AtomicU64,
    /// Bytes written with the pattern and checked against it.
    pub(crate) bytes_checked: AtomicU64,
}

pub(crate) static COUNTERS: Counters = Counters::new();

impl Counters {
    const fn new() -> Self {
        Counters {
            alloc: AtomicU64::new(0),
            alloc_zeroed: AtomicU64::new(0),
            realloc: AtomicU64::new(0),
            dealloc: AtomicU64::new(0),
            big_align: AtomicU64::new(0),
            cross_thread: AtomicU64::new(0),
            after_owner_exit: AtomicU64::new(0),
            short_threads: AtomicU64::new(0),
            huge_realloc: AtomicU64::new(0),
            produced_consumed: AtomicU64::new(0),
            collect: AtomicU64::new(0),
            bytes_checked: AtomicU64::new(0),
        }
    }

    /// Adds one to `counter`.
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// All operations so far (for the progress watchdog).
    pub(crate) fn operations(&self) -> u64 {
        [&self.alloc, &self.alloc_zeroed, &self.realloc, &self.dealloc]
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// `name=value` pairs, the format of the summary line the tests parse.
    pub(crate) fn summary(&self) -> String {
        let fields: [(&str, &AtomicU64); 12] = [
            ("alloc", &self.alloc),
            ("alloc_zeroed", &self.alloc_zeroed),
            ("realloc", &self.realloc),
            ("dealloc", &self.dealloc),
            ("big_align", &self.big_align),
            ("cross_thread", &self.cross_thread),
            ("after_owner_exit", &self.after_owner_exit),
            ("short_threads", &self.short_threads),
            ("huge_realloc", &self.huge_realloc),
            ("produced_consumed", &self.produced_consumed),
            ("collect", &self.collect),
            ("bytes_checked", &self.bytes_checked),
        ];
        fields
            .iter()
            .map(|(name, counter)| format!("{name}={}", counter.load(Ordering::Relaxed)))
            .collect::<Vec<_>>()
            .join(" ")
    }
}
