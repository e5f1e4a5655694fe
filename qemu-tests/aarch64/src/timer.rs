//! The generic timer: time from CNTVCT_EL0 / CNTFRQ_EL0, and a periodic interrupt per CPU
//! from the EL1 virtual timer (CNTV_*), delivered through the GIC as a PPI.
//!
//! Concurrency: each CPU programs only its own timer and its own period slot; the handler
//! function is one atomic word read in interrupt context.
//!
//! Under QEMU's TCG every read of CNTVCT_EL0 is emulated with QEMU's global lock held (the
//! register is an I/O register to QEMU), and the same lock guards QEMU's timer callbacks. A
//! few CPUs polling the clock back to back, as the suite's timing loops do, can starve those
//! callbacks for tens of milliseconds, so timer interrupts stop arriving. On QEMU's `virt`
//! board [`now_ns`] therefore pauses briefly (a run of `isb`s, which TCG executes without
//! the lock, about 1 us in all) before each read; elsewhere it reads at once.

use core::arch::asm;
use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering};

use platform::arch::aarch64::{MAX_CPUS, current_cpu_racy};

/// CNTV_CTL_EL0.ENABLE (IMASK clear: the interrupt is signalled).
const CTL_ENABLE: u64 = 1;

/// Counter ticks between interrupts for each CPU; 0 = stopped.
static PERIOD: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// The `fn(usize)` timer interrupts call, or null.
static HANDLER: AtomicPtr<()> = AtomicPtr::new(core::ptr::null_mut());

/// `isb`s executed before each clock read in [`now_ns`]; 0 = none.
static POLL_PAUSE: AtomicU32 = AtomicU32::new(0);
/// The pause used on QEMU's `virt` board (about 1 us under TCG).
const QEMU_POLL_PAUSE: u32 = 128;

/// Sets whether [`now_ns`] pauses before reading the counter (see the module docs).
pub(crate) fn set_emulated(emulated: bool) {
    POLL_PAUSE.store(if emulated { QEMU_POLL_PAUSE } else { 0 }, Ordering::Relaxed);
}

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
    for _ in 0..POLL_PAUSE.load(Ordering::Relaxed) {
        // SAFETY: a barrier only.
        unsafe {
            // `isb`: a context synchronization, used as a pause that QEMU runs without its
            // global lock. No memory, no stack, flags untouched.
            asm!("isb", options(nomem, nostack, preserves_flags));
        }
    }
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
