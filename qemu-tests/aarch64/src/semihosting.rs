//! Leaving QEMU with an exit code through Arm semihosting (QEMU's `-semihosting`).

use core::arch::asm;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// SYS_EXIT: end the application.
const SYS_EXIT: u64 = 0x18;
/// ADP_Stopped_ApplicationExit: a normal exit, with the code in the second word.
const ADP_STOPPED_APPLICATION_EXIT: u64 = 0x20026;

/// Set by the first CPU that tries to exit.
static EXITING: AtomicBool = AtomicBool::new(false);
/// The CPU that set `EXITING`.
static EXITING_CPU: AtomicUsize = AtomicUsize::new(usize::MAX);

/// Exits QEMU with status `code`. Only the first caller gets to exit; any other CPU parks
/// for good. Without QEMU's `-semihosting`, `hlt` is undefined: the fault handler comes back
/// here, and the machine is powered off through PSCI instead, which loses the code (QEMU
/// exits with 0), so runners must also look for the success line.
pub(crate) fn exit(code: u32) -> ! {
    if EXITING.swap(true, Ordering::Relaxed) {
        if platform::arch::aarch64::current_cpu_racy() == EXITING_CPU.load(Ordering::Relaxed) {
            crate::console::emergency_print(format_args!(
                "aarch64: semihosting is not available (run QEMU with -semihosting): powering off \
                 without an exit code\n"
            ));
            crate::smp::system_off();
        }
        park();
    }
    EXITING_CPU.store(platform::arch::aarch64::current_cpu_racy(), Ordering::Relaxed);
    // The extended AArch64 form: x1 points to {reason, exit code}.
    let block = [ADP_STOPPED_APPLICATION_EXIT, u64::from(code)];
    // SAFETY: SYS_EXIT reads the two words at x1, which live on this stack frame, and ends
    // the program; no Rust state is touched.
    unsafe {
        // `hlt #0xf000` is the A64 semihosting trap: QEMU reads the operation in x0 and the
        // block at x1, and would put a result in x0 if it returned. `readonly`: the block
        // is read, nothing is written; no stack use, flags untouched.
        asm!(
            "hlt #0xf000",
            inout("x0") SYS_EXIT => _,
            in("x1") block.as_ptr(),
            options(readonly, nostack, preserves_flags),
        );
    }
    park()
}

/// Waits for events forever, with interrupts as they are.
fn park() -> ! {
    loop {
        // SAFETY: waiting for an event changes no state.
        unsafe {
            // `wfe` only sleeps until an event; no memory, no stack, flags untouched.
            asm!("wfe", options(nomem, nostack, preserves_flags));
        }
    }
}
