//! A minimal GIC driver for GICv2 and GICv3, whichever the device tree names: the
//! distributor is enabled once, each CPU enables its CPU interface, its private timer
//! interrupt (a PPI) and the wake-up SGI, and the IRQ handler acknowledges, dispatches and
//! ends interrupts.
//!
//! - GICv2 (`-M virt`, the default; at most 8 CPUs): memory-mapped distributor and CPU
//!   interface. Without security extensions every interrupt is in group 0 and signalled as
//!   an IRQ.
//! - GICv3 (`-M virt,gic-version=3`, up to hundreds of CPUs): SGIs and PPIs are configured in
//!   each CPU's redistributor (found by matching GICR_TYPER's affinity with MPIDR_EL1), and
//!   the CPU interface is the ICC_* system registers. QEMU's GICv3 without security
//!   (GICD_CTLR.DS = 1) signals group 0 as FIQ and group 1 as IRQ, so our interrupts go to
//!   group 1.
//!
//! Concurrency: the boot CPU records the version and addresses before any other CPU starts
//! (their start is ordered after it by PSCI); afterwards they are only read.

use core::arch::asm;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::dtb::BootInfo;

/// GICD_CTLR: distributor control.
const GICD_CTLR: usize = 0x000;
/// GICD_ISENABLER<n>: set-enable bits, 32 interrupts a register.
const GICD_ISENABLER: usize = 0x100;
/// GICD_IPRIORITYR<n>: one priority byte per interrupt.
const GICD_IPRIORITYR: usize = 0x400;
/// GICD_SGIR (GICv2): software-generated interrupts.
const GICD_SGIR: usize = 0xF00;
/// GICD_SGIR.TargetListFilter = 0b01: every CPU but the one writing.
const SGIR_ALL_OTHERS: u32 = 0b01 << 24;
/// GICD_CTLR (GICv3, one security state): EnableGrp0, EnableGrp1, ARE (affinity routing).
const GICD_CTLR_V3_ENABLE_GRP0: u32 = 1 << 0;
const GICD_CTLR_V3_ENABLE_GRP1: u32 = 1 << 1;
const GICD_CTLR_V3_ARE: u32 = 1 << 4;
/// GICD_CTLR.RWP (GICv3): a register write is still taking effect.
const GICD_CTLR_RWP: u32 = 1 << 31;
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
/// GICR_TYPER (RD_base, 64-bit): affinity in bits 63:32, Last (bit 4), VLPIS (bit 1).
const GICR_TYPER: usize = 0x08;
const GICR_TYPER_LAST: u64 = 1 << 4;
const GICR_TYPER_VLPIS: u64 = 1 << 1;
/// GICR_WAKER (RD_base): ProcessorSleep (bit 1) and ChildrenAsleep (bit 2).
const GICR_WAKER: usize = 0x14;
const WAKER_PROCESSOR_SLEEP: u32 = 1 << 1;
const WAKER_CHILDREN_ASLEEP: u32 = 1 << 2;
/// The SGI_base frame follows RD_base by 64 KiB.
const GICR_SGI_FRAME: usize = 0x1_0000;
/// GICR_IGROUPR0 (SGI_base): group bits of SGIs and PPIs.
const GICR_IGROUPR0: usize = 0x080;
/// Interrupt IDs from here on mean "no interrupt" (1020-1023).
const SPURIOUS: u32 = 1020;
/// The priority given to the interrupts used (the timer and the wake-up SGI).
const PRIORITY: u32 = 0x80;
/// The priority mask: everything more urgent than 0xF0 is signalled.
const PRIORITY_MASK: u32 = 0xF0;

/// 2 or 3; 0 before [`init`].
static VERSION: AtomicUsize = AtomicUsize::new(0);
static DISTRIBUTOR: AtomicUsize = AtomicUsize::new(0);
/// GICv2: the CPU interface registers.
static CPU_INTERFACE: AtomicUsize = AtomicUsize::new(0);
static TIMER_INTID: AtomicUsize = AtomicUsize::new(27);
/// GICv3: the redistributor regions (start, length) and the stride (0: from GICR_TYPER).
static REDISTRIBUTOR_REGIONS: [(AtomicU64, AtomicU64); 4] =
    [const { (AtomicU64::new(0), AtomicU64::new(0)) }; 4];
static REDISTRIBUTOR_STRIDE: AtomicU64 = AtomicU64::new(0);

fn read(address: usize) -> u32 {
    // SAFETY: callers pass GIC register addresses from the device tree, identity-mapped as
    // Device memory (see `mmu`); GIC registers are 32-bit and 4-byte aligned.
    unsafe { core::ptr::read_volatile(address as *const u32) }
}

fn write(address: usize, value: u32) {
    // SAFETY: as in `read`.
    unsafe { core::ptr::write_volatile(address as *mut u32, value) }
}

fn read64(address: usize) -> u64 {
    // SAFETY: as in `read`; the 64-bit registers read with it (GICR_TYPER) are 8-byte
    // aligned and allow 64-bit accesses.
    unsafe { core::ptr::read_volatile(address as *const u64) }
}

