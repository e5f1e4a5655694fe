//! Secondary CPUs: started one at a time with PSCI CPU_ON through the conduit the device tree
//! names, then parked in a loop that runs the work [`run_on_cpus`] hands out.
//!
//! Concurrency: the job slot is a spin lock holding a copyable description of the current
//! job; each job has a fresh generation number so that a CPU runs it exactly once, and the
//! boot CPU does not return (or clear the slot) before every participant has counted itself
//! done with a release increment of `DONE`. Idle CPUs sleep in `wfi` (under QEMU a sleeping
//! vCPU leaves the host CPU to the others); the boot CPU wakes them with an SGI when it
//! publishes a job.

use core::alloc::Layout;
use core::arch::asm;
use core::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};

use platform::arch::aarch64::{InterruptGuard, MAX_CPUS, current_cpu_racy};

use crate::boot::{SecondaryBoot, secondary_start};
use crate::console::println;
use crate::dtb::{BootInfo, Conduit};
use crate::exceptions::with_interrupts_enabled;

/// PSCI CPU_ON, SMC64 calling convention.
const PSCI_CPU_ON: u64 = 0xC400_0003;
/// PSCI SYSTEM_OFF.
const PSCI_SYSTEM_OFF: u64 = 0x8400_0008;
/// Bytes of stack each secondary CPU gets (interrupt frames included).
const SECONDARY_STACK: usize = 128 * 1024;
/// How long a started CPU may take to report in (generous: under emulation on a loaded host
/// a vCPU may not run for a while).
const START_TIMEOUT_NS: u64 = 10_000_000_000;

/// One boot record per CPU index; a started CPU reads its own with the MMU off.
static RECORDS: [SecondaryBoot; MAX_CPUS] = [const { SecondaryBoot::new() }; MAX_CPUS];
/// CPUs running, the boot CPU included. Indices `0..ONLINE` are in use.
static ONLINE: AtomicUsize = AtomicUsize::new(1);

/// The work of one `run_on_cpus` call.
#[derive(Clone, Copy)]
struct Job {
    generation: u64,
    cpus: usize,
    work: &'static (dyn Fn(usize) + Sync),
}

static JOB: spin::Mutex<Option<Job>> = spin::Mutex::new(None);
static LAST_GENERATION: AtomicU64 = AtomicU64::new(0);
/// Secondary CPUs done with the current job.
static DONE: AtomicUsize = AtomicUsize::new(0);

/// The PSCI conduit: 0 = none (yet), 1 = hvc, 2 = smc.
static CONDUIT: AtomicU8 = AtomicU8::new(0);

/// Records the PSCI conduit of the device tree, for CPU_ON and SYSTEM_OFF.
pub(crate) fn set_conduit(conduit: Option<Conduit>) {
    let code = match conduit {
        None => 0,
        Some(Conduit::Hvc) => 1,
        Some(Conduit::Smc) => 2,
    };
    CONDUIT.store(code, Ordering::Relaxed);
}

/// Powers the machine off through PSCI SYSTEM_OFF (QEMU then exits with status 0, whatever
/// went wrong); returns only if there is no PSCI or the call failed.
pub(crate) fn system_off() {
    let conduit = match CONDUIT.load(Ordering::Relaxed) {
        1 => Conduit::Hvc,
        2 => Conduit::Smc,
        _ => return,
    };
    psci_call(conduit, PSCI_SYSTEM_OFF, 0, 0, 0);
}

/// CPUs online, the boot CPU included.
pub(crate) fn online() -> usize {
    ONLINE.load(Ordering::Acquire)
}

