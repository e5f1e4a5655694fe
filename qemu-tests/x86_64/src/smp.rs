//! Bringing up the other CPUs and handing them work.
//!
//! Bring-up: the boot CPU copies a 16-bit trampoline to [`TRAMPOLINE`] (below 1 MiB),
//! patches in its own CR3, CR4, EFER bits and GDT, sends INIT to every other CPU the MADT
//! lists, waits 10 ms, then starts them one at a time with STARTUP (twice if the first is
//! missed), each with a stack of its own from the heap and the next dense index. The
//! trampoline goes from real mode straight to long mode (paging and protection in one CR0
//! write, then a far jump to the 64-bit code segment) and jumps to `x86k_ap_entry64`, which
//! takes the stack and calls [`ap_main`]. Every wait is bounded by the clock.
//!
//! Work: secondaries wait in [`work_loop`] with interrupts masked. A job is published as a
//! pointer plus a generation number; every online secondary acknowledges every generation
//! (running the work only if its index is below the job's CPU count), so the boot CPU can
//! reuse or drop the job, which lives on its stack, once the count of acknowledgements is
//! complete.

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use alloc::boxed::Box;
use platform::arch::x86_64::{MAX_CPUS, interrupts_enabled};

use crate::console::println;
use crate::cpu::{disable_interrupts, enable_interrupts};
use crate::interrupts::WAKE_VECTOR;
use crate::{apic, interrupts, time};

/// Where the trampoline is copied: page 8, the STARTUP vector.
const TRAMPOLINE: u64 = 0x8000;
/// Each secondary CPU's stack.
const STACK_SIZE: usize = 64 << 10;

/// The stack top the next secondary takes (read by `x86k_ap_entry64`); 0 makes a late
/// starter park itself.
static AP_STACK_TOP: AtomicU64 = AtomicU64::new(0);
/// The index the next secondary takes.
static AP_INDEX: AtomicUsize = AtomicUsize::new(0);
/// Set by a secondary once it has taken its stack and index.
static AP_STARTED: AtomicBool = AtomicBool::new(false);
/// CPUs that finished their setup, the boot CPU included.
static ONLINE: AtomicUsize = AtomicUsize::new(1);

// The trampoline, assembled for 0x8000 but kept in .rodata and copied there. CS = 0x0800
// (the STARTUP vector), so DS = CS addresses its data by offset. The data words at the end
// are patched by `start_secondaries`.
global_asm!(
    r#"
    .section .rodata.x86k_trampoline, "a"
    .balign 16
    .global x86k_trampoline_start
x86k_trampoline_start:
    .code16
    cli
    cld
    mov %cs, %ax
    mov %ax, %ds
    lgdtl (x86k_trampoline_gdtr - x86k_trampoline_start)
    movl (x86k_trampoline_cr4 - x86k_trampoline_start), %eax
    mov %eax, %cr4
    movl (x86k_trampoline_cr3 - x86k_trampoline_start), %eax
    mov %eax, %cr3
    mov $0xC0000080, %ecx
    rdmsr
    orl (x86k_trampoline_efer - x86k_trampoline_start), %eax
    wrmsr
    mov %cr0, %eax
    andl $0x9FFFFFFF, %eax
    orl $0x80010001, %eax
    mov %eax, %cr0
    ljmpl $0x08, $x86k_ap_entry64
    .balign 8
    .global x86k_trampoline_gdtr
x86k_trampoline_gdtr:
    .word 0
    .long 0
    .balign 4
    .global x86k_trampoline_cr3
x86k_trampoline_cr3:
    .long 0
    .global x86k_trampoline_cr4
x86k_trampoline_cr4:
    .long 0
    .global x86k_trampoline_efer
x86k_trampoline_efer:
    .long 0
    .global x86k_trampoline_end
x86k_trampoline_end:
    .code64

    .section .text.x86k_ap_entry, "ax"
x86k_ap_entry64:
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    xor %eax, %eax
    mov %eax, %fs
    mov %eax, %gs
    mov {stack_top}(%rip), %rsp
    test %rsp, %rsp
    jz 2f
    xor %ebp, %ebp
    call {ap_main}
2:
    cli
    hlt
    jmp 2b
    "#,
    stack_top = sym AP_STACK_TOP,
    ap_main = sym ap_main,
    options(att_syntax)
);

unsafe extern "C" {
    static x86k_trampoline_start: u8;
    static x86k_trampoline_gdtr: u8;
    static x86k_trampoline_cr3: u8;
    static x86k_trampoline_cr4: u8;
    static x86k_trampoline_efer: u8;
    static x86k_trampoline_end: u8;
}

