//! Real programs from Debian packages, nobody here wrote them, run with and without
//! libcorealloc.so preloaded: they must behave exactly the same (standard output, standard
//! error and exit status). The preloaded runs set `CORE_ALLOC_STATS`, so every process
//! they start prints the allocator's statistics at exit: those lines prove the allocator
//! was in use and are set aside before the comparison.
//!
//! A program that is not installed is skipped with a message naming its package (CI
//! installs them: `python3`, `sqlite3`, `git`).

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::Outcome;

const LIMIT: Duration = Duration::from_secs(300);

/// The same command run twice in fresh directories, without and with the allocator.
fn both_ways(name: &str, make: impl Fn(&Path) -> (Command, Stdio)) -> (Outcome, Outcome) {
    let without_directory = common::scratch(&format!("{name}-without"));
    let with_directory = common::scratch(&format!("{name}-with"));
    let (mut command, input) = make(&without_directory);
    command.env_remove("LD_PRELOAD").env_remove("CORE_ALLOC_STATS").current_dir(&without_directory);
    let without = common::run_with_input(command, input, LIMIT);
    let (command, input) = make(&with_directory);
    let mut command = common::preloaded(command);
    command.env("CORE_ALLOC_STATS", "1").current_dir(&with_directory);
    let with = common::run_with_input(command, input, LIMIT);
    (without, with)
}

/// Checks that the preloaded run did exactly what the plain one did, and that the
/// allocator served it; returns the allocator's lines.
fn assert_same<'a>(what: &str, without: &Outcome, with: &'a Outcome) -> Vec<&'a str> {
    without.assert_success(&format!("{what} (without the allocator)"));
    assert_eq!(with.status, without.status, "{what}: exit status differs\nstderr:\n{}", with.stderr);
    assert_eq!(with.stdout, without.stdout, "{what}: standard output differs");
    let (ours, rest) = with.split_stderr();
    assert_eq!(rest, without.stderr, "{what}: standard error differs");
    assert!(
        ours.iter().any(|line| line.contains("statistics at exit")),
        "{what}: the allocator printed no statistics, so it was not in use"
    );
    ours
}

fn program_script(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs").join(file)
}

fn python_threads(pymalloc: bool) {
    let Some(python) = common::real_program("/usr/bin/python3", "python3") else { return };
    let what = if pymalloc { "python3 threads (pymalloc)" } else { "python3 threads (PYTHONMALLOC=malloc)" };
    let (without, with) = both_ways("python-threads", |_| {
        let mut command = Command::new(&python);
        command.arg(program_script("threads_workload.py")).arg("40000").env("PYTHONHASHSEED", "0");
        if pymalloc {
            command.env_remove("PYTHONMALLOC");
        } else {
            // Every object through malloc, not only those above pymalloc's 512 bytes.
            command.env("PYTHONMALLOC", "malloc");
        }
        (command, Stdio::null())
    });
    let ours = assert_same(what, &without, &with);
    assert_eq!(without.stdout.lines().count(), 9, "{what}: unexpected output:\n{}", without.stdout);
    let minimum = if pymalloc { 1_000 } else { 1_000_000 };
    assert!(
        common::allocations(&ours) > minimum,
        "{what}: too few allocations reached the allocator: {ours:#?}"
    );
}

#[test]
fn python_threads_with_dicts_lists_and_strings() {
    python_threads(true);
}

#[test]
fn python_threads_with_every_object_from_malloc() {
    python_threads(false);
}

#[test]
fn python_forks_while_its_threads_allocate() {
    let Some(python) = common::real_program("/usr/bin/python3", "python3") else { return };
    let (without, with) = both_ways("python-fork", |_| {
        let mut command = Command::new(&python);
        command.arg(program_script("fork_workload.py")).arg("20").env("PYTHONHASHSEED", "0");
        command.env("PYTHONMALLOC", "malloc");
        (command, Stdio::null())
    });
    assert_same("python3 fork", &without, &with);
    assert!(without.stdout.starts_with("children "), "unexpected output:\n{}", without.stdout);
}

#[test]
fn sqlite3_inserts_and_queries_300_thousand_rows() {
    let Some(sqlite) = common::real_program("/usr/bin/sqlite3", "sqlite3") else { return };
    let mut script = std::fs::read_to_string(program_script("sqlite_workload.sql")).expect("the SQL script");
    script.push_str("BEGIN;\n");
    for index in 0..50_000 {
        script.push_str(&format!(
            "INSERT INTO items(name, category, price, note) VALUES ('extra-{index}', {}, {}.25, '{}');\n",
            index % 13,
            index % 500,
            "n".repeat(index % 40)
        ));
    }
    script.push_str("COMMIT;\n");
    script.push_str("SELECT count(*), sum(category), max(id) FROM items WHERE name LIKE 'extra-%';\n");
    script.push_str("SELECT count(*) FROM items WHERE note LIKE '%nnnnnnnnnnnnnnnnnnnn%';\n");
    script.push_str("VACUUM;\nPRAGMA integrity_check;\n");
    let (without, with) = both_ways("sqlite3", |directory| {
        let path = directory.join("workload.sql");
        std::fs::write(&path, &script).expect("write the SQL script");
        let mut command = Command::new(&sqlite);
        command.arg("-batch").arg("items.db");
        (command, Stdio::from(File::open(&path).expect("open the SQL script")))
    });
    let ours = assert_same("sqlite3", &without, &with);
    assert!(without.stdout.starts_with("250000|"), "unexpected output:\n{}", without.stdout);
    assert!(without.stdout.trim_end().ends_with("\nok"), "integrity check failed:\n{}", without.stdout);
    assert!(common::allocations(&ours) > 1_000_000, "too few allocations reached the allocator: {ours:#?}");
}

