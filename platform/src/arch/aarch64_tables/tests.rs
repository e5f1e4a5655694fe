//! The table code over simulated physical memory: a heap buffer whose bytes stand for the
//! physical addresses from [`PHYS_BASE`], reached through a [`PhysMap`] offset as a kernel
//! reaches its RAM.

extern crate std;

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::vec::Vec;

use super::*;

const PHYS_BASE: u64 = 0x8000_0000;
const MEMORY: usize = 8 << 20;
const GRANULES: [Granule; 3] = [Granule::Size4KiB, Granule::Size16KiB, Granule::Size64KiB];

/// Simulated RAM: table frames are handed out from its start, granule by granule.
struct Ram {
    base: *mut u8,
    layout: Layout,
    next: u64,
}

impl Ram {
    fn new() -> Ram {
        let layout = Layout::from_size_align(MEMORY, 1 << 16).unwrap();
        // SAFETY: a non-zero size.
        let base = unsafe { alloc_zeroed(layout) };
        assert!(!base.is_null());
        // Fill with garbage, so tables that were not zeroed show up as mappings.
        // SAFETY: the buffer is MEMORY bytes long.
        unsafe { base.write_bytes(0xA5, MEMORY) };
        Ram { base, layout, next: PHYS_BASE }
    }

    fn map(&self) -> PhysMap {
        PhysMap { offset: (self.base as usize).wrapping_sub(PHYS_BASE as usize) }
    }

    /// A frame of `granule` bytes, or `None` past the end.
    fn frame(&mut self, granule: Granule) -> Option<u64> {
        let frame = self.next.next_multiple_of(granule.size() as u64);
        if frame + granule.size() as u64 > PHYS_BASE + MEMORY as u64 {
            return None;
        }
        self.next = frame + granule.size() as u64;
        Some(frame)
    }

    /// Tables with a fresh, zeroed root.
    fn tables(&mut self, granule: Granule, va_bits: u32) -> Tables {
        let root = self.frame(granule).unwrap();
        let tables = Tables { root, regime: Regime::new(granule, va_bits).unwrap(), map: self.map() };
        for index in 0..granule.size() / 8 {
            // SAFETY: the root frame is simulated RAM.
            unsafe { tables.entry(root, index) }.store(0, Ordering::Relaxed);
        }
        tables
    }
}

impl Drop for Ram {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.base, self.layout) };
    }
}

#[test]
fn walks_start_where_the_architecture_says() {
    let start = |granule, va_bits| Regime::new(granule, va_bits).unwrap().start_level();
    assert_eq!(start(Granule::Size4KiB, 39), 1);
    assert_eq!(start(Granule::Size4KiB, 48), 0);
    assert_eq!(start(Granule::Size4KiB, 30), 2);
    assert_eq!(start(Granule::Size16KiB, 39), 1);
    assert_eq!(start(Granule::Size16KiB, 47), 1);
    assert_eq!(start(Granule::Size16KiB, 48), 0);
    assert_eq!(start(Granule::Size64KiB, 39), 2);
    assert_eq!(start(Granule::Size64KiB, 48), 1);
    assert_eq!(Regime::new(Granule::Size4KiB, 49), None);
    assert_eq!(Regime::new(Granule::Size4KiB, 24), None);
    assert_eq!(Granule::Size16KiB.entries_per_huge(), 128);
    assert_eq!(Granule::Size64KiB.entries_per_huge(), 32);
    assert_eq!(Granule::from_size(0x4000), Some(Granule::Size16KiB));
}

/// Maps, translates, refuses a second mapping, unmaps and maps again, for every granule,
/// in the lower and the upper address range, at 39 and 48 bits.
#[test]
fn maps_2_mib_with_every_granule_and_translates_it() {
    for granule in GRANULES {
        for va_bits in [39, 48] {
            for upper in [false, true] {
                let mut ram = Ram::new();
                let tables = ram.tables(granule, va_bits);
                let base = if upper { 0usize.wrapping_sub(1 << (va_bits - 1)) } else { 1 << (va_bits - 2) };
                let window = base..base + (64 << 20);
                let mut source = || ram.frame(granule);
                // SAFETY: simulated RAM reached through the map; frames are unused.
                let taken = unsafe { tables.prepare(window.clone(), &mut source) }.unwrap();
                assert!(taken >= 1, "{granule:?} {va_bits} bits: no table built");
                // SAFETY: as above; the tables exist, so no frame is needed.
                let again = unsafe { tables.prepare(window.clone(), &mut || None) }.unwrap();
                assert_eq!(again, 0, "present tables are reused");

                let virt = window.start + 6 * HUGE;
                let phys = 0x1_2340_0000u64 & !(HUGE as u64 - 1);
                // SAFETY: as above; the physical address is never dereferenced.
                unsafe { tables.map_2m(virt, phys, Memory::Normal, None) }.unwrap();
                for offset in [0, 0x1234, HUGE / 2 + 8, HUGE - 1] {
                    // SAFETY: as above.
                    let found = unsafe { tables.translate(virt + offset) }.unwrap();
                    assert_eq!(found.phys, phys + offset as u64, "{granule:?} {va_bits} {upper} {offset:#x}");
                    assert_eq!(found.memory, Memory::Normal);
                    let contiguous = granule != Granule::Size4KiB;
                    assert_eq!(found.contiguous, contiguous);
                    assert_eq!(found.size, if contiguous { granule.size() } else { HUGE });
                }
                // SAFETY: as above.
                unsafe {
                    assert_eq!(tables.translate(virt - 1), None, "the neighbours stay unmapped");
                    assert_eq!(tables.translate(virt + HUGE), None);
                    assert_eq!(
                        tables.map_2m(virt, phys, Memory::Normal, None),
                        Err(TablesError::InUse(virt)),
                        "a second mapping of the same address"
                    );
                    assert!(tables.unmap_2m(virt));
                    assert_eq!(tables.translate(virt), None);
                    tables.map_2m(virt, phys + HUGE as u64, Memory::Device, None).unwrap();
                    let found = tables.translate(virt + 8).unwrap();
                    assert_eq!((found.phys, found.memory), (phys + HUGE as u64 + 8, Memory::Device));
                }
            }
        }
    }
}

