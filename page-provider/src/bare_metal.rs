//! 2 MiB RAM frames for a kernel heap, mapped with 2 MiB page-table entries.
//!
//! The kernel adds the usable RAM of its boot memory map (the PVH memory map on x86-64, the
//! device tree's memory node on AArch64), leaving out its own image and boot data; only whole
//! 2 MiB frames are used. A run of chunks is a run of physically contiguous frames, mapped
//! at `physical address + virt_offset` through a [`HugeMapper`] when handed out and unmapped
//! when taken back. Because a frame always maps at the same virtual address, a mapping never
//! changes its target: a stale TLB entry on another CPU can only point at the frame it
//! always pointed at.
//!
//! Concurrency: one spin lock around the frame bitmap and the mapping calls; the allocator
//! calls providers only on its slow paths, with interrupts masked on kernels. The count of
//! free frames (`free_frames`, `supply`) is an atomic kept beside the bitmap, changed under
//! the lock and read without it: a kernel that asks for it from code an allocating
//! interrupt handler can interrupt (a statistics print) cannot deadlock on the lock.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};

use platform::HugeMapper;

use crate::bitmap::ChunkBitmap;
use crate::{CHUNK_SIZE, Capabilities, Chunks, PageProvider, Supply};

/// Frames of RAM handed out as chunks; tracks `WORDS * 64` frames from `phys_base` (the
/// default covers 8 GiB of physical address space).
#[derive(Debug)]
pub struct FrameProvider<M, const WORDS: usize = 64> {
    mapper: M,
    phys_base: u64,
    virt_offset: usize,
    frames: spin::Mutex<ChunkBitmap<WORDS>>,
    total: AtomicUsize,
    /// Frames in the bitmap, as it stands when its lock is let go.
    free: AtomicUsize,
}

impl<M: HugeMapper, const WORDS: usize> FrameProvider<M, WORDS> {
    /// A provider with no RAM yet. Frame `i` is the 2 MiB at `phys_base + i * 2 MiB` and
    /// maps at `phys_base + i * 2 MiB + virt_offset`. `phys_base` must be 2 MiB aligned.
    pub const fn new(mapper: M, phys_base: u64, virt_offset: usize) -> Self {
        assert!(phys_base.is_multiple_of(CHUNK_SIZE as u64));
        assert!(virt_offset.is_multiple_of(CHUNK_SIZE));
        Self {
            mapper,
            phys_base,
            virt_offset,
            frames: spin::Mutex::new(ChunkBitmap::new()),
            total: AtomicUsize::new(0),
            free: AtomicUsize::new(0),
        }
    }

    /// Adds the whole 2 MiB frames of `[start, start + len)` that overlap none of the
    /// `exclude` ranges (`(start, len)` pairs) and lie in the tracked span; returns how many.
    ///
    /// # Safety
    ///
    /// The range is usable RAM that nothing outside the excluded ranges uses, now or later;
    /// if `zeroed`, it reads as zero. No frame is added twice.
    pub unsafe fn add_ram(&self, start: u64, len: u64, exclude: &[(u64, u64)], zeroed: bool) -> usize {
        let chunk = CHUNK_SIZE as u64;
        let end = start.saturating_add(len);
        let mut frame = start.next_multiple_of(chunk).max(self.phys_base);
        let mut added = 0;
        let mut frames = self.frames.lock();
        while frame.saturating_add(chunk) <= end {
            let index = ((frame - self.phys_base) / chunk) as usize;
            if index >= ChunkBitmap::<WORDS>::CAPACITY {
                break;
            }
            let overlaps = exclude.iter().any(|&(ex_start, ex_len)| {
                ex_len > 0 && ex_start < frame + chunk && frame < ex_start.saturating_add(ex_len)
            });
            if !overlaps && !frames.is_available(index) {
                frames.add(index, 1, zeroed);
                added += 1;
            }
            frame += chunk;
        }
        self.total.fetch_add(added, Ordering::Relaxed);
        self.free.store(frames.available(), Ordering::Relaxed);
        added
    }

    /// Frames not handed out (without taking the lock).
    pub fn free_frames(&self) -> usize {
        self.free.load(Ordering::Relaxed)
    }

    /// Frames added with [`add_ram`](Self::add_ram).
    pub fn total_frames(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// The mapper, for kernels that also use it directly.
    pub fn mapper(&self) -> &M {
        &self.mapper
    }

    fn virt_of(&self, index: usize) -> usize {
        (self.phys_base as usize) + index * CHUNK_SIZE + self.virt_offset
    }
}

// SAFETY: frames come only from RAM the kernel vouched for in `add_ram`; the bitmap hands
// each out once until given back; a run is physically contiguous and mapped at a fixed
// offset, so its virtual range is contiguous, 2 MiB aligned, and disjoint from other runs.
// Clean reports come from the bitmap, which marks frames dirty once handed out.
unsafe impl<M: HugeMapper, const WORDS: usize> PageProvider for FrameProvider<M, WORDS> {
    fn capabilities(&self) -> Capabilities {
        Capabilities::HUGE_PAGES | Capabilities::RELEASE
    }

    fn page_size(&self) -> usize {
        4096
    }

    fn huge_page_size(&self) -> Option<usize> {
        Some(CHUNK_SIZE)
    }

    fn supply(&self) -> Option<Supply> {
        Some(Supply { available: self.free_frames(), total: self.total_frames() })
    }

