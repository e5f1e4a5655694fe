//! The EL1 exception vector table: IRQs go to the GIC driver; anything else (a synchronous
//! fault, an SError, an exception from a mode the kernel never uses) prints ESR/ELR/FAR and
//! exits QEMU with failure.
//!
//! Every entry saves the whole interrupted context (general registers, ELR, SPSR, FPSR,
//! FPCR and all 32 SIMD registers: Rust code uses NEON freely, and a handler may clobber any
//! caller-saved register) on the current stack, calls [`exception_entry`], and restores it.
//! Handlers run with interrupts masked (exception entry masks them) and never unmask them.

use core::arch::{asm, global_asm};
use core::mem::{offset_of, size_of};

/// The registers saved on exception entry, in the order the assembly stores them.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct TrapFrame {
    /// x0 to x30.
    pub(crate) x: [u64; 31],
    /// ELR_EL1: where the exception was taken.
    pub(crate) elr: u64,
    /// SPSR_EL1: PSTATE when it was taken.
    pub(crate) spsr: u64,
    /// FPSR.
    pub(crate) fpsr: u64,
    /// FPCR.
    pub(crate) fpcr: u64,
    _pad: u64,
    /// q0 to q31.
    pub(crate) q: [u128; 32],
}

const FRAME_SIZE: usize = size_of::<TrapFrame>();
const _: () = assert!(FRAME_SIZE.is_multiple_of(16) && offset_of!(TrapFrame, q).is_multiple_of(16));
const _: () = assert!(offset_of!(TrapFrame, elr) == 248 && offset_of!(TrapFrame, fpcr) == 272);

/// Vector index of a synchronous exception from the current EL using SP_EL1.
const SYNC_CURRENT_SPX: u64 = 4;
/// Vector index of an IRQ from the current EL using SP_EL1.
const IRQ_CURRENT_SPX: u64 = 5;

/// What each of the 16 vectors is, for the failure message.
const VECTOR_NAMES: [&str; 16] = [
    "synchronous, EL1 with SP_EL0",
    "IRQ, EL1 with SP_EL0",
    "FIQ, EL1 with SP_EL0",
    "SError, EL1 with SP_EL0",
    "synchronous",
    "IRQ",
    "FIQ",
    "SError",
    "synchronous from EL0 (AArch64)",
    "IRQ from EL0 (AArch64)",
    "FIQ from EL0 (AArch64)",
    "SError from EL0 (AArch64)",
    "synchronous from EL0 (AArch32)",
    "IRQ from EL0 (AArch32)",
    "FIQ from EL0 (AArch32)",
    "SError from EL0 (AArch32)",
];

