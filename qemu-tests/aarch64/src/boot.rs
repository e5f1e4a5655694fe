//! The first instructions every CPU runs: drop from EL2 to EL1 if needed, enable FP/SIMD,
//! take a stack, and (secondary CPUs) turn on the MMU from values the boot CPU left, before
//! any Rust code runs.
//!
//! The boot CPU enters at `_start` (the ELF entry) with the MMU off and x0 = 0. Secondary
//! CPUs enter at `secondary_start` through PSCI CPU_ON, also with the MMU off, with x0 = the
//! physical address of their [`SecondaryBoot`] record, which the boot CPU cleaned to the
//! point of coherency (a CPU with its MMU off reads memory, not caches).

use core::arch::global_asm;
use core::mem::offset_of;
use core::sync::atomic::AtomicU64;

/// What a secondary CPU needs before it can run Rust code, laid out for the assembly below.
/// One cache-line-aligned record per CPU.
#[repr(C, align(128))]
#[derive(Debug)]
pub(crate) struct SecondaryBoot {
    /// VBAR_EL1: the exception vectors.
    pub(crate) vbar: AtomicU64,
    /// MAIR_EL1.
    pub(crate) mair: AtomicU64,
    /// TCR_EL1.
    pub(crate) tcr: AtomicU64,
    /// TTBR0_EL1: the top-level table every CPU shares.
    pub(crate) ttbr0: AtomicU64,
    /// TTBR1_EL1: the upper range's top-level table (the second heap's).
    pub(crate) ttbr1: AtomicU64,
    /// SCTLR_EL1 with the MMU and caches on.
    pub(crate) sctlr: AtomicU64,
    /// The top of the CPU's stack (16-byte aligned, mapped).
    pub(crate) stack_top: AtomicU64,
    /// The CPU's dense index.
    pub(crate) cpu_index: AtomicU64,
}

impl SecondaryBoot {
    /// An empty record.
    pub(crate) const fn new() -> Self {
        Self {
            vbar: AtomicU64::new(0),
            mair: AtomicU64::new(0),
            tcr: AtomicU64::new(0),
            ttbr0: AtomicU64::new(0),
            ttbr1: AtomicU64::new(0),
            sctlr: AtomicU64::new(0),
            stack_top: AtomicU64::new(0),
            cpu_index: AtomicU64::new(0),
        }
    }
}

unsafe extern "C" {
    /// The entry point given to PSCI CPU_ON; x0 = a `SecondaryBoot` record. Never called
    /// from Rust: only its address is used.
    pub(crate) fn secondary_start() -> !;
}

