//! VMSAv8-64 stage-1 translation tables with a 4 KiB, 16 KiB or 64 KiB granule, reached
//! through the kernel's map of physical memory (physical address `p` readable and writable at
//! virtual `p + offset`; 0 for an identity-mapped kernel): building the tables a range of
//! addresses needs from frames the kernel hands over, writing and clearing 2 MiB mappings,
//! and translating any address. No instructions here, so host tests run it over simulated
//! physical memory; `aarch64/paging.rs` adds the system registers, barriers and TLB
//! maintenance.
//!
//! A 2 MiB mapping is one level-2 block descriptor with the 4 KiB granule, and a run of
//! level-3 page descriptors with the contiguous bit with the larger granules (128 pages of
//! 16 KiB or 32 pages of 64 KiB: their level-2 blocks are 32 MiB and 512 MiB). The contiguous
//! bit lets the TLB hold the run as one 2 MiB entry, as it would a block.
//!
//! Concurrency: entries are read and written with single aligned 8-byte atomic accesses (as
//! the walker reads them). A new table is zeroed before the entry that points at it is stored
//! with release ordering, so a walker (or another CPU's [`translate`]) never follows an entry
//! into a table with stale contents. Callers serialise changes to one 2 MiB range.

// On hosts only the tests use this module, and its public types are public only through the
// bare-metal AArch64 module.
#![cfg_attr(not(target_os = "none"), allow(dead_code, unreachable_pub))]

use core::fmt;
use core::ops::Range;
use core::sync::atomic::{AtomicU64, Ordering};

/// Bytes of a 2 MiB mapping.
pub(crate) const HUGE: usize = 2 << 20;

/// A translation granule: the page size, and the size of every translation table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Granule {
    /// 4 KiB pages; 512 entries a table; a level-2 block maps 2 MiB.
    Size4KiB,
    /// 16 KiB pages; 2048 entries a table; a level-2 block maps 32 MiB.
    Size16KiB,
    /// 64 KiB pages; 8192 entries a table; a level-2 block maps 512 MiB.
    Size64KiB,
}

impl Granule {
    /// log2 of the page size.
    pub const fn shift(self) -> u32 {
        match self {
            Granule::Size4KiB => 12,
            Granule::Size16KiB => 14,
            Granule::Size64KiB => 16,
        }
    }

    /// Bytes in a page (and in a translation table).
    pub const fn size(self) -> usize {
        1 << self.shift()
    }

    /// The granule of `size` bytes, if there is one.
    pub const fn from_size(size: usize) -> Option<Granule> {
        match size {
            0x1000 => Some(Granule::Size4KiB),
            0x4000 => Some(Granule::Size16KiB),
            0x1_0000 => Some(Granule::Size64KiB),
            _ => None,
        }
    }

    /// Address bits one table level resolves (a table holds `2^bits` descriptors).
    const fn bits_per_level(self) -> u32 {
        self.shift() - 3
    }

    /// The level whose descriptors map 2 MiB (alone or as a contiguous run).
    const fn huge_level(self) -> u32 {
        match self {
            Granule::Size4KiB => 2,
            Granule::Size16KiB | Granule::Size64KiB => 3,
        }
    }

    /// Descriptors in one 2 MiB mapping: 1 block, or a contiguous run of pages.
    pub(crate) const fn entries_per_huge(self) -> usize {
        match self {
            Granule::Size4KiB => 1,
            granule => HUGE >> granule.shift(),
        }
    }
}

/// The layout of a translation regime: its granule and how many bits of virtual address it
/// translates (`64 - TCR_EL1.T0SZ`, or `T1SZ` for the upper range).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Regime {
    /// The translation granule (TCR_EL1.TG0 or TG1).
    pub granule: Granule,
    /// Bits of virtual address: from 25 to 48. The lower range is `0..2^bits`, the upper
    /// range `2^64 - 2^bits..2^64`.
    pub va_bits: u32,
}

impl Regime {
    /// A regime, if `va_bits` is one the architecture allows without FEAT_LVA (25 to 48;
    /// 16 KiB granules from 25, 64 KiB from 25 as well).
    pub const fn new(granule: Granule, va_bits: u32) -> Option<Regime> {
        if va_bits < 25 || va_bits > 48 {
            return None;
        }
        Some(Regime { granule, va_bits })
    }

