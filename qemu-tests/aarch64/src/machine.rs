//! The shared test suite's view of this machine: [`qemu_suite::Machine`] over the kernel's
//! CPUs, timer and console.

use qemu_suite::Machine;

/// `-M virt` as the kernel has set it up.
#[derive(Debug)]
pub(crate) struct VirtMachine {
    _private: (),
}

impl VirtMachine {
    /// The machine; CPUs, GIC, timer and console are already set up.
    pub(crate) const fn new() -> Self {
        Self { _private: () }
    }
}

impl Machine for VirtMachine {
    fn arch(&self) -> &'static str {
        "aarch64"
    }

    fn cpu_count(&self) -> usize {
        crate::smp::online()
    }

    fn current_cpu(&self) -> usize {
        platform::arch::aarch64::current_cpu_racy()
    }

    fn run_on_cpus(&self, cpus: usize, work: &(dyn Fn(usize) + Sync)) {
        crate::smp::run_on_cpus(cpus, work);
    }

    fn set_timer_handler(&self, handler: Option<fn(usize)>) {
        crate::timer::set_handler(handler);
    }

    fn start_timer(&self, period_us: u32) {
        crate::timer::start(period_us);
    }

    fn stop_timer(&self) {
        crate::timer::stop();
    }

    fn now_ns(&self) -> u64 {
        crate::timer::now_ns()
    }

    fn write_str(&self, text: &str) {
        crate::console::write_str(text);
    }
}