    fn alloc_chunks(&self, count: usize) -> Option<Chunks> {
        let mut frames = self.frames.lock();
        let (index, zeroed) = frames.take(count)?;
        for mapped in 0..count {
            let virt = self.virt_of(index + mapped);
            let phys = self.phys_base + ((index + mapped) * CHUNK_SIZE) as u64;
            // SAFETY: the frame was free, so nothing uses it, and its fixed virtual address
            // is unmapped (frames are unmapped when given back).
            if !unsafe { self.mapper.map_2m(virt, phys) } {
                for undo in 0..mapped {
                    // SAFETY: mapped just above and not handed out.
                    unsafe { self.mapper.unmap_2m(self.virt_of(index + undo)) };
                }
                frames.give_back(index, count);
                return None;
            }
        }
        self.free.store(frames.available(), Ordering::Relaxed);
        Some(Chunks { base: NonNull::new(self.virt_of(index) as *mut u8)?, zeroed })
    }

    unsafe fn free_chunks(&self, base: NonNull<u8>, count: usize) {
        let offset = (base.as_ptr() as usize).wrapping_sub(self.virt_of(0));
        let index = offset / CHUNK_SIZE;
        let mut frames = self.frames.lock();
        for frame in index..index + count {
            // SAFETY: the caller gives back chunks this provider mapped and no longer uses.
            unsafe { self.mapper.unmap_2m(self.virt_of(frame)) };
        }
        let accepted = frames.give_back(index, count);
        debug_assert!(accepted, "frames given back that were not handed out");
        self.free.store(frames.available(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::sync::Mutex;
    use std::vec::Vec;

    /// Records mappings instead of touching page tables; refuses virtual addresses at or
    /// above `limit`.
    struct RecordingMapper {
        mapped: Mutex<Vec<(usize, u64)>>,
        limit: usize,
    }

    // SAFETY: a test double: it maps nothing that anyone dereferences.
    unsafe impl HugeMapper for RecordingMapper {
        unsafe fn map_2m(&self, virt: usize, phys: u64) -> bool {
            if virt >= self.limit {
                return false;
            }
            self.mapped.lock().unwrap().push((virt, phys));
            true
        }
        unsafe fn unmap_2m(&self, virt: usize) {
            let mut mapped = self.mapped.lock().unwrap();
            let position = mapped.iter().position(|&(v, _)| v == virt).expect("unmap of an unmapped address");
            mapped.remove(position);
        }
    }

    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;

    #[test]
    fn maps_contiguous_frames_at_a_fixed_offset_and_skips_excluded_ones() {
        let mapper = RecordingMapper { mapped: Mutex::new(Vec::new()), limit: usize::MAX };
        let provider: FrameProvider<_, 8> = FrameProvider::new(mapper, GIB, 1 << 39);
        // RAM from 1 GiB + 1 MiB for 64 MiB: the first partial frame is dropped; the kernel
        // image at 1 GiB + 8 MiB (3 MiB long) takes out two frames.
        // SAFETY: a test double; no memory is touched.
        let added = unsafe { provider.add_ram(GIB + MIB, 64 * MIB, &[(GIB + 8 * MIB, 3 * MIB)], true) };
        assert_eq!(added, 31 - 2);
        let run = provider.alloc_chunks(3).unwrap();
        let virt = run.base.as_ptr() as usize;
        assert_eq!(virt % CHUNK_SIZE, 0);
        assert!(run.zeroed);
        let mapped = provider.mapper().mapped.lock().unwrap().clone();
        assert_eq!(mapped.len(), 3);
        for (step, &(v, p)) in mapped.iter().enumerate() {
            assert_eq!(v, virt + step * CHUNK_SIZE);
            assert_eq!(v - (1 << 39), p as usize, "frame not mapped at its fixed offset");
            assert!(!(GIB + 8 * MIB..GIB + 11 * MIB).contains(&p) && p >= GIB + 2 * MIB);
        }
        // A run of 4 cannot straddle the excluded frames (frames 4 and 5 from the base).
        let second = provider.alloc_chunks(4).unwrap();
        let first_phys = second.base.as_ptr() as usize - (1 << 39);
        assert!(first_phys as u64 >= GIB + 12 * MIB);
        assert_eq!(provider.free_frames(), 29 - 7);
        assert_eq!(provider.supply(), Some(Supply { available: 29 - 7, total: 29 }));
        // SAFETY: both runs came from this provider and are unused.
        unsafe {
            provider.free_chunks(run.base, 3);
            provider.free_chunks(second.base, 4);
        }
        assert_eq!(provider.free_frames(), 29);
        assert!(provider.mapper().mapped.lock().unwrap().is_empty(), "frames left mapped");
        assert!(provider.alloc_chunks(30).is_none());
    }

    #[test]
    fn a_failed_mapping_undoes_the_run() {
        let mapper = RecordingMapper {
            mapped: Mutex::new(Vec::new()),
            limit: (GIB as usize) + (1 << 39) + 3 * CHUNK_SIZE,
        };
        let provider: FrameProvider<_, 8> = FrameProvider::new(mapper, GIB, 1 << 39);
        // SAFETY: a test double; no memory is touched.
        unsafe { provider.add_ram(GIB, 16 * MIB, &[], false) };
        assert!(provider.alloc_chunks(5).is_none(), "the mapper refused the fourth frame");
        assert!(provider.mapper().mapped.lock().unwrap().is_empty());
        assert_eq!(provider.free_frames(), 8);
        let run = provider.alloc_chunks(3).unwrap();
        assert!(!run.zeroed);
    }
}
