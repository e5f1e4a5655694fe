//! A minimal GICv2 driver: the distributor is enabled once, each CPU enables its interface
//! and its private timer interrupt (a PPI, banked per CPU), and the IRQ handler acknowledges,
//! dispatches and ends interrupts.
//!
//! `-M virt` with `-cpu cortex-a72` has a GICv2 without security extensions: every interrupt
//! is in group 0 and signalled as an IRQ.

use core::sync::atomic::{AtomicUsize, Ordering};

use crate::dtb::BootInfo;

/// GICD_CTLR: distributor enable.
const GICD_CTLR: usize = 0x000;
/// GICD_ISENABLER<n>: set-enable bits, 32 interrupts a register.
const GICD_ISENABLER: usize = 0x100;
/// GICD_IPRIORITYR<n>: one priority byte per interrupt.
const GICD_IPRIORITYR: usize = 0x400;
/// GICD_SGIR: software-generated interrupts.
const GICD_SGIR: usize = 0xF00;
/// GICD_SGIR.TargetListFilter = 0b01: every CPU but the one writing.
const SGIR_ALL_OTHERS: u32 = 0b01 << 24;
/// The SGI that wakes idle CPUs.
pub(crate) const WAKE_SGI: u32 = 0;
/// GICC_CTLR: CPU interface enable.
const GICC_CTLR: usize = 0x00;
/// GICC_PMR: the priority mask; interrupts of lower value (higher priority) pass.
const GICC_PMR: usize = 0x04;
/// GICC_IAR: read to acknowledge the highest-priority pending interrupt.
const GICC_IAR: usize = 0x0C;
/// GICC_EOIR: write the acknowledged value to end the interrupt.
const GICC_EOIR: usize = 0x10;
/// Interrupt IDs from here on mean "no interrupt" (1020-1023).
const SPURIOUS: u32 = 1020;
/// The priority given to the interrupts used (the timer and the wake-up SGI).
const PRIORITY: u32 = 0x80;

static DISTRIBUTOR: AtomicUsize = AtomicUsize::new(0);
static CPU_INTERFACE: AtomicUsize = AtomicUsize::new(0);
static TIMER_INTID: AtomicUsize = AtomicUsize::new(27);

fn read(address: usize) -> u32 {
    // SAFETY: callers pass GIC register addresses from the device tree, identity-mapped as
    // Device memory (see `mmu`); GIC registers are 32-bit and 4-byte aligned.
    unsafe { core::ptr::read_volatile(address as *const u32) }
}

fn write(address: usize, value: u32) {
    // SAFETY: as in `read`.
    unsafe { core::ptr::write_volatile(address as *mut u32, value) }
}

/// Records the GIC's addresses and enables the distributor. Boot CPU, before other CPUs
/// start and before [`init_cpu`].
pub(crate) fn init(info: &BootInfo) {
    DISTRIBUTOR.store(info.gic_distributor.start as usize, Ordering::Relaxed);
    CPU_INTERFACE.store(info.gic_cpu_interface.start as usize, Ordering::Relaxed);
    TIMER_INTID.store(info.timer_intid as usize, Ordering::Relaxed);
    write(info.gic_distributor.start as usize + GICD_CTLR, 1);
}

/// Enables this CPU's interface, its timer interrupt and the wake-up SGI.
pub(crate) fn init_cpu() {
    let distributor = DISTRIBUTOR.load(Ordering::Relaxed);
    let cpu_interface = CPU_INTERFACE.load(Ordering::Relaxed);
    for id in [TIMER_INTID.load(Ordering::Relaxed), WAKE_SGI as usize] {
        // Priorities and enables of SGIs and PPIs (IDs 0-31) are banked per CPU. A priority
        // is a byte: read-modify-write it with a word access.
        let priority_word = distributor + GICD_IPRIORITYR + (id / 4) * 4;
        let shift = (id % 4) * 8;
        write(priority_word, (read(priority_word) & !(0xFF << shift)) | PRIORITY << shift);
        write(distributor + GICD_ISENABLER + (id / 32) * 4, 1 << (id % 32));
    }
    write(cpu_interface + GICC_PMR, 0xF0);
    write(cpu_interface + GICC_CTLR, 1);
}

/// Sends the wake-up SGI to every other CPU, after this CPU's earlier stores are visible.
pub(crate) fn wake_others() {
    // SAFETY: a barrier only.
    unsafe {
        // `dsb ishst`: normal-memory stores before this point (a published job) are visible
        // to every CPU before the SGI write below reaches the GIC. Not `nomem`: it orders
        // memory accesses. No stack, flags untouched.
        core::arch::asm!("dsb ishst", options(nostack, preserves_flags));
    }
    write(DISTRIBUTOR.load(Ordering::Relaxed) + GICD_SGIR, SGIR_ALL_OTHERS | WAKE_SGI);
}

/// Handles every pending interrupt on this CPU; called from the IRQ vector.
pub(crate) fn handle_irq() {
    let cpu_interface = CPU_INTERFACE.load(Ordering::Relaxed);
    let timer = TIMER_INTID.load(Ordering::Relaxed) as u32;
    loop {
        let acknowledged = read(cpu_interface + GICC_IAR);
        let id = acknowledged & 0x3FF;
        if id >= SPURIOUS {
            return;
        }
        if id == timer {
            crate::timer::on_interrupt();
        } else if id == WAKE_SGI {
            // Only wakes the CPU from `wfi`; the idle loop then looks for work.
        } else {
            crate::console::println!("aarch64: unexpected interrupt {id}");
        }
        write(cpu_interface + GICC_EOIR, acknowledged);
    }
}
