//! The clock: the time-stamp counter, calibrated once at boot against the legacy PIT
//! (a fixed 1.193182 MHz), together with the local APIC timer's rate.
//!
//! CPUID frequency leaves are not trusted: under TCG they describe a CPU model, not the
//! host. The TSC is shared by every CPU in TCG (it follows the host's) and is invariant on
//! current hardware, so `now_ns` on any CPU reads one monotonic clock.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::apic;
use crate::cpu::{inb, outb, rdtsc};

const PIT_HZ: u64 = 1_193_182;
const PIT_CHANNEL0: u16 = 0x40;
const PIT_COMMAND: u16 = 0x43;
/// PIT ticks in one calibration window: 10 ms.
const WINDOW_TICKS: u64 = PIT_HZ / 100;
/// Calibration windows; the slowest TSC rate measured wins (see `calibrate`).
const WINDOWS: usize = 3;

/// TSC value at calibration: time 0.
static TSC_ORIGIN: AtomicU64 = AtomicU64::new(0);
/// Nanoseconds per TSC tick, as a 32.32 fixed-point number; 0 before calibration.
static NS_PER_TICK: AtomicU64 = AtomicU64::new(0);

fn read_pit() -> u16 {
    // SAFETY: the latch command (channel 0) then two reads of channel 0's count, low byte
    // first; only the boot CPU touches the PIT, at calibration.
    unsafe {
        outb(PIT_COMMAND, 0x00);
        let low = inb(PIT_CHANNEL0);
        let high = inb(PIT_CHANNEL0);
        u16::from_le_bytes([low, high])
    }
}

/// One calibration window: `(PIT ticks, TSC ticks, APIC timer counts)` over about 10 ms.
fn measure_window() -> (u64, u64, u64) {
    // Start at a count change, so the first interval is a whole tick.
    let first = read_pit();
    let mut previous = first;
    while previous == first {
        previous = read_pit();
    }
    let apic_start = apic::start_calibration_count();
    let tsc_start = rdtsc();
    let mut elapsed: u64 = 0;
    while elapsed < WINDOW_TICKS {
        let now = read_pit();
        elapsed += u64::from(previous.wrapping_sub(now));
        previous = now;
    }
    let tsc_end = rdtsc();
    let apic_end = apic::current_count();
    (elapsed, tsc_end - tsc_start, u64::from(apic_start - apic_end))
}

/// Measures the TSC and the local APIC timer against the PIT. Boot CPU, once, with
/// interrupts masked and the local APIC enabled.
///
/// The host may stop the virtual CPU in the middle of a window. A pause between two PIT
/// reads longer than the PIT's 55 ms wrap loses PIT ticks, and a pause between the last PIT
/// read and the TSC read adds TSC ticks: both make the rate look too high, never too low.
/// So the window with the lowest TSC rate is kept.
pub(crate) fn calibrate() {
    // SAFETY: channel 0, low byte then high byte, mode 2 (rate generator), binary, reload
    // 0 (65536): the count runs down at the PIT rate and wraps every 55 ms. Its IRQ 0 is
    // masked at the PIC, so it only serves as a counter.
    unsafe {
        outb(PIT_COMMAND, 0x34);
        outb(PIT_CHANNEL0, 0);
        outb(PIT_CHANNEL0, 0);
    }
    let (elapsed, tsc_ticks, apic_ticks) = (0..WINDOWS)
        .map(|_| measure_window())
        .min_by_key(|&(elapsed, tsc_ticks, _)| {
            u128::from(tsc_ticks) * u128::from(PIT_HZ) / u128::from(elapsed)
        })
        .expect("at least one window");
    let tsc_hz = tsc_ticks * PIT_HZ / elapsed;
    let apic_per_ms = apic_ticks * PIT_HZ / elapsed / 1000;
    apic::set_ticks_per_ms(apic_per_ms as u32);
    NS_PER_TICK.store(((1_000_000_000u128 << 32) / u128::from(tsc_hz.max(1))) as u64, Ordering::Relaxed);
    TSC_ORIGIN.store(rdtsc(), Ordering::Release);
}

/// Nanoseconds since calibration (0 before it).
pub(crate) fn now_ns() -> u64 {
    let origin = TSC_ORIGIN.load(Ordering::Acquire);
    let per_tick = NS_PER_TICK.load(Ordering::Relaxed);
    let ticks = rdtsc().saturating_sub(origin);
    ((u128::from(ticks) * u128::from(per_tick)) >> 32) as u64
}

/// Waits at least `microseconds` (by the TSC, not by counting loops).
pub(crate) fn delay_us(microseconds: u64) {
    let deadline = now_ns() + microseconds * 1000;
    while now_ns() < deadline {
        core::hint::spin_loop();
    }
}
