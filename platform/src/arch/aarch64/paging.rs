//! Stage-1 translation at EL1 with a 4 KiB granule and a 39-bit TTBR0 space: the register
//! values and descriptor formats the kernel and the heap mapper share, and [`HeapMapper`],
//! which maps 2 MiB blocks in the heap window.
//!
//! The heap window is [`WINDOW_SIZE`] bytes of virtual addresses from [`VIRT_OFFSET`]
//! (256 GiB, half-way up the 512 GiB that T0SZ = 25 gives). A chunk provider that maps frame
//! `phys` at `phys + VIRT_OFFSET` can use it for all RAM below [`WINDOW_SIZE`] physical. Its
//! level-2 tables are static and linked into the kernel's level-1 table once, at boot, by
//! [`HeapMapper::install`]; after that a mapping is one level-2 block descriptor, and no
//! table is ever allocated.
//!
//! Concurrency: descriptors are atomics written with plain stores; the provider serialises
//! calls for one address, and different addresses use different descriptors. Every CPU walks
//! the same tables, so one broadcast TLB invalidation (`tlbi vae1is`) covers them all.

use core::arch::asm;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::HugeMapper;

/// Bytes a level-2 block maps.
pub const BLOCK_SIZE: usize = 1 << 21;
/// Bytes a level-1 entry covers.
pub const LEVEL1_SPAN: usize = 1 << 30;
/// Entries in a translation table of the 4 KiB granule.
pub const ENTRIES: usize = 512;
/// TCR_EL1.T0SZ: TTBR0 translates 2^(64 - 25) = 512 GiB, starting its walks at level 1.
pub const T0SZ: u64 = 25;

/// Where the heap window starts: virtual address = physical address + `VIRT_OFFSET`.
pub const VIRT_OFFSET: usize = 0x40_0000_0000;
/// Bytes of virtual addresses in the heap window (16 GiB: 16 level-2 tables, 64 KiB).
pub const WINDOW_SIZE: usize = 16 << 30;
const WINDOW_TABLES: usize = WINDOW_SIZE / LEVEL1_SPAN;
const _: () = assert!(VIRT_OFFSET + WINDOW_SIZE <= 1 << (64 - T0SZ));
const _: () = assert!(VIRT_OFFSET.is_multiple_of(LEVEL1_SPAN));

/// MAIR_EL1 attribute index of Device-nGnRnE memory (MMIO).
pub const MAIR_DEVICE: u64 = 0;
/// MAIR_EL1 attribute index of normal memory, inner and outer write-back, read- and
/// write-allocate, non-transient.
pub const MAIR_NORMAL: u64 = 1;
/// MAIR_EL1: attribute 0 = 0x00 (Device-nGnRnE), attribute 1 = 0xFF (normal write-back).
pub const MAIR_VALUE: u64 = 0x00 << (8 * MAIR_DEVICE) | 0xFF << (8 * MAIR_NORMAL);

/// Descriptor bits (VMSAv8-64 stage 1, levels 1 and 2).
pub mod descriptor {
    /// The entry is valid.
    pub const VALID: u64 = 1 << 0;
    /// With `VALID`, at levels 0-2: the entry points to a next-level table (clear: a block).
    pub const TABLE: u64 = 1 << 1;
    /// Shift of AttrIndx, the MAIR_EL1 attribute index (3 bits).
    pub const ATTR_INDEX_SHIFT: u32 = 2;
    /// AP[2:1] = 0b00: read/write at EL1, no access at EL0 (the value is zero bits).
    pub const AP_EL1_READ_WRITE: u64 = 0 << 6;
    /// SH = 0b11: inner shareable.
    pub const INNER_SHAREABLE: u64 = 0b11 << 8;
    /// Access flag: set, so the first access does not fault.
    pub const ACCESS: u64 = 1 << 10;
    /// Privileged execute-never.
    pub const PXN: u64 = 1 << 53;
    /// Unprivileged execute-never.
    pub const UXN: u64 = 1 << 54;
    /// The output address bits of a table descriptor (bits 47:12).
    pub const TABLE_ADDRESS: u64 = 0x0000_FFFF_FFFF_F000;
    /// The output address bits of a level-2 block descriptor (bits 47:21).
    pub const BLOCK_ADDRESS: u64 = 0x0000_FFFF_FFE0_0000;
}

/// A block descriptor for normal write-back memory, inner shareable, read/write at EL1, with
/// the access flag set; execute-never unless `executable`.
pub const fn normal_block(phys: u64, executable: bool) -> u64 {
    use descriptor::*;
    let never_execute = if executable { UXN } else { UXN | PXN };
    (phys & BLOCK_ADDRESS)
        | VALID
        | MAIR_NORMAL << ATTR_INDEX_SHIFT
        | AP_EL1_READ_WRITE
        | INNER_SHAREABLE
        | ACCESS
        | never_execute
}

