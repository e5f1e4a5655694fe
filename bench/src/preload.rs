//! The preload family: programs run with each allocator preloaded as their malloc
//! (`LD_PRELOAD`), timed from start to exit. Two C programs of this harness (`bench/c/`,
//! compiled with `cc -O2 -pthread` into `bench/target/preload/` when their source is newer
//! than the build): the Larson-Krishnan server simulation and a producer/consumer test after
//! xmalloc-test; and real programs from Debian packages, each skipped if it is not
//! installed: python3, sqlite3, gcc, perl and jq.
//!
//! The allocators are those that exist as preloadable libraries: core-alloc (the
//! repository's `target/release/libcorealloc.so`, built by the parent before the first run),
//! glibc (nothing preloaded), and Debian's jemalloc (`libjemalloc2`) and mimalloc
//! (`libmimalloc2.0`), which are Debian's builds, not the crates the in-process workloads
//! link. A library or a program that is not installed is a blank cell, not a failure: the
//! child says so on standard error (a line starting with `skipped:`) and prints no result.
//!
//! The child process's own allocator plays no part here: it only starts the program.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use crate::peers::Peer;

/// The exit status of a child whose program did not finish within its time limit (the
/// parent reports it as a timeout, not a crash).
pub const TIMED_OUT: i32 = 124;

/// The seed of the C programs, the same in every run: each run does the same work.
const SEED: u64 = 42;

/// A program of the family.
pub struct Program {
    /// The name in tables; the CSV's workload is `preload_<name>`.
    pub name: &'static str,
    /// Where a real program is installed and its Debian package; `None` for the harness's
    /// own C programs.
    pub installed: Option<(&'static str, &'static str)>,
    /// Runs in `--quick` too (the C programs, and one real program).
    pub quick: bool,
}

impl Program {
    /// The workload name in the results.
    pub fn workload(&self) -> String {
        format!("preload_{}", self.name)
    }

    /// A real program (from a Debian package), not one of the harness's.
    pub fn is_real(&self) -> bool {
        self.installed.is_some()
    }
}

/// Every program, the C ones first; `Unit::Preload(i)` runs `PROGRAMS[i]`.
pub const PROGRAMS: [Program; 7] = [
    Program { name: "larson", installed: None, quick: true },
    Program { name: "xmalloc", installed: None, quick: true },
    Program { name: "python3", installed: Some(("/usr/bin/python3", "python3")), quick: true },
    Program { name: "sqlite3", installed: Some(("/usr/bin/sqlite3", "sqlite3")), quick: false },
    Program { name: "gcc", installed: Some(("/usr/bin/gcc", "gcc")), quick: false },
    Program { name: "perl", installed: Some(("/usr/bin/perl", "perl")), quick: false },
    Program { name: "jq", installed: Some(("/usr/bin/jq", "jq")), quick: false },
];

/// The programs a run plans (indices into [`PROGRAMS`]).
pub fn planned(quick: bool) -> impl Iterator<Item = usize> {
    (0..PROGRAMS.len()).filter(move |&index| !quick || PROGRAMS[index].quick)
}

/// Whether `peer` exists as a library to preload (or, for glibc, as the default malloc).
pub fn applies(peer: Peer) -> bool {
    matches!(peer, Peer::CoreAlloc | Peer::Glibc | Peer::Jemalloc | Peer::Mimalloc)
}

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn cache() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/preload")
}

/// The repository's C library, where [`build_library`] puts it.
fn corealloc_library() -> PathBuf {
    repository().join("target/release/libcorealloc.so")
}

/// Builds `libcorealloc.so` (`cargo build --release -p core-alloc-malloc` in the
/// repository's workspace, with `$CARGO` where cargo set it).
pub fn build_library() -> Result<(), String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let repository = repository();
    eprintln!("bench: building libcorealloc.so (cargo build --release -p core-alloc-malloc)");
    let status = Command::new(&cargo)
        .args(["build", "--release", "--quiet", "-p", "core-alloc-malloc", "--manifest-path"])
        .arg(repository.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(repository.join("target"))
        .stdin(Stdio::null())
        .status()
        .map_err(|error| format!("cargo build --release -p core-alloc-malloc: could not start: {error}"))?;
    if !status.success() {
        return Err(format!("cargo build --release -p core-alloc-malloc: {status}"));
    }
    if !corealloc_library().is_file() {
        return Err(format!("the build left no {}", corealloc_library().display()));
    }
    Ok(())
}