/// Runs each git step in turn in `directory`, with the allocator preloaded (and statistics
/// on) or not, and records what each printed; stops at the first failure.
fn git_session(git: &Path, directory: &Path, preload: bool) -> Outcome {
    let run_git = |arguments: &[&str]| -> Outcome {
        let mut command = Command::new(git);
        command.args(arguments).current_dir(directory);
        for (variable, value) in [
            ("HOME", directory.to_str().expect("a UTF-8 path")),
            ("GIT_CONFIG_NOSYSTEM", "1"),
            ("GIT_CONFIG_GLOBAL", "/dev/null"),
            ("GIT_AUTHOR_NAME", "Ada Example"),
            ("GIT_AUTHOR_EMAIL", "ada@example.org"),
            ("GIT_AUTHOR_DATE", "2024-01-02T03:04:05Z"),
            ("GIT_COMMITTER_NAME", "Ada Example"),
            ("GIT_COMMITTER_EMAIL", "ada@example.org"),
            ("GIT_COMMITTER_DATE", "2024-01-02T03:04:05Z"),
            ("GIT_TERMINAL_PROMPT", "0"),
            ("LC_ALL", "C"),
            ("TZ", "UTC"),
        ] {
            command.env(variable, value);
        }
        for variable in
            ["GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY", "GIT_EXEC_PATH"]
        {
            command.env_remove(variable);
        }
        if preload {
            command = common::preloaded(command);
            command.env("CORE_ALLOC_STATS", "1");
        } else {
            command.env_remove("LD_PRELOAD").env_remove("CORE_ALLOC_STATS");
        }
        common::run(command, LIMIT)
    };
    let source = directory.join("src");
    let write_files = |round: usize| {
        for index in 0..300 {
            if round == 1 && index % 3 != 0 {
                continue;
            }
            let file = source.join(format!("dir{}/file{index}.txt", index % 10));
            std::fs::create_dir_all(file.parent().unwrap()).expect("create a directory");
            let lines: String = (0..(index % 50 + 1) * (round + 1))
                .map(|line| format!("round {round} line {line} of {index}\n"))
                .collect();
            std::fs::write(file, lines).expect("write a file");
        }
    };
    let url = format!("file://{}", source.display());
    let mut transcript = Outcome { status: Default::default(), stdout: String::new(), stderr: String::new() };
    let steps: Vec<Box<dyn Fn() -> Vec<String>>> = vec![
        Box::new(|| ["init", "-q", "-b", "main", "src"].map(String::from).to_vec()),
        Box::new(|| {
            write_files(0);
            ["-C", "src", "add", "-A"].map(String::from).to_vec()
        }),
        Box::new(|| ["-C", "src", "commit", "-q", "-m", "first import"].map(String::from).to_vec()),
        Box::new(|| {
            write_files(1);
            std::fs::remove_file(source.join("dir7/file7.txt")).expect("remove a file");
            ["-C", "src", "add", "-A"].map(String::from).to_vec()
        }),
        Box::new(|| ["-C", "src", "commit", "-q", "-m", "second round"].map(String::from).to_vec()),
        Box::new(|| ["-C", "src", "tag", "-a", "v1", "-m", "release one"].map(String::from).to_vec()),
        Box::new(|| ["-C", "src", "log", "--stat", "--format=%H %an %s"].map(String::from).to_vec()),
        Box::new(|| vec!["clone".into(), "-q".into(), "--no-local".into(), url.clone(), "copy".into()]),
        Box::new(|| ["-C", "copy", "log", "--format=%H %T %s", "--decorate"].map(String::from).to_vec()),
        Box::new(|| ["-C", "copy", "fsck", "--full", "--strict", "--no-progress"].map(String::from).to_vec()),
        Box::new(|| ["-C", "copy", "diff", "--stat", "HEAD~1", "HEAD"].map(String::from).to_vec()),
        Box::new(|| ["-C", "copy", "grep", "-c", "line 7 of", "v1"].map(String::from).to_vec()),
        Box::new(|| ["-C", "src", "gc", "-q"].map(String::from).to_vec()),
        Box::new(|| ["-C", "src", "rev-list", "--objects", "--all"].map(String::from).to_vec()),
        Box::new(|| ["-C", "src", "describe", "--tags"].map(String::from).to_vec()),
    ];
    for step in steps {
        let arguments = step();
        let arguments: Vec<&str> = arguments.iter().map(String::as_str).collect();
        let outcome = run_git(&arguments);
        let shown = arguments.join(" ").replace(&url, "file://SRC");
        transcript.stdout.push_str(&format!("$ git {shown}\n{}", outcome.stdout));
        transcript.stderr.push_str(&outcome.stderr);
        transcript.status = outcome.status;
        if !outcome.status.success() {
            break;
        }
    }
    transcript
}

#[test]
fn git_creates_commits_and_clones_a_repository() {
    let Some(git) = common::real_program("/usr/bin/git", "git") else { return };
    let without = git_session(&git, &common::scratch("git-without"), false);
    let with = git_session(&git, &common::scratch("git-with"), true);
    let ours = assert_same("git", &without, &with);
    assert!(without.stdout.contains("$ git -C copy fsck"), "the session stopped early:\n{}", without.stdout);
    // git starts helpers (upload-pack, pack-objects, index-pack, gc's repack): each one is a
    // process that printed its statistics.
    let processes = ours.iter().filter(|line| line.contains("statistics at exit")).count();
    assert!(processes >= 15, "expected every git process to use the allocator, saw {processes}");
}
