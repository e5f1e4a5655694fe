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
    let excluded =
        [(0, 1 << 20), (0, boot_identity_end()), (image_start, image_len), start_info, memmap, cmdline];
    let mut added = 0;
    for &(start, len) in boot.ram() {
        // SAFETY: the range is usable RAM by the memory map, and everything the kernel or
        // the firmware still uses in it is in `excluded`. It is not known to read as zero
        // (firmware may have used it), so it is added as dirty. Map entries do not overlap.
        added += unsafe { FRAMES.add_ram(start, len, &excluded, false) };
    }
    println!(
        "x86_64 boot: {added} heap frames of 2 MiB ({} MiB) from {} RAM ranges",
        added * 2,
        boot.ram().len()
    );
}

/// Frames between two that get a written stamp (the rest are only read): writing every
/// frame would make QEMU back all of the guest's RAM with host memory.
const STAMP_STRIDE: usize = 64;

/// Takes every frame, one at a time, and gives them all back: proves each frame maps where
/// it should. Every frame is read through the heap window (its entry is present); every
/// `STAMP_STRIDE`-th frame and the highest one get their physical address written at both
/// ends and read back (the entry points at the right frame). Returns the number of frames
/// and the highest physical byte. Boot CPU, before the heap.
pub(crate) fn check_every_frame() -> (usize, u64) {
    // The first frame holds the list of the others (2 MiB: room for 262144 addresses).
    let Some(list) = FRAMES.alloc_chunks(1) else { return (0, 0) };
    let list = list.base.as_ptr().cast::<u64>();
    let capacity = CHUNK_SIZE / 8;
    let stamp = |frame: *mut u8| {
        let phys = (frame as usize - VIRT_OFFSET) as u64;
        // SAFETY: `frame` is a 2 MiB frame the provider mapped for this function alone;
        // both words lie inside it and are 8-byte aligned.
        unsafe {
            frame.cast::<u64>().write_volatile(phys);
            frame.add(CHUNK_SIZE - 8).cast::<u64>().write_volatile(!phys);
        }
    };
    let stamp_holds = |frame: *mut u8| {
        let phys = (frame as usize - VIRT_OFFSET) as u64;
        // SAFETY: as for `stamp`.
        unsafe {
            frame.cast::<u64>().read_volatile() == phys
                && frame.add(CHUNK_SIZE - 8).cast::<u64>().read_volatile() == !phys
        }
    };
    let mut count = 0;
    let mut highest = list as *mut u8;
    while count < capacity {
        let Some(chunks) = FRAMES.alloc_chunks(1) else { break };
        let frame = chunks.base.as_ptr();
        // SAFETY: `list` is the first frame, ours, with room for `capacity` entries; `frame`
        // was just mapped for us (reading it proves its entry is present).
        unsafe {
            list.add(count).write(frame as u64);
            frame.cast::<u64>().read_volatile();
        }
        if count.is_multiple_of(STAMP_STRIDE) {
            stamp(frame);
        }
        highest = highest.max(frame);
        count += 1;
    }
    stamp(highest);
    for index in 0..count {
        // SAFETY: entries below `count` were written above.
        let frame = unsafe { list.add(index).read() } as *mut u8;
        if index.is_multiple_of(STAMP_STRIDE) || frame == highest {
            let phys = frame as usize - VIRT_OFFSET;
            assert!(stamp_holds(frame), "the frame at {phys:#x} reads back another frame's stamp");
        }
        // SAFETY: a frame this provider handed out above, no longer used.
        unsafe { FRAMES.free_chunks(NonNull::new(frame).expect("frames are not null"), 1) };
    }
    // SAFETY: the list frame, handed out above and no longer used.
    unsafe { FRAMES.free_chunks(NonNull::new(list.cast()).expect("frames are not null"), 1) };
    (count + 1, (highest as usize - VIRT_OFFSET + CHUNK_SIZE - 1) as u64)
}