/// Starts every CPU the device tree lists, one at a time; returns how many run in all.
/// Needs the heap (for stacks) and the GIC distributor set up.
pub(crate) fn start_secondaries(info: &BootInfo) -> usize {
    if info.cpu_count > 1 && info.psci.is_none() {
        println!("aarch64: no PSCI node: running on the boot CPU only");
        return online();
    }
    let mmu = crate::mmu::settings();
    for &mpidr in &info.cpus[1..info.cpu_count] {
        let Some(conduit) = info.psci else { break };
        let index = online();
        let layout = Layout::from_size_align(SECONDARY_STACK, 16).expect("a valid stack layout");
        // SAFETY: the layout has a non-zero size. The stack is never freed: the CPU runs
        // until the machine stops.
        let stack = unsafe { alloc::alloc::alloc(layout) };
        assert!(!stack.is_null(), "no memory for the stack of CPU {index}");
        let record = &RECORDS[index];
        record.vbar.store(vbar(), Ordering::Relaxed);
        record.mair.store(mmu.mair, Ordering::Relaxed);
        record.tcr.store(mmu.tcr, Ordering::Relaxed);
        record.ttbr0.store(mmu.ttbr0, Ordering::Relaxed);
        record.ttbr1.store(mmu.ttbr1, Ordering::Relaxed);
        record.sctlr.store(mmu.sctlr, Ordering::Relaxed);
        record.stack_top.store(stack as u64 + SECONDARY_STACK as u64, Ordering::Relaxed);
        record.cpu_index.store(index as u64, Ordering::Relaxed);
        // The new CPU reads the record with its MMU and caches off, from memory.
        crate::mmu::clean_to_poc(record as *const SecondaryBoot as u64, size_of::<SecondaryBoot>() as u64);

        let entry = secondary_start as *const () as u64;
        let context = record as *const SecondaryBoot as u64;
        let status = psci_call(conduit, PSCI_CPU_ON, mpidr, entry, context);
        if status != 0 {
            println!("aarch64: PSCI CPU_ON of MPIDR {mpidr:#x} failed with {status}");
            continue;
        }
        let start = crate::timer::now_ns();
        while online() == index {
            assert!(
                crate::timer::now_ns() - start < START_TIMEOUT_NS,
                "CPU with MPIDR {mpidr:#x} did not come up within 10 s"
            );
            core::hint::spin_loop();
        }
    }
    online()
}

/// Rust entry of a secondary CPU, called by `secondary_start` with the MMU on, on its own
/// stack, interrupts masked.
pub(crate) extern "C" fn secondary_main(record: &'static SecondaryBoot) -> ! {
    let index = record.cpu_index.load(Ordering::Relaxed) as usize;
    // SAFETY: the boot CPU hands out each index once, densely, below MAX_CPUS, and this is
    // the first thing this CPU does; nothing else writes TPIDR_EL1.
    #[cfg(not(feature = "readme-heap"))]
    unsafe {
        platform::arch::aarch64::init_cpu(index)
    };
    // SAFETY: as above (the README heap's boot call, which is `init_cpu`).
    #[cfg(feature = "readme-heap")]
    unsafe {
        crate::readme_heap::init_heap_cpu(index)
    };
    crate::gic::init_cpu();
    ONLINE.fetch_add(1, Ordering::Release);
    // Interrupts stay masked here except around work and right after waking: a wake-up SGI
    // that arrives between the look at the slot and `wfi` stays pending, and a pending
    // interrupt ends `wfi` even while masked, so no wake-up is lost.
    let mut last_generation = 0;
    loop {
        let job = *JOB.lock();
        match job {
            Some(job) if job.generation != last_generation && index < job.cpus => {
                last_generation = job.generation;
                with_interrupts_enabled(|| (job.work)(index));
                DONE.fetch_add(1, Ordering::Release);
            }
            _ => {
                wait_for_interrupt();
                // Take (acknowledge and end) whatever woke us.
                with_interrupts_enabled(|| ());
            }
        }
    }
}

