//! The IDT shared by every CPU: fatal handlers for the 32 exceptions, the local APIC
//! timer, and quiet returns for spurious interrupts; the legacy PIC is remapped and masked.
//!
//! Every gate is an interrupt gate, so handlers run with interrupts masked: an allocator
//! critical section (interrupts masked) is never interrupted by a handler on its CPU.
//! Handlers run on the interrupted stack (no TSS, no IST): a kernel stack overflow ends in
//! a triple fault, which QEMU with `-no-reboot` reports as exit status 0, never a pass.

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use platform::arch::x86_64::current_cpu_racy;

use crate::apic;
use crate::boot::KERNEL_CODE_SELECTOR;
use crate::console::println;
use crate::cpu::{ExitCode, exit, outb};

/// The local APIC timer's vector.
pub(crate) const TIMER_VECTOR: u8 = 0x40;
/// The vector of the IPI that wakes halted idle CPUs (its handler only acknowledges it).
pub(crate) const WAKE_VECTOR: u8 = 0x41;
/// The local APIC's spurious-interrupt vector.
pub(crate) const SPURIOUS_VECTOR: u8 = 0xFF;
/// Where the legacy PIC's 16 lines land after remapping (masked, but a spurious IRQ 7 or
/// 15 can still arrive).
const PIC_VECTORS: core::ops::Range<usize> = 0x20..0x30;
/// The vector number the catch-all stub reports; the handler asks the local APIC instead.
const UNKNOWN_VECTOR: u64 = 0xFFFF;

/// 256 gates of 16 bytes: two words each.
#[repr(C, align(16))]
struct Idt([AtomicU64; 512]);

static IDT: Idt = Idt([const { AtomicU64::new(0) }; 512]);

/// The function the timer interrupt calls (a `fn(usize)` as an address), or 0.
static TIMER_HANDLER: AtomicUsize = AtomicUsize::new(0);

// Entry stubs. Exceptions push a zero where the CPU pushes no error code, then the vector,
// so `x86k_exception_common` always builds the same frame (`ExceptionFrame`) before calling
// the Rust handler, which never returns. The timer stub saves the registers the C ABI lets
// a callee clobber (the target is soft-float: no vector state to save); nine pushes after
// the CPU's five-word frame leave the stack 16-byte aligned for the call.
global_asm!(
    r#"
    .section .text.x86k_vectors, "ax"
    .code64
    .macro X86K_EXCEPTION vector, has_error
    .balign 16
x86k_exception_\vector:
    .if \has_error == 0
    push $0
    .endif
    push $\vector
    jmp x86k_exception_common
    .endm

    .irp vector, 0,1,2,3,4,5,6,7,9,15,16,18,19,20,22,23,24,25,26,27,28,31
    X86K_EXCEPTION \vector, 0
    .endr
    .irp vector, 8,10,11,12,13,14,17,21,29,30
    X86K_EXCEPTION \vector, 1
    .endr

    .global x86k_unknown_stub
    .balign 16
x86k_unknown_stub:
    push $0
    push ${unknown}
    jmp x86k_exception_common

x86k_exception_common:
    cld
    push %rax
    push %rbx
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %rbp
    push %r8
    push %r9
    push %r10
    push %r11
    push %r12
    push %r13
    push %r14
    push %r15
    mov %rsp, %rdi
    call {exception_entry}
    ud2

    .global x86k_timer_stub
    .balign 16
x86k_timer_stub:
    push %rax
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %r8
    push %r9
    push %r10
    push %r11
    cld
    call {timer_entry}
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rax
    iretq

    .global x86k_ignore_stub
    .balign 16
x86k_ignore_stub:
    iretq

    .global x86k_wake_stub
    .balign 16
x86k_wake_stub:
    push %rax
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %r8
    push %r9
    push %r10
    push %r11
    cld
    call {wake_entry}
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rax
    iretq

    .section .rodata.x86k_vectors, "a"
    .balign 8
    .global x86k_exception_stubs
x86k_exception_stubs:
    .irp vector, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad x86k_exception_\vector
    .endr
    "#,
    unknown = const UNKNOWN_VECTOR,
    exception_entry = sym exception_entry,
    timer_entry = sym timer_entry,
    wake_entry = sym wake_entry,
    options(att_syntax)
);