// The table: 16 entries of 0x80 bytes, 2 KiB aligned (VBAR_EL1 ignores bits 10:0). Each
// entry makes room for a TrapFrame, saves x0/x1, puts its index in x0 and joins the common
// path, which saves the rest, calls `exception_entry(index, frame)`, restores and returns.
global_asm!(
    r#"
.macro vector index
    .balign 0x80
    sub     sp, sp, #{frame_size}
    stp     x0, x1, [sp, #0]
    mov     x0, #\index
    b       exception_common
.endm

.section .text.vectors, "ax"
.balign 0x800
.global exception_vectors
exception_vectors:
    vector 0
    vector 1
    vector 2
    vector 3
    vector 4
    vector 5
    vector 6
    vector 7
    vector 8
    vector 9
    vector 10
    vector 11
    vector 12
    vector 13
    vector 14
    vector 15

exception_common:
    stp     x2, x3, [sp, #16]
    stp     x4, x5, [sp, #32]
    stp     x6, x7, [sp, #48]
    stp     x8, x9, [sp, #64]
    stp     x10, x11, [sp, #80]
    stp     x12, x13, [sp, #96]
    stp     x14, x15, [sp, #112]
    stp     x16, x17, [sp, #128]
    stp     x18, x19, [sp, #144]
    stp     x20, x21, [sp, #160]
    stp     x22, x23, [sp, #176]
    stp     x24, x25, [sp, #192]
    stp     x26, x27, [sp, #208]
    stp     x28, x29, [sp, #224]
    mrs     x9, elr_el1
    stp     x30, x9, [sp, #240]
    mrs     x10, spsr_el1
    mrs     x11, fpsr
    stp     x10, x11, [sp, #256]
    mrs     x12, fpcr
    str     x12, [sp, #272]
    add     x9, sp, #{q_offset}
    stp     q0, q1, [x9, #0]
    stp     q2, q3, [x9, #32]
    stp     q4, q5, [x9, #64]
    stp     q6, q7, [x9, #96]
    stp     q8, q9, [x9, #128]
    stp     q10, q11, [x9, #160]
    stp     q12, q13, [x9, #192]
    stp     q14, q15, [x9, #224]
    stp     q16, q17, [x9, #256]
    stp     q18, q19, [x9, #288]
    stp     q20, q21, [x9, #320]
    stp     q22, q23, [x9, #352]
    stp     q24, q25, [x9, #384]
    stp     q26, q27, [x9, #416]
    stp     q28, q29, [x9, #448]
    stp     q30, q31, [x9, #480]

    mov     x1, sp
    bl      {entry}

    add     x9, sp, #{q_offset}
    ldp     q0, q1, [x9, #0]
    ldp     q2, q3, [x9, #32]
    ldp     q4, q5, [x9, #64]
    ldp     q6, q7, [x9, #96]
    ldp     q8, q9, [x9, #128]
    ldp     q10, q11, [x9, #160]
    ldp     q12, q13, [x9, #192]
    ldp     q14, q15, [x9, #224]
    ldp     q16, q17, [x9, #256]
    ldp     q18, q19, [x9, #288]
    ldp     q20, q21, [x9, #320]
    ldp     q22, q23, [x9, #352]
    ldp     q24, q25, [x9, #384]
    ldp     q26, q27, [x9, #416]
    ldp     q28, q29, [x9, #448]
    ldp     q30, q31, [x9, #480]
    ldr     x12, [sp, #272]
    msr     fpcr, x12
    ldp     x10, x11, [sp, #256]
    msr     fpsr, x11
    msr     spsr_el1, x10
    ldp     x30, x9, [sp, #240]
    msr     elr_el1, x9
    ldp     x0, x1, [sp, #0]
    ldp     x2, x3, [sp, #16]
    ldp     x4, x5, [sp, #32]
    ldp     x6, x7, [sp, #48]
    ldp     x8, x9, [sp, #64]
    ldp     x10, x11, [sp, #80]
    ldp     x12, x13, [sp, #96]
    ldp     x14, x15, [sp, #112]
    ldp     x16, x17, [sp, #128]
    ldp     x18, x19, [sp, #144]
    ldp     x20, x21, [sp, #160]
    ldp     x22, x23, [sp, #176]
    ldp     x24, x25, [sp, #192]
    ldp     x26, x27, [sp, #208]
    ldp     x28, x29, [sp, #224]
    add     sp, sp, #{frame_size}
    eret
"#,
    frame_size = const FRAME_SIZE,
    q_offset = const offset_of!(TrapFrame, q),
    entry = sym exception_entry,
);

/// Called by the vectors with the vector index and the saved context.
extern "C" fn exception_entry(index: u64, frame: &mut TrapFrame) {
    match index {
        IRQ_CURRENT_SPX => crate::gic::handle_irq(),
        SYNC_CURRENT_SPX => fatal("synchronous exception", frame),
        _ => fatal(VECTOR_NAMES[(index & 15) as usize], frame),
    }
}

/// Prints the fault registers and exits QEMU with failure.
fn fatal(what: &str, frame: &TrapFrame) -> ! {
    let (esr, far) = fault_registers();
    crate::console::emergency_print(format_args!(
        "aarch64: FATAL: {what} on CPU {cpu}: ESR_EL1={esr:#x} (EC={ec:#x}) ELR_EL1={elr:#x} \
         FAR_EL1={far:#x} SPSR_EL1={spsr:#x} SP={sp:#x} LR={lr:#x}\n",
        cpu = platform::arch::aarch64::current_cpu_racy(),
        ec = esr >> 26,
        elr = frame.elr,
        spsr = frame.spsr,
        sp = frame as *const TrapFrame as usize + FRAME_SIZE,
        lr = frame.x[30],
    ));
    crate::semihosting::exit(1)
}

/// ESR_EL1 and FAR_EL1 of the exception being handled.
fn fault_registers() -> (u64, u64) {
    let (esr, far): (u64, u64);
    // SAFETY: reading the syndrome registers has no side effects.
    unsafe {
        // Register reads only: no memory, no stack, flags untouched.
        asm!(
            "mrs {esr}, esr_el1",
            "mrs {far}, far_el1",
            esr = out(reg) esr,
            far = out(reg) far,
            options(nomem, nostack, preserves_flags),
        );
    }
    (esr, far)
}

/// Runs `f` with IRQs unmasked on this CPU, then restores the previous mask.
pub(crate) fn with_interrupts_enabled<R>(f: impl FnOnce() -> R) -> R {
    let saved: u64;
    // SAFETY: the vectors are installed on every CPU before it gets here and handle IRQs
    // on the current stack; nothing this CPU runs relies on IRQs staying masked outside an
    // InterruptGuard, and guards save and restore the mask themselves.
    unsafe {
        // Saves DAIF and clears the I bit (daifclr immediate: I = 2). No `nomem`: a compiler
        // barrier, so that `f`'s memory accesses stay inside. No stack; flags untouched.
        asm!("mrs {saved}, daif", "msr daifclr, #2", saved = out(reg) saved, options(nostack, preserves_flags));
    }
    let result = f();
    // SAFETY: restores the mask found above, on the same CPU.
    unsafe {
        // Writes DAIF back. No `nomem` (compiler barrier), no stack, flags untouched.
        asm!("msr daif, {saved}", saved = in(reg) saved, options(nostack, preserves_flags));
    }
    result
}
