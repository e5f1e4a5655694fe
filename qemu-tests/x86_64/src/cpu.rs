//! Single instructions the kernel needs: port I/O, model-specific registers, the time-stamp
//! counter and the interrupt flag. The allocator's own arch code is in `platform`.

use core::arch::asm;

/// Writes a byte to an I/O port.
///
/// # Safety
///
/// The write must be harmless to the device at `port` (the caller knows what it drives).
pub(crate) unsafe fn outb(port: u16, value: u8) {
    // SAFETY: the caller vouches for the device access. Not `nomem`: device writes stay
    // ordered with the memory accesses around them. No stack, no flags.
    unsafe { asm!("out dx, al", in("dx") port, in("al") value, options(nostack, preserves_flags)) };
}

/// Reads a byte from an I/O port.
///
/// # Safety
///
/// The read must be harmless to the device at `port` (some reads have side effects).
pub(crate) unsafe fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: the caller vouches for the device access. Not `nomem`, as for `outb`; no
    // stack, no flags.
    unsafe { asm!("in al, dx", in("dx") port, out("al") value, options(nostack, preserves_flags)) };
    value
}

/// Writes a 32-bit value to an I/O port.
///
/// # Safety
///
/// As for [`outb`].
pub(crate) unsafe fn outl(port: u16, value: u32) {
    // SAFETY: the caller vouches for the device access. Not `nomem`, as for `outb`; no
    // stack, no flags.
    unsafe { asm!("out dx, eax", in("dx") port, in("eax") value, options(nostack, preserves_flags)) };
}

/// Reads a model-specific register.
///
/// # Safety
///
/// `msr` exists on this CPU (else #GP) and reading it has no side effect the caller minds.
pub(crate) unsafe fn rdmsr(msr: u32) -> u64 {
    let (low, high): (u32, u32);
    // SAFETY: the caller vouches the MSR exists. `rdmsr` touches no memory, stack or flags.
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") low, out("edx") high, options(nomem, nostack, preserves_flags))
    };
    (u64::from(high) << 32) | u64::from(low)
}

/// Writes a model-specific register.
///
/// # Safety
///
/// `msr` exists, accepts `value`, and the new value breaks nothing Rust relies on.
pub(crate) unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: the caller vouches for the write. Not `nomem`: MSR writes can change how
    // memory behaves, so they stay ordered with memory accesses. No stack, no flags.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32,
             options(nostack, preserves_flags))
    };
}

/// The time-stamp counter.
pub(crate) fn rdtsc() -> u64 {
    // SAFETY: RDTSC exists on every x86-64 CPU and the kernel leaves CR4.TSD alone (it
    // only matters outside ring 0 anyway).
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Enables maskable interrupts.
///
/// # Safety
///
/// No `InterruptGuard` or allocator critical section is alive on this CPU, and the IDT
/// handles every interrupt that may arrive.
pub(crate) unsafe fn enable_interrupts() {
    // SAFETY: the caller vouches no critical section is open. Not `nomem`: a compiler
    // barrier, so memory accesses do not move across it. No stack; IF is not one of the
    // status flags `preserves_flags` covers.
    unsafe { asm!("sti", options(nostack, preserves_flags)) };
}

/// Masks maskable interrupts.
pub(crate) fn disable_interrupts() {
    // SAFETY: masking interrupts cannot break an invariant. Not `nomem` (a compiler
    // barrier); no stack; IF is not a status flag.
    unsafe { asm!("cli", options(nostack, preserves_flags)) };
}

/// Masks interrupts and halts this CPU for good.
pub(crate) fn halt_forever() -> ! {
    loop {
        // SAFETY: with interrupts masked, `hlt` only wakes for NMIs, after which the loop
        // halts again. No memory, stack or flags are touched.
        unsafe { asm!("cli", "hlt", options(nomem, nostack, preserves_flags)) };
    }
}

/// The exit codes the `isa-debug-exit` device turns into QEMU's status `(code << 1) | 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum ExitCode {
    /// Every test passed: QEMU exits with status 33.
    Success = 0x10,
    /// A test failed, or the kernel panicked or took an exception: status 35.
    Failure = 0x11,
}

/// The `isa-debug-exit` device's port (`-device isa-debug-exit,iobase=0xf4,iosize=0x04`).
const DEBUG_EXIT_PORT: u16 = 0xF4;

/// Ends the QEMU run with `code`; halts if the device is missing.
pub(crate) fn exit(code: ExitCode) -> ! {
    // SAFETY: writing the exit device's port ends the run; without the device the write
    // goes nowhere.
    unsafe { outl(DEBUG_EXIT_PORT, code as u32) };
    halt_forever()
}

/// `IA32_GS_BASE`, which `platform`'s `init_cpu` sets.
const IA32_GS_BASE: u32 = 0xC000_0101;

/// With the GS base back at 0 for a moment (as on a CPU that never ran `init_cpu`), the
/// platform reaches its uninitialised record instead of faulting at a low address: the CPU
/// index reads `usize::MAX` (so `KernelPlatform`, sent to its masked path by the record's
/// slot word, panics naming `init_cpu`), `allocator_depth()` reads 0, and a guard masks
/// interrupts and does not unmask them. Boot CPU, interrupts masked, no timer.
pub(crate) fn uninitialized_cpu_is_detected() -> qemu_suite::Outcome {
    use platform::arch::x86_64::{
        InterruptGuard, allocator_depth, cpu_initialized, current_cpu_racy, interrupts_enabled,
    };
    let _outer = InterruptGuard::new();
    // SAFETY: IA32_GS_BASE exists on every x86-64 CPU.
    let base = unsafe { rdmsr(IA32_GS_BASE) };
    // SAFETY: interrupts are masked and nothing on this CPU uses the GS base until it is
    // restored below; the platform's accesses with GS base 0 hit a static of its own.
    let (index, initialized, depth, masked_after_guard) = unsafe {
        wrmsr(IA32_GS_BASE, 0);
        let index = current_cpu_racy();
        let initialized = cpu_initialized();
        let depth = allocator_depth();
        drop(InterruptGuard::new());
        let masked = !interrupts_enabled();
        wrmsr(IA32_GS_BASE, base);
        (index, initialized, depth, masked)
    };
    if index != usize::MAX || initialized || depth != 0 || !masked_after_guard {
        return Err(alloc::format!(
            "with GS base 0: index {index:#x}, initialised {initialized}, depth {depth}, masked after a \
             guard {masked_after_guard}"
        ));
    }
    if !cpu_initialized() || current_cpu_racy() != 0 {
        return Err(alloc::format!("after restoring the GS base the CPU index is {:#x}", current_cpu_racy()));
    }
    Ok(())
}