unsafe extern "C" {
    /// The 32 exception stubs' addresses, by vector.
    static x86k_exception_stubs: [u64; 32];
    fn x86k_unknown_stub();
    fn x86k_timer_stub();
    fn x86k_ignore_stub();
    fn x86k_wake_stub();
}

/// What `x86k_exception_common` leaves on the stack: the pushed registers (last pushed
/// first), the vector and error code, and the CPU's interrupt frame.
#[repr(C)]
#[derive(Debug)]
struct ExceptionFrame {
    r15: u64,
    r14: u64,
    r13: u64,
    r12: u64,
    r11: u64,
    r10: u64,
    r9: u64,
    r8: u64,
    rbp: u64,
    rdi: u64,
    rsi: u64,
    rdx: u64,
    rcx: u64,
    rbx: u64,
    rax: u64,
    vector: u64,
    error_code: u64,
    rip: u64,
    cs: u64,
    rflags: u64,
    rsp: u64,
    ss: u64,
}

const EXCEPTION_NAMES: [&str; 32] = [
    "divide error",
    "debug",
    "NMI",
    "breakpoint",
    "overflow",
    "bound range",
    "invalid opcode",
    "device not available",
    "double fault",
    "coprocessor segment overrun",
    "invalid TSS",
    "segment not present",
    "stack-segment fault",
    "general protection",
    "page fault",
    "reserved",
    "x87 floating point",
    "alignment check",
    "machine check",
    "SIMD floating point",
    "virtualization",
    "control protection",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "hypervisor injection",
    "VMM communication",
    "security",
    "reserved",
];

/// Reports a fatal exception (or an unexpected interrupt) and ends the run with failure.
extern "C" fn exception_entry(frame: &ExceptionFrame) -> ! {
    let cr2: u64;
    // SAFETY: reading CR2 (the last page-fault address) has no side effects; no memory,
    // stack or flags are involved.
    unsafe { asm!("mov {}, cr2", out(reg) cr2, options(nomem, nostack, preserves_flags)) };
    let (vector, name) = match frame.vector {
        UNKNOWN_VECTOR => (apic::in_service_vector().map_or(-1, i64::from), "unexpected interrupt"),
        vector => (vector as i64, EXCEPTION_NAMES[vector as usize % 32]),
    };
    println!(
        "x86_64: EXCEPTION {name} (vector {vector}) on CPU {cpu}: error code {error:#x}, rip {rip:#x}, \
         cr2 {cr2:#x}, rsp {rsp:#x}, rflags {flags:#x}",
        cpu = current_cpu_racy(),
        error = frame.error_code,
        rip = frame.rip,
        rsp = frame.rsp,
        flags = frame.rflags,
    );
    println!(
        "x86_64:   rax {:#x} rbx {:#x} rcx {:#x} rdx {:#x} rsi {:#x} rdi {:#x} rbp {:#x}",
        frame.rax, frame.rbx, frame.rcx, frame.rdx, frame.rsi, frame.rdi, frame.rbp
    );
    exit(ExitCode::Failure)
}

/// The local APIC timer: calls the installed handler with this CPU's index, then
/// acknowledges the interrupt.
extern "C" fn timer_entry() {
    let handler = TIMER_HANDLER.load(Ordering::Acquire);
    if handler != 0 {
        // SAFETY: TIMER_HANDLER only ever holds 0 or an address made from a `fn(usize)` by
        // `set_timer_handler`.
        let handler = unsafe { core::mem::transmute::<usize, fn(usize)>(handler) };
        handler(current_cpu_racy());
    }
    apic::end_of_interrupt();
}