    /// The level a walk starts at (0 to 2).
    pub const fn start_level(self) -> u32 {
        let bits = self.granule.bits_per_level();
        3 - (self.va_bits - self.granule.shift() - 1) / bits
    }

    /// The lowest address bit that indexes tables of `level`.
    const fn level_shift(self, level: u32) -> u32 {
        self.granule.shift() + (3 - level) * self.granule.bits_per_level()
    }

    /// The index of `virt` in a table of `level`.
    fn index(self, level: u32, virt: usize) -> usize {
        let shift = self.level_shift(level);
        let bits =
            if level == self.start_level() { self.va_bits - shift } else { self.granule.bits_per_level() };
        (virt >> shift) & ((1 << bits) - 1)
    }

    /// Whether `range` lies in the lower or in the upper range of addresses this regime
    /// translates (in one of them).
    pub fn covers(self, range: &Range<usize>) -> bool {
        let span = 1u128 << self.va_bits;
        let (start, end) = (range.start as u128, range.end as u128);
        let upper_start = (1u128 << 64) - span;
        start <= end && (end <= span || start >= upper_start)
    }
}

/// What a mapping holds: its memory type and whether code may run from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Memory {
    /// Normal write-back memory, inner shareable, read/write at EL1, never executable.
    Normal,
    /// As [`Memory::Normal`], and executable at EL1 (kernel code).
    NormalExecutable,
    /// Device-nGnRnE memory (MMIO), read/write at EL1, never executable.
    Device,
}

/// Descriptor bits (VMSAv8-64 stage 1).
pub mod descriptor {
    /// The entry is valid.
    pub const VALID: u64 = 1 << 0;
    /// With `VALID`, at levels 0-2: the entry points to a next-level table (clear: a block).
    /// At level 3 it must be set: a page.
    pub const TABLE: u64 = 1 << 1;
    /// Shift of AttrIndx, the MAIR_EL1 attribute index (3 bits).
    pub const ATTR_INDEX_SHIFT: u32 = 2;
    /// AttrIndx's bits.
    pub const ATTR_INDEX: u64 = 0b111 << ATTR_INDEX_SHIFT;
    /// AP\[2:1\] = 0b00: read/write at EL1, no access at EL0 (the value is zero bits).
    pub const AP_EL1_READ_WRITE: u64 = 0 << 6;
    /// SH = 0b11: inner shareable.
    pub const INNER_SHAREABLE: u64 = 0b11 << 8;
    /// Access flag: set, so the first access does not fault.
    pub const ACCESS: u64 = 1 << 10;
    /// Contiguous: this entry is one of a naturally aligned run that the TLB may cache as
    /// one (16 entries of 4 KiB pages, 128 of 16 KiB, 32 of 64 KiB at level 3).
    pub const CONTIGUOUS: u64 = 1 << 52;
    /// Privileged execute-never.
    pub const PXN: u64 = 1 << 53;
    /// Unprivileged execute-never.
    pub const UXN: u64 = 1 << 54;
    /// Bits 47:12 of an entry: the output address (of a table, block or page), of which the
    /// bits below the granule (or block) size are zero (48-bit output addresses).
    pub const ADDRESS: u64 = 0x0000_FFFF_FFFF_F000;
}

/// MAIR_EL1 attribute index of Device-nGnRnE memory (MMIO).
pub const MAIR_DEVICE: u64 = 0;
/// MAIR_EL1 attribute index of normal memory, inner and outer write-back, read- and
/// write-allocate, non-transient.
pub const MAIR_NORMAL: u64 = 1;
/// MAIR_EL1 for [`MAIR_DEVICE`] and [`MAIR_NORMAL`]: attribute 0 = 0x00, attribute 1 = 0xFF.
pub const MAIR_VALUE: u64 = 0x00 << (8 * MAIR_DEVICE) | 0xFF << (8 * MAIR_NORMAL);