/// A block descriptor for Device-nGnRnE memory, read/write at EL1, never executable.
pub const fn device_block(phys: u64) -> u64 {
    use descriptor::*;
    // Shareability is ignored for Device memory (always outer shareable).
    (phys & BLOCK_ADDRESS) | VALID | MAIR_DEVICE << ATTR_INDEX_SHIFT | AP_EL1_READ_WRITE | ACCESS | UXN | PXN
}

/// A table descriptor pointing at the next-level table at physical address `table`.
pub const fn table_descriptor(table: u64) -> u64 {
    (table & descriptor::TABLE_ADDRESS) | descriptor::VALID | descriptor::TABLE
}

/// The physical address size the CPU implements, in bits (ID_AA64MMFR0_EL1.PARange), capped
/// at 48: 52-bit output addresses need another descriptor format with a 4 KiB granule.
pub fn physical_address_bits() -> u32 {
    match physical_address_range() {
        0 => 32,
        1 => 36,
        2 => 40,
        3 => 42,
        4 => 44,
        _ => 48,
    }
}

/// ID_AA64MMFR0_EL1.PARange capped at 0b101 (48 bits): also the TCR_EL1.IPS encoding.
fn physical_address_range() -> u64 {
    let mmfr0: u64;
    // SAFETY: reading an ID register has no side effects.
    unsafe {
        // A register read: no memory, no stack, flags untouched; ID registers never change.
        asm!("mrs {value}, id_aa64mmfr0_el1", value = out(reg) mmfr0, options(pure, nomem, nostack, preserves_flags));
    }
    (mmfr0 & 0xF).min(0b101)
}

/// TCR_EL1 for this layout: TTBR0 with T0SZ = 25 and a 4 KiB granule, walks through inner
/// shareable write-back cacheable memory (so table writes need no cache maintenance), TTBR1
/// walks disabled, and IPS set to what the CPU implements.
pub fn tcr_value() -> u64 {
    const IRGN0_WRITE_BACK: u64 = 0b01 << 8;
    const ORGN0_WRITE_BACK: u64 = 0b01 << 10;
    const SH0_INNER: u64 = 0b11 << 12;
    const TG0_4K: u64 = 0b00 << 14;
    const T1SZ_SHIFT: u32 = 16;
    const EPD1: u64 = 1 << 23;
    const TG1_4K: u64 = 0b10 << 30;
    const IPS_SHIFT: u32 = 32;
    T0SZ | IRGN0_WRITE_BACK
        | ORGN0_WRITE_BACK
        | SH0_INNER
        | TG0_4K
        | T0SZ << T1SZ_SHIFT
        | EPD1
        | TG1_4K
        | physical_address_range() << IPS_SHIFT
}

/// A translation table of the 4 KiB granule: 512 descriptors, page aligned.
#[repr(C, align(4096))]
#[derive(Debug)]
pub struct PageTable {
    entries: [AtomicU64; ENTRIES],
}

impl PageTable {
    /// A table of invalid entries.
    pub const fn new() -> Self {
        Self { entries: [const { AtomicU64::new(0) }; ENTRIES] }
    }

    /// The descriptor at `index`.
    pub fn entry(&self, index: usize) -> u64 {
        self.entries[index].load(Ordering::Relaxed)
    }

    /// Writes the descriptor at `index`, with no barrier and no TLB maintenance.
    ///
    /// # Safety
    ///
    /// If the table is in use by a walker, the caller does the barriers and TLB maintenance
    /// the change needs, and the change unmaps nothing that is still used.
    pub unsafe fn set_entry(&self, index: usize, descriptor: u64) {
        self.entries[index].store(descriptor, Ordering::Relaxed);
    }

    /// The table's address, which is its physical address in an identity-mapped kernel.
    pub fn address(&self) -> u64 {
        self.entries.as_ptr() as u64
    }
}

impl Default for PageTable {
    fn default() -> Self {
        Self::new()
    }
}

/// The heap window's level-2 tables: table `i` covers `VIRT_OFFSET + i GiB`.
static WINDOW: [PageTable; WINDOW_TABLES] = [const { PageTable::new() }; WINDOW_TABLES];
/// Set once [`HeapMapper::install`] has linked the window into a level-1 table.
static INSTALLED: AtomicBool = AtomicBool::new(false);
/// The end of physical addresses the CPU can output, recorded at install.
static PHYS_LIMIT: AtomicU64 = AtomicU64::new(0);

/// Maps 2 MiB frames in the heap window with level-2 block descriptors. Every instance uses
/// the same static tables.
#[derive(Debug, Clone, Copy, Default)]
pub struct HeapMapper {
    _private: (),
}

impl HeapMapper {
    /// The mapper; it maps nothing until [`install`](Self::install) has run.
    pub const fn new() -> Self {
        Self { _private: () }
    }

