//! The kernel's own frame allocator, as a kernel has one besides its heap: 4 KiB frames
//! handed out one at a time, and 2 MiB frames, from RAM set aside at boot (and never taken
//! back). The heap window's page tables come from it, and the second heap (`paged`) maps its
//! chunks with its frames through the `x86_64` crate's `FrameAllocator` traits.

use spin::Mutex;
use x86_64::PhysAddr;
use x86_64::structures::paging::{FrameAllocator, PhysFrame, Size2MiB, Size4KiB};

/// Frames from `next` up to `end` are free.
struct Bump {
    next: u64,
    end: u64,
}

impl Bump {
    fn take(&mut self, size: u64) -> Option<u64> {
        if self.end - self.next < size {
            return None;
        }
        self.next += size;
        Some(self.next - size)
    }
}

/// The frames the kernel set aside; empty until [`KernelFrames::give`].
pub(crate) struct KernelFrames {
    small: Mutex<Bump>,
    huge: Mutex<Bump>,
}

/// Bytes in a small frame.
const SMALL: u64 = 4096;
/// Bytes in a huge frame.
const HUGE: u64 = 2 << 20;

impl KernelFrames {
    /// No frames yet.
    const fn new() -> Self {
        Self { small: Mutex::new(Bump { next: 0, end: 0 }), huge: Mutex::new(Bump { next: 0, end: 0 }) }
    }

    /// Hands the allocator the RAM `small` for 4 KiB frames and `huge` for 2 MiB frames,
    /// `(start, length)` pairs, 2 MiB aligned, RAM nothing else uses. Replaces what it had.
    pub(crate) fn give(&self, small: (u64, u64), huge: (u64, u64)) {
        assert!(small.0.is_multiple_of(HUGE) && huge.0.is_multiple_of(HUGE), "frames must be 2 MiB aligned");
        *self.small.lock() = Bump { next: small.0, end: small.0 + small.1 };
        *self.huge.lock() = Bump { next: huge.0, end: huge.0 + huge.1 };
    }

    /// The physical address of an unused 4 KiB frame, or `None` when none is left.
    pub(crate) fn allocate(&self) -> Option<u64> {
        self.small.lock().take(SMALL)
    }

    /// 4 KiB frames not handed out.
    pub(crate) fn remaining(&self) -> u64 {
        let small = self.small.lock();
        (small.end - small.next) / SMALL
    }
}

/// The kernel's frame allocator.
pub(crate) static KERNEL_FRAMES: KernelFrames = KernelFrames::new();

/// [`KERNEL_FRAMES`]' 4 KiB frames as an `x86_64`-crate frame allocator.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SmallFrames;

// SAFETY: the bump allocator hands out each frame of RAM set aside for it once.
unsafe impl FrameAllocator<Size4KiB> for SmallFrames {
    fn allocate_frame(&mut self) -> Option<PhysFrame<Size4KiB>> {
        KERNEL_FRAMES.allocate().map(|phys| PhysFrame::containing_address(PhysAddr::new(phys)))
    }
}

/// [`KERNEL_FRAMES`]' 2 MiB frames as an `x86_64`-crate frame allocator.
// Unused in the `readme-heap` configuration, which leaves out its one user, the second heap.
#[cfg_attr(feature = "readme-heap", allow(dead_code))]
#[derive(Debug, Clone, Copy)]
pub(crate) struct HugeFrames;

// SAFETY: the bump allocator hands out each frame of RAM set aside for it once.
unsafe impl FrameAllocator<Size2MiB> for HugeFrames {
    fn allocate_frame(&mut self) -> Option<PhysFrame<Size2MiB>> {
        KERNEL_FRAMES.huge.lock().take(HUGE).map(|phys| PhysFrame::containing_address(PhysAddr::new(phys)))
    }
}
