//! Shared by the integration tests: the library under test, C programs built with `cc`
//! during the run, and runs of programs with the library preloaded, under a time limit.
#![allow(dead_code)] // each test file uses a different part of this module

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// libcorealloc.so as cargo built it for this test run. Cargo builds the library before
/// the integration tests (the crate is also an rlib for that reason) and leaves the cdylib
/// in the same `deps` directory as the test executables.
pub(crate) fn library() -> PathBuf {
    let executable = std::env::current_exe().expect("path of the test executable");
    let deps = executable.parent().expect("the test executable's directory");
    for directory in [deps, deps.parent().unwrap_or(deps)] {
        let candidate = directory.join("libcorealloc.so");
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("libcorealloc.so not found next to {} (cargo builds it before these tests)", executable.display());
}

/// A directory of its own for one test, under cargo's scratch directory, in a directory
/// of this test process's own. Directories of processes that are gone are removed the
/// first time.
pub(crate) fn scratch(name: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("corealloc-malloc");
    if COUNTER.fetch_add(1, Ordering::Relaxed) == 0 {
        for entry in std::fs::read_dir(&base).into_iter().flatten().flatten() {
            let pid = entry.file_name().to_str().and_then(|name| name.parse::<libc::pid_t>().ok());
            // SAFETY: kill with signal 0 only checks whether the process exists.
            let gone = |pid| unsafe { libc::kill(pid, 0) } != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
            if pid.is_some_and(gone) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
    let directory = base.join(std::process::id().to_string()).join(format!("{name}-{unique}"));
    std::fs::create_dir_all(&directory).expect("create a scratch directory");
    directory
}

/// The C sources of the tests.
pub(crate) fn c_source(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c").join(file)
}

/// Compiles `tests/c/<program>.c` once per test process (with `cc`, or `$CC`) and returns
/// the executable. The build has `-fno-builtin`, so that the compiler neither folds nor
/// removes allocation calls.
pub(crate) fn c_program(program: &str) -> PathBuf {
    static BUILT: Mutex<Vec<(String, PathBuf)>> = Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((_, path)) = built.iter().find(|(name, _)| name == program) {
        return path.clone();
    }
    let output = scratch(&format!("build-{program}")).join(program);
    compile(&[c_source(&format!("{program}.c"))], &output, &["-ldl"]);
    built.push((program.to_string(), output.clone()));
    output
}

/// Runs the C compiler; panics with its output on failure.
pub(crate) fn compile(sources: &[PathBuf], output: &Path, extra: &[&str]) {
    let compiler = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let result = Command::new(&compiler)
        .args(["-std=gnu11", "-O1", "-g", "-fno-builtin", "-Wall", "-Wextra", "-pthread"])
        .arg("-I")
        .arg(c_source(""))
        .args(sources)
        .arg("-o")
        .arg(output)
        .args(extra)
        .output()
        .unwrap_or_else(|error| panic!("cannot run the C compiler `{compiler}`: {error}"));
    assert!(
        result.status.success(),
        "`{compiler}` failed on {sources:?}:\n{}",
        String::from_utf8_lossy(&result.stderr)
    );
}

/// What a finished program did.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) status: ExitStatus,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Outcome {
    /// Panics, showing everything, unless the program exited 0.
    pub(crate) fn assert_success(&self, what: &str) {
        assert!(
            self.status.success(),
            "{what}: {}\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
    }

    /// Panics unless the program was killed by SIGABRT.
    pub(crate) fn assert_aborted(&self, what: &str) {
        assert_eq!(
            self.status.signal(),
            Some(libc::SIGABRT),
            "{what}: expected an abort, got {}\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
    }

    /// The lines the allocator printed (`corealloc: ...`, also as relayed by git from its
    /// remote side: `remote: corealloc: ...`), and standard error without them.
    pub(crate) fn split_stderr(&self) -> (Vec<&str>, String) {
        let mut ours = Vec::new();
        let mut rest = String::new();
        for line in self.stderr.split_inclusive('\n') {
            let unrelayed = line.strip_prefix("remote: ").unwrap_or(line);
            if unrelayed.starts_with("corealloc: ") {
                ours.push(unrelayed.trim_end());
            } else {
                rest.push_str(line);
            }
        }
        (ours, rest)
    }
}

/// `command` with libcorealloc.so preloaded.
pub(crate) fn preloaded(mut command: Command) -> Command {
    command.env("LD_PRELOAD", library());
    command
}

/// Runs `command` to completion with no input, killing it (and failing the test) after
/// `limit`.
pub(crate) fn run(command: Command, limit: Duration) -> Outcome {
    run_with_input(command, Stdio::null(), limit)
}

/// As [`run`], with `input` as standard input.
pub(crate) fn run_with_input(mut command: Command, input: Stdio, limit: Duration) -> Outcome {
    let description = format!("{command:?}");
    let mut child = command
        .stdin(input)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot start {description}: {error}"));
    let mut stdout_pipe = child.stdout.take().expect("piped stdout");
    let mut stderr_pipe = child.stderr.take().expect("piped stderr");
    let stdout_reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stdout_pipe.read_to_end(&mut text);
        text
    });
    let stderr_reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stderr_pipe.read_to_end(&mut text);
        text
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the program") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stdout = stdout_reader.join().unwrap_or_default();
            let stderr = stderr_reader.join().unwrap_or_default();
            panic!(
                "{description} did not finish within {limit:?} (a deadlock?)\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&stdout),
                String::from_utf8_lossy(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stdout = String::from_utf8_lossy(&stdout_reader.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&stderr_reader.join().unwrap_or_default()).into_owned();
    Outcome { status, stdout, stderr }
}

/// Runs a C test program under the library with `arguments`; the program prints "ok" and
/// exits 0 when its checks hold, and the allocator must print nothing.
pub(crate) fn run_c_test(program: &str, arguments: &[&str], limit: Duration) -> Outcome {
    let mut command = preloaded(Command::new(c_program(program)));
    command.args(arguments).env_remove("CORE_ALLOC_STATS");
    let outcome = run(command, limit);
    let what = format!("{program} {}", arguments.join(" "));
    outcome.assert_success(&what);
    assert_eq!(outcome.stdout.trim(), "ok", "{what}: unexpected output");
    assert_eq!(outcome.stderr, "", "{what}: unexpected messages");
    outcome
}

/// A program from a Debian package, or `None` (with a message saying what to install) when
/// it is not there.
pub(crate) fn real_program(path: &str, package: &str) -> Option<PathBuf> {
    let path = PathBuf::from(path);
    if path.is_file() {
        Some(path)
    } else {
        println!("SKIPPED: {} is not installed (Debian package `{package}`)", path.display());
        eprintln!("SKIPPED: {} is not installed (Debian package `{package}`)", path.display());
        None
    }
}

/// Parses the number before `label` in the allocator's statistics lines, e.g. `held` in
/// `chunks: 2 held (1 slab, ...)`.
pub(crate) fn stat(lines: &[&str], label: &str) -> Option<u64> {
    lines.iter().find_map(|line| {
        let words: Vec<&str> = line.split(|c: char| c.is_whitespace() || c == '(' || c == ',').collect();
        words.windows(2).find(|pair| pair[1] == label).and_then(|pair| pair[0].parse().ok())
    })
}

/// The number of allocations the allocator's statistics report, summed over every process
/// that printed them.
pub(crate) fn allocations(lines: &[&str]) -> u64 {
    class_rows(lines).map(|(_, allocated)| allocated).sum()
}

/// The rows of the statistics' size-class table: (block size, blocks allocated).
pub(crate) fn class_rows<'a>(lines: &'a [&'a str]) -> impl Iterator<Item = (u64, u64)> + 'a {
    lines.iter().filter_map(|line| {
        let row: Vec<&str> = line.strip_prefix("corealloc: ")?.split_whitespace().collect();
        match row[..] {
            [size, "B", _live, allocated, _kib, _cached] => {
                Some((size.parse().ok()?, allocated.parse().ok()?))
            }
            _ => None,
        }
    })
}
