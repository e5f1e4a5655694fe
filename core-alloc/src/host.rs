//! The ready-made Linux allocator: the core over anonymous mmap with transparent huge pages
//! and per-thread slots.
//!
//! ```no_run
//! #[global_allocator]
//! static GLOBAL: core_alloc::host::HostAlloc = core_alloc::host::HostAlloc;
//! ```
//!
//! Every `HostAlloc` value refers to the one process-wide allocator, so it can be used as
//! the global allocator and also queried ([`HostAlloc::stats`]) from anywhere; the C
//! library (`libcorealloc.so`) is this same allocator behind the C API. When a thread
//! exits, its slot's slabs are given up (empty ones back to the heap, the others when their
//! last block is freed). A `fork` while other threads allocate leaves the child a usable
//! allocator: the platform's `pthread_atfork` handlers take the allocator's locks around it
//! (registered by the process's first allocation). A misuse the allocator notices (freeing
//! a pointer it never handed out, for one) prints a line to standard error and aborts, as
//! C allocators do.

use core::alloc::{GlobalAlloc, Layout};

use page_provider::linux::MmapProvider;
use platform::host::{ForkHooks, HostPlatform};

use crate::{Allocator, Misuse, MisuseReport, Stats};

/// The type of the process-wide host allocator.
pub type Host = Allocator<MmapProvider, HostPlatform>;

static HOST: Host = Allocator::new(
    MmapProvider::new(),
    HostPlatform::with_exit_hook(release_exiting_slot).with_fork_hooks(&FORK_HOOKS),
)
.with_misuse_hook(abort_on_misuse);

fn release_exiting_slot(slot: usize) {
    // SAFETY: the host platform calls its exit hook with the exiting thread's slot, which
    // the thread still holds exclusively, outside any allocator call.
    unsafe { HOST.release_slot(slot) }
}

/// No thread is inside the central heap while the process forks.
static FORK_HOOKS: ForkHooks = ForkHooks { prepare: || HOST.lock_for_fork(), after: unlock_after_fork };

/// # Safety
///
/// As for [`ForkHooks::after`]: once after `prepare`, in the thread that ran it.
unsafe fn unlock_after_fork() {
    // SAFETY: the platform runs this once after `prepare` took the lock, in that thread or
    // its copy in the child.
    unsafe { HOST.unlock_after_fork() }
}

fn abort_on_misuse(report: &MisuseReport) {
    let address = report.address;
    let mut line = [0u8; 160];
    let mut writer = LineWriter { buffer: &mut line, length: 0 };
    let _ = match report.kind {
        Misuse::ForeignPointer => core::fmt::write(
            &mut writer,
            format_args!(
                "corealloc: free(): invalid pointer {address:#x}: it starts no block of this allocator; aborting\n"
            ),
        ),
        Misuse::DoubleFree => core::fmt::write(
            &mut writer,
            format_args!("corealloc: free(): double free of {address:#x}; aborting\n"),
        ),
        Misuse::WrongLayout => core::fmt::write(
            &mut writer,
            format_args!(
                "corealloc: free(): the size or alignment given does not fit the block at {address:#x}; aborting\n"
            ),
        ),
    };
    let length = writer.length;
    // SAFETY: writes initialised bytes of a local buffer to stderr; abort has no
    // preconditions. Neither allocates.
    unsafe {
        libc::write(2, line.as_ptr().cast(), length);
        libc::abort();
    }
}

/// Formats into a fixed buffer, dropping what does not fit (no allocation).
struct LineWriter<'a> {
    buffer: &'a mut [u8],
    length: usize,
}

impl core::fmt::Write for LineWriter<'_> {
    fn write_str(&mut self, text: &str) -> core::fmt::Result {
        let room = self.buffer.len() - self.length;
        let take = text.len().min(room);
        self.buffer[self.length..self.length + take].copy_from_slice(&text.as_bytes()[..take]);
        self.length += take;
        Ok(())
    }
}

/// The process-wide host allocator; see the module documentation.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostAlloc;

impl HostAlloc {
    /// The allocator behind every `HostAlloc` (and behind the C library's API).
    #[inline(always)]
    pub const fn allocator() -> &'static Host {
        &HOST
    }

    /// A snapshot of the statistics.
    pub fn stats() -> Stats {
        HOST.stats()
    }

    /// Gives back what can be given back now (see [`Allocator::collect`]).
    pub fn collect() {
        HOST.collect()
    }

    /// Gives back what has stayed unused for the decay period, one second (see
    /// [`Allocator::decay`]): for a program that goes quiet, from a thread that calls it now
    /// and then (the allocator starts no thread of its own).
    pub fn decay() {
        HOST.decay()
    }
}

// SAFETY: forwards to the process-wide allocator, which upholds GlobalAlloc's contract.
unsafe impl GlobalAlloc for HostAlloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's GlobalAlloc promises.
        unsafe { HOST.alloc(layout) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's GlobalAlloc promises.
        unsafe { HOST.alloc_zeroed(layout) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's GlobalAlloc promises.
        unsafe { HOST.dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's GlobalAlloc promises.
        unsafe { HOST.realloc(ptr, layout, new_size) }
    }
}
