//! Boots both test kernels under QEMU (4 CPUs each), shows their serial output (the tests,
//! the allocator's statistics, its speed against linked_list_allocator), and ends with one
//! line per architecture: `x86_64: N passed, M failed`, `aarch64: N passed, M failed`, and
//! one per further configuration (`qemu_runner::VARIANTS`: the AArch64 kernel with the
//! 16 KiB granule on a GICv3, and with the 64 KiB granule; `qemu_runner::FEATURE_BUILDS`:
//! each kernel built with `--features readme-heap`, whose global allocator is the README's
//! kernel snippet over a small heap, running the suite's small-heap set; and the AArch64
//! kernel built with outline atomics, booted on a CPU with LSE and on an Armv8.0 one).
//!
//! `cargo run --release -p qemu-runner [-- x86_64|aarch64] [--quiet]`
//!
//! The suite's torture test runs a few seconds of guest time on each kernel. For a long run,
//! set `QEMU_TORTURE_SECONDS` (guest seconds): the kernels are rebuilt with it and each boot
//! may take twice that much longer, e.g. `QEMU_TORTURE_SECONDS=300 cargo qemu aarch64`.
//!
//! `QEMU_CPUS=N` boots each kernel's main configuration with N CPUs instead (beyond 8 CPUs
//! with 8 GiB, and the AArch64 one with a GICv3), and fails a boot that does not bring all N
//! up: `QEMU_CPUS=64 cargo qemu aarch64` and `QEMU_CPUS=64 cargo qemu x86_64` are the long
//! runs on a server-sized machine (x86-64: about 4 minutes under TCG on two host cores;
//! AArch64: about 6 minutes on two host cores shared with other work).

use qemu_runner::{KERNELS, build_and_boot_all, ensure_qemu};

fn main() {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let quiet = arguments.iter().any(|argument| argument == "--quiet");
    let chosen: Vec<&String> = arguments.iter().filter(|argument| !argument.starts_with("--")).collect();
    if let Err(why) = ensure_qemu() {
        eprintln!("qemu-runner: {why}");
        std::process::exit(2);
    }
    let mut reports = Vec::new();
    for kernel in
        KERNELS.iter().filter(|kernel| chosen.is_empty() || chosen.iter().any(|arch| *arch == kernel.arch))
    {
        eprintln!("qemu-runner: building and booting the {} kernel", kernel.arch);
        reports.extend(build_and_boot_all(kernel, !quiet));
    }
    for report in &reports {
        if report.failed > 0 {
            print!("{}", report.details());
        }
    }
    for report in &reports {
        println!("{}", report.summary());
    }
    if reports.is_empty() || reports.iter().any(|report| report.failed > 0) {
        std::process::exit(1);
    }
}
