//! The heap's physical memory: every whole 2 MiB frame of usable RAM from the PVH memory
//! map, minus the kernel's own memory, in a `FrameProvider` that maps frames in the heap
//! window (`platform`'s `HeapMapper`: physical address + 512 GiB).
//!
//! Left out: everything below 1 MiB (firmware data, the SMP trampoline), the kernel image
//! (boot page tables, boot stack and the window's tables included) and the rest of the
//! boot identity mapping, and the PVH start_info, memory map and command line.

use core::ptr::NonNull;

use page_provider::bare_metal::FrameProvider;
use page_provider::{CHUNK_SIZE, PageProvider};
use platform::arch::x86_64::{HeapMapper, VIRT_OFFSET, WINDOW_BYTES};

use crate::boot::{BOOT_PML4, boot_identity_end, kernel_image};
use crate::console::println;
use crate::pvh::BootInfo;

/// Bitmap words to track every frame of the window (64 frames a word).
const FRAME_WORDS: usize = (WINDOW_BYTES / CHUNK_SIZE as u64 / 64) as usize;

/// The kernel's frame provider: physical address 0 is frame 0, mapped at `VIRT_OFFSET`.
pub(crate) type Frames = FrameProvider<HeapMapper, FRAME_WORDS>;

/// The heap's frames, shared by every CPU.
pub(crate) static FRAMES: Frames = FrameProvider::new(HeapMapper::new(), 0, VIRT_OFFSET);

/// Installs the heap window and adds the usable RAM to [`FRAMES`]. Boot CPU, once.
pub(crate) fn init(boot: &BootInfo) {
    // SAFETY: BOOT_PML4 is the top-level table every CPU loads (the boot code and the SMP
    // trampoline both use it), entry 1 is not used by the boot code, and the kernel image
    // is identity-mapped, so its statics' physical addresses equal their virtual ones.
    unsafe { HeapMapper::install(BOOT_PML4.0.as_ptr() as *mut u64, 0) };

    let (image_start, image_len) = kernel_image();
    let [start_info, memmap, cmdline] = boot.boot_data;
    let excluded = [(0, 1 << 20), (0, boot_identity_end()), (image_start, image_len), start_info, memmap, cmdline];
    let mut added = 0;
    for &(start, len) in boot.ram() {
        // SAFETY: the range is usable RAM by the memory map, and everything the kernel or
        // the firmware still uses in it is in `excluded`. It is not known to read as zero
        // (firmware may have used it), so it is added as dirty. Map entries do not overlap.
        added += unsafe { FRAMES.add_ram(start, len, &excluded, false) };
    }
    println!("x86_64 boot: {added} heap frames of 2 MiB ({} MiB) from {} RAM ranges", added * 2, boot.ram().len());
}

/// Takes every frame, one at a time, writes and reads back a word at each end through the
/// heap window, and gives them all back: proves each frame maps where it should. Returns
/// the number of frames and the highest physical address seen. Boot CPU, before the heap.
pub(crate) fn check_every_frame() -> (usize, u64) {
    let mut count = 0;
    let mut highest = 0;
    // The frames taken form a list through their first word.
    let mut list: Option<NonNull<u8>> = None;
    while let Some(chunks) = FRAMES.alloc_chunks(1) {
        let base = chunks.base.as_ptr();
        let phys = (base as usize - VIRT_OFFSET) as u64;
        let next = list.map_or(0, |frame| frame.as_ptr() as u64);
        // SAFETY: the provider just mapped this 2 MiB frame for us alone; both words lie
        // inside it and are 8-byte aligned.
        unsafe {
            base.cast::<u64>().write_volatile(next);
            base.add(CHUNK_SIZE - 8).cast::<u64>().write_volatile(phys);
        }
        list = Some(chunks.base);
        count += 1;
        highest = highest.max(phys + CHUNK_SIZE as u64 - 1);
    }
    while let Some(frame) = list {
        let base = frame.as_ptr();
        let phys = (base as usize - VIRT_OFFSET) as u64;
        // SAFETY: the frame is still mapped and ours (taken above, not given back yet).
        let (next, stamp) =
            unsafe { (base.cast::<u64>().read_volatile(), base.add(CHUNK_SIZE - 8).cast::<u64>().read_volatile()) };
        assert_eq!(stamp, phys, "frame at {phys:#x} reads back another frame's stamp");
        // SAFETY: one frame of a run this provider handed out, no longer used.
        unsafe { FRAMES.free_chunks(frame, 1) };
        list = NonNull::new(next as *mut u8);
    }
    (count, highest)
}