/// The frame counts of a window: one table of the 2 MiB level per span it covers, plus the
/// levels above.
#[test]
fn prepare_takes_one_table_per_span_and_the_levels_above() {
    let cases = [
        // 4 KiB, 39 bits: the root is level 1; 3 GiB need 3 level-2 tables.
        (Granule::Size4KiB, 39, 0x40_0000_0000usize, 3usize << 30, 3),
        // 4 KiB, 48 bits: one level-1 table as well.
        (Granule::Size4KiB, 48, 0x40_0000_0000, 3 << 30, 4),
        // 16 KiB, 39 bits: one level-2 table and two level-3 tables of 32 MiB.
        (Granule::Size16KiB, 39, 0x40_0000_0000, 64 << 20, 3),
        // 64 KiB, 39 bits: the root is level 2; 1 GiB needs two level-3 tables of 512 MiB.
        (Granule::Size64KiB, 39, 0x40_0000_0000, 1 << 30, 2),
    ];
    for (granule, va_bits, start, len, expected) in cases {
        let mut ram = Ram::new();
        let tables = ram.tables(granule, va_bits);
        // SAFETY: simulated RAM; unused frames.
        let taken = unsafe { tables.prepare(start..start + len, &mut || ram.frame(granule)) }.unwrap();
        assert_eq!(taken, expected, "{granule:?} {va_bits} bits");
    }
}

#[test]
fn bad_windows_misaligned_frames_and_running_out_are_reported() {
    let mut ram = Ram::new();
    let granule = Granule::Size16KiB;
    let tables = ram.tables(granule, 39);
    let high = 1usize << 39;
    // SAFETY: simulated RAM; unused frames (as in every block below).
    unsafe {
        assert_eq!(tables.prepare(0..0, &mut || None), Err(TablesError::BadWindow));
        assert_eq!(tables.prepare(4096..HUGE, &mut || None), Err(TablesError::BadWindow));
        assert_eq!(tables.prepare(high - HUGE..high + HUGE, &mut || None), Err(TablesError::BadWindow));
        assert_eq!(tables.map_2m(high, 0, Memory::Normal, None), Err(TablesError::BadWindow));
        assert_eq!(tables.map_2m(HUGE, 4096, Memory::Normal, None), Err(TablesError::BadWindow));
        assert_eq!(
            tables.prepare(0..HUGE, &mut || Some(PHYS_BASE + 0x1000)),
            Err(TablesError::MisalignedTableFrame(PHYS_BASE + 0x1000))
        );
    }
    // Two frames are needed (a level-2 and a level-3 table); with one, the first stays
    // linked in and the second call needs only the other.
    let mut budget = 1;
    let mut frames: Vec<u64> = Vec::new();
    let mut limited = || {
        if budget == 0 {
            return None;
        }
        budget -= 1;
        let frame = ram.frame(granule);
        frames.extend(frame);
        frame
    };
    // SAFETY: as above.
    let first = unsafe { tables.prepare(HUGE..2 * HUGE, &mut limited) };
    assert_eq!(first, Err(TablesError::OutOfTableFrames));
    // SAFETY: as above.
    let second = unsafe { tables.prepare(HUGE..2 * HUGE, &mut || ram.frame(granule)) };
    assert_eq!(second, Ok(1));
    // SAFETY: as above.
    assert_eq!(unsafe { tables.map_2m(HUGE, 0, Memory::Normal, None) }, Ok(()));
}

/// A block of the kernel's own (a 1 GiB level-1 block with the 4 KiB granule) is never
/// mapped over or walked into; translate follows it.
#[test]
fn existing_blocks_are_in_use() {
    let mut ram = Ram::new();
    let tables = ram.tables(Granule::Size4KiB, 39);
    let gib = 1usize << 30;
    // SAFETY: the root is simulated RAM.
    unsafe { tables.entry(tables.root, 2) }
        .store(leaf(1, 2 << 30, Memory::NormalExecutable), Ordering::Relaxed);
    // SAFETY: simulated RAM; unused frames.
    unsafe {
        assert_eq!(
            tables.map_2m(2 * gib + HUGE, 0, Memory::Normal, Some(&mut || ram.frame(Granule::Size4KiB))),
            Err(TablesError::InUse(2 * gib + HUGE))
        );
        let found = tables.translate(2 * gib + 0x1234_5678).unwrap();
        assert_eq!(
            (found.phys, found.size, found.memory),
            ((2 << 30) + 0x1234_5678, gib, Memory::NormalExecutable)
        );
        assert!(!tables.unmap_2m(2 * gib), "no 2 MiB mapping under a block");
    }
}