/// A leaf descriptor (block at levels 1-2, page at level 3) for `phys` holding `memory`.
pub(crate) const fn leaf(level: u32, phys: u64, memory: Memory) -> u64 {
    use descriptor::*;
    let kind = if level == 3 { VALID | TABLE } else { VALID };
    let attributes = match memory {
        Memory::Normal => MAIR_NORMAL << ATTR_INDEX_SHIFT | INNER_SHAREABLE | UXN | PXN,
        Memory::NormalExecutable => MAIR_NORMAL << ATTR_INDEX_SHIFT | INNER_SHAREABLE | UXN,
        // Shareability is ignored for Device memory (always outer shareable).
        Memory::Device => MAIR_DEVICE << ATTR_INDEX_SHIFT | UXN | PXN,
    };
    (phys & ADDRESS) | kind | attributes | AP_EL1_READ_WRITE | ACCESS
}

/// A table descriptor pointing at the next-level table at physical address `table`.
pub(crate) const fn table_descriptor(table: u64) -> u64 {
    (table & descriptor::ADDRESS) | descriptor::VALID | descriptor::TABLE
}

/// The memory a leaf descriptor maps, from its attribute index and execute-never bit.
const fn memory_of(entry: u64) -> Memory {
    if (entry & descriptor::ATTR_INDEX) >> descriptor::ATTR_INDEX_SHIFT == MAIR_DEVICE {
        Memory::Device
    } else if entry & descriptor::PXN == 0 {
        Memory::NormalExecutable
    } else {
        Memory::Normal
    }
}

/// Why tables could not be built or a mapping made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TablesError {
    /// `HeapMapper::install` already ran for this mapper.
    AlreadyInstalled,
    /// The granule is one the CPU does not implement (ID_AA64MMFR0_EL1.TGran*).
    UnsupportedGranule(Granule),
    /// The range is empty, wraps, is not 2 MiB aligned, or leaves the lower or upper range
    /// of addresses the regime translates.
    BadWindow,
    /// The frame source returned `None` before every table was built. Tables built so far
    /// stay linked in (a later call reuses them).
    OutOfTableFrames,
    /// The frame source returned an address that is not aligned to the granule.
    MisalignedTableFrame(u64),
    /// Something is mapped at this address already (a block or page on the way to, or in
    /// place of, the 2 MiB mapping asked for).
    InUse(usize),
}

impl fmt::Display for TablesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TablesError::AlreadyInstalled => write!(f, "the heap mapper is installed already"),
            TablesError::UnsupportedGranule(granule) => {
                write!(f, "the CPU does not implement the {} KiB granule", granule.size() >> 10)
            }
            TablesError::BadWindow => {
                write!(f, "the window is empty, not 2 MiB aligned, or outside the regime's address ranges")
            }
            TablesError::OutOfTableFrames => {
                write!(f, "the frame source ran out before every table was built")
            }
            TablesError::MisalignedTableFrame(frame) => {
                write!(f, "the frame source returned {frame:#x}, which is not aligned to the granule")
            }
            TablesError::InUse(virt) => write!(f, "{virt:#x} is mapped already"),
        }
    }
}

/// How the tables are reached: physical address `p` at virtual `p + offset` (wrapping).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhysMap {
    /// The offset of the kernel's map of physical memory; 0 when identity-mapped.
    pub offset: usize,
}

/// One set of translation tables: the top-level table (what TTBR0_EL1 or TTBR1_EL1 holds),
/// its regime, and how the kernel reaches table memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tables {
    /// The physical address of the top-level table.
    pub root: u64,
    /// Its granule and size.
    pub regime: Regime,
    /// Where table memory can be read and written.
    pub map: PhysMap,
}

/// What an address translates to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    /// The physical address.
    pub phys: u64,
    /// The bytes the descriptor maps (a page, a block; a contiguous run counts as its pages).
    pub size: usize,
    /// The memory type and executability.
    pub memory: Memory,
    /// The descriptor has the contiguous bit.
    pub contiguous: bool,
}

impl Tables {
    /// The descriptor `index` of the table at physical address `table`.
    ///
    /// # Safety
    ///
    /// `table` is a table of these tables (reachable through the map), and `index` is
    /// below its descriptor count.
    unsafe fn entry(&self, table: u64, index: usize) -> &AtomicU64 {
        // SAFETY: the caller's promise: the table is memory the map reaches, 8-byte aligned
        // (tables are granule aligned), used only as descriptors, and lives as long as the
        // tables are used.
        unsafe { &*self.entry_address(table, index) }
    }