    /// The virtual addresses of the window: `VIRT_OFFSET..VIRT_OFFSET + WINDOW_SIZE`.
    pub const fn window(&self) -> core::ops::Range<usize> {
        VIRT_OFFSET..VIRT_OFFSET + WINDOW_SIZE
    }

    /// Links the window's level-2 tables into `level1`, the kernel's TTBR0 table.
    ///
    /// # Safety
    ///
    /// `level1` is the level-1 table that TTBR0_EL1 of every CPU using the heap points at;
    /// its entries for the window are unused and no TLB holds translations for them; the
    /// kernel is identity-mapped (the address of a static is its physical address). Called
    /// once, before any CPU enables its MMU with `level1` or after the caller makes the new
    /// entries visible to walkers (`dsb ishst`).
    pub unsafe fn install(&self, level1: &PageTable) {
        let first = VIRT_OFFSET / LEVEL1_SPAN;
        for (i, table) in WINDOW.iter().enumerate() {
            // SAFETY: the caller hands over these unused entries; the table address is
            // physical because the kernel is identity-mapped.
            unsafe { level1.set_entry(first + i, table_descriptor(table.address())) };
        }
        PHYS_LIMIT.store(1 << physical_address_bits(), Ordering::Relaxed);
        INSTALLED.store(true, Ordering::Release);
    }

    /// The level-2 descriptor for `virt`, if it lies in the window.
    fn descriptor_of(virt: usize) -> Option<&'static AtomicU64> {
        let offset = virt.checked_sub(VIRT_OFFSET).filter(|&offset| offset < WINDOW_SIZE)?;
        Some(&WINDOW[offset / LEVEL1_SPAN].entries[(offset % LEVEL1_SPAN) / BLOCK_SIZE])
    }
}

// SAFETY: `map_2m` writes a valid level-2 block descriptor of normal write-back, inner
// shareable, read/write memory into tables every CPU's TTBR0 walks (`install`'s contract),
// then makes it visible to all walkers before returning; `unmap_2m` clears it and completes a
// broadcast TLB invalidation before returning. No memory is allocated: the tables are static.
unsafe impl HugeMapper for HeapMapper {
    unsafe fn map_2m(&self, virt: usize, phys: u64) -> bool {
        if !INSTALLED.load(Ordering::Acquire)
            || !virt.is_multiple_of(BLOCK_SIZE)
            || !phys.is_multiple_of(BLOCK_SIZE as u64)
            || phys >= PHYS_LIMIT.load(Ordering::Relaxed)
        {
            return false;
        }
        let Some(entry) = Self::descriptor_of(virt) else {
            return false;
        };
        debug_assert_eq!(entry.load(Ordering::Relaxed), 0, "map_2m of a mapped address");
        entry.store(normal_block(phys, false), Ordering::Relaxed);
        // SAFETY: barriers only; they change no state that Rust code relies on.
        unsafe {
            // `dsb ishst`: the descriptor store completes for every walker in the inner
            // shareable domain before any later access through `virt` from this CPU, and
            // before this CPU publishes the memory to others (they learn of it through
            // stores that come after). No TLB maintenance: an invalid entry is never cached.
            // `isb`: discards translations of `virt` a speculative walk may have attempted
            // before the barrier, so the next access does not take a spurious fault.
            // No `nomem`: the barriers must not be moved across the store above or the
            // caller's accesses after. No stack, flags untouched.
            asm!("dsb ishst", "isb", options(nostack, preserves_flags));
        }
        true
    }

    unsafe fn unmap_2m(&self, virt: usize) {
        let Some(entry) = Self::descriptor_of(virt) else {
            debug_assert!(false, "unmap_2m outside the heap window");
            return;
        };
        entry.store(0, Ordering::Relaxed);
        // TLBI VAE1IS takes VA[55:12] in bits 43:0 (ASID bits 63:48 are zero, and global
        // entries such as ours match any ASID). One invalidation anywhere in a block removes
        // every TLB entry made from that block descriptor, even if the TLB split it.
        let operand = (virt >> 12) as u64;
        // SAFETY: the caller guarantees nothing uses the block any more, so removing its
        // translation on every CPU cannot fault code that still expects it.
        unsafe {
            // `dsb ishst`: the cleared descriptor is visible to every walker before the
            // invalidation, so no walker can refill a TLB from the old entry after it.
            // `tlbi vae1is`: invalidates the block's translations at EL1 on every CPU of the
            // inner shareable domain. `dsb ish`: waits until every CPU has completed the
            // invalidation (and its accesses through the old translation). `isb`: this CPU's
            // later instructions are fetched and translated without the old entry.
            // No `nomem`: ordered against the store above and the caller's accesses. No
            // stack, flags untouched.
            asm!(
                "dsb ishst",
                "tlbi vae1is, {operand}",
                "dsb ish",
                "isb",
                operand = in(reg) operand,
                options(nostack, preserves_flags),
            );
        }
    }
}
