//! The kernel's own frame allocator, as a kernel has one besides its heap: 4 KiB frames
//! handed out one at a time from RAM set aside at boot (and never taken back). The heap
//! mapper's page tables come from it.

use spin::Mutex;

/// Bytes in a small frame.
pub(crate) const FRAME: u64 = 4096;

/// Frames from `next` up to `end` are free.
struct Bump {
    next: u64,
    end: u64,
}

/// The frames the kernel set aside; empty until [`KernelFrames::give`].
pub(crate) struct KernelFrames {
    free: Mutex<Bump>,
}

impl KernelFrames {
    /// No frames yet.
    pub(crate) const fn new() -> Self {
        Self { free: Mutex::new(Bump { next: 0, end: 0 }) }
    }

    /// Hands the allocator the RAM `[start, start + len)`; `start` is 4 KiB aligned and the
    /// range is RAM nothing else uses. Replaces what it had.
    pub(crate) fn give(&self, start: u64, len: u64) {
        assert!(start.is_multiple_of(FRAME), "frames must be 4 KiB aligned");
        *self.free.lock() = Bump { next: start, end: start + len };
    }

    /// The physical address of an unused 4 KiB frame, or `None` when none is left.
    pub(crate) fn allocate(&self) -> Option<u64> {
        let mut free = self.free.lock();
        if free.end - free.next < FRAME {
            return None;
        }
        free.next += FRAME;
        Some(free.next - FRAME)
    }

    /// Frames not handed out.
    pub(crate) fn remaining(&self) -> u64 {
        let free = self.free.lock();
        (free.end - free.next) / FRAME
    }
}

/// The kernel's frame allocator.
pub(crate) static KERNEL_FRAMES: KernelFrames = KernelFrames::new();