/// Copies the trampoline to [`TRAMPOLINE`] and fills in the boot CPU's paging and GDT.
fn install_trampoline() {
    let start = &raw const x86k_trampoline_start;
    let len = &raw const x86k_trampoline_end as usize - start as usize;
    let field = |symbol: *const u8| (TRAMPOLINE as usize + (symbol as usize - start as usize)) as *mut u8;
    let (cr3, cr4): (u64, u64);
    let mut gdtr = [0u8; 10];
    // SAFETY: reading CR3 and CR4 has no side effects (no memory, stack or flags);
    // `sgdt` stores the 10-byte GDTR into `gdtr` (memory: no `nomem`).
    unsafe {
        asm!("mov {}, cr3", out(reg) cr3, options(nomem, nostack, preserves_flags));
        asm!("mov {}, cr4", out(reg) cr4, options(nomem, nostack, preserves_flags));
        asm!("sgdt [{}]", in(reg) gdtr.as_mut_ptr(), options(nostack, preserves_flags));
    }
    let gdt_base = u64::from_le_bytes(gdtr[2..10].try_into().unwrap());
    assert!(cr3 < 1 << 32 && gdt_base < 1 << 32, "the trampoline needs page tables and GDT below 4 GiB");
    // SAFETY: IA32_EFER exists on every x86-64 CPU.
    let efer = unsafe { crate::cpu::rdmsr(0xC000_0080) };
    // SAFETY: TRAMPOLINE is a page of low RAM the kernel keeps for itself (below 1 MiB,
    // never given to the heap; `main` checks the memory map says it is RAM), identity-mapped
    // by the boot code; no secondary runs yet. The fields are inside the copied range.
    unsafe {
        core::ptr::copy_nonoverlapping(start, TRAMPOLINE as *mut u8, len);
        field(&raw const x86k_trampoline_gdtr)
            .cast::<u16>()
            .write_unaligned(u16::from_le_bytes([gdtr[0], gdtr[1]]));
        field(&raw const x86k_trampoline_gdtr).add(2).cast::<u32>().write_unaligned(gdt_base as u32);
        field(&raw const x86k_trampoline_cr3).cast::<u32>().write_unaligned(cr3 as u32);
        field(&raw const x86k_trampoline_cr4).cast::<u32>().write_unaligned(cr4 as u32);
        // Long mode enable and, if the boot CPU has it, no-execute.
        field(&raw const x86k_trampoline_efer).cast::<u32>().write_unaligned((efer & 0x900) as u32);
    }
}

/// The physical page the trampoline occupies: `(start, length)`.
pub(crate) const fn trampoline_page() -> (u64, u64) {
    (TRAMPOLINE, 0x1000)
}

/// Waits up to `microseconds` for a secondary to report it took its stack.
fn wait_started(microseconds: u64) -> bool {
    let deadline = time::now_ns() + microseconds * 1000;
    loop {
        if AP_STARTED.load(Ordering::Acquire) {
            return true;
        }
        if time::now_ns() > deadline {
            return false;
        }
        core::hint::spin_loop();
    }
}

/// Starts every CPU in `apic_ids` except the boot CPU; returns how many CPUs are online.
/// Boot CPU, once, after the heap and the clock are ready.
pub(crate) fn start_secondaries(apic_ids: &[u32]) -> usize {
    install_trampoline();
    let own_id = apic::id();
    let others = || apic_ids.iter().copied().filter(move |&id| id != own_id);
    for id in others() {
        assert!(apic::send_init(id), "INIT to APIC {id} was not sent");
    }
    time::delay_us(10_000);
    let mut expected = 1;
    for id in others() {
        if expected == MAX_CPUS {
            break;
        }
        let stack = Box::leak(Box::<[u8]>::new_uninit_slice(STACK_SIZE));
        AP_INDEX.store(expected, Ordering::Relaxed);
        AP_STACK_TOP.store(stack.as_ptr_range().end as u64 & !0xF, Ordering::Relaxed);
        AP_STARTED.store(false, Ordering::Release);
        let (trampoline, _) = trampoline_page();
        let page = (trampoline >> 12) as u8;
        // A real CPU takes microseconds. Under emulation with many vCPUs on few host cores a
        // new vCPU may not run for a second or more, so the wait after the second STARTUP is
        // long: it only costs time when a listed CPU never starts.
        let started = apic::send_startup(id, page)
            && (wait_started(1_000) || { apic::send_startup(id, page) && wait_started(10_000_000) });
        if !started {
            // Whatever starts later finds no stack and parks itself.
            AP_STACK_TOP.store(0, Ordering::Release);
            println!("x86_64 boot: CPU with APIC ID {id} did not start; using {expected} CPUs");
            break;
        }
        expected += 1;
    }
    // Wait (bounded) for the last ones to finish their setup.
    let deadline = time::now_ns() + 1_000_000_000;
    while ONLINE.load(Ordering::Acquire) < expected && time::now_ns() < deadline {
        core::hint::spin_loop();
    }
    ONLINE.load(Ordering::Acquire)
}