/// What to preload for `peer`: `Ok(None)` for nothing (glibc), `Err` with a message if the
/// library is not installed.
fn library(peer: Peer) -> Result<Option<PathBuf>, String> {
    let (file, package) = match peer {
        Peer::CoreAlloc => return Ok(Some(corealloc_library())),
        Peer::Jemalloc => ("libjemalloc.so.2", "libjemalloc2"),
        Peer::Mimalloc => ("libmimalloc.so.2", "libmimalloc2.0"),
        _ => return Ok(None),
    };
    find_library(file).map(Some).ok_or_else(|| format!("{file} not found (Debian package {package})"))
}

/// A shared library in the multiarch directories, or wherever `ldconfig -p` knows it.
fn find_library(file: &str) -> Option<PathBuf> {
    let directories = ["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/lib/x86_64-linux-gnu"];
    if let Some(found) =
        directories.iter().map(|directory| Path::new(directory).join(file)).find(|p| p.is_file())
    {
        return Some(found);
    }
    let output = Command::new("ldconfig").arg("-p").stdin(Stdio::null()).output().ok()?;
    String::from_utf8_lossy(&output.stdout).lines().find_map(|line| {
        let (name, path) = line.trim().split_once(" => ")?;
        (name.split_whitespace().next() == Some(file)).then(|| PathBuf::from(path.trim()))
    })
}

