//! The bare-metal tests as part of `cargo test`: both kernels built and booted under QEMU
//! with 4 CPUs, and again in each further configuration (`VARIANTS`); every test in each
//! boot must pass.

use qemu_runner::{KERNELS, build_and_boot_all, ensure_qemu};

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
        assert!(report.passed >= 13, "{} ran only {} tests", report.arch, report.passed);
    }
}