/// Runs `work(cpu)` on CPUs `0..cpus` at once, with interrupts enabled, and returns when all
/// calls have returned. Called on the boot CPU.
pub(crate) fn run_on_cpus(cpus: usize, work: &(dyn Fn(usize) + Sync)) {
    assert!((1..=online()).contains(&cpus), "run_on_cpus({cpus}) with {} CPUs online", online());
    assert_eq!(current_cpu_racy(), 0, "run_on_cpus is called on the boot CPU");
    // SAFETY: the extended reference is used only by secondary CPUs running this job, and
    // this function neither returns nor unwinds (panics abort) before every one of them has
    // finished (DONE) and the job is removed from the slot.
    let work: &'static (dyn Fn(usize) + Sync) =
        unsafe { core::mem::transmute::<&(dyn Fn(usize) + Sync), &'static (dyn Fn(usize) + Sync)>(work) };
    let generation = LAST_GENERATION.fetch_add(1, Ordering::Relaxed) + 1;
    DONE.store(0, Ordering::Relaxed);
    {
        let _masked = InterruptGuard::new();
        *JOB.lock() = Some(Job { generation, cpus, work });
    }
    crate::gic::wake_others();
    with_interrupts_enabled(|| work(0));
    while DONE.load(Ordering::Acquire) < cpus - 1 {
        core::hint::spin_loop();
    }
    let _masked = InterruptGuard::new();
    *JOB.lock() = None;
}

/// A PSCI call (SMC Calling Convention, 64-bit) through `conduit`.
fn psci_call(conduit: Conduit, function: u64, arg1: u64, arg2: u64, arg3: u64) -> i64 {
    let result: u64;
    // SAFETY: PSCI calls are firmware services defined by the SMCCC: they may clobber x0-x17
    // (declared) and preserve everything else. CPU_ON starts a CPU at `secondary_start`,
    // which only uses its own record and stack.
    unsafe {
        // `hvc #0` / `smc #0` trap to the firmware at EL2 / EL3. Memory is not declared
        // untouched: the call starts a CPU that reads our memory. No stack use by us.
        match conduit {
            Conduit::Hvc => asm!(
                "hvc #0",
                inlateout("x0") function => result,
                inlateout("x1") arg1 => _, inlateout("x2") arg2 => _, inlateout("x3") arg3 => _,
                lateout("x4") _, lateout("x5") _, lateout("x6") _, lateout("x7") _,
                lateout("x8") _, lateout("x9") _, lateout("x10") _, lateout("x11") _,
                lateout("x12") _, lateout("x13") _, lateout("x14") _, lateout("x15") _,
                lateout("x16") _, lateout("x17") _,
                options(nostack),
            ),
            Conduit::Smc => asm!(
                "smc #0",
                inlateout("x0") function => result,
                inlateout("x1") arg1 => _, inlateout("x2") arg2 => _, inlateout("x3") arg3 => _,
                lateout("x4") _, lateout("x5") _, lateout("x6") _, lateout("x7") _,
                lateout("x8") _, lateout("x9") _, lateout("x10") _, lateout("x11") _,
                lateout("x12") _, lateout("x13") _, lateout("x14") _, lateout("x15") _,
                lateout("x16") _, lateout("x17") _,
                options(nostack),
            ),
        }
    }
    result as i64
}

/// VBAR_EL1 of this CPU (the vectors every CPU shares).
fn vbar() -> u64 {
    let value: u64;
    // SAFETY: reading VBAR_EL1 has no side effects.
    unsafe {
        // A register read: no memory, no stack, flags untouched.
        asm!("mrs {value}, vbar_el1", value = out(reg) value, options(nomem, nostack, preserves_flags));
    }
    value
}

/// Sleeps until an interrupt is pending (masked or not).
fn wait_for_interrupt() {
    // SAFETY: waiting changes no state.
    unsafe {
        // `wfi`: no stack, flags untouched. Not `nomem`, so that the loop re-reads the job
        // slot after waking.
        asm!("wfi", options(nostack, preserves_flags));
    }
}

/// With TPIDR_EL1 at 0 for a moment (its value at reset under QEMU, as on a CPU that never
/// ran `init_cpu`), and then at a garbage value, the platform reaches a record of no CPU
/// instead of faulting or taking another CPU's: the CPU index reads `usize::MAX` (so
/// `KernelPlatform`, sent to its masked path by the record's slot word, panics naming
/// `init_cpu`), `allocator_depth()` reads 0, and a guard masks interrupts and does not
/// unmask them. Boot CPU, interrupts masked.
pub(crate) fn uninitialized_cpu_is_detected() -> qemu_suite::Outcome {
    use platform::arch::aarch64::{InterruptGuard, allocator_depth, cpu_initialized, current_cpu_racy};
    let _outer = InterruptGuard::new();
    let read = || {
        let value: usize;
        // SAFETY: reading TPIDR_EL1 has no side effects.
        unsafe {
            core::arch::asm!("mrs {v}, tpidr_el1", v = out(reg) value, options(nomem, nostack, preserves_flags))
        };
        value
    };
    let write = |value: usize| {
        // SAFETY: interrupts are masked and nothing on this CPU reads TPIDR_EL1 until it is
        // restored below but the calls under test; the platform masks any value it reads.
        unsafe {
            core::arch::asm!("msr tpidr_el1, {v}", v = in(reg) value, options(nomem, nostack, preserves_flags))
        };
    };
    let saved = read();
    // 0, and a value whose bits under the platform's mask name the last record (no CPU's, even
    // with 64).
    for value in [0, 0x1234_5678_9abc_ff80] {
        write(value);
        let index = current_cpu_racy();
        let initialized = cpu_initialized();
        let depth = allocator_depth();
        drop(InterruptGuard::new());
        let masked = platform::arch::aarch64::interrupts_masked();
        write(saved);
        if index != usize::MAX || initialized || depth != 0 || !masked {
            return Err(alloc::format!(
                "with TPIDR_EL1 {value:#x}: index {index:#x}, initialised {initialized}, depth {depth}, \
                 masked after a guard {masked}"
            ));
        }
    }
    if !cpu_initialized() || current_cpu_racy() != 0 {
        return Err(alloc::format!("after restoring TPIDR_EL1 the CPU index is {:#x}", current_cpu_racy()));
    }
    Ok(())
}
