//! Builds the bare-metal test kernels, boots each under QEMU with a timeout, and turns
//! their serial output and exit status into results.
//!
//! A kernel passes only if it prints its `<arch>: suite done: N passed, 0 failed` line and
//! QEMU exits with that architecture's success status (x86-64: 33, from `isa-debug-exit`;
//! AArch64: 0, from semihosting). A hang, a fault, a triple fault (QEMU exits with 0 and no
//! summary under `-no-reboot`) or a missing summary line counts as one more failure, shown
//! with the last lines of serial output.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A test kernel and how to boot it.
#[derive(Debug, Clone, Copy)]
pub struct Kernel {
    /// The architecture name, as in the kernel's result lines.
    pub arch: &'static str,
    /// The kernel crate's directory under `qemu-tests/`.
    pub directory: &'static str,
    /// The kernel's binary name.
    pub binary: &'static str,
    /// The bare-metal target it builds for.
    pub target: &'static str,
    /// The QEMU system emulator.
    pub qemu: &'static str,
    /// QEMU's arguments before `-kernel`.
    pub arguments: &'static [&'static str],
    /// QEMU's exit status when every test passed.
    pub success_status: i32,
}

/// Both test kernels.
pub const KERNELS: [Kernel; 2] = [
    Kernel {
        arch: "x86_64",
        directory: "x86_64",
        binary: "x86_64-test-kernel",
        target: "x86_64-unknown-none",
        qemu: "qemu-system-x86_64",
        arguments: &[
            "-accel",
            "tcg",
            "-machine",
            "q35",
            "-cpu",
            "max",
            "-smp",
            "4",
            "-m",
            "4G",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-monitor",
            "none",
            "-no-reboot",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
        ],
        success_status: 33,
    },
    Kernel {
        arch: "aarch64",
        directory: "aarch64",
        binary: "aarch64-test-kernel",
        target: "aarch64-unknown-none",
        qemu: "qemu-system-aarch64",
        arguments: &[
            "-accel",
            "tcg",
            "-M",
            "virt",
            "-cpu",
            "cortex-a72",
            "-smp",
            "4",
            "-m",
            "4G",
            "-semihosting",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-monitor",
            "none",
            "-no-reboot",
        ],
        success_status: 0,
    },
];

/// How long a boot may take before it counts as a hang (with the quick torture test).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

/// The environment variable that sets the torture test's guest seconds when the kernels are
/// built (the suite reads it with `option_env!`; unset, it runs a few seconds).
pub const TORTURE_SECONDS: &str = "QEMU_TORTURE_SECONDS";

/// [`BOOT_TIMEOUT`], plus twice the torture test's seconds when [`TORTURE_SECONDS`] asks for
/// a long run: the kernels build with this process's environment.
pub fn boot_timeout() -> Duration {
    let torture = std::env::var(TORTURE_SECONDS).ok().and_then(|text| text.trim().parse::<u64>().ok());
    BOOT_TIMEOUT + Duration::from_secs(2 * torture.unwrap_or(0))
}

/// The environment variable that sets how many CPUs every boot has (the `-smp` value;
/// unset, each kernel's own, 4). Beyond 8 CPUs, GICv2's limit, the AArch64 machine gets a
/// GICv3 and 8 GiB of RAM, and the x86-64 machine 8 GiB (the suite's cross-CPU tests keep
/// more blocks in flight with more CPUs): `QEMU_CPUS=64 cargo qemu aarch64` and
/// `QEMU_CPUS=64 cargo qemu x86_64` are the long runs on a server-sized machine.
pub const CPUS: &str = "QEMU_CPUS";

/// The CPU count [`CPUS`] asks for, if it is set to a number.
pub fn cpus() -> Option<usize> {
    std::env::var(CPUS).ok().and_then(|text| text.trim().parse::<usize>().ok()).filter(|&cpus| cpus > 0)
}

