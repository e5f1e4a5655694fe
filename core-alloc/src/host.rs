//! The ready-made Linux allocator: the core over anonymous mmap with transparent huge pages
//! and per-thread slots.
//!
//! ```no_run
//! #[global_allocator]
//! static GLOBAL: core_alloc::host::HostAlloc = core_alloc::host::HostAlloc;
//! ```
//!
//! Every `HostAlloc` value refers to the one process-wide allocator, so it can be used as
//! the global allocator and also queried ([`HostAlloc::stats`]) from anywhere. When a thread
//! exits, its slot's slabs are given up (empty ones back to the heap, the others when their
//! last block is freed). A misuse the allocator notices (freeing a pointer it never handed
//! out, for one) prints a line to standard error and aborts, as C allocators do.

use core::alloc::{GlobalAlloc, Layout};

use page_provider::linux::MmapProvider;
use platform::host::HostPlatform;

use crate::{Allocator, Misuse, MisuseReport, Stats};

/// The type of the process-wide host allocator.
pub type Host = Allocator<MmapProvider, HostPlatform>;

static HOST: Host = Allocator::new(MmapProvider::new(), HostPlatform::with_exit_hook(release_exiting_slot))
    .with_misuse_hook(abort_on_misuse);

fn release_exiting_slot(slot: usize) {
    // SAFETY: the host platform calls its exit hook with the exiting thread's slot, which
    // the thread still holds exclusively, outside any allocator call.
    unsafe { HOST.release_slot(slot) }
}

fn abort_on_misuse(report: &MisuseReport) {
    let what = match report.kind {
        Misuse::ForeignPointer => "free of a pointer this allocator did not hand out",
        Misuse::DoubleFree => "double free",
        Misuse::WrongLayout => "free with a size or alignment that does not match the allocation",
    };
    let mut line = [0u8; 128];
    let mut writer = LineWriter { buffer: &mut line, length: 0 };
    let _ = core::fmt::write(
        &mut writer,
        format_args!("core-alloc: {what} at {:#x}; aborting\n", report.address),
    );
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
    /// The allocator behind every `HostAlloc`.
    pub fn allocator() -> &'static Host {
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
