//! The heap's physical memory: every whole 2 MiB frame of usable RAM from the PVH memory
//! map, minus the kernel's own memory, in a `FrameProvider` that maps frames in the heap
//! window (`platform`'s `HeapMapper`: physical address + [`HEAP_OFFSET`], an offset this
//! kernel chose, in the upper half).
//!
//! Left out: everything below 1 MiB (firmware data, the SMP trampoline), the kernel image
//! (boot page tables and boot stack included) and the rest of the boot identity mapping, the
//! PVH start_info, memory map and command line, and the RAM given to the kernel's own frame
//! allocator ([`KERNEL_FRAMES`], which also supplies the heap window's page tables).

use core::ptr::NonNull;

use page_provider::bare_metal::FrameProvider;
use page_provider::{CHUNK_SIZE, PageProvider};
use platform::arch::x86_64::HeapMapper;

use crate::boot::{PHYS_OFFSET, boot_identity_end, kernel_image, map_physical_memory};
use crate::console::println;
use crate::frames::KERNEL_FRAMES;
use crate::pvh::{BootInfo, Range};

/// Where the heap maps frame `phys`: at `phys + HEAP_OFFSET`. Any 2 MiB-aligned offset
/// would do; this one shares the physical-memory map's PML4 entry (256 GiB above it) and
/// starts 1 GiB + 2 MiB into a PDPT entry, so the mapper reuses the kernel's PDPT and builds
/// page directories at an unaligned start.
pub(crate) const HEAP_OFFSET: usize = PHYS_OFFSET + (257 << 30) + (2 << 20);

/// Physical address space the provider tracks: RAM below it can back the heap.
const TRACKED_BYTES: u64 = 16 << 30;
/// Bitmap words to track every frame of [`TRACKED_BYTES`] (64 frames a word).
const FRAME_WORDS: usize = (TRACKED_BYTES / CHUNK_SIZE as u64 / 64) as usize;

/// RAM set aside for the kernel's own frame allocator: 2 MiB frames, and a quarter of the RAM
/// (from [`KERNEL_SMALL_FRAME_MIN`] to [`KERNEL_SMALL_FRAME_MAX`]) in 4 KiB frames (the heap
/// window's tables, and the second heap's chunks once the 2 MiB frames are gone). The second
/// heap's cross-CPU stress kept over 766 MiB in flight when its vCPUs were starved on a busy
/// host; the main heap needs the rest with 64 CPUs.
const KERNEL_SMALL_FRAME_MIN: u64 = 704 << 20;
const KERNEL_SMALL_FRAME_MAX: u64 = 1 << 30;
const KERNEL_HUGE_FRAME_BYTES: u64 = 64 << 20;

/// The kernel's frame provider: physical address 0 is frame 0, mapped at `HEAP_OFFSET`.
pub(crate) type Frames = FrameProvider<HeapMapper, FRAME_WORDS>;

/// The heap's frames, shared by every CPU.
pub(crate) static FRAMES: Frames = FrameProvider::new(HeapMapper::new(HEAP_OFFSET), 0, HEAP_OFFSET);

/// Whether `(start, len)` overlaps any of `ranges`.
fn overlaps(start: u64, len: u64, ranges: &[Range]) -> bool {
    ranges.iter().any(|&(other, other_len)| other_len > 0 && other < start + len && start < other + other_len)
}

/// The first 2 MiB-aligned `len` bytes of RAM that overlap none of `excluded`.
fn find_ram(boot: &BootInfo, len: u64, excluded: &[Range]) -> Option<u64> {
    let chunk = CHUNK_SIZE as u64;
    boot.ram().iter().find_map(|&(start, ram_len)| {
        let mut candidate = start.next_multiple_of(chunk);
        while candidate + len <= start + ram_len {
            if !overlaps(candidate, len, excluded) {
                return Some(candidate);
            }
            candidate += chunk;
        }
        None
    })
}

