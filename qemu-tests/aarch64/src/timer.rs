//! The generic timer: time from CNTVCT_EL0 / CNTFRQ_EL0, and a periodic interrupt per CPU
//! from the EL1 virtual timer (CNTV_*), delivered through the GIC as a PPI.
//!
//! Concurrency: each CPU programs only its own timer and its own period slot; the handler
//! function is one atomic word read in interrupt context.

use core::arch::asm;
use core::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

use platform::arch::aarch64::{MAX_CPUS, current_cpu_racy};

/// CNTV_CTL_EL0.ENABLE (IMASK clear: the interrupt is signalled).
const CTL_ENABLE: u64 = 1;

/// Counter ticks between interrupts for each CPU; 0 = stopped.
static PERIOD: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// The `fn(usize)` timer interrupts call, or null.
static HANDLER: AtomicPtr<()> = AtomicPtr::new(core::ptr::null_mut());

/// CNTFRQ_EL0: counter ticks per second.
pub(crate) fn frequency() -> u64 {
    let frequency: u64;
    // SAFETY: reading CNTFRQ_EL0 has no side effects.
    unsafe {
        // A register read: no memory, no stack, flags untouched.
        asm!("mrs {f}, cntfrq_el0", f = out(reg) frequency, options(nomem, nostack, preserves_flags));
    }
    frequency
}

/// CNTVCT_EL0, read in program order (the `isb` keeps the read from happening early).
pub(crate) fn counter() -> u64 {
    let count: u64;
    // SAFETY: reading the virtual counter has no side effects.
    unsafe {
        // `isb` then a register read: no memory, no stack, flags untouched.
        asm!("isb", "mrs {count}, cntvct_el0", count = out(reg) count, options(nomem, nostack, preserves_flags));
    }
    count
}

/// Nanoseconds since the counter started.
pub(crate) fn now_ns() -> u64 {
    (u128::from(counter()) * 1_000_000_000 / u128::from(frequency().max(1))) as u64
}

/// Sets the function timer interrupts call.
pub(crate) fn set_handler(handler: Option<fn(usize)>) {
    HANDLER.store(handler.map_or(core::ptr::null_mut(), |handler| handler as *mut ()), Ordering::Release);
}

/// Starts this CPU's periodic interrupt, every `period_us` microseconds.
pub(crate) fn start(period_us: u32) {
    let ticks = (frequency() * u64::from(period_us) / 1_000_000).max(1);
    PERIOD[current_cpu_racy()].store(ticks, Ordering::Relaxed);
    program(ticks, CTL_ENABLE);
}

/// Stops this CPU's periodic interrupt.
pub(crate) fn stop() {
    PERIOD[current_cpu_racy()].store(0, Ordering::Relaxed);
    program(0, 0);
}

/// Writes CNTV_TVAL_EL0 (when `ticks` is not 0) and CNTV_CTL_EL0.
fn program(ticks: u64, control: u64) {
    // SAFETY: the virtual timer belongs to this kernel; programming it only changes when its
    // interrupt fires.
    unsafe {
        // Writes the countdown and the control register, then `isb` so the new state is in
        // effect before returning. Register writes only: no memory, no stack, flags kept.
        if ticks != 0 {
            asm!("msr cntv_tval_el0, {t}", t = in(reg) ticks, options(nomem, nostack, preserves_flags));
        }
        asm!("msr cntv_ctl_el0, {c}", "isb", c = in(reg) control, options(nomem, nostack, preserves_flags));
    }
}

/// The timer interrupt: re-arms this CPU's timer (which also lowers the level-sensitive
/// interrupt) and calls the handler.
pub(crate) fn on_interrupt() {
    let cpu = current_cpu_racy();
    let period = PERIOD[cpu].load(Ordering::Relaxed);
    if period == 0 {
        program(0, 0);
        return;
    }
    program(period, CTL_ENABLE);
    let handler = HANDLER.load(Ordering::Acquire);
    if !handler.is_null() {
        // SAFETY: HANDLER only ever holds null or a `fn(usize)` stored by `set_handler`.
        let handler: fn(usize) = unsafe { core::mem::transmute::<*mut (), fn(usize)>(handler) };
        handler(cpu);
    }
}
