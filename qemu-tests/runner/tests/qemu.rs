//! The bare-metal tests as part of `cargo test`: both kernels built and booted under QEMU
//! with 4 CPUs, and again in each further configuration (`VARIANTS`, `FEATURE_BUILDS`);
//! every test in each boot must pass.

use qemu_runner::{FEATURE_BUILDS, KERNELS, build_and_boot_all, ensure_qemu};

#[test]
fn both_kernels_pass_every_test_under_qemu() {
    ensure_qemu().unwrap_or_else(|why| panic!("{why}"));
    let reports: Vec<_> = KERNELS.iter().flat_map(|kernel| build_and_boot_all(kernel, false)).collect();
    for report in &reports {
        println!("{}", report.summary());
    }
    let failures: String =
        reports.iter().filter(|report| report.failed > 0).map(|report| report.details()).collect();
    assert!(failures.is_empty(), "bare-metal failures:\n{failures}");
    for report in &reports {
        // A feature build runs the suite's small-heap set: 9 tests (and on x86-64 one of the
        // kernel's own).
        let small_heap = FEATURE_BUILDS.iter().any(|build| build.name == report.arch);
        let least = if small_heap { 9 } else { 13 };
        assert!(report.passed >= least, "{} ran only {} tests", report.arch, report.passed);
    }
}
