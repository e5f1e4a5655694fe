//! The serial console on COM1 (16550 UART at 0x3F8), shared by every CPU.
//!
//! One lock keeps lines whole: a writer holds it, with interrupts masked, for a whole
//! string or a whole formatted message. It records its owner CPU, so a panic or exception
//! on a CPU that holds it (in the middle of a write) prints anyway instead of deadlocking.

use core::fmt;
use core::sync::atomic::{AtomicUsize, Ordering};

use platform::arch::x86_64::{InterruptGuard, current_cpu_racy};

use crate::cpu::{inb, outb};

const COM1: u16 = 0x3F8;
/// Line status register: bit 5 set when the transmit holding register is empty.
const LINE_STATUS: u16 = COM1 + 5;
const TRANSMIT_EMPTY: u8 = 1 << 5;

/// No CPU holds the console.
const FREE: usize = usize::MAX;
static OWNER: AtomicUsize = AtomicUsize::new(FREE);

/// Programs COM1 for 115200 baud, 8 data bits, no parity, one stop bit, FIFOs on, no
/// interrupts.
pub(crate) fn init() {
    // SAFETY: these are the standard 16550 programming writes to COM1, which only this
    // module drives.
    unsafe {
        outb(COM1 + 1, 0x00); // interrupts off
        outb(COM1 + 3, 0x80); // divisor latch access
        outb(COM1, 0x01); // divisor 1: 115200 baud
        outb(COM1 + 1, 0x00);
        outb(COM1 + 3, 0x03); // 8N1, latch closed
        outb(COM1 + 2, 0xC7); // FIFOs on and cleared, 14-byte threshold
        outb(COM1 + 4, 0x03); // DTR, RTS
    }
}

fn write_byte(byte: u8) {
    // SAFETY: reading the line status and writing the data register of COM1, which only
    // this module drives, while holding the console lock.
    unsafe {
        while inb(LINE_STATUS) & TRANSMIT_EMPTY == 0 {
            core::hint::spin_loop();
        }
        outb(COM1, byte);
    }
}

/// The console, held: writes go out whole. Dropping it releases the console.
pub(crate) struct Console {
    /// Whether this holder took the lock (false when the CPU already held it).
    owns_lock: bool,
    _masked: InterruptGuard,
}

/// Takes the console, waiting for another CPU to finish its write.
pub(crate) fn lock() -> Console {
    let masked = InterruptGuard::new();
    let cpu = current_cpu_racy();
    // With interrupts masked, only this CPU can have stored its own index: if it did, it is
    // in the middle of a write that a panic or exception interrupted.
    let nested = OWNER.load(Ordering::Relaxed) == cpu;
    if !nested {
        while OWNER.compare_exchange_weak(FREE, cpu, Ordering::Acquire, Ordering::Relaxed).is_err() {
            core::hint::spin_loop();
        }
    }
    Console { owns_lock: !nested, _masked: masked }
}

impl fmt::Write for Console {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        text.bytes().for_each(write_byte);
        Ok(())
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        if self.owns_lock {
            OWNER.store(FREE, Ordering::Release);
        }
    }
}

/// Writes `text` in one piece.
pub(crate) fn write_str(text: &str) {
    let mut console = lock();
    let _ = fmt::Write::write_str(&mut console, text);
}

/// Prints a formatted line in one piece, without allocating.
macro_rules! println {
    ($($arg:tt)*) => {{
        let mut console = $crate::console::lock();
        let _ = core::fmt::Write::write_fmt(&mut console, format_args!($($arg)*));
        let _ = core::fmt::Write::write_str(&mut console, "\n");
    }};
}
pub(crate) use println;