/// The wake-up IPI: its only work is to end the `hlt` it interrupted.
extern "C" fn wake_entry() {
    apic::end_of_interrupt();
}

/// Sets the function the timer interrupt calls on every CPU.
pub(crate) fn set_timer_handler(handler: Option<fn(usize)>) {
    TIMER_HANDLER.store(handler.map_or(0, |handler| handler as usize), Ordering::Release);
}

/// An interrupt gate to `handler` in the kernel code segment, ring 0, no IST.
fn gate(handler: u64) -> (u64, u64) {
    let low = (handler & 0xFFFF)
        | (u64::from(KERNEL_CODE_SELECTOR) << 16)
        | (0x8E << 40) // present, DPL 0, 64-bit interrupt gate
        | (((handler >> 16) & 0xFFFF) << 48);
    (low, handler >> 32)
}

fn set_gate(vector: usize, handler: u64) {
    let (low, high) = gate(handler);
    IDT.0[2 * vector].store(low, Ordering::Relaxed);
    IDT.0[2 * vector + 1].store(high, Ordering::Relaxed);
}

/// Fills the IDT (boot CPU, once, before any CPU loads it) and masks the legacy PIC.
pub(crate) fn init() {
    // SAFETY: the stub table is a read-only array defined in the assembly above.
    let exceptions: &[u64; 32] = unsafe { &x86k_exception_stubs };
    for (vector, &stub) in exceptions.iter().enumerate() {
        set_gate(vector, stub);
    }
    for vector in exceptions.len()..256 {
        let handler = match vector {
            vector if PIC_VECTORS.contains(&vector) => x86k_ignore_stub as *const () as u64,
            vector if vector == usize::from(TIMER_VECTOR) => x86k_timer_stub as *const () as u64,
            vector if vector == usize::from(WAKE_VECTOR) => x86k_wake_stub as *const () as u64,
            vector if vector == usize::from(SPURIOUS_VECTOR) => x86k_ignore_stub as *const () as u64,
            _ => x86k_unknown_stub as *const () as u64,
        };
        set_gate(vector, handler);
    }
    mask_legacy_pic();
}

/// Loads the IDT on the calling CPU.
pub(crate) fn load() {
    #[repr(C, packed)]
    struct Pointer {
        limit: u16,
        base: u64,
    }
    let pointer = Pointer { limit: (size_of::<Idt>() - 1) as u16, base: &raw const IDT as u64 };
    // SAFETY: the IDT is a static filled by `init` with gates to the stubs above, which
    // handle every vector. `lidt` reads the 10-byte pointer (memory: no `nomem`), uses no
    // stack and changes no flags.
    unsafe { asm!("lidt [{}]", in(reg) &raw const pointer, options(readonly, nostack, preserves_flags)) };
}

/// Remaps the 8259 PICs to vectors 0x20-0x2F (away from the exceptions) and masks every
/// line: the kernel uses only local APIC interrupts.
fn mask_legacy_pic() {
    const MASTER: u16 = 0x20;
    const SLAVE: u16 = 0xA0;
    let steps: [(u16, u8); 10] = [
        (MASTER, 0x11), // ICW1: initialise, ICW4 follows
        (SLAVE, 0x11),
        (MASTER + 1, PIC_VECTORS.start as u8), // ICW2: vector base
        (SLAVE + 1, PIC_VECTORS.start as u8 + 8),
        (MASTER + 1, 0x04), // ICW3: slave on line 2
        (SLAVE + 1, 0x02),
        (MASTER + 1, 0x01), // ICW4: 8086 mode
        (SLAVE + 1, 0x01),
        (MASTER + 1, 0xFF), // mask every line
        (SLAVE + 1, 0xFF),
    ];
    for (port, value) in steps {
        // SAFETY: the standard 8259 initialisation sequence; nothing else drives the PICs.
        // Port 0x80 (POST codes) gives the old chips their settling time.
        unsafe {
            outb(port, value);
            outb(0x80, 0);
        }
    }
}