    /// Where the descriptor `index` of the table at physical address `table` is, as a
    /// pointer whose provenance covers the whole table (a reference to one descriptor
    /// would cover only that one, and a run of descriptors is read through it).
    fn entry_address(&self, table: u64, index: usize) -> *const AtomicU64 {
        let address = (table as usize).wrapping_add(self.map.offset) + index * 8;
        address as *const AtomicU64
    }

    /// The first descriptor of the 2 MiB mapping of `virt` (2 MiB aligned), following
    /// table descriptors from the root, and creating missing tables with `table_frame`.
    ///
    /// # Safety
    ///
    /// The tables are valid and reachable through the map; frames `table_frame` returns
    /// are unused RAM the map reaches, which become tables for good; nobody else changes
    /// the descriptors on the way meanwhile.
    unsafe fn huge_entry(
        &self,
        virt: usize,
        mut table_frame: Option<&mut dyn FnMut() -> Option<u64>>,
    ) -> Result<*const AtomicU64, TablesError> {
        let granule = self.regime.granule;
        let mut table = self.root;
        for level in self.regime.start_level()..granule.huge_level() {
            // SAFETY: `table` is the root or came from a table descriptor of these tables;
            // the index is below its count.
            let entry = unsafe { self.entry(table, self.regime.index(level, virt)) };
            let value = entry.load(Ordering::Acquire);
            if value & descriptor::VALID != 0 {
                if value & descriptor::TABLE == 0 {
                    return Err(TablesError::InUse(virt));
                }
                table = value & descriptor::ADDRESS;
                continue;
            }
            let Some(source) = table_frame.as_mut() else {
                return Err(TablesError::OutOfTableFrames);
            };
            let frame = source().ok_or(TablesError::OutOfTableFrames)?;
            if !frame.is_multiple_of(granule.size() as u64) {
                return Err(TablesError::MisalignedTableFrame(frame));
            }
            for index in 0..granule.size() / 8 {
                // SAFETY: the frame is unused RAM the map reaches (the caller's promise),
                // granule sized and aligned: a table of these tables from now on.
                unsafe { self.entry(frame, index) }.store(0, Ordering::Relaxed);
            }
            // Release: the zeroed table is visible before the entry that leads to it.
            entry.store(table_descriptor(frame), Ordering::Release);
            table = frame;
        }
        // `table` is a table of the 2 MiB level, found above; a 2 MiB-aligned address has
        // the index of the first descriptor of its run.
        Ok(self.entry_address(table, self.regime.index(granule.huge_level(), virt)))
    }

    /// Builds every table the 2 MiB mappings of `window` need, with frames from
    /// `table_frame`; returns how many frames it took. Present tables are reused.
    ///
    /// # Safety
    ///
    /// The tables are valid and reachable through the map; frames `table_frame` returns are
    /// unused RAM the map reaches, which become tables for good; nobody else changes the
    /// descriptors on the way meanwhile.
    pub unsafe fn prepare(
        &self,
        window: Range<usize>,
        table_frame: &mut dyn FnMut() -> Option<u64>,
    ) -> Result<usize, TablesError> {
        if window.is_empty()
            || !window.start.is_multiple_of(HUGE)
            || !window.end.is_multiple_of(HUGE)
            || !self.regime.covers(&window)
        {
            return Err(TablesError::BadWindow);
        }
        let mut taken = 0;
        let mut counting = || {
            let frame = table_frame();
            taken += usize::from(frame.is_some());
            frame
        };
        // One table of the 2 MiB level covers this much; stepping by it (from the window's
        // start, then from each boundary) reaches every table the window needs.
        let span = 1usize << self.regime.level_shift(self.regime.granule.huge_level() - 1);
        let mut virt = window.start;
        while virt < window.end {
            // SAFETY: the caller's promises.
            unsafe { self.huge_entry(virt, Some(&mut counting)) }?;
            virt = (virt | (span - 1)).saturating_add(1);
        }
        Ok(taken)
    }