/// A further configuration a built kernel boots in, with some of QEMU's arguments changed:
/// each one boots the same ELF again (no rebuild), and its results print under its name.
#[derive(Debug, Clone, Copy)]
pub struct Variant {
    /// The architecture of the kernel it boots (the prefix of its result lines).
    pub arch: &'static str,
    /// Its name in the summary line.
    pub name: &'static str,
    /// `(option, value)` pairs: the option's value in the kernel's arguments is replaced, or
    /// the pair is added if the option is not there (`-append` reaches the kernel as the
    /// device tree's `/chosen/bootargs`).
    pub changes: &'static [(&'static str, &'static str)],
    /// Texts the serial output must contain, so that a kernel which ignored the changes
    /// (booted with its defaults) does not pass for one that honoured them.
    pub expect: &'static [&'static str],
}

/// The configurations booted after each kernel's main boot (which has the `virt` board's
/// default GICv2 and the 4 KiB granule): the AArch64 kernel with the 16 KiB granule on a
/// GICv3, and with the 64 KiB granule. The kernel chooses its granule at boot from
/// `granule=` in its boot arguments; `-cpu max` implements all three (the Cortex-A72 has no
/// 16 KiB granule).
pub const VARIANTS: [Variant; 2] = [
    Variant {
        arch: "aarch64",
        name: "aarch64 (16 KiB granule, GICv3)",
        changes: &[("-M", "virt,gic-version=3"), ("-cpu", "max"), ("-append", "granule=16k")],
        expect: &["16 KiB granule", "GICv3"],
    },
    Variant {
        arch: "aarch64",
        name: "aarch64 (64 KiB granule)",
        changes: &[("-cpu", "max"), ("-append", "granule=64k")],
        expect: &["64 KiB granule"],
    },
];

/// A further configuration that needs the kernel built again, with cargo features of its
/// own (another global allocator): booted after the kernel's main configuration and its
/// [`VARIANTS`], from a copy of its ELF, with the main configuration's QEMU arguments; its
/// results print under its name.
#[derive(Debug, Clone, Copy)]
pub struct FeatureBuild {
    /// The architecture of the kernel it builds (the prefix of its result lines).
    pub arch: &'static str,
    /// Its name in the summary line.
    pub name: &'static str,
    /// The kernel's cargo features, as `--features` takes them.
    pub features: &'static str,
    /// Code-generation flags for the build (`RUSTFLAGS`, space-separated; none if empty):
    /// such a build goes to a target directory of its own (`target/rustflags`), so that it
    /// and the plain build do not rebuild each other.
    pub rustflags: &'static str,
    /// QEMU argument changes for its boot, as [`Variant::changes`].
    pub changes: &'static [(&'static str, &'static str)],
    /// Texts the serial output must contain, so that a kernel built without the features
    /// does not pass for one built with them.
    pub expect: &'static [&'static str],
}

/// The configurations built with features: each kernel with the README's kernel snippet as
/// its `#[global_allocator]` (`qemu-tests/<arch>/src/readme_heap.rs`: a heap the kernel maps,
/// 1 MiB on x86-64 and 2 MiB on AArch64, whose secondaries take 128 KiB stacks from it; in
/// compact mode), which runs the suite's small-heap set (a few seconds).
///
/// And the AArch64 kernel built with outline atomics (`-C target-feature=+outline-atomics`
/// and the platform's `outline-atomics` feature), booted twice, whole suite: on `-cpu max`,
/// where `init_cpu(0)` turns the helpers to LSE, and on the Cortex-A72 (Armv8.0, no LSE),
/// where the same ELF keeps exclusive pairs.
pub const FEATURE_BUILDS: [FeatureBuild; 4] = [
    FeatureBuild {
        arch: "x86_64",
        name: "x86_64 (README heap, 1 MiB)",
        features: "readme-heap",
        rustflags: "",
        changes: &[],
        expect: &["the README's kernel snippet", "suite set: small global heap"],
    },
    FeatureBuild {
        arch: "aarch64",
        name: "aarch64 (README heap, 2 MiB)",
        features: "readme-heap",
        rustflags: "",
        changes: &[],
        expect: &["the README's kernel snippet", "suite set: small global heap"],
    },
    FeatureBuild {
        arch: "aarch64",
        name: "aarch64 (outline atomics, LSE CPU)",
        features: "outline-atomics",
        rustflags: OUTLINE_ATOMICS,
        changes: &[("-cpu", "max")],
        expect: &["atomics: LSE, through outline-atomic helpers (the CPU has LSE)"],
    },
    FeatureBuild {
        arch: "aarch64",
        name: "aarch64 (outline atomics, Armv8.0 CPU)",
        features: "outline-atomics",
        rustflags: OUTLINE_ATOMICS,
        changes: &[],
        expect: &["atomics: exclusive pairs (LL/SC) (the CPU lacks LSE)"],
    },
];