/// The interrupt controller's version: 2 or 3.
pub(crate) fn version() -> usize {
    VERSION.load(Ordering::Relaxed)
}

/// Records the GIC's addresses and enables the distributor. Boot CPU, before other CPUs
/// start and before [`init_cpu`].
pub(crate) fn init(info: &BootInfo) {
    TIMER_INTID.store(info.timer_intid as usize, Ordering::Relaxed);
    let gic = &info.gic;
    DISTRIBUTOR.store(gic.distributor.start as usize, Ordering::Relaxed);
    let control = gic.distributor.start as usize + GICD_CTLR;
    if gic.version == 2 {
        CPU_INTERFACE.store(gic.cpu_interface.start as usize, Ordering::Relaxed);
        VERSION.store(2, Ordering::Relaxed);
        write(control, 1);
        return;
    }
    let regions = gic.redistributors.as_slice();
    assert!(regions.len() <= REDISTRIBUTOR_REGIONS.len(), "more GICv3 redistributor regions than kept");
    for (slot, region) in REDISTRIBUTOR_REGIONS.iter().zip(regions) {
        slot.0.store(region.start, Ordering::Relaxed);
        slot.1.store(region.len, Ordering::Relaxed);
    }
    REDISTRIBUTOR_STRIDE.store(gic.redistributor_stride, Ordering::Relaxed);
    VERSION.store(3, Ordering::Relaxed);
    // Affinity routing first, then the groups (changing ARE with a group enabled is
    // unpredictable); each write completes (RWP clear) before the next.
    write(control, GICD_CTLR_V3_ARE);
    wait_while(control, GICD_CTLR_RWP);
    write(control, GICD_CTLR_V3_ARE | GICD_CTLR_V3_ENABLE_GRP1 | GICD_CTLR_V3_ENABLE_GRP0);
    wait_while(control, GICD_CTLR_RWP);
}

/// Spins until the bits `mask` of the register at `address` are clear.
fn wait_while(address: usize, mask: u32) {
    while read(address) & mask != 0 {
        core::hint::spin_loop();
    }
}

/// Enables this CPU's interface, its timer interrupt and the wake-up SGI.
pub(crate) fn init_cpu() {
    let ids = [TIMER_INTID.load(Ordering::Relaxed), WAKE_SGI as usize];
    if version() == 3 {
        init_cpu_v3(ids);
        return;
    }
    let distributor = DISTRIBUTOR.load(Ordering::Relaxed);
    let cpu_interface = CPU_INTERFACE.load(Ordering::Relaxed);
    for id in ids {
        // Priorities and enables of SGIs and PPIs (IDs 0-31) are banked per CPU.
        set_priority(distributor + GICD_IPRIORITYR, id);
        write(distributor + GICD_ISENABLER + (id / 32) * 4, 1 << (id % 32));
    }
    write(cpu_interface + GICC_PMR, PRIORITY_MASK);
    write(cpu_interface + GICC_CTLR, 1);
}

/// Sets the priority byte of interrupt `id` in the priority registers at `base`, with a
/// read-modify-write of its word (byte accesses are allowed, word accesses always are).
fn set_priority(base: usize, id: usize) {
    let word = base + (id / 4) * 4;
    let shift = (id % 4) * 8;
    write(word, (read(word) & !(0xFF << shift)) | PRIORITY << shift);
}

/// GICv3: wakes this CPU's redistributor, puts `ids` (SGIs and PPIs) in group 1 with our
/// priority and enables them, then turns on the system-register CPU interface.
fn init_cpu_v3(ids: [usize; 2]) {
    let redistributor = own_redistributor();
    // Wake the redistributor: clear ProcessorSleep, then wait until ChildrenAsleep clears.
    let waker = redistributor + GICR_WAKER;
    write(waker, read(waker) & !WAKER_PROCESSOR_SLEEP);
    wait_while(waker, WAKER_CHILDREN_ASLEEP);
    let sgi_frame = redistributor + GICR_SGI_FRAME;
    for id in ids {
        let group = sgi_frame + GICR_IGROUPR0;
        write(group, read(group) | 1 << id);
        set_priority(sgi_frame + GICD_IPRIORITYR, id);
        write(sgi_frame + GICD_ISENABLER, 1 << id);
    }
    // SAFETY: the CPU interface belongs to this kernel; enabling it only lets group-1
    // interrupts reach this CPU as IRQs, which the vectors handle.
    unsafe {
        // ICC_SRE_EL1.SRE = 1: use the system-register interface (QEMU's GICv3 has no
        // memory-mapped one by default); `isb` so the following ICC_* accesses see it. Then
        // the priority mask, and ICC_IGRPEN1_EL1 = 1 enables group 1; the final `isb` puts
        // both in effect. System register accesses only: no memory, no stack, flags kept.
        asm!(
            "mrs {sre}, icc_sre_el1",
            "orr {sre}, {sre}, #1",
            "msr icc_sre_el1, {sre}",
            "isb",
            "msr icc_pmr_el1, {mask}",
            "msr icc_igrpen1_el1, {one}",
            "isb",
            sre = out(reg) _,
            mask = in(reg) u64::from(PRIORITY_MASK),
            one = in(reg) 1u64,
            options(nomem, nostack, preserves_flags),
        );
    }
}

