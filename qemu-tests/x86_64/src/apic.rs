//! The local APIC (xAPIC, memory-mapped): enabling it, its timer, end of interrupt, and
//! the INIT and STARTUP inter-processor interrupts.
//!
//! The registers sit in a 4 KiB page (0xFEE00000 unless the firmware moved it), identity-
//! mapped uncached by [`init_boot_cpu`]; each CPU reaches its own APIC at the same address.

use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use crate::boot::identity_map;
use crate::cpu::{rdmsr, wrmsr};
use crate::interrupts::{SPURIOUS_VECTOR, TIMER_VECTOR};
use crate::time;

const IA32_APIC_BASE: u32 = 0x1B;
/// IA32_APIC_BASE bit 11: the APIC is globally enabled.
const APIC_GLOBAL_ENABLE: u64 = 1 << 11;

const ID: usize = 0x20;
const TASK_PRIORITY: usize = 0x80;
const EOI: usize = 0xB0;
const SPURIOUS: usize = 0xF0;
const IN_SERVICE: usize = 0x100;
const COMMAND_LOW: usize = 0x300;
const COMMAND_HIGH: usize = 0x310;
const LVT_TIMER: usize = 0x320;
const LVT_LINT0: usize = 0x350;
const LVT_ERROR: usize = 0x370;
const TIMER_INITIAL: usize = 0x380;
const TIMER_CURRENT: usize = 0x390;
const TIMER_DIVIDE: usize = 0x3E0;

/// Spurious-interrupt register bit 8: the APIC is software-enabled.
const SOFTWARE_ENABLE: u32 = 1 << 8;
/// LVT bit 16: the entry is masked.
const MASKED: u32 = 1 << 16;
/// LVT timer bit 17: periodic mode.
const PERIODIC: u32 = 1 << 17;
/// Timer divide configuration 0b0011: the timer counts at the bus clock / 16.
const DIVIDE_BY_16: u32 = 0x3;
/// Interrupt command: delivery-status bit (a send is pending).
const SEND_PENDING: u32 = 1 << 12;
/// Interrupt command: INIT, level assert.
const INIT_ASSERT: u32 = 0x0000_4500;
/// Interrupt command: STARTUP (the vector is the start page number).
const STARTUP: u32 = 0x0000_4600;

/// The registers' virtual (= physical) address; 0 before `init_boot_cpu`.
static BASE: AtomicUsize = AtomicUsize::new(0);
/// Timer counts (at bus clock / 16) per millisecond; 0 before calibration.
static TICKS_PER_MS: AtomicU32 = AtomicU32::new(0);

fn register(offset: usize) -> *mut u32 {
    let base = BASE.load(Ordering::Relaxed);
    assert!(base != 0, "local APIC used before init_boot_cpu");
    (base + offset) as *mut u32
}

fn read(offset: usize) -> u32 {
    // SAFETY: `register` returns an address in the APIC's uncached identity-mapped page;
    // 32-bit aligned volatile loads are how its registers are read.
    unsafe { register(offset).read_volatile() }
}

fn write(offset: usize, value: u32) {
    // SAFETY: as for `read`; writes go to the calling CPU's own APIC, and callers pick
    // registers and values that keep the interrupt setup consistent.
    unsafe { register(offset).write_volatile(value) }
}

/// Finds and maps the local APIC page, then enables the boot CPU's APIC.
pub(crate) fn init_boot_cpu() {
    // SAFETY: IA32_APIC_BASE exists on every CPU with an APIC (all x86-64 ones).
    let base = unsafe { rdmsr(IA32_APIC_BASE) } & 0x000F_FFFF_FFFF_F000;
    assert!(identity_map(base, 0x1000, true), "local APIC at {base:#x} is above 4 GiB");
    BASE.store(base as usize, Ordering::Relaxed);
    init_this_cpu();
}