// `enter_el1`: if running at EL2 (QEMU with virtualization=on), configures EL2 so that it
// stays out of the way (EL1 is AArch64, no stage 2, no traps of FP, timers or ID registers,
// interrupts routed to EL1, EL1 may use a GICv3's system registers) and returns to the next instruction at EL1h with DAIF masked.
// At EL1 it does nothing. Uses x9 only, so x0 survives.
//
// `enable_fp`: CPACR_EL1.FPEN = 0b11, so FP/SIMD instructions (which the compiler emits
// freely) do not trap; the isb makes the change visible to the following instructions.
global_asm!(
    r#"
.macro enter_el1
    mrs     x9, CurrentEL
    lsr     x9, x9, #2
    cmp     x9, #1
    b.eq    1f
    cmp     x9, #2
    b.ne    unsupported_el              // EL3 (-M virt,secure=on) is not supported
    mov     x9, #(1 << 31)              // HCR_EL2: RW (EL1 is AArch64); VM, IMO, FMO clear
    msr     hcr_el2, x9
    mrs     x9, cnthctl_el2
    orr     x9, x9, #3                  // EL1PCTEN | EL1PCEN: EL1 may use the physical timer
    msr     cnthctl_el2, x9
    msr     cntvoff_el2, xzr            // the virtual count equals the physical count
    mov     x9, #0x33ff                 // CPTR_EL2: RES1 bits only; TFP clear
    msr     cptr_el2, x9
    msr     hstr_el2, xzr
    mrs     x9, midr_el1
    msr     vpidr_el2, x9
    mrs     x9, mpidr_el1
    msr     vmpidr_el2, x9              // EL1 reads its real MPIDR
    mov     x9, #0x0800
    movk    x9, #0x30d0, lsl #16        // SCTLR_EL1: RES1 bits only (MMU, caches off)
    msr     sctlr_el1, x9
    mrs     x9, id_aa64pfr0_el1
    ubfx    x9, x9, #24, #4             // GIC: a GICv3 system-register interface exists?
    cbz     x9, 7f
    mrs     x9, icc_sre_el2
    orr     x9, x9, #0x1                // ICC_SRE_EL2.SRE: EL2 uses the system registers
    orr     x9, x9, #0x8                // ICC_SRE_EL2.Enable: EL1 may set ICC_SRE_EL1.SRE
    msr     icc_sre_el2, x9
    isb
7:
    mov     x9, #0x3c5                  // SPSR_EL2: EL1h, D, A, I, F masked
    msr     spsr_el2, x9
    adr     x9, 1f
    msr     elr_el2, x9
    eret
1:
.endm

.macro enable_fp
    mov     x9, #(3 << 20)
    msr     cpacr_el1, x9
    isb
.endm

.section .text.boot, "ax"
.global _start
_start:
    enter_el1
    enable_fp
    msr     daifset, #0xf
    msr     spsel, #1
    adrp    x9, __boot_stack_top
    add     x9, x9, :lo12:__boot_stack_top
    mov     sp, x9
    // Zero .bss (16-byte aligned at both ends) with the MMU off: aligned stores only.
    adrp    x9, __bss_start
    add     x9, x9, :lo12:__bss_start
    adrp    x10, __bss_end
    add     x10, x10, :lo12:__bss_end
2:  cmp     x9, x10
    b.hs    3f
    stp     xzr, xzr, [x9], #16
    b       2b
3:  adrp    x9, exception_vectors
    add     x9, x9, :lo12:exception_vectors
    msr     vbar_el1, x9
    isb
    bl      {boot_main}
4:  wfe
    b       4b

// Entered at EL3: nothing sensible to do without EL1 set up, so stop here (QEMU's timeout
// ends the run).
unsupported_el:
    wfe
    b       unsupported_el

.section .text.boot, "ax"
.global secondary_start
secondary_start:
    enter_el1
    enable_fp
    msr     daifset, #0xf
    msr     spsel, #1
    ldr     x9, [x0, #{vbar}]
    msr     vbar_el1, x9
    ldr     x9, [x0, #{mair}]
    msr     mair_el1, x9
    ldr     x9, [x0, #{tcr}]
    msr     tcr_el1, x9
    ldr     x9, [x0, #{ttbr0}]
    msr     ttbr0_el1, x9
    ldr     x9, [x0, #{ttbr1}]
    msr     ttbr1_el1, x9
    isb
    tlbi    vmalle1                     // no stale translations from before reset
    dsb     nsh
    isb
    ldr     x9, [x0, #{sctlr}]
    msr     sctlr_el1, x9               // MMU and caches on: identity map, same PC
    isb
    ldr     x9, [x0, #{stack_top}]
    mov     sp, x9
    bl      {secondary_main}            // x0 is still the record
5:  wfe
    b       5b
"#,
    boot_main = sym crate::boot_main,
    secondary_main = sym crate::smp::secondary_main,
    vbar = const offset_of!(SecondaryBoot, vbar),
    mair = const offset_of!(SecondaryBoot, mair),
    tcr = const offset_of!(SecondaryBoot, tcr),
    ttbr0 = const offset_of!(SecondaryBoot, ttbr0),
    ttbr1 = const offset_of!(SecondaryBoot, ttbr1),
    sctlr = const offset_of!(SecondaryBoot, sctlr),
    stack_top = const offset_of!(SecondaryBoot, stack_top),
);
