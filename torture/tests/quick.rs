//! The quick profile of both torture programs (part of `cargo test --workspace`): each runs
//! every scenario for a few seconds and must exit 0 having done every kind of operation;
//! and each must catch a corrupted byte, so that a pass means something.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Seconds of each quick run: `TORTURE_SECONDS`, or 20.
fn quick_seconds() -> String {
    std::env::var("TORTURE_SECONDS").unwrap_or_else(|_| "20".to_string())
}

struct Outcome {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Outcome {
    fn describe(&self) -> String {
        format!(
            "{} (signal {:?})\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.status.signal(),
            self.stdout,
            self.stderr
        )
    }
}

/// Runs `program` with `arguments`, killing it (and failing) after `limit`.
fn run(program: &str, arguments: &[&str], limit: Duration) -> Outcome {
    let mut child = Command::new(program)
        .args(arguments)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot start {program}: {error}"));
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let stdout = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the torture") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{program} {arguments:?} did not finish within {limit:?} (a deadlock?)\nstderr:\n{}",
                stderr.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Outcome { status, stdout: stdout.join().unwrap_or_default(), stderr: stderr.join().unwrap_or_default() }
}

/// The `name=value` counters of the `<prefix>: ok ...` summary line; panics without one.
fn counters(outcome: &Outcome, prefix: &str) -> Vec<(String, u64)> {
    let line = outcome
        .stdout
        .lines()
        .find_map(|line| line.strip_prefix(prefix)?.strip_prefix(": ok "))
        .unwrap_or_else(|| panic!("no summary line: {}", outcome.describe()));
    line.split_whitespace()
        .filter_map(|pair| {
            let (name, value) = pair.split_once('=')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// Fails unless the run passed and did each of `expected`, at least once.
fn assert_passed(outcome: &Outcome, prefix: &str, expected: &[&str]) {
    assert!(outcome.status.success(), "the torture failed: {}", outcome.describe());
    let counts = counters(outcome, prefix);
    for name in expected {
        let count = counts.iter().find(|(counter, _)| counter == name).map(|(_, count)| *count);
        assert!(
            count.is_some_and(|count| count > 0),
            "the run did no `{name}`: {counts:?}\n{}",
            outcome.describe()
        );
    }
}

/// Fails unless the run stopped with status 1 on the injected corruption, naming the seed.
fn assert_caught_fault(outcome: &Outcome, prefix: &str) {
    assert_eq!(outcome.status.code(), Some(1), "the injected fault was not reported: {}", outcome.describe());
    let failure = format!("{prefix}: FAILED after ");
    assert!(
        outcome.stderr.contains(&failure)
            && outcome.stderr.contains("(seed 42, ")
            && outcome.stderr.contains("corrupted"),
        "the report does not name the corruption and the seed: {}",
        outcome.describe()
    );
}

#[test]
fn rust_torture_quick() {
    let seconds = quick_seconds();
    let outcome = run(env!("CARGO_BIN_EXE_torture"), &["--seconds", &seconds], Duration::from_secs(300));
    assert_passed(
        &outcome,
        "torture",
        &[
            "alloc",
            "alloc_zeroed",
            "realloc",
            "dealloc",
            "big_align",
            "cross_thread",
            "after_owner_exit",
            "short_threads",
            "huge_realloc",
            "produced_consumed",
            "collect",
        ],
    );
}

#[test]
fn rust_torture_catches_a_corrupted_byte() {
    let arguments = ["--seed", "42", "--seconds", "10", "--scenarios", "mix", "--inject-fault"];
    let outcome = run(env!("CARGO_BIN_EXE_torture"), &arguments, Duration::from_secs(120));
    assert_caught_fault(&outcome, "torture");
}

#[test]
fn c_torture_quick() {
    let seconds = quick_seconds();
    let outcome =
        run(env!("CARGO_BIN_EXE_torture-malloc"), &["--seconds", &seconds], Duration::from_secs(300));
    assert_passed(
        &outcome,
        "torture-c",
        &[
            "malloc",
            "calloc",
            "realloc",
            "reallocarray",
            "posix_memalign",
            "aligned_alloc",
            "memalign",
            "valloc",
            "free",
            "malloc_usable_size",
            "malloc_trim",
            "big_align",
            "cross_thread",
            "after_owner_exit",
            "short_threads",
            "huge_realloc",
            "produced_consumed",
        ],
    );
    assert!(
        !outcome.stderr.contains("corealloc: "),
        "the allocator reported something: {}",
        outcome.describe()
    );
}

#[test]
fn c_torture_catches_a_corrupted_byte() {
    let arguments = ["--seed", "42", "--seconds", "10", "--scenarios", "mix", "--inject-fault"];
    let outcome = run(env!("CARGO_BIN_EXE_torture-malloc"), &arguments, Duration::from_secs(120));
    assert_caught_fault(&outcome, "torture-c");
}