/// The code-generation flag of the outline-atomics builds.
const OUTLINE_ATOMICS: &str = "-C target-feature=+outline-atomics";

/// QEMU's arguments for a boot of `kernel` with `changes` (see [`Variant::changes`]) and
/// the CPU count of [`CPUS`] when it is set.
pub fn qemu_arguments(kernel: &Kernel, changes: &[(&str, &str)]) -> Vec<String> {
    let mut arguments: Vec<String> = kernel.arguments.iter().map(|argument| argument.to_string()).collect();
    let mut set = |option: &str, value: &str| match arguments.iter().position(|argument| argument == option) {
        Some(at) if at + 1 < arguments.len() => arguments[at + 1] = value.to_string(),
        _ => arguments.extend([option.to_string(), value.to_string()]),
    };
    for &(option, value) in changes {
        set(option, value);
    }
    if let Some(cpus) = cpus() {
        set("-smp", &cpus.to_string());
        if kernel.arch == "aarch64" && cpus > 8 {
            set("-M", "virt,gic-version=3");
            set("-m", "8G");
        }
        if kernel.arch == "x86_64" && cpus > 8 {
            set("-m", "8G");
        }
    }
    arguments
}

/// The outcome of building and booting one kernel.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The architecture.
    pub arch: String,
    /// Tests that printed `ok`.
    pub passed: usize,
    /// Tests that printed `FAILED`, plus one if the boot itself went wrong.
    pub failed: usize,
    /// Why the boot went wrong, if it did (build failure, hang, crash, missing summary).
    pub problem: Option<String>,
    /// Every line the kernel printed.
    pub serial: Vec<String>,
}

impl Report {
    /// The summary line: exactly `<arch>: N passed, M failed`.
    pub fn summary(&self) -> String {
        format!("{}: {} passed, {} failed", self.arch, self.passed, self.failed)
    }

    /// What to show when the kernel failed: the failed tests, the problem, and the last
    /// lines of serial output.
    pub fn details(&self) -> String {
        let mut text = String::new();
        for line in self.serial.iter().filter(|line| line.contains(" ... FAILED")) {
            text.push_str(&format!("  {line}\n"));
        }
        if let Some(problem) = &self.problem {
            text.push_str(&format!("  {}: {problem}\n  last lines of serial output:\n", self.arch));
            let tail = self.serial.len().saturating_sub(25);
            for line in &self.serial[tail..] {
                text.push_str(&format!("    | {line}\n"));
            }
        }
        text
    }
}

/// The repository's `qemu-tests` directory.
pub fn qemu_tests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("runner lives in qemu-tests/").to_path_buf()
}