/// Maps physical memory at `PHYS_OFFSET`, sets RAM aside for the kernel's frame allocator,
/// installs the heap window (its tables from that allocator) and adds the rest of the usable
/// RAM to [`FRAMES`]. Boot CPU, once.
pub(crate) fn init(boot: &BootInfo) {
    map_physical_memory(boot.ram());
    let (image_start, image_len) = kernel_image();
    let [start_info, memmap, cmdline] = boot.boot_data;
    let mut excluded = [
        (0, 1 << 20),
        (0, boot_identity_end()),
        (image_start, image_len),
        start_info,
        memmap,
        cmdline,
        (0, 0),
        (0, 0),
    ];
    let ram: u64 = boot.ram().iter().map(|&(_, len)| len).sum();
    let small_bytes =
        (ram / 4).clamp(KERNEL_SMALL_FRAME_MIN, KERNEL_SMALL_FRAME_MAX) & !(CHUNK_SIZE as u64 - 1);
    for (slot, bytes) in [(6, small_bytes), (7, KERNEL_HUGE_FRAME_BYTES)] {
        let start = find_ram(boot, bytes, &excluded).expect("no RAM for the kernel's frame allocator");
        excluded[slot] = (start, bytes);
    }
    KERNEL_FRAMES.give(excluded[6], excluded[7]);

    let ram_end = boot.ram().iter().map(|&(start, len)| start + len).max().unwrap_or(0).min(TRACKED_BYTES);
    // SAFETY: CR3 is BOOT_PML4, which every CPU loads (the boot code and the SMP trampoline
    // both use it), and nothing else maps the window; `map_physical_memory` made every RAM
    // frame, the boot tables (in the image, in RAM) and the kernel's frames reachable at
    // `phys + PHYS_OFFSET`; the kernel frame allocator hands out unused RAM, set aside above.
    let installed = unsafe { FRAMES.mapper().install(PHYS_OFFSET, 0..ram_end, || KERNEL_FRAMES.allocate()) };
    let tables = installed.unwrap_or_else(|why| panic!("installing the heap window: {why}"));
    let window = FRAMES.mapper().window();
    println!(
        "x86_64 boot: heap window {:#x}..{:#x} ({tables} page tables from the kernel's frame allocator, {} frames left)",
        window.start,
        window.end,
        KERNEL_FRAMES.remaining()
    );

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

/// The physical address of a heap frame.
fn phys_of(frame: *mut u8) -> u64 {
    (frame as usize).wrapping_sub(HEAP_OFFSET) as u64
}

/// Takes every frame, one at a time, and gives them all back: proves each frame maps where
/// it should. Every frame is read through the heap window (its entry is present) and looked
/// up in the page tables (`HeapMapper::translate` must give its physical address); every
/// `STAMP_STRIDE`-th frame and the highest one get their physical address written at both
/// ends and read back, also through the physical-memory map (the entry points at the right
/// frame). Returns the number of frames and the highest physical byte. Boot CPU, before the
/// heap.
pub(crate) fn check_every_frame() -> (usize, u64) {
    // The first frame holds the list of the others (2 MiB: room for 262144 addresses).
    let Some(list) = FRAMES.alloc_chunks(1) else { return (0, 0) };
    let list = list.base.as_ptr().cast::<u64>();
    let capacity = CHUNK_SIZE / 8;
    let stamp = |frame: *mut u8| {
        let phys = phys_of(frame);
        // SAFETY: `frame` is a 2 MiB frame the provider mapped for this function alone;
        // both words lie inside it and are 8-byte aligned.
        unsafe {
            frame.cast::<u64>().write_volatile(phys);
            frame.add(CHUNK_SIZE - 8).cast::<u64>().write_volatile(!phys);
        }
    };
    let stamp_holds = |frame: *mut u8| {
        let phys = phys_of(frame);
        let direct = (phys as usize + PHYS_OFFSET) as *const u64;
        // SAFETY: as for `stamp`; `direct` is the same frame through the physical-memory
        // map, which covers all RAM.
        unsafe {
            frame.cast::<u64>().read_volatile() == phys
                && frame.add(CHUNK_SIZE - 8).cast::<u64>().read_volatile() == !phys
                && direct.read_volatile() == phys
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
        let translated = FRAMES.mapper().translate(frame as usize + 0x1234);
        assert_eq!(translated, Some(phys_of(frame) + 0x1234), "the tables map {frame:p} elsewhere");
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
            let phys = phys_of(frame);
            assert!(stamp_holds(frame), "the frame at {phys:#x} reads back another frame's stamp");
        }
        // SAFETY: a frame this provider handed out above, no longer used.
        unsafe { FRAMES.free_chunks(NonNull::new(frame).expect("frames are not null"), 1) };
        assert_eq!(FRAMES.mapper().translate(frame as usize), None, "{frame:p} still mapped after its unmap");
    }
    // SAFETY: the list frame, handed out above and no longer used.
    unsafe { FRAMES.free_chunks(NonNull::new(list.cast()).expect("frames are not null"), 1) };
    (count + 1, phys_of(highest) + CHUNK_SIZE as u64 - 1)
}
