//! The table walks over simulated physical memory: a boxed array of 4 KiB frames whose
//! physical addresses start at [`PHYS_BASE`], mapped at the box's address.

extern crate std;

use std::boxed::Box;
use std::vec::Vec;

use super::*;

/// The simulated RAM's first physical address.
const PHYS_BASE: u64 = 0x10_0000;
const FRAMES: usize = 64;

#[repr(C, align(4096))]
struct Frame([AtomicU64; ENTRIES]);

/// Simulated physical memory: frame 0 is the PML4; the frames from `next` on are free.
struct Memory {
    frames: Box<[Frame]>,
    next: usize,
}

impl Memory {
    fn new() -> Self {
        let frames: Vec<Frame> = (0..FRAMES).map(|_| Frame([const { AtomicU64::new(0) }; ENTRIES])).collect();
        Self { frames: frames.into_boxed_slice(), next: 1 }
    }

    fn map(&self) -> PhysMap {
        PhysMap { offset: (self.frames.as_ptr() as usize).wrapping_sub(PHYS_BASE as usize) }
    }

    fn pml4(&self) -> u64 {
        PHYS_BASE
    }

    /// A frame source over the free frames; each frame is filled with garbage first, so
    /// `prepare` must zero it.
    fn take(&mut self) -> Option<u64> {
        if self.next == FRAMES {
            return None;
        }
        for entry in &self.frames[self.next].0 {
            entry.store(0xDEAD_BEEF_0000_0001, Ordering::Relaxed);
        }
        self.next += 1;
        Some(PHYS_BASE + (self.next as u64 - 1) * TABLE_BYTES)
    }

    fn used(&self) -> usize {
        self.next - 1
    }
}

const GIB: usize = 1 << 30;
const MIB: usize = 1 << 20;
/// A higher-half base that is not 512 GiB- or even 1 GiB-aligned.
const HIGH: usize = 0xFFFF_C000_4020_0000;

fn prepare_in(memory: &mut Memory, window: Range<usize>) -> Result<usize, InstallError> {
    let (map, pml4) = (memory.map(), memory.pml4());
    // SAFETY: the PML4 and every frame the source returns are frames of `memory`, which
    // `map` covers.
    unsafe { prepare(map, pml4, window, &mut || memory.take()) }
}

#[test]
fn builds_one_directory_per_gib_touched_and_a_pdpt_per_512_gib() {
    let mut memory = Memory::new();
    // 3 GiB from 1 GiB + 2 MiB: touches four page directories, one PDPT.
    let taken = prepare_in(&mut memory, HIGH..HIGH + 3 * GIB).unwrap();
    assert_eq!(taken, 1 + 4);
    assert_eq!(memory.used(), 5);
    // Every 2 MiB page of the window has a directory entry, empty; the page before and after
    // the window have entries only where a directory exists anyway.
    for page in (HIGH..HIGH + 3 * GIB).step_by(2 * MIB) {
        // SAFETY: the tables are frames of `memory`.
        let entry = unsafe { directory_entry(memory.map(), memory.pml4(), page) }.expect("directory exists");
        assert_eq!(entry.load(Ordering::Relaxed), 0, "a table frame was not zeroed");
    }
    // A second call over the same window takes nothing: the tables are reused.
    assert_eq!(prepare_in(&mut memory, HIGH..HIGH + 3 * GIB), Ok(0));
    // Crossing a 512 GiB boundary needs a second PDPT.
    let low = (1usize << 39) - 2 * MIB;
    assert_eq!(prepare_in(&mut memory, low..low + 4 * MIB), Ok(2 + 2));
}

#[test]
fn leaves_translate_and_translation_follows_every_page_size() {
    let mut memory = Memory::new();
    prepare_in(&mut memory, HIGH..HIGH + 8 * MIB).unwrap();
    let (map, pml4) = (memory.map(), memory.pml4());
    // SAFETY: tables of `memory`.
    let entry = unsafe { directory_entry(map, pml4, HIGH + 2 * MIB) }.unwrap();
    entry.store(0x4020_0000 | PRESENT | WRITABLE | HUGE, Ordering::Relaxed);
    // SAFETY: tables of `memory`.
    let translated = |virt| unsafe { translate(map, pml4, virt) };
    assert_eq!(translated(HIGH + 2 * MIB + 0x1234), Some(0x4020_1234));
    assert_eq!(translated(HIGH), None, "an empty entry of the window");
    assert_eq!(translated(0x1000), None, "nothing mapped in the lower half");
    assert_eq!(translated(0x0000_8000_0000_0000), None, "not canonical");

    // A 4 KiB page under a page table, and a 1 GiB page, built by hand.
    let table = memory.take().unwrap();
    // SAFETY: a frame of `memory`.
    let page_table = unsafe { map.table(table) };
    for slot in page_table {
        slot.store(0, Ordering::Relaxed);
    }
    page_table[3].store(0x7000_5000 | PRESENT, Ordering::Relaxed);
    // SAFETY: tables of `memory`.
    unsafe { directory_entry(map, pml4, HIGH) }.unwrap().store(table | PRESENT | WRITABLE, Ordering::Relaxed);
    assert_eq!(translated(HIGH + 3 * 4096 + 0x10), Some(0x7000_5010));
    assert_eq!(translated(HIGH + 4 * 4096), None);
    // SAFETY: the PML4 is a frame of `memory`.
    let level4 = unsafe { map.table(pml4) };
    let pdpt = level4[index(HIGH, 4)].load(Ordering::Relaxed) & ADDRESS;
    // SAFETY: a PDPT of `memory`.
    let level3 = unsafe { map.table(pdpt) };
    level3[7].store(0x1_4000_0000 | PRESENT | WRITABLE | HUGE, Ordering::Relaxed);
    let in_gib_7 = (HIGH & !((1 << 39) - 1)) + 7 * GIB;
    assert_eq!(translated(in_gib_7 + 0x2345_6789), Some(0x1_4000_0000 + 0x2345_6789));
}

#[test]
fn refuses_mapped_pages_bad_windows_and_bad_frames() {
    let mut memory = Memory::new();
    prepare_in(&mut memory, HIGH..HIGH + 4 * MIB).unwrap();
    let (map, pml4) = (memory.map(), memory.pml4());
    // SAFETY: tables of `memory`.
    unsafe { directory_entry(map, pml4, HIGH + 2 * MIB) }.unwrap().store(PRESENT | HUGE, Ordering::Relaxed);
    assert_eq!(prepare_in(&mut memory, HIGH..HIGH + 4 * MIB), Err(InstallError::InUse(HIGH + 2 * MIB)));

    for window in [
        HIGH..HIGH,
        HIGH + 4096..HIGH + 2 * MIB,
        0x0000_7FFF_FFE0_0000..0x0000_8000_0020_0000,
        0xFFFF_7000_0000_0000..0xFFFF_7000_0020_0000,
    ] {
        assert_eq!(prepare_in(&mut memory, window.clone()), Err(InstallError::BadWindow), "{window:x?}");
    }

    let mut empty = Memory::new();
    empty.next = FRAMES;
    assert_eq!(prepare_in(&mut empty, HIGH..HIGH + 2 * MIB), Err(InstallError::OutOfTableFrames));

    let memory = Memory::new();
    // SAFETY: the PML4 is a frame of `memory`; the bad frame is refused before any use.
    let bad =
        unsafe { prepare(memory.map(), memory.pml4(), HIGH..HIGH + 2 * MIB, &mut || Some(PHYS_BASE + 8)) };
    assert_eq!(bad, Err(InstallError::MisalignedTableFrame(PHYS_BASE + 8)));
}
