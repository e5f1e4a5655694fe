//! The process-wide allocator behind the C API, and what runs around it over the process's
//! life: loading, `fork`, thread exit, misuse and exit.
//!
//! The allocator is `core_alloc::host`'s process-wide one (the one `HostAlloc` serves Rust
//! programs with): its thread-exit hook, its fork handlers and its misuse reports are wired
//! there, once, for both.
//!
//! - **Loading** (a constructor in `.init_array`): installs a panic hook that aborts without
//!   allocating, reads `CORE_ALLOC_STATS`, and registers the host platform's
//!   `pthread_atfork` handlers, unless the process's first allocation came first and did it
//!   (another library's constructor may allocate before ours runs: the program's own
//!   libraries are initialised before a preloaded one). Registered this early, the handlers
//!   take the allocator's locks after the prepare handlers of everything registered later
//!   (which may allocate) and give them back before those libraries' parent and child
//!   handlers run (see `platform::host::register_fork_handlers`).
//! - **fork**: the prepare handler takes the shared-slot locks, then the central heap lock
//!   (the core's lock order); parent and child release them in reverse order. A child of a
//!   multi-threaded parent finds no lock held; the slots of threads that did not survive
//!   the fork stay owned and unused, so their half-finished arena operations are never seen.
//! - **Thread exit**: the host platform's key destructor calls the exit hook with the
//!   exiting thread's slot; the hook gives the slot's cached slabs back (empty ones to the
//!   central heap, partly used ones for other threads to adopt) and the slot goes to the
//!   next thread.
//! - **Misuse** (a double free in checked builds, a pointer that starts no block we handed
//!   out): one line on standard error and `abort()`, as C allocators do.
//! - **Exit** (a destructor in `.fini_array`): with `CORE_ALLOC_STATS` set, the statistics go
//!   to standard error.
//!
//! Nothing here allocates through `malloc` or Rust's global allocator: the allocator is a
//! `static` built by `const fn`s, and messages are formatted on the stack.

use core::fmt::Write;
use core::sync::atomic::{AtomicBool, Ordering};

use core_alloc::host::{Host, HostAlloc};

use crate::report::{Stderr, abort_with};

/// The process-wide allocator.
pub(crate) const HEAP: &Host = HostAlloc::allocator();

/// Whether the statistics are printed at exit (`CORE_ALLOC_STATS` set to anything but
/// empty or `0`).
static STATS_AT_EXIT: AtomicBool = AtomicBool::new(false);

/// The environment variable that asks for statistics at exit.
const STATS_VARIABLE: &core::ffi::CStr = c"CORE_ALLOC_STATS";

#[used]
#[unsafe(link_section = ".init_array")]
static ON_LOAD: extern "C" fn() = on_load;

#[used]
#[unsafe(link_section = ".fini_array")]
static ON_UNLOAD: extern "C" fn() = on_unload;

/// The library constructor.
extern "C" fn on_load() {
    // A panic inside the allocator (a bug) must not run the default hook, which may
    // allocate: print where it happened and abort. The closure captures nothing, so boxing
    // it allocates nothing.
    std::panic::set_hook(std::boxed::Box::new(|info| match info.location() {
        Some(location) => {
            abort_with(format_args!("internal error (panic) at {}:{}", location.file(), location.line()))
        }
        None => abort_with(format_args!("internal error (panic)")),
    }));
    platform::host::register_fork_handlers();
    // SAFETY: getenv reads the environment, which nothing modifies during library
    // constructors; the result is a NUL-terminated string or null.
    let value = unsafe { libc::getenv(STATS_VARIABLE.as_ptr()) };
    if !value.is_null() {
        // SAFETY: a non-null getenv result is a NUL-terminated string.
        let value = unsafe { core::ffi::CStr::from_ptr(value) }.to_bytes();
        STATS_AT_EXIT.store(!value.is_empty() && value != b"0", Ordering::Relaxed);
    }
}

/// The library destructor, run by `exit`.
extern "C" fn on_unload() {
    if STATS_AT_EXIT.load(Ordering::Relaxed) {
        print_stats();
    }
}

/// Writes the statistics to standard error, every line starting with `corealloc: `.
fn print_stats() {
    let stats = HEAP.stats();
    let mmap = HEAP.provider().stats();
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let mut out = Prefixed { inner: Stderr::new(), line_start: true };
    let _ = writeln!(out, "statistics at exit of process {pid}");
    let _ = writeln!(out, "{stats}");
    let _ = writeln!(
        out,
        "mmap: {} chunks mapped, {} unmapped, {:.2} MiB purged, {} failed maps",
        mmap.chunks_mapped,
        mmap.chunks_unmapped,
        mmap.bytes_purged as f64 / (1 << 20) as f64,
        mmap.failed_maps
    );
    out.inner.flush();
}

/// Puts `corealloc: ` at the start of every line written through it, and writes each line
/// out whole (one `write(2)` per line, shorter than the buffer): processes sharing standard
/// error (a program's helpers, all printing at exit) then interleave whole lines, never a
/// prefix without its line (writes to a pipe up to `PIPE_BUF` bytes are atomic).
struct Prefixed {
    inner: Stderr,
    line_start: bool,
}

impl Write for Prefixed {
    fn write_str(&mut self, text: &str) -> core::fmt::Result {
        for piece in text.split_inclusive('\n') {
            if self.line_start {
                self.inner.write_str("corealloc: ")?;
            }
            self.inner.write_str(piece)?;
            self.line_start = piece.ends_with('\n');
            if self.line_start {
                self.inner.flush();
            }
        }
        Ok(())
    }
}
