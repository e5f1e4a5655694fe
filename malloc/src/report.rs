//! Messages to standard error that never allocate: text is formatted with `core::fmt` into
//! a buffer on the stack and written with `write(2)`, so they can be printed from inside
//! `malloc`, from a fork handler or at exit.

use core::fmt::{self, Write};

/// Formats into a stack buffer, writing it to standard error whenever it fills and on
/// [`flush`](Self::flush).
pub(crate) struct Stderr {
    buffer: [u8; 1024],
    length: usize,
}

impl Stderr {
    pub(crate) const fn new() -> Self {
        Self { buffer: [0; 1024], length: 0 }
    }

    /// Writes out what is buffered (retrying partial and interrupted writes; other errors
    /// drop the text: there is nowhere else to report them).
    pub(crate) fn flush(&mut self) {
        let mut written = 0;
        while written < self.length {
            let rest = &self.buffer[written..self.length];
            // SAFETY: `rest` is initialised memory of `rest.len()` bytes; write(2) only
            // reads it.
            let result = unsafe { libc::write(libc::STDERR_FILENO, rest.as_ptr().cast(), rest.len()) };
            if result > 0 {
                written += result as usize;
            } else if result < 0 && errno() == libc::EINTR {
                continue;
            } else {
                break;
            }
        }
        self.length = 0;
    }
}

impl Write for Stderr {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let mut bytes = text.as_bytes();
        while !bytes.is_empty() {
            if self.length == self.buffer.len() {
                self.flush();
            }
            let take = bytes.len().min(self.buffer.len() - self.length);
            self.buffer[self.length..self.length + take].copy_from_slice(&bytes[..take]);
            self.length += take;
            bytes = &bytes[take..];
        }
        Ok(())
    }
}

/// The calling thread's `errno`.
pub(crate) fn errno() -> i32 {
    // SAFETY: __errno_location returns the calling thread's errno, valid for the thread's
    // lifetime.
    unsafe { *libc::__errno_location() }
}

/// Sets the calling thread's `errno`.
pub(crate) fn set_errno(value: i32) {
    // SAFETY: as in `errno`.
    unsafe { *libc::__errno_location() = value };
}

/// Prints `corealloc: <message>; aborting` and aborts the process with `SIGABRT`, the way
/// C allocators stop on a corrupted or misused heap.
#[cold]
pub(crate) fn abort_with(message: fmt::Arguments<'_>) -> ! {
    let mut stderr = Stderr::new();
    let _ = writeln!(stderr, "corealloc: {message}; aborting");
    stderr.flush();
    // SAFETY: abort has no preconditions; it does not return.
    unsafe { libc::abort() }
}
