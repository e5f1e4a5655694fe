//! The process-wide allocator behind the C API, and what runs around it over the process's
//! life: loading, the first allocation, `fork`, thread exit, misuse and exit.
//!
//! - **Loading** (a constructor in `.init_array`): installs a panic hook that aborts without
//!   allocating, reads `CORE_ALLOC_STATS`, and registers the `pthread_atfork` handlers,
//!   unless an allocation came first and did it (another library's constructor may
//!   allocate before ours runs: the program's own libraries are initialised before a
//!   preloaded one). glibc runs prepare handlers in reverse order of registration and the
//!   parent and child handlers in order, so registering this early means ours take the
//!   allocator's locks after the prepare handlers of everything registered later (which
//!   may allocate) and give them back before their parent and child handlers run. The
//!   registration happens outside any lock of ours; an allocation made while it is in
//!   progress (glibc may allocate to grow its handler list) goes on without it, so there
//!   is no recursion.
//! - **fork**: prepare takes the shared-slot locks, then the central heap lock (the core's
//!   lock order); parent and child release them in reverse order. A child of a
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
use core::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use core_alloc::{Allocator, Misuse, MisuseReport};
use page_provider::linux::MmapProvider;
use platform::host::HostPlatform;

use crate::report::{Stderr, abort_with};

/// The allocator type behind the C API: anonymous mmap with transparent huge pages, and
/// per-thread slots.
pub(crate) type Heap = Allocator<MmapProvider, HostPlatform>;

/// The process-wide allocator.
pub(crate) static HEAP: Heap =
    Allocator::new(MmapProvider::new(), HostPlatform::with_exit_hook(release_exiting_slot))
        .with_misuse_hook(abort_on_misuse);

/// The host platform's thread-exit hook.
fn release_exiting_slot(slot: usize) {
    // SAFETY: the host platform calls its exit hook with the exiting thread's slot, which
    // the thread still holds exclusively, outside any allocator call.
    unsafe { HEAP.release_slot(slot) }
}

/// The core's misuse hook: it runs inside the allocator, so it only formats on the stack.
fn abort_on_misuse(report: &MisuseReport) {
    let address = report.address;
    match report.kind {
        Misuse::ForeignPointer => abort_with(format_args!(
            "free(): invalid pointer {address:#x}: it starts no block of this allocator"
        )),
        Misuse::DoubleFree => abort_with(format_args!("free(): double free of {address:#x}")),
        Misuse::WrongLayout => abort_with(format_args!(
            "free(): the size or alignment given does not fit the block at {address:#x}"
        )),
    }
}

/// [`ensure_setup`]'s states.
const NOT_SET_UP: u8 = 0;
const SETTING_UP: u8 = 1;
const SET_UP: u8 = 2;
static SETUP: AtomicU8 = AtomicU8::new(NOT_SET_UP);

/// Registers the fork handlers if that is not done yet; called by the library constructor
/// and by every allocating entry point (one relaxed load once it is done).
#[inline(always)]
pub(crate) fn ensure_setup() {
    if SETUP.load(Ordering::Relaxed) != SET_UP {
        set_up();
    }
}

#[cold]
#[inline(never)]
fn set_up() {
    // Whoever wins does the registration; everyone else (including this thread, if glibc
    // allocates inside pthread_atfork) allocates without waiting.
    if SETUP.compare_exchange(NOT_SET_UP, SETTING_UP, Ordering::Acquire, Ordering::Relaxed).is_err() {
        return;
    }
    // SAFETY: the handlers are `extern "C"` functions with no arguments that live as long
    // as the library (it is linked with -z nodelete).
    let status = unsafe { libc::pthread_atfork(Some(before_fork), Some(after_fork), Some(after_fork)) };
    // On failure (glibc out of memory) a later allocation tries again.
    SETUP.store(if status == 0 { SET_UP } else { NOT_SET_UP }, Ordering::Release);
}

/// The prepare handler: no thread is inside a shared slot or the central heap from here
/// until the fork is over.
unsafe extern "C" fn before_fork() {
    platform::host::lock_shared_slots_for_fork();
    HEAP.lock_for_fork();
}

/// The parent and child handler.
unsafe extern "C" fn after_fork() {
    // SAFETY: `before_fork` took these locks in this thread (or, in the child, in the
    // thread this one is the copy of), and each is released once, in reverse order.
    unsafe {
        HEAP.unlock_after_fork();
        platform::host::unlock_shared_slots_after_fork();
    }
}

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
    ensure_setup();
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
