//! The serial console: a PL011 UART (0x0900_0000 on `-M virt`, or where the device tree's
//! `/chosen/stdout-path` says), written under one lock so lines from different CPUs do not
//! interleave.
//!
//! Concurrency: the lock is taken with interrupts masked, so an interrupt handler printing
//! on a CPU that holds it cannot deadlock. Fatal paths use [`emergency_print`], which waits a
//! bounded time for the lock and then prints anyway.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicUsize, Ordering};

use platform::arch::aarch64::InterruptGuard;

/// The PL011 of `-M virt`, used until the device tree says otherwise.
pub(crate) const DEFAULT_UART: usize = 0x0900_0000;

/// Data register offset.
const UARTDR: usize = 0x00;
/// Flag register offset.
const UARTFR: usize = 0x18;
/// UARTFR.TXFF: the transmit FIFO is full.
const TXFF: u32 = 1 << 5;

static UART_BASE: AtomicUsize = AtomicUsize::new(DEFAULT_UART);
static LOCK: spin::Mutex<()> = spin::Mutex::new(());

/// Uses the PL011 at `base` from now on.
///
/// # Safety
///
/// `base` is the address of a PL011's registers, mapped as Device memory whenever the
/// console is used.
pub(crate) unsafe fn set_base(base: usize) {
    UART_BASE.store(base, Ordering::Relaxed);
}

/// The UART's register address.
pub(crate) fn base() -> usize {
    UART_BASE.load(Ordering::Relaxed)
}

/// Writes to the UART without locking; callers hold the lock (or are dying).
struct Uart;

impl Write for Uart {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        for byte in text.bytes() {
            if byte == b'\n' {
                put(b'\r');
            }
            put(byte);
        }
        Ok(())
    }
}

fn put(byte: u8) {
    let base = base();
    // SAFETY: `set_base`'s caller (or the -M virt default) vouched that `base` is a PL011
    // mapped as Device memory; FR and DR are 32-bit registers at aligned offsets.
    unsafe {
        while core::ptr::read_volatile((base + UARTFR) as *const u32) & TXFF != 0 {
            core::hint::spin_loop();
        }
        core::ptr::write_volatile((base + UARTDR) as *mut u32, u32::from(byte));
    }
}

/// Writes `text` in one piece: no other CPU's output lands inside it.
pub(crate) fn write_str(text: &str) {
    let _masked = InterruptGuard::new();
    let _line = LOCK.lock();
    let _ = Uart.write_str(text);
}

/// Formats and writes `args` in one piece, without allocating.
pub(crate) fn print(args: fmt::Arguments<'_>) {
    let _masked = InterruptGuard::new();
    let _line = LOCK.lock();
    let _ = Uart.write_fmt(args);
}

/// Like [`print`], for panics and faults: if the lock stays taken (its holder may be the
/// code that failed), prints without it after a while.
pub(crate) fn emergency_print(args: fmt::Arguments<'_>) {
    let _masked = InterruptGuard::new();
    for _ in 0..10_000_000 {
        if let Some(_line) = LOCK.try_lock() {
            let _ = Uart.write_fmt(args);
            return;
        }
        core::hint::spin_loop();
    }
    let _ = Uart.write_fmt(args);
}

/// Prints a formatted line to the console in one piece.
macro_rules! println {
    ($($arg:tt)*) => {
        $crate::console::print(format_args!("{}\n", format_args!($($arg)*)))
    };
}
pub(crate) use println;