    /// Writes the 2 MiB mapping `virt` -> `phys` holding `memory`, creating missing tables
    /// with `table_frame` if given. No barrier and no TLB maintenance.
    ///
    /// # Errors
    ///
    /// [`TablesError::InUse`] if any descriptor of the run is valid already (nothing is
    /// written then), [`TablesError::OutOfTableFrames`] if a table is missing and cannot be
    /// made, [`TablesError::BadWindow`] if an address is misaligned or outside the regime.
    ///
    /// # Safety
    ///
    /// As for [`Tables::prepare`]; `phys` is memory the caller may map there.
    pub unsafe fn map_2m(
        &self,
        virt: usize,
        phys: u64,
        memory: Memory,
        table_frame: Option<&mut dyn FnMut() -> Option<u64>>,
    ) -> Result<(), TablesError> {
        let range = virt..virt.wrapping_add(HUGE);
        if !virt.is_multiple_of(HUGE) || !phys.is_multiple_of(HUGE as u64) || !self.regime.covers(&range) {
            return Err(TablesError::BadWindow);
        }
        // SAFETY: the caller's promises.
        let first = unsafe { self.huge_entry(virt, table_frame) }?;
        // SAFETY: `first` came from `huge_entry`.
        let run = unsafe { self.run(first) };
        if run.iter().any(|entry| entry.load(Ordering::Relaxed) & descriptor::VALID != 0) {
            return Err(TablesError::InUse(virt));
        }
        let granule = self.regime.granule;
        let level = granule.huge_level();
        let contiguous = if granule.entries_per_huge() > 1 { descriptor::CONTIGUOUS } else { 0 };
        for (step, entry) in run.iter().enumerate() {
            let page = phys + (step * granule.size()) as u64;
            entry.store(leaf(level, page, memory) | contiguous, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Clears the 2 MiB mapping at `virt`; returns whether there was one to clear (its
    /// tables exist). No barrier and no TLB maintenance.
    ///
    /// # Safety
    ///
    /// As for [`Tables::prepare`]; nothing uses the mapping any more.
    pub unsafe fn unmap_2m(&self, virt: usize) -> bool {
        if !virt.is_multiple_of(HUGE) || !self.regime.covers(&(virt..virt.wrapping_add(HUGE))) {
            return false;
        }
        // SAFETY: the caller's promises; no table is created.
        let Ok(first) = (unsafe { self.huge_entry(virt, None) }) else {
            return false;
        };
        // SAFETY: `first` came from `huge_entry`.
        for entry in unsafe { self.run(first) } {
            entry.store(0, Ordering::Relaxed);
        }
        true
    }

    /// The descriptors of the 2 MiB mapping whose first descriptor is `first`.
    ///
    /// # Safety
    ///
    /// `first` came from [`Tables::huge_entry`] of these tables, which stay valid while the
    /// slice is used.
    unsafe fn run(&self, first: *const AtomicU64) -> &[AtomicU64] {
        // SAFETY: `first` is the first descriptor of a naturally aligned run inside one
        // table (2 MiB-aligned addresses index a multiple of the run's length, and a table
        // holds a whole number of runs), so the run's descriptors follow it in that table.
        unsafe { core::slice::from_raw_parts(first, self.regime.granule.entries_per_huge()) }
    }

    /// What `virt` translates to, following tables, blocks and pages of any size; `None`
    /// if it is not mapped or lies outside the regime.
    ///
    /// # Safety
    ///
    /// The tables are valid and reachable through the map.
    pub unsafe fn translate(&self, virt: usize) -> Option<Translation> {
        if !self.regime.covers(&(virt..virt)) {
            return None;
        }
        let mut table = self.root;
        for level in self.regime.start_level()..=3 {
            // SAFETY: the root, or a table from a table descriptor of these tables.
            let value = unsafe { self.entry(table, self.regime.index(level, virt)) }.load(Ordering::Acquire);
            if value & descriptor::VALID == 0 {
                return None;
            }
            let is_table = value & descriptor::TABLE != 0;
            if level < 3 && is_table {
                table = value & descriptor::ADDRESS;
                continue;
            }
            if level == 3 && !is_table {
                // A reserved encoding at level 3: faults like an invalid entry.
                return None;
            }
            let size = 1usize << self.regime.level_shift(level);
            let base = value & descriptor::ADDRESS & !(size as u64 - 1);
            return Some(Translation {
                phys: base + (virt & (size - 1)) as u64,
                size,
                memory: memory_of(value),
                contiguous: value & descriptor::CONTIGUOUS != 0,
            });
        }
        None
    }
}

#[cfg(test)]
mod tests;