fn succeeds(program: &str, arguments: &[&str]) -> bool {
    Command::new(program)
        .args(arguments)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Makes sure both QEMU system emulators are installed, installing them from Debian
/// packages when they are missing and this process may (root with apt-get); otherwise says
/// exactly what to run.
pub fn ensure_qemu() -> Result<(), String> {
    let missing = |kernel: &Kernel| !succeeds(kernel.qemu, &["--version"]);
    if !KERNELS.iter().any(missing) {
        return Ok(());
    }
    const PACKAGES: [&str; 2] = ["qemu-system-x86", "qemu-system-arm"];
    let hint = format!("QEMU is missing: install it with `sudo apt-get install -y {}`", PACKAGES.join(" "));
    let is_root =
        Command::new("id").arg("-u").output().is_ok_and(|output| output.stdout.trim_ascii() == b"0");
    if !is_root || !succeeds("apt-get", &["--version"]) {
        return Err(hint);
    }
    eprintln!("qemu-runner: installing {} (Debian packages)", PACKAGES.join(" "));
    let apt = |arguments: &[&str]| {
        Command::new("apt-get")
            .args(arguments)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    let installed = apt(&["update", "-qq"])
        && apt(&["install", "-y", "-qq", "--no-install-recommends", PACKAGES[0], PACKAGES[1]]);
    if !installed || KERNELS.iter().any(missing) {
        return Err(format!("installing QEMU failed; {hint}"));
    }
    Ok(())
}

/// Builds a kernel in release mode from its own directory; returns the ELF's path.
pub fn build(kernel: &Kernel) -> Result<PathBuf, String> {
    build_with_features(kernel, "", "")
}

/// As [`build`], with the kernel's cargo `features` and `rustflags` (none if empty; see
/// [`FeatureBuild::rustflags`]). A build with features returns a copy of the ELF named after
/// them (`<binary>-<features>`), which the next build without them does not overwrite.
pub fn build_with_features(kernel: &Kernel, features: &str, rustflags: &str) -> Result<PathBuf, String> {
    let directory = qemu_tests_dir().join(kernel.directory);
    let target_dir = if rustflags.is_empty() {
        directory.join("target")
    } else {
        directory.join("target").join("rustflags")
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(&directory)
        .args(["build", "--release", "--target", kernel.target])
        .arg("--target-dir")
        .arg(&target_dir);
    if !features.is_empty() {
        command.args(["--features", features]);
    }
    // The outer cargo's settings must not leak into the kernel's build.
    for variable in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
    ] {
        command.env_remove(variable);
    }
    if !rustflags.is_empty() {
        command.env("RUSTFLAGS", rustflags);
    }
    let output = command.output().map_err(|error| format!("could not run cargo: {error}"))?;
    if !output.status.success() {
        let log = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(format!("building the {} kernel failed:\n{}", kernel.arch, tail.join("\n")));
    }
    let elf = target_dir.join(kernel.target).join("release").join(kernel.binary);
    if features.is_empty() {
        return Ok(elf);
    }
    let copy = elf.with_file_name(format!("{}-{}", kernel.binary, features.replace([',', ' '], "-")));
    std::fs::copy(&elf, &copy)
        .map_err(|error| format!("copying {} to {}: {error}", elf.display(), copy.display()))?;
    Ok(copy)
}

/// Boots a built kernel and parses what it prints; `echo` streams its serial output. The
/// boot counts as a hang after [`boot_timeout`].
pub fn boot(kernel: &Kernel, elf: &Path, echo: bool) -> Report {
    boot_within(kernel, elf, echo, boot_timeout())
}

/// As [`boot`], counting the boot as a hang after `timeout`.
pub fn boot_within(kernel: &Kernel, elf: &Path, echo: bool, timeout: Duration) -> Report {
    let arguments: Vec<String> = kernel.arguments.iter().map(|argument| argument.to_string()).collect();
    boot_with(kernel, elf, echo, timeout, &arguments, kernel.arch)
}

/// Boots a built kernel with `arguments` before `-kernel` (see [`qemu_arguments`]); the
/// report carries `name`.
pub fn boot_with(
    kernel: &Kernel,
    elf: &Path,
    echo: bool,
    timeout: Duration,
    arguments: &[String],
    name: &str,
) -> Report {
    let mut report = Report { arch: name.to_string(), ..Report::default() };
    let spawned = Command::new(kernel.qemu)
        .args(arguments)
        .arg("-kernel")
        .arg(elf)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(error) => {
            report.failed = 1;
            report.problem = Some(format!("could not start {}: {error}", kernel.qemu));
            return report;
        }
    };
    let (lines, receiver) = mpsc::channel();
    let stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if echo {
                println!("{line}");
            }
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut stderr = child.stderr.take().expect("piped stderr");
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if started.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => break None,
        }
    };
    let _ = reader.join();
    report.serial = receiver.try_iter().collect();
    let qemu_errors = errors.join().unwrap_or_default();
    parse(kernel, &mut report);
    let summary_line = report.serial.iter().rev().find_map(|line| summary_counts(kernel.arch, line));
    let problem = match (status, summary_line) {
        (None, _) => Some(format!("no exit within {} s (a hang)", timeout.as_secs_f64())),
        (Some(status), None) => Some(format!(
            "QEMU exited with {status} and no summary line (a fault, a panic or a triple fault){}",
            if qemu_errors.trim().is_empty() {
                String::new()
            } else {
                format!("; QEMU said: {}", qemu_errors.trim())
            }
        )),
        (Some(status), Some((passed, failed))) => {
            if passed != report.passed || failed != report.failed {
                Some(format!(
                    "the summary says {passed} passed, {failed} failed but {} and {} lines were printed",
                    report.passed, report.failed
                ))
            } else if failed == 0 && status.code() != Some(kernel.success_status) {
                Some(format!("all tests passed but QEMU exited with {status}, not {}", kernel.success_status))
            } else {
                None
            }
        }
    };
    if problem.is_some() {
        report.failed += 1;
        report.problem = problem;
    }
    report
}

