//! Boots both test kernels under QEMU (4 CPUs each), shows their serial output (the tests,
//! the allocator's statistics, its speed against linked_list_allocator), and ends with one
//! line per architecture: `x86_64: N passed, M failed`, `aarch64: N passed, M failed`.
//!
//! `cargo run --release -p qemu-runner [-- x86_64|aarch64] [--quiet]`
//!
//! The suite's torture test runs a few seconds of guest time on each kernel. For a long run,
//! set `QEMU_TORTURE_SECONDS` (guest seconds): the kernels are rebuilt with it and each boot
//! may take twice that much longer, e.g. `QEMU_TORTURE_SECONDS=300 cargo qemu aarch64`.

use qemu_runner::{KERNELS, build_and_boot, ensure_qemu};

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
        reports.push(build_and_boot(kernel, !quiet));
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