/// The installed versions of Debian's jemalloc and mimalloc, for the run's record.
pub fn versions() -> Option<String> {
    let output = Command::new("dpkg-query")
        .args(["-W", "-f", "${Package} ${Version}, ", "libjemalloc2", "libmimalloc2.0"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let listed = String::from_utf8_lossy(&output.stdout).trim().trim_end_matches(',').to_string();
    (!listed.is_empty()).then(|| format!("preloaded from Debian: {listed}"))
}

/// A program ready to run, or why it cannot run here.
enum Prepared {
    Run { command: Command, stdin: Stdio, threads: usize },
    Skip(String),
}

/// Compiles `bench/c/<name>.c` into the cache unless the build there is newer than the
/// source.
fn compiled(name: &str) -> Result<PathBuf, String> {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("c").join(format!("{name}.c"));
    let binary = cache().join(name);
    let modified = |path: &Path| path.metadata().and_then(|metadata| metadata.modified()).ok();
    let source_time = modified(&source).ok_or_else(|| format!("{} not found", source.display()))?;
    if modified(&binary).is_some_and(|built: SystemTime| built >= source_time) {
        return Ok(binary);
    }
    fs::create_dir_all(cache()).map_err(|error| format!("{}: {error}", cache().display()))?;
    let compiler = std::env::var_os("CC").unwrap_or_else(|| OsString::from("cc"));
    let partial = cache().join(format!("{name}.{}.partial", std::process::id()));
    let output = Command::new(&compiler)
        .args(["-O2", "-pthread", "-o"])
        .arg(&partial)
        .arg(&source)
        .stdin(Stdio::null())
        .output()
        .map_err(|error| format!("cc: could not start: {error}"))?;
    if !output.status.success() {
        let _ = fs::remove_file(&partial);
        return Err(format!(
            "cc -O2 -pthread {} failed: {}",
            source.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    fs::rename(&partial, &binary).map_err(|error| format!("{}: {error}", binary.display()))?;
    Ok(binary)
}

/// A generated input file in the cache, written again only when its contents change.
fn generated(name: &str, contents: impl FnOnce() -> String) -> Result<PathBuf, String> {
    let path = cache().join(name);
    let text = contents();
    if fs::read(&path).ok().as_deref() == Some(text.as_bytes()) {
        return Ok(path);
    }
    fs::create_dir_all(cache()).map_err(|error| format!("{}: {error}", cache().display()))?;
    let partial = cache().join(format!("{name}.{}.partial", std::process::id()));
    fs::write(&partial, text)
        .and_then(|()| fs::rename(&partial, &path))
        .map_err(|error| format!("{}: {error}", path.display()))?;
    Ok(path)
}

/// The Larson threads: the CPUs, at least 2, at most 4.
fn larson_threads() -> usize {
    thread::available_parallelism().map_or(2, |count| count.get()).clamp(2, 4)
}

/// The threads of `tests/programs/threads_workload.py`.
const PYTHON_THREADS: usize = 8;

/// Builds what `program` needs and its command line.
fn prepare(program: &Program, quick: bool) -> Result<Prepared, String> {
    let size = |full: usize, small: usize| if quick { small } else { full };
    if let Some((path, package)) = program.installed
        && !Path::new(path).is_file()
    {
        return Ok(Prepared::Skip(format!("{path} not found (Debian package {package})")));
    }
    let scripts = repository().join("malloc/tests/programs");
    let arguments = |command: &mut Command, list: &[usize]| {
        command.args(list.iter().map(usize::to_string));
    };
    let mut stdin = Stdio::null();
    let (command, threads) = match program.name {
        "larson" => {
            // threads, slots per thread, rounds per generation, generations, seed
            let threads = larson_threads();
            let mut command = Command::new(compiled("larson")?);
            arguments(&mut command, &[threads, 5000, size(50_000, 2000), size(300, 20), SEED as usize]);
            (command, threads)
        }
        "xmalloc" => {
            // producers, consumers, batches per producer, objects per batch, seed
            let mut command = Command::new(compiled("xmalloc")?);
            arguments(&mut command, &[2, 2, size(80_000, 2000), 100, SEED as usize]);
            (command, 4)
        }
        "python3" => {
            let mut command = Command::new("/usr/bin/python3");
            command.arg(scripts.join("threads_workload.py")).arg(size(40_000, 4000).to_string());
            // Every object from malloc, not only those above pymalloc's 512 bytes.
            command.env("PYTHONMALLOC", "malloc").env("PYTHONHASHSEED", "0");
            (command, PYTHON_THREADS)
        }
        "sqlite3" => {
            let script = scripts.join("sqlite_workload.sql");
            stdin = File::open(&script).map_err(|error| format!("{}: {error}", script.display()))?.into();
            let mut command = Command::new("/usr/bin/sqlite3");
            command.args(["-bail", ":memory:"]);
            (command, 1)
        }
        "gcc" => {
            let functions = size(400, 30);
            let source = generated(&format!("gcc_input_{functions}.c"), || c_source(functions))?;
            let mut command = Command::new("/usr/bin/gcc");
            command.args(["-O2", "-c", "-o", "/dev/null"]).arg(source);
            (command, 1)
        }
        "perl" => {
            let mut command = Command::new("/usr/bin/perl");
            command.arg("-e").arg(PERL_WORKLOAD).arg(size(300_000, 20_000).to_string());
            command.env("PERL_HASH_SEED", "0").env("PERL_PERTURB_KEYS", "0");
            (command, 1)
        }
        "jq" => {
            let records = size(20_000, 500);
            let input = generated(&format!("jq_input_{records}.json"), || json_records(records))?;
            let mut command = Command::new("/usr/bin/jq");
            command.arg("-c").arg(JQ_FILTER).arg(input);
            (command, 1)
        }
        other => return Err(format!("no program {other}")),
    };
    Ok(Prepared::Run { command, stdin, threads })
}

/// Compiles and generates what the programs at `indices` need (the parent does it once
/// before the first run, so that the children find everything ready); returns the errors.
pub fn prepare_all(indices: &[usize], quick: bool) -> Vec<String> {
    indices
        .iter()
        .filter_map(|&index| {
            prepare(&PROGRAMS[index], quick).err().map(|error| format!("{}: {error}", PROGRAMS[index].name))
        })
        .collect()
}

/// How a program ended.
struct Ran {
    /// None: killed at the time limit.
    status: Option<ExitStatus>,
    seconds: f64,
    /// The peak resident memory of the program or of the largest process it waited for
    /// (`ru_maxrss`, for a compiler driver its compiler), in bytes.
    peak_rss_bytes: u64,
    stderr: String,
}

/// Runs `command` (in a process group of its own, so that a timeout ends its children
/// too), its output captured, and times it from the start to its exit.
fn run_timed(mut command: Command, stdin: Stdio, limit: Duration) -> std::io::Result<Ran> {
    command.stdin(stdin).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    let start = Instant::now();
    let mut child = command.spawn()?;
    let pid = child.id();
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(child.stdout.take().map(|pipe| Box::new(pipe) as Box<dyn Read + Send>));
    let stderr = drain(child.stderr.take().map(|pipe| Box::new(pipe) as Box<dyn Read + Send>));
    let (sender, receiver) = mpsc::channel();
    // `wait4` rather than `Child::wait`, for the peak resident memory: Linux reports the
    // largest of the child's own and of every descendant it waited for.
    drop(child);
    let waiter = thread::spawn(move || {
        let mut status = 0;
        // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let waited = libc::pid_t::try_from(pid).map_or(-1, |pid| {
            // SAFETY: `status` and `usage` are valid places to write; the pid is our child,
            // which nothing else waits for (its `Child` handle is dropped above).
            unsafe { libc::wait4(pid, &mut status, 0, &mut usage) }
        });
        let result = if waited < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok((ExitStatus::from_raw(status), u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024))
        };
        let _ = sender.send((result, Instant::now()));
    });
    let (status, end) = match receiver.recv_timeout(limit) {
        Ok((status, end)) => (Some(status?), end),
        Err(_) => {
            if let Ok(group) = libc::pid_t::try_from(pid) {
                // SAFETY: kill has no memory-safety preconditions; the negative id names the
                // process group the program leads (process_group(0) above), which outlives
                // the program until it is reaped by the waiter.
                unsafe { libc::kill(-group, libc::SIGKILL) };
            }
            (None, Instant::now())
        }
    };
    let _ = waiter.join();
    let _ = stdout.join();
    let stderr = String::from_utf8_lossy(&stderr.join().unwrap_or_default()).into_owned();
    let (status, peak_rss_bytes) = status.map_or((None, 0), |(status, peak)| (Some(status), peak));
    Ok(Ran { status, seconds: (end - start).as_secs_f64(), peak_rss_bytes, stderr })
}

/// The child's work for `Unit::Preload(index)` on `peer`: runs the program once with the
/// peer preloaded and prints `result preload_<name> <threads> seconds <wall time>` and
/// `result preload_<name> <threads> peak_rss_bytes <peak resident memory>`. Exits
/// the process with a failure if the program fails, and with [`TIMED_OUT`] if it does not
/// finish within `limit`.
pub fn run(peer: Peer, index: usize, quick: bool, limit: Duration) {
    let program = &PROGRAMS[index];
    let fail = |what: String| -> ! {
        eprintln!("{} on {}: {what}", program.workload(), peer.name());
        std::process::exit(1)
    };
    let library = match library(peer) {
        Ok(library) => library,
        Err(missing) => {
            eprintln!("skipped: {missing}");
            return;
        }
    };
    if let Some(library) = &library
        && !library.is_file()
    {
        fail(format!("{} not found (cargo build --release -p core-alloc-malloc)", library.display()));
    }
    let (mut command, stdin, threads) = match prepare(program, quick) {
        Ok(Prepared::Run { command, stdin, threads }) => (command, stdin, threads),
        Ok(Prepared::Skip(missing)) => {
            eprintln!("skipped: {missing}");
            return;
        }
        Err(error) => fail(error),
    };
    command.current_dir(cache()).env_remove(crate::peers::ALLOCATOR_VARIABLE).env_remove("CORE_ALLOC_STATS");
    match &library {
        Some(library) => command.env("LD_PRELOAD", library),
        None => command.env_remove("LD_PRELOAD"),
    };
    let ran =
        run_timed(command, stdin, limit).unwrap_or_else(|error| fail(format!("could not start: {error}")));
    match ran.status {
        None => {
            eprintln!("{} on {}: timed out after {} s", program.workload(), peer.name(), limit.as_secs());
            std::process::exit(TIMED_OUT);
        }
        Some(status) if !status.success() => {
            let last = ran.stderr.lines().rev().find(|line| !line.trim().is_empty()).unwrap_or("no message");
            fail(format!("{status}: {last}"))
        }
        Some(_) => {
            println!("result {} {threads} seconds {}", program.workload(), ran.seconds);
            println!("result {} {threads} peak_rss_bytes {}", program.workload(), ran.peak_rss_bytes);
        }
    }
}

/// A perl workload of hashes and strings: keys appended to, deleted and counted, strings
/// split, reversed and joined; the argument is the number of steps.
const PERL_WORKLOAD: &str = r#"
my ($n) = @ARGV; my (%h, @a, %c); my $x = 12345;
for my $i (1 .. $n) {
    $x = ($x * 1103515245 + 12345) % 2147483648;
    my $k = "key" . ($x % 50000);
    $h{$k} .= chr(97 + $i % 26);
    delete $h{$k} if length($h{$k}) > 64;
    push @a, join("-", reverse split(/(?=\d)/, $k)) . substr($h{$k} // "", 0, 8);
    if (@a > 20000) { $c{$_}++ for splice(@a, 0, 10000); }
    %c = () if keys(%c) > 100000;
}
my $s = 0;
$s = ($s * 31 + length($h{$_}) + ord($_)) % 1000000007 for sort keys %h;
my @top = (sort { $c{$b} <=> $c{$a} || $a cmp $b } keys %c)[0 .. 4];
print scalar(keys %h), " ", scalar(keys %c), " $s @top\n";
"#;

/// A jq filter that groups the records, builds an object per group (counts, sums, unique
/// tags, a nested group-by of cities, the top records) and sorts.
const JQ_FILTER: &str = "group_by(.group) | map({group: .[0].group, users: length, \
active: (map(select(.active)) | length), total: (map(.scores | add) | add), \
tags: ([.[].tags[]] | unique), \
cities: (group_by(.address.city) | map({city: .[0].address.city, n: length}) | sort_by(-.n, .city) | .[0:5]), \
spent: ([.[].history[] | select(.kind == \"buy\") | .amount] | add), \
top: (sort_by(-(.scores | max), .id) | .[0:10] | map(.name + \"@\" + .address.city))}) | sort_by(-.total, .group)";

/// `records` JSON records of nested objects and arrays (about 330 bytes each), from a fixed
/// generator.
fn json_records(records: usize) -> String {
    let mut text = String::with_capacity(records * 340);
    let mut x: u64 = 1;
    text.push('[');
    for id in 0..records {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        if id > 0 {
            text.push_str(", ");
        }
        let _ = write!(
            text,
            "{{\"id\": {id}, \"name\": \"user-{}\", \"group\": \"g{}\", \"active\": {}, \"tags\": [",
            x % 100_000,
            x % 61,
            x.is_multiple_of(3)
        );
        for tag in 0..x % 6 {
            let _ = write!(text, "{}\"t{}\"", if tag > 0 { ", " } else { "" }, (x >> (8 * tag)) % 97);
        }
        text.push_str("], \"scores\": [");
        for score in 0..8 {
            let _ = write!(text, "{}{}", if score > 0 { ", " } else { "" }, (x >> (4 * score)) % 1000);
        }
        let _ = write!(
            text,
            "], \"address\": {{\"city\": \"city-{}\", \"zip\": \"{:05}\", \"geo\": [{}.{:03}, {}.{:03}]}}, \"history\": [",
            x % 211,
            x % 99_999,
            x % 180_000 / 1000,
            x % 1000,
            x % 90_000 / 1000,
            x % 1000
        );
        for event in 0..x % 5 {
            let kind = ["login", "view", "buy", "logout"][((x >> event) % 4) as usize];
            let _ = write!(
                text,
                "{}{{\"t\": {}, \"kind\": \"{kind}\", \"amount\": {}}}",
                if event > 0 { ", " } else { "" },
                id as u64 * 10 + event,
                (x >> (2 * event)) % 500
            );
        }
        text.push_str("]}");
    }
    text.push_str("]\n");
    text
}

/// C source of `functions` functions, each with a struct of its own, a switch, string
/// constants and calls to the string functions.
fn c_source(functions: usize) -> String {
    let mut text = String::from("#include <stddef.h>\n#include <string.h>\n");
    for i in 0..functions {
        let tag = 8 + i % 24;
        let _ = write!(
            text,
            r#"
struct item_{i} {{ int id; unsigned flags; const char *name; char tag[{tag}]; }};
int function_{i}(struct item_{i} *item, int mode) {{
    switch ((item->id ^ mode) % {cases}) {{
    case 0: item->name = "alpha-{i}"; return item->id * {factor};
    case 1: return (int)strlen(item->name) + {i17};
    case 2: if (item->flags & {bit}u) return (int)item->flags; item->name = "gamma-{i}-{padding}"; return {i19};
    case 3: memcpy(item->tag, "tag-{i}", {copied}); return item->tag[{i4}];
    default: return item->name[0] + mode;
    }}
}}
"#,
            cases = 4 + i % 5,
            factor = i % 13 + 1,
            i17 = i % 17,
            bit = 1u32 << (i % 8),
            padding = "x".repeat(i % 11),
            i19 = i % 19,
            copied = tag.min(5 + i.to_string().len()),
            i4 = i % 4,
        );
    }
    text
}
