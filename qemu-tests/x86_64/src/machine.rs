//! The suite's view of this kernel: [`qemu_suite::Machine`] over the SMP, timer, clock and
//! console modules.

use platform::arch::x86_64::current_cpu_racy;
use qemu_suite::Machine;

use crate::{apic, console, interrupts, smp, time};

/// This kernel, as the suite sees it.
pub(crate) struct X86Machine;

impl Machine for X86Machine {
    fn arch(&self) -> &'static str {
        "x86_64"
    }

    fn cpu_count(&self) -> usize {
        smp::cpus_online()
    }

    fn current_cpu(&self) -> usize {
        // Exact: nothing moves code between CPUs in this kernel.
        current_cpu_racy()
    }

    fn run_on_cpus(&self, cpus: usize, work: &(dyn Fn(usize) + Sync)) {
        smp::run_on_cpus(cpus, work);
    }

    fn set_timer_handler(&self, handler: Option<fn(usize)>) {
        interrupts::set_timer_handler(handler);
    }

    fn start_timer(&self, period_us: u32) {
        apic::start_periodic(period_us);
    }

    fn stop_timer(&self) {
        apic::stop_timer();
    }

    fn now_ns(&self) -> u64 {
        time::now_ns()
    }

    fn write_str(&self, text: &str) {
        console::write_str(text);
    }
}