/// GICv3: the RD_base of the calling CPU's redistributor, the one whose GICR_TYPER affinity
/// is this CPU's MPIDR_EL1 affinity.
///
/// # Panics
///
/// If no redistributor matches: the device tree and the hardware disagree.
fn own_redistributor() -> usize {
    let mpidr = crate::dtb::own_mpidr();
    // GICR_TYPER[63:32] is Aff3.Aff2.Aff1.Aff0; MPIDR_EL1 keeps Aff3 in bits 39:32.
    let affinity = ((mpidr >> 32) & 0xFF) << 24 | (mpidr & 0xFF_FFFF);
    let stride = REDISTRIBUTOR_STRIDE.load(Ordering::Relaxed) as usize;
    for (start, len) in &REDISTRIBUTOR_REGIONS {
        let (start, len) = (start.load(Ordering::Relaxed) as usize, len.load(Ordering::Relaxed) as usize);
        let mut frame = start;
        while frame < start + len {
            let typer = read64(frame + GICR_TYPER);
            if typer >> 32 == affinity {
                return frame;
            }
            if typer & GICR_TYPER_LAST != 0 {
                break;
            }
            // Two 64 KiB frames (RD, SGI) per redistributor, four with virtual LPIs (GICv4).
            frame += match stride {
                0 if typer & GICR_TYPER_VLPIS != 0 => 0x4_0000,
                0 => 0x2_0000,
                stride => stride,
            };
        }
    }
    panic!("no GICv3 redistributor for MPIDR {mpidr:#x}");
}

/// Sends the wake-up SGI to every other CPU, after this CPU's earlier stores are visible.
pub(crate) fn wake_others() {
    if version() == 3 {
        // ICC_SGI1R_EL1: IRM (bit 40) = 1 targets every PE but this one; INTID in 27:24.
        let value = 1u64 << 40 | u64::from(WAKE_SGI) << 24;
        // SAFETY: sending an SGI only makes other CPUs take an interrupt they handle.
        unsafe {
            // `dsb ishst`: stores before this point (a published job) are visible to every
            // CPU before the SGI is generated; `isb` makes the SGI write take effect now. Not
            // `nomem`: the barrier orders memory accesses. No stack, flags untouched.
            asm!("dsb ishst", "msr icc_sgi1r_el1, {value}", "isb", value = in(reg) value, options(nostack, preserves_flags));
        }
        return;
    }
    // SAFETY: a barrier only.
    unsafe {
        // `dsb ishst`: normal-memory stores before this point (a published job) are visible
        // to every CPU before the SGI write below reaches the GIC. Not `nomem`: it orders
        // memory accesses. No stack, flags untouched.
        asm!("dsb ishst", options(nostack, preserves_flags));
    }
    write(DISTRIBUTOR.load(Ordering::Relaxed) + GICD_SGIR, SGIR_ALL_OTHERS | WAKE_SGI);
}

/// Acknowledges the highest-priority pending interrupt: the value to end it with.
fn acknowledge() -> u32 {
    if version() == 3 {
        let value: u64;
        // SAFETY: acknowledging is what the IRQ handler is for; the value is ended below.
        unsafe {
            // A system register read with side effects on the GIC only: no memory, no stack,
            // flags untouched.
            asm!("mrs {value}, icc_iar1_el1", value = out(reg) value, options(nomem, nostack, preserves_flags));
        }
        return value as u32;
    }
    read(CPU_INTERFACE.load(Ordering::Relaxed) + GICC_IAR)
}

/// Ends the interrupt `acknowledged` (priority drop and deactivation).
fn end(acknowledged: u32) {
    if version() == 3 {
        // SAFETY: ends an interrupt this CPU acknowledged.
        unsafe {
            // A system register write: no memory, no stack, flags untouched.
            asm!("msr icc_eoir1_el1, {value}", value = in(reg) u64::from(acknowledged), options(nomem, nostack, preserves_flags));
        }
        return;
    }
    write(CPU_INTERFACE.load(Ordering::Relaxed) + GICC_EOIR, acknowledged);
}

/// Handles every pending interrupt on this CPU; called from the IRQ vector.
pub(crate) fn handle_irq() {
    let timer = TIMER_INTID.load(Ordering::Relaxed) as u32;
    // GICv2 keeps the ID in bits 9:0 (the source CPU of an SGI above them); GICv3 in 23:0.
    let id_mask = if version() == 3 { 0xFF_FFFF } else { 0x3FF };
    loop {
        let acknowledged = acknowledge();
        let id = acknowledged & id_mask;
        if (SPURIOUS..SPURIOUS + 4).contains(&id) {
            return;
        }
        if id == timer {
            crate::timer::on_interrupt();
        } else if id == WAKE_SGI {
            // Only wakes the CPU from `wfi`; the idle loop then looks for work.
        } else {
            crate::console::println!("aarch64: unexpected interrupt {id}");
        }
        end(acknowledged);
    }
}