/// CPUs online, the boot CPU included.
pub(crate) fn cpus_online() -> usize {
    ONLINE.load(Ordering::Acquire)
}

/// A secondary CPU's first Rust code, on its own stack, interrupts masked.
extern "C" fn ap_main() -> ! {
    let index = AP_INDEX.load(Ordering::Relaxed);
    AP_STARTED.store(true, Ordering::Release);
    // SAFETY: first thing on this CPU, interrupts masked; the boot CPU gives each
    // secondary a different index (it waits for AP_STARTED before the next one).
    #[cfg(not(feature = "readme-heap"))]
    unsafe {
        platform::arch::x86_64::init_cpu(index)
    };
    // SAFETY: as above (the README heap's boot call, which is `init_cpu`).
    #[cfg(feature = "readme-heap")]
    unsafe {
        crate::readme_heap::init_heap_cpu(index)
    };
    interrupts::load();
    apic::init_this_cpu();
    let seen = GENERATION.load(Ordering::Acquire);
    ONLINE.fetch_add(1, Ordering::Release);
    work_loop(index, seen)
}

/// Work for the CPUs below `cpus`.
struct Job<'a> {
    work: &'a (dyn Fn(usize) + Sync),
    cpus: usize,
}

/// The current job; valid while acknowledgements are pending.
static JOB: AtomicPtr<Job<'static>> = AtomicPtr::new(core::ptr::null_mut());
/// Bumped for every job.
static GENERATION: AtomicUsize = AtomicUsize::new(0);
/// Secondaries that have not acknowledged the current job yet.
static PENDING: AtomicUsize = AtomicUsize::new(0);

/// Runs `work` with interrupts enabled, restoring the previous state after.
fn run_with_interrupts(work: &(dyn Fn(usize) + Sync), cpu: usize) {
    let were_enabled = interrupts_enabled();
    // SAFETY: called outside any interrupt guard or allocator critical section (from the
    // work loop, or from the suite's code on the boot CPU), with the IDT loaded.
    unsafe { enable_interrupts() };
    work(cpu);
    if !were_enabled {
        disable_interrupts();
    }
}

/// Halts until an interrupt arrives (the wake-up IPI of `run_on_cpus`), so that an idle
/// CPU leaves its host CPU to the working ones under emulation. Interrupts masked before and
/// after: `sti` enables them only after the next instruction, so an IPI pending or arriving
/// now ends the `hlt` instead of being taken before it.
fn idle_until_interrupt() {
    // SAFETY: idle CPUs hold no interrupt guard or allocator critical section, the IDT
    // handles every interrupt that may arrive (the wake-up IPI, a stray timer tick). Not
    // `nomem`: the caller's loads of GENERATION must not move across it. No stack; IF is
    // not a status flag.
    unsafe { asm!("sti", "hlt", "cli", options(nostack, preserves_flags)) };
}

fn work_loop(index: usize, mut seen: usize) -> ! {
    loop {
        let generation = GENERATION.load(Ordering::Acquire);
        if generation == seen {
            idle_until_interrupt();
            continue;
        }
        seen = generation;
        // SAFETY: the job stays alive until every secondary, this one included, has
        // acknowledged this generation below; the Acquire load of GENERATION sees the
        // pointer stored before it was bumped.
        let job = unsafe { &*JOB.load(Ordering::Relaxed) };
        if index < job.cpus {
            run_with_interrupts(job.work, index);
        }
        PENDING.fetch_sub(1, Ordering::Release);
    }
}

/// Runs `work(cpu)` on CPUs `0..cpus` at once, CPU 0 being the caller, and returns when all
/// are done. Boot CPU only.
pub(crate) fn run_on_cpus(cpus: usize, work: &(dyn Fn(usize) + Sync)) {
    assert_eq!(platform::arch::x86_64::current_cpu_racy(), 0, "run_on_cpus is for the boot CPU");
    let online = cpus_online();
    assert!(cpus <= online, "{cpus} CPUs asked for, {online} online");
    let job = Job { work, cpus };
    JOB.store(&job as *const Job<'_> as *mut Job<'static>, Ordering::Relaxed);
    PENDING.store(online - 1, Ordering::Relaxed);
    GENERATION.fetch_add(1, Ordering::Release);
    // Every secondary, halted or about to halt, wakes up and sees the new generation.
    if online > 1 {
        assert!(apic::send_to_others(WAKE_VECTOR), "the wake-up IPI was not sent");
    }
    if cpus > 0 {
        run_with_interrupts(work, 0);
    }
    while PENDING.load(Ordering::Acquire) != 0 {
        core::hint::spin_loop();
    }
    JOB.store(core::ptr::null_mut(), Ordering::Relaxed);
}