/// Counts the `test ... ok` and `test ... FAILED` lines.
fn parse(kernel: &Kernel, report: &mut Report) {
    let prefix = format!("{}: test ", kernel.arch);
    for line in &report.serial {
        let Some(rest) = line.strip_prefix(&prefix) else { continue };
        if rest.ends_with(" ... ok") {
            report.passed += 1;
        } else if rest.contains(" ... FAILED") {
            report.failed += 1;
        }
    }
}

/// The counts of a `<arch>: suite done: N passed, M failed` line.
fn summary_counts(arch: &str, line: &str) -> Option<(usize, usize)> {
    let rest = line.strip_prefix(arch)?.strip_prefix(": suite done: ")?;
    let (passed, failed) = rest.split_once(" passed, ")?;
    Some((passed.parse().ok()?, failed.strip_suffix(" failed")?.parse().ok()?))
}

/// Builds and boots one kernel.
pub fn build_and_boot(kernel: &Kernel, echo: bool) -> Report {
    match build(kernel) {
        Ok(elf) => boot(kernel, &elf, echo),
        Err(why) => {
            Report { arch: kernel.arch.to_string(), failed: 1, problem: Some(why), ..Report::default() }
        }
    }
}

/// Builds one kernel and boots it in its main configuration and then in each of its
/// [`VARIANTS`], then builds and boots each of its [`FEATURE_BUILDS`]; one report per boot.
/// With [`CPUS`] set, only the main configuration boots, with that many CPUs (the README
/// heap's 1 MiB would not even hold the secondaries' stacks at 64 CPUs).
pub fn build_and_boot_all(kernel: &Kernel, echo: bool) -> Vec<Report> {
    let elf = match build(kernel) {
        Ok(elf) => elf,
        Err(why) => {
            return vec![Report {
                arch: kernel.arch.to_string(),
                failed: 1,
                problem: Some(why),
                ..Report::default()
            }];
        }
    };
    // Emulated CPUs share the host's: a boot with many takes longer (about 5 s a CPU under
    // TCG on two host cores, measured with 64).
    let timeout = boot_timeout() + Duration::from_secs(10 * cpus().unwrap_or(0).saturating_sub(4) as u64);
    let main = (kernel.arch, &[][..], &[][..]);
    // A long run with many CPUs boots the main configuration only.
    let variants = VARIANTS.iter().filter(|variant| variant.arch == kernel.arch && cpus().is_none());
    let mut reports: Vec<Report> = std::iter::once(main)
        .chain(variants.map(|variant| (variant.name, variant.changes, variant.expect)))
        .map(|(name, changes, expect)| {
            let mut report = boot_with(kernel, &elf, echo, timeout, &qemu_arguments(kernel, changes), name);
            require_cpus_online(kernel, &mut report);
            require_lines(&mut report, expect);
            report
        })
        .collect();
    let builds = FEATURE_BUILDS.iter().filter(|build| build.arch == kernel.arch && cpus().is_none());
    for build in builds {
        eprintln!("qemu-runner: building and booting {} (features {})", build.name, build.features);
        let mut report = match build_with_features(kernel, build.features, build.rustflags) {
            Ok(elf) => {
                boot_with(kernel, &elf, echo, timeout, &qemu_arguments(kernel, build.changes), build.name)
            }
            Err(why) => {
                Report { arch: build.name.to_string(), failed: 1, problem: Some(why), ..Report::default() }
            }
        };
        require_lines(&mut report, build.expect);
        reports.push(report);
    }
    reports
}