/// Enables the calling CPU's APIC: spurious vector set, every interrupt priority
/// accepted, timer, LINT0 (the PIC's virtual wire) and error interrupts masked.
pub(crate) fn init_this_cpu() {
    // SAFETY: IA32_APIC_BASE exists; setting the global-enable bit (firmware normally set
    // it) keeps the base address, which `init_boot_cpu` mapped.
    unsafe {
        let msr = rdmsr(IA32_APIC_BASE);
        if msr & APIC_GLOBAL_ENABLE == 0 {
            wrmsr(IA32_APIC_BASE, msr | APIC_GLOBAL_ENABLE);
        }
    }
    write(SPURIOUS, SOFTWARE_ENABLE | u32::from(SPURIOUS_VECTOR));
    write(TASK_PRIORITY, 0);
    write(LVT_TIMER, MASKED | u32::from(TIMER_VECTOR));
    write(LVT_LINT0, MASKED);
    write(LVT_ERROR, MASKED);
}

/// The calling CPU's APIC ID.
pub(crate) fn id() -> u32 {
    read(ID) >> 24
}

/// Acknowledges the interrupt being handled.
pub(crate) fn end_of_interrupt() {
    write(EOI, 0);
}

/// The highest vector the APIC has in service, if any (for reporting stray interrupts).
pub(crate) fn in_service_vector() -> Option<u8> {
    if BASE.load(Ordering::Relaxed) == 0 {
        return None;
    }
    (0..8).rev().find_map(|word| {
        let bits = read(IN_SERVICE + 0x10 * word);
        (bits != 0).then(|| (word * 32 + 31 - bits.leading_zeros() as usize) as u8)
    })
}

/// Starts the one-shot count used for calibration: the timer counts down from `u32::MAX`
/// at bus clock / 16 with its interrupt masked. Returns the count it started from.
pub(crate) fn start_calibration_count() -> u32 {
    write(LVT_TIMER, MASKED | u32::from(TIMER_VECTOR));
    write(TIMER_DIVIDE, DIVIDE_BY_16);
    write(TIMER_INITIAL, u32::MAX);
    u32::MAX
}

/// The timer's current count.
pub(crate) fn current_count() -> u32 {
    read(TIMER_CURRENT)
}

/// Records the timer rate measured by the clock calibration, and stops the count.
pub(crate) fn set_ticks_per_ms(ticks: u32) {
    TICKS_PER_MS.store(ticks.max(1), Ordering::Relaxed);
    write(TIMER_INITIAL, 0);
}

/// Starts the calling CPU's periodic timer interrupt every `period_us` microseconds.
pub(crate) fn start_periodic(period_us: u32) {
    let per_ms = TICKS_PER_MS.load(Ordering::Relaxed);
    assert!(per_ms != 0, "the APIC timer is not calibrated");
    let count = (u64::from(period_us) * u64::from(per_ms) / 1000).clamp(1, u64::from(u32::MAX));
    write(TIMER_DIVIDE, DIVIDE_BY_16);
    write(LVT_TIMER, PERIODIC | u32::from(TIMER_VECTOR));
    write(TIMER_INITIAL, count as u32);
}

/// Stops the calling CPU's timer interrupt.
pub(crate) fn stop_timer() {
    write(LVT_TIMER, MASKED | u32::from(TIMER_VECTOR));
    write(TIMER_INITIAL, 0);
}

/// Waits (bounded by time) until the previous interrupt command has been sent.
fn wait_for_send() -> bool {
    let deadline = time::now_ns() + 10_000_000;
    while read(COMMAND_LOW) & SEND_PENDING != 0 {
        if time::now_ns() > deadline {
            return false;
        }
        core::hint::spin_loop();
    }
    true
}

fn send(apic_id: u32, command: u32) -> bool {
    write(COMMAND_HIGH, apic_id << 24);
    write(COMMAND_LOW, command);
    wait_for_send()
}

/// Interrupt command: fixed delivery to every CPU but the sender (destination shorthand 11).
const ALL_BUT_SELF: u32 = 0b11 << 18;

/// Sends the fixed interrupt `vector` to every other CPU.
pub(crate) fn send_to_others(vector: u8) -> bool {
    send(0, ALL_BUT_SELF | u32::from(vector))
}

/// Sends INIT to the CPU with APIC ID `apic_id`: it resets and waits for a STARTUP.
pub(crate) fn send_init(apic_id: u32) -> bool {
    send(apic_id, INIT_ASSERT)
}

/// Sends STARTUP to `apic_id`: it starts in real mode at `page * 4096`.
pub(crate) fn send_startup(apic_id: u32, page: u8) -> bool {
    send(apic_id, STARTUP | u32::from(page))
}