/// A variant's boot passes only if its serial output contains each of `expect`.
fn require_lines(report: &mut Report, expect: &[&str]) {
    let missing = expect.iter().find(|text| !report.serial.iter().any(|line| line.contains(*text)));
    if let (None, Some(text)) = (&report.problem, missing) {
        report.failed += 1;
        report.problem =
            Some(format!("no line says `{text}`: the kernel did not boot as this configuration asks"));
    }
}

/// With [`CPUS`] set, a boot passes only if every CPU came up: the suite's
/// `<arch>: N CPUs online` line must name that many (a kernel whose CPU failed to start
/// runs the suite on fewer, which would prove nothing about N).
fn require_cpus_online(kernel: &Kernel, report: &mut Report) {
    let Some(cpus) = cpus() else { return };
    let wanted = format!("{}: {cpus} CPUs online", kernel.arch);
    if report.problem.is_none() && !report.serial.contains(&wanted) {
        report.failed += 1;
        report.problem = Some(format!("QEMU_CPUS={cpus} but no `{wanted}` line: not every CPU came up"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_result_and_summary_lines() {
        let kernel = KERNELS[0];
        let mut report = Report {
            arch: "x86_64".into(),
            serial: vec![
                "x86_64: test a ... ok".into(),
                "x86_64: test b ... FAILED: why".into(),
                "aarch64: test c ... ok".into(),
                "x86_64: suite done: 1 passed, 1 failed".into(),
            ],
            ..Report::default()
        };
        parse(&kernel, &mut report);
        assert_eq!((report.passed, report.failed), (1, 1));
        assert_eq!(summary_counts("x86_64", &report.serial[3]), Some((1, 1)));
        assert_eq!(summary_counts("aarch64", &report.serial[3]), None);
        assert_eq!(report.summary(), "x86_64: 1 passed, 1 failed");
    }

    #[test]
    fn variants_replace_or_add_arguments() {
        let kernel = KERNELS[1];
        let arguments = qemu_arguments(&kernel, &[("-M", "virt,gic-version=3"), ("-append", "granule=16k")]);
        let at = arguments.iter().position(|argument| argument == "-M").unwrap();
        assert_eq!(arguments[at + 1], "virt,gic-version=3");
        assert_eq!(arguments.iter().filter(|argument| *argument == "-M").count(), 1);
        assert_eq!(arguments[arguments.len() - 2..], ["-append", "granule=16k"]);
        assert_eq!(arguments.len(), kernel.arguments.len() + 2);
    }

    #[test]
    fn a_variant_whose_lines_are_missing_fails() {
        let serial = vec!["aarch64: boot: 4096 MiB of RAM (16 KiB granule)".to_string()];
        let mut report = Report { arch: "aarch64 (x)".into(), passed: 3, serial, ..Report::default() };
        require_lines(&mut report, &["16 KiB granule"]);
        assert_eq!((report.failed, report.problem.is_none()), (0, true));
        require_lines(&mut report, &["16 KiB granule", "GICv3"]);
        assert_eq!(report.failed, 1);
        assert!(report.problem.as_deref().is_some_and(|why| why.contains("GICv3")));
    }

    /// The x86-64 kernel's file whose lines between the markers are the README's kernel
    /// snippet (under `qemu-tests/`).
    const SNIPPET_SOURCE: &str = "x86_64/src/readme_heap.rs";
    /// How the README's kernel section starts the one line a kernel adds to its Cargo.toml
    /// (its features are optional for the snippet: the kernels build it without any).
    const KERNEL_DEPENDENCY: &str = r#"core-alloc = { path = "core-alloc""#;

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap_or_else(|error| panic!("reading {}: {error}", path.display()))
    }

    /// The lines between `// README snippet begin` and `// README snippet end`, less their
    /// common indentation, each ending with a newline.
    fn snippet_of(source: &str) -> Option<String> {
        let lines: Vec<&str> = source.lines().collect();
        let begin = lines.iter().position(|line| line.trim() == "// README snippet begin")?;
        let end = lines.iter().position(|line| line.trim() == "// README snippet end")?;
        let inside = lines.get(begin + 1..end)?;
        let indent = inside
            .iter()
            .filter(|line| !line.trim().is_empty())
            .map(|line| line.len() - line.trim_start().len())
            .min()?;
        Some(inside.iter().map(|line| format!("{}\n", line.get(indent..).unwrap_or(""))).collect())
    }

    #[test]
    fn the_kernel_snippet_is_whole_short_and_needs_only_core_alloc() {
        let snippet =
            snippet_of(&read(&qemu_tests_dir().join(SNIPPET_SOURCE))).expect("the snippet's markers");
        assert!(snippet.lines().count() < 15, "{} lines:\n{snippet}", snippet.lines().count());
        for needed in
            ["#[global_allocator]", "FixedRegion::new(HEAP_START", "KernelPlatform::new()", "init_cpu(cpu)"]
        {
            assert!(snippet.contains(needed), "the snippet lacks `{needed}`:\n{snippet}");
        }
        let imports: Vec<&str> = snippet.lines().filter(|line| line.starts_with("use ")).collect();
        assert!(
            !imports.is_empty() && imports.iter().all(|line| line.starts_with("use core_alloc::")),
            "{imports:?}"
        );
        // The kernels build the snippet with a core-alloc dependency without features, so the
        // README's one line is enough.
        for kernel in KERNELS {
            let manifest = read(&qemu_tests_dir().join(kernel.directory).join("Cargo.toml"));
            let dependency =
                manifest.lines().find(|line| line.starts_with("core-alloc = ")).expect("a core-alloc line");
            assert!(!dependency.contains("features"), "{}: {dependency}", kernel.directory);
        }
    }

    #[test]
    fn the_aarch64_kernel_runs_the_same_snippet_but_for_its_architecture() {
        let x86_64 =
            snippet_of(&read(&qemu_tests_dir().join(SNIPPET_SOURCE))).expect("the snippet's markers");
        let aarch64 = snippet_of(&read(&qemu_tests_dir().join("aarch64/src/readme_heap.rs")))
            .expect("the snippet's markers");
        let expected = x86_64.replace(
            "use core_alloc::platform::arch::x86_64::{KernelPlatform, init_cpu}; // AArch64: arch::aarch64\n",
            "use core_alloc::platform::arch::aarch64::{KernelPlatform, init_cpu}; // x86-64: arch::x86_64\n",
        );
        assert_ne!(expected, x86_64, "the x86-64 snippet's architecture line changed");
        assert_eq!(aarch64, expected, "the AArch64 kernel's snippet differs from the x86-64 one");
    }

    #[test]
    fn feature_builds_name_features_their_kernels_have() {
        for build in FEATURE_BUILDS {
            let kernel =
                KERNELS.iter().find(|kernel| kernel.arch == build.arch).expect("a kernel of that arch");
            let manifest = read(&qemu_tests_dir().join(kernel.directory).join("Cargo.toml"));
            for feature in build.features.split(',') {
                let declared = format!("{} = [", feature.trim());
                assert!(
                    manifest.lines().any(|line| line.starts_with(&declared)),
                    "{}: no feature {feature}",
                    kernel.directory
                );
            }
        }
    }

    #[test]
    fn readme_contains_the_kernel_snippet() {
        let snippet =
            snippet_of(&read(&qemu_tests_dir().join(SNIPPET_SOURCE))).expect("the snippet's markers");
        let readme = read(&qemu_tests_dir().join("../README.md"));
        assert!(
            readme.contains(&format!("```rust\n{snippet}```\n")),
            "README.md has no ```rust block that is exactly the lines between the markers of qemu-tests/{SNIPPET_SOURCE}:\n{snippet}"
        );
        let kernel_section = readme.split("\n## ").find(|section| section.starts_with("Use it in a kernel"));
        let dependencies = kernel_section
            .map_or(0, |section| section.lines().filter(|line| line.starts_with(KERNEL_DEPENDENCY)).count());
        assert_eq!(dependencies, 1, "README.md's kernel section has no one line `{KERNEL_DEPENDENCY} ...`");
    }

    /// A stand-in for QEMU: `sh -c <script>`, which ignores the `-kernel <elf>` arguments.
    fn fake(script: &'static str, success_status: i32) -> Kernel {
        Kernel {
            qemu: "sh",
            arguments: Box::leak(Box::new(["-c", script, "fake-qemu"])),
            success_status,
            ..KERNELS[0]
        }
    }

    fn run_fake(script: &'static str, success_status: i32) -> Report {
        boot_within(&fake(script, success_status), Path::new("/nonexistent"), false, Duration::from_secs(2))
    }

    #[test]
    fn a_clean_run_passes() {
        let report = run_fake(
            "echo 'x86_64: test a ... ok'; echo 'x86_64: suite done: 1 passed, 0 failed'; exit 33",
            33,
        );
        assert_eq!((report.passed, report.failed, report.problem), (1, 0, None));
    }

    #[test]
    fn a_crash_without_summary_is_a_failure_with_the_last_lines() {
        // A triple fault under -no-reboot: QEMU exits with 0 and the kernel says nothing more.
        let report = run_fake("echo 'x86_64: test a ... ok'; echo 'x86_64: PANIC somewhere'; exit 0", 33);
        assert_eq!((report.passed, report.failed), (1, 1));
        assert!(report.problem.as_deref().is_some_and(|why| why.contains("no summary line")));
        assert!(report.details().contains("| x86_64: PANIC somewhere"), "{}", report.details());
    }

    #[test]
    fn a_hang_is_a_failure() {
        let report = run_fake("echo 'x86_64: test a ... ok'; exec sleep 30", 33);
        assert_eq!((report.passed, report.failed), (1, 1));
        assert!(report.problem.as_deref().is_some_and(|why| why.contains("hang")));
    }

    #[test]
    fn a_wrong_exit_status_or_a_lying_summary_is_a_failure() {
        let report = run_fake(
            "echo 'x86_64: test a ... ok'; echo 'x86_64: suite done: 1 passed, 0 failed'; exit 0",
            33,
        );
        assert_eq!(report.failed, 1, "exit 0 is not the x86-64 success status");
        let report = run_fake("echo 'x86_64: suite done: 5 passed, 0 failed'; exit 33", 33);
        assert_eq!(report.failed, 1, "a summary without the test lines it counts");
        let report = run_fake(
            "echo 'x86_64: test a ... FAILED: why'; echo 'x86_64: suite done: 0 passed, 1 failed'; exit 35",
            33,
        );
        assert_eq!((report.passed, report.failed, report.problem), (0, 1, None));
    }
}
