//! Stage-1 translation at EL1: the register values a kernel programs, the translation tables
//! of every granule (4 KiB, 16 KiB, 64 KiB), and [`HeapMapper`], which maps the heap's 2 MiB
//! frames at an offset from physical memory that the kernel chooses.
//!
//! A [`HeapMapper`] maps frame `phys` only at `phys + heap_offset`, for the physical RAM range
//! given to [`HeapMapper::install`]. `install` builds the tables the window needs under the
//! kernel's top-level table (the one TTBR0_EL1 or TTBR1_EL1 holds), from frames the kernel
//! hands over through a closure (its frame allocator, or a range of RAM it set aside), and
//! reaches every table through the kernel's map of physical memory (`phys_offset`, 0 for an
//! identity-mapped kernel). After that, mapping a frame writes one level-2 block descriptor
//! (4 KiB granule) or a run of level-3 page descriptors with the contiguous bit (128 of
//! 16 KiB, 32 of 64 KiB), and unmapping clears them. Nothing depends on where the kernel
//! image or this crate's statics lie.
//!
//! No TLB invalidation: a frame only ever maps at its one fixed address (`map_2m` refuses
//! any other pair), always with the same descriptors, so a TLB entry another CPU keeps after
//! an unmap can only translate that address to the same frame, which is what the
//! [`HugeMapper`] contract allows, and mapping it again writes exactly what that entry
//! holds (no conflicting sizes or attributes). Mapping changes descriptors from invalid to
//! valid, which TLBs never cache. (Broadcast invalidations are also slow to emulate: QEMU
//! stops every vCPU for each, and with 64 of them unmapping all of RAM took minutes.)
//! [`HeapMapper::translate`] reads back what any address maps to.
//!
//! A kernel that builds its page tables itself can use the same table code for its own
//! mappings ([`Tables::map_2m`], [`Tables::translate`]) and the register values here
//! ([`MAIR_VALUE`], [`tcr_value`]), so the descriptors and the attributes it programs cannot
//! disagree.
//!
//! Concurrency: the window's state is written once by `install` and published by `state`
//! (release); descriptors are atomics; the provider serialises calls for a frame (its own
//! lock), and different frames use different descriptors.

use core::arch::asm;
use core::ops::Range;
use core::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use super::super::aarch64_tables::HUGE;
pub use super::super::aarch64_tables::{
    Granule, MAIR_DEVICE, MAIR_NORMAL, MAIR_VALUE, Memory, PhysMap, Regime, Tables, TablesError, Translation,
    descriptor,
};
use crate::HugeMapper;

/// `HeapMapper::state`: not installed.
const IDLE: u8 = 0;
/// `HeapMapper::state`: `install` is running.
const INSTALLING: u8 = 1;
/// `HeapMapper::state`: installed; the fields below are fixed.
const INSTALLED: u8 = 2;

/// The physical address size the CPU implements, in bits (ID_AA64MMFR0_EL1.PARange), capped
/// at 48: 52-bit output addresses need other descriptor formats.
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

/// ID_AA64MMFR0_EL1.
fn mmfr0() -> u64 {
    let mmfr0: u64;
    // SAFETY: reading an ID register has no side effects.
    unsafe {
        // A register read: no memory, no stack, flags untouched; ID registers never change.
        asm!("mrs {value}, id_aa64mmfr0_el1", value = out(reg) mmfr0, options(pure, nomem, nostack, preserves_flags));
    }
    mmfr0
}

/// ID_AA64MMFR0_EL1.PARange capped at 0b101 (48 bits): also the TCR_EL1.IPS encoding.
fn physical_address_range() -> u64 {
    (mmfr0() & 0xF).min(0b101)
}

/// Whether the CPU implements `granule` for stage-1 translation (ID_AA64MMFR0_EL1: TGran4
/// 0b0000/0b0001, TGran16 0b0001/0b0010, TGran64 0b0000 mean implemented). The Cortex-A72,
/// for one, has no 16 KiB granule.
pub fn granule_supported(granule: Granule) -> bool {
    let field = |shift: u32| (mmfr0() >> shift) & 0xF;
    match granule {
        Granule::Size4KiB => matches!(field(28), 0b0000 | 0b0001),
        Granule::Size16KiB => matches!(field(20), 0b0001 | 0b0010),
        Granule::Size64KiB => field(24) == 0b0000,
    }
}

/// TCR_EL1 for a kernel that translates through TTBR0 only, with `regime`'s granule and size:
/// walks through inner shareable write-back cacheable memory (so table writes need no cache
/// maintenance), TTBR1 walks disabled, and IPS set to what the CPU implements.
pub fn tcr_value(regime: Regime) -> u64 {
    const IRGN0_WRITE_BACK: u64 = 0b01 << 8;
    const ORGN0_WRITE_BACK: u64 = 0b01 << 10;
    const SH0_INNER: u64 = 0b11 << 12;
    const TG0_SHIFT: u32 = 14;
    const T1SZ_SHIFT: u32 = 16;
    const EPD1: u64 = 1 << 23;
    const TG1_4K: u64 = 0b10 << 30;
    const IPS_SHIFT: u32 = 32;
    let tg0: u64 = match regime.granule {
        Granule::Size4KiB => 0b00,
        Granule::Size64KiB => 0b01,
        Granule::Size16KiB => 0b10,
    };
    let t0sz = u64::from(64 - regime.va_bits);
    t0sz | IRGN0_WRITE_BACK
        | ORGN0_WRITE_BACK
        | SH0_INNER
        | tg0 << TG0_SHIFT
        | t0sz << T1SZ_SHIFT
        | EPD1
        | TG1_4K
        | physical_address_range() << IPS_SHIFT
}

/// The tables of the lower address range the calling CPU translates through now
/// (TTBR0_EL1, and TCR_EL1's TG0 and T0SZ), reached through `map`; `None` if TCR_EL1 holds a
/// granule or size this code does not handle. For a kernel whose MMU is on, to hand to
/// [`HeapMapper::install`] with a window in the lower range.
pub fn current_tables(map: PhysMap) -> Option<Tables> {
    let (ttbr0, tcr): (u64, u64);
    // SAFETY: reading system registers has no side effects.
    unsafe {
        // Register reads: no memory, no stack, flags untouched.
        asm!("mrs {value}, ttbr0_el1", value = out(reg) ttbr0, options(nomem, nostack, preserves_flags));
        asm!("mrs {value}, tcr_el1", value = out(reg) tcr, options(nomem, nostack, preserves_flags));
    }
    // TG0: 0b00 4 KiB, 0b01 64 KiB, 0b10 16 KiB.
    let granule = match (tcr >> 14) & 0b11 {
        0b00 => Granule::Size4KiB,
        0b01 => Granule::Size64KiB,
        0b10 => Granule::Size16KiB,
        _ => return None,
    };
    let regime = Regime::new(granule, 64 - (tcr & 0x3F) as u32)?;
    Some(Tables { root: ttbr0 & descriptor::ADDRESS, regime, map })
}

/// As [`current_tables`], for the upper address range (TTBR1_EL1, TCR_EL1's TG1 and T1SZ):
/// for a kernel that lives in the upper range and puts its heap there.
pub fn current_upper_tables(map: PhysMap) -> Option<Tables> {
    let (ttbr1, tcr): (u64, u64);
    // SAFETY: reading system registers has no side effects.
    unsafe {
        // Register reads: no memory, no stack, flags untouched.
        asm!("mrs {value}, ttbr1_el1", value = out(reg) ttbr1, options(nomem, nostack, preserves_flags));
        asm!("mrs {value}, tcr_el1", value = out(reg) tcr, options(nomem, nostack, preserves_flags));
    }
    // TG1 (another encoding than TG0): 0b01 16 KiB, 0b10 4 KiB, 0b11 64 KiB.
    let granule = match (tcr >> 30) & 0b11 {
        0b01 => Granule::Size16KiB,
        0b10 => Granule::Size4KiB,
        0b11 => Granule::Size64KiB,
        _ => return None,
    };
    let regime = Regime::new(granule, 64 - ((tcr >> 16) & 0x3F) as u32)?;
    Some(Tables { root: ttbr1 & descriptor::ADDRESS, regime, map })
}

/// Maps 2 MiB frames at `physical address + heap_offset` in the kernel's translation tables;
/// see the module documentation. One mapper serves one provider: give it to
/// `FrameProvider::new` with the same offset and reach it through `FrameProvider::mapper`.
#[derive(Debug)]
pub struct HeapMapper {
    heap_offset: usize,
    state: AtomicU8,
    /// The top-level table's physical address.
    root: AtomicU64,
    /// The regime: granule shift in bits 7:0, virtual address bits in bits 15:8.
    regime: AtomicU32,
    /// Where the kernel maps physical memory.
    phys_offset: AtomicUsize,
    /// The physical range the window covers.
    phys_start: AtomicU64,
    phys_end: AtomicU64,
}

impl HeapMapper {
    /// A mapper that will map frame `phys` at `phys + heap_offset` (wrapping, so a window in
    /// the upper address range is `0xFFFF_FFC0_0000_0000`, say). It maps nothing until
    /// [`install`](Self::install) has run.
    ///
    /// # Panics
    ///
    /// If `heap_offset` is not a multiple of 2 MiB (at compile time in a `static`).
    pub const fn new(heap_offset: usize) -> Self {
        assert!(heap_offset.is_multiple_of(HUGE), "the heap offset must be 2 MiB aligned");
        Self {
            heap_offset,
            state: AtomicU8::new(IDLE),
            root: AtomicU64::new(0),
            regime: AtomicU32::new(0),
            phys_offset: AtomicUsize::new(0),
            phys_start: AtomicU64::new(0),
            phys_end: AtomicU64::new(0),
        }
    }

    /// The offset from a frame's physical address to its heap address.
    pub const fn heap_offset(&self) -> usize {
        self.heap_offset
    }

    /// Builds the tables the window needs under `tables` for the physical RAM `ram`
    /// (rounded out to 2 MiB), so that frames in it can be mapped at `phys + heap_offset`.
    /// `table_frame` returns the physical address of an unused frame of the granule's size
    /// and alignment each time it is called (one per 1 GiB of window with 4 KiB granules, per
    /// 32 MiB with 16 KiB, per 512 MiB with 64 KiB, plus one per level above; the returned
    /// count says how many it took); the frames need not be zeroed. Present tables on the way
    /// are reused, so the window may share upper-level tables with the kernel's mappings.
    /// Then makes the tables visible to every walker (`dsb ishst`).
    ///
    /// # Errors
    ///
    /// [`TablesError`] says why nothing can be mapped: a second call, a granule the CPU does
    /// not implement, a window outside the regime's address ranges, a frame source that ran
    /// dry or returned a misaligned frame, or an address of the window mapped already.
    ///
    /// # Safety
    ///
    /// - `tables.root` is the top-level table that every CPU which may touch the heap
    ///   translates the window with (now, or once it turns its MMU on), with `tables.regime`,
    ///   and nothing else maps or creates tables in the window meanwhile or later;
    /// - every physical address of a table (the existing ones, and the frames `table_frame`
    ///   returns) is readable and writable at `phys + tables.map.offset`, for as long as the
    ///   mapper is used;
    /// - the frames `table_frame` returns are unused RAM, and become tables for good.
    pub unsafe fn install(
        &self,
        tables: Tables,
        ram: Range<u64>,
        mut table_frame: impl FnMut() -> Option<u64>,
    ) -> Result<usize, TablesError> {
        if self.state.compare_exchange(IDLE, INSTALLING, Ordering::Acquire, Ordering::Relaxed).is_err() {
            return Err(TablesError::AlreadyInstalled);
        }
        let result = self.build(tables, ram, &mut table_frame);
        self.state.store(if result.is_ok() { INSTALLED } else { IDLE }, Ordering::Release);
        result
    }

    /// `install`'s work, with the state claimed.
    fn build(
        &self,
        tables: Tables,
        ram: Range<u64>,
        table_frame: &mut dyn FnMut() -> Option<u64>,
    ) -> Result<usize, TablesError> {
        if !granule_supported(tables.regime.granule) {
            return Err(TablesError::UnsupportedGranule(tables.regime.granule));
        }
        let huge = HUGE as u64;
        let phys_start = ram.start & !(huge - 1);
        let phys_end = ram.end.checked_next_multiple_of(huge).ok_or(TablesError::BadWindow)?;
        let phys_end = phys_end.min(1 << physical_address_bits());
        let virt = |phys: u64| (phys as usize).wrapping_add(self.heap_offset);
        if phys_start >= phys_end {
            return Err(TablesError::BadWindow);
        }
        // SAFETY: the caller vouches that the map reaches the live top-level table, every
        // table below it and every frame the source returns, which are unused RAM handed
        // over for tables; `prepare` checks the window against the regime.
        let taken = unsafe { tables.prepare(virt(phys_start)..virt(phys_end), table_frame)? };
        // SAFETY: a barrier only.
        unsafe {
            // `dsb ishst`: the new tables and the entries linking them are visible to every
            // walker before any mapping in the window is used. No `nomem`: it orders the
            // stores above. No stack, flags untouched.
            asm!("dsb ishst", options(nostack, preserves_flags));
        }
        self.root.store(tables.root, Ordering::Relaxed);
        self.regime.store(tables.regime.granule.shift() | tables.regime.va_bits << 8, Ordering::Relaxed);
        self.phys_offset.store(tables.map.offset, Ordering::Relaxed);
        self.phys_start.store(phys_start, Ordering::Relaxed);
        self.phys_end.store(phys_end, Ordering::Relaxed);
        Ok(taken)
    }

    /// The tables `install` built the window in, once it has succeeded.
    pub fn tables(&self) -> Option<Tables> {
        if self.state.load(Ordering::Acquire) != INSTALLED {
            return None;
        }
        let regime = self.regime.load(Ordering::Relaxed);
        let granule = Granule::from_size(1 << (regime & 0xFF))?;
        Some(Tables {
            root: self.root.load(Ordering::Relaxed),
            regime: Regime::new(granule, regime >> 8)?,
            map: PhysMap { offset: self.phys_offset.load(Ordering::Relaxed) },
        })
    }

    /// The heap's virtual addresses: `ram + heap_offset` of [`install`](Self::install)
    /// rounded out to 2 MiB; empty before it ran.
    pub fn window(&self) -> Range<usize> {
        if self.state.load(Ordering::Acquire) != INSTALLED {
            return 0..0;
        }
        let virt = |phys: &AtomicU64| (phys.load(Ordering::Relaxed) as usize).wrapping_add(self.heap_offset);
        virt(&self.phys_start)..virt(&self.phys_end)
    }

    /// What `virt` translates to in the tables the mapper installed into (any address, in
    /// the window or not: blocks and pages of every size are followed), or `None` if it is
    /// not mapped or `install` has not run. Lets a kernel check what the heap mapped, and
    /// look up the frames of a heap block (for DMA, say).
    pub fn translate(&self, virt: usize) -> Option<Translation> {
        let tables = self.tables()?;
        // SAFETY: `install` succeeded, so its caller vouched that the map reaches the live
        // top-level table and every table below it.
        unsafe { tables.translate(virt) }
    }

    /// The installed tables, if `virt` -> `phys` is a mapping of the window.
    fn window_tables(&self, virt: usize, phys: u64) -> Option<Tables> {
        let tables = self.tables()?;
        let inside =
            (self.phys_start.load(Ordering::Relaxed)..self.phys_end.load(Ordering::Relaxed)).contains(&phys);
        (inside && (phys as usize).wrapping_add(self.heap_offset) == virt).then_some(tables)
    }
}

// SAFETY: `map_2m` writes, only for a frame of the window at its fixed address, a 2 MiB
// mapping of normal write-back, inner shareable, read/write memory into tables every CPU
// walks (`install`'s contract), then makes it visible to all walkers before returning;
// `unmap_2m` clears it and makes that visible; a TLB may keep the old translation, which
// leads to the same frame (a frame has one address; see the module documentation). No
// memory is allocated: `install` built every table.
unsafe impl HugeMapper for HeapMapper {
    unsafe fn map_2m(&self, virt: usize, phys: u64) -> bool {
        let Some(tables) = self.window_tables(virt, phys) else {
            return false;
        };
        // SAFETY: `install`'s caller vouched for the tables and the map; the provider's
        // caller that the frame is unused RAM and `virt` unmapped. No table is created.
        if unsafe { tables.map_2m(virt, phys, Memory::Normal, None) }.is_err() {
            return false;
        }
        // SAFETY: barriers only; they change no state that Rust code relies on.
        unsafe {
            // `dsb ishst`: the descriptor stores complete for every walker in the inner
            // shareable domain before any later access through `virt` from this CPU, and
            // before this CPU publishes the memory to others (they learn of it through
            // stores that come after). No TLB maintenance: an invalid entry is never cached.
            // `isb`: discards translations of `virt` a speculative walk may have attempted
            // before the barrier, so the next access does not take a spurious fault.
            // No `nomem`: the barriers must not be moved across the stores above or the
            // caller's accesses after. No stack, flags untouched.
            asm!("dsb ishst", "isb", options(nostack, preserves_flags));
        }
        true
    }

    unsafe fn unmap_2m(&self, virt: usize) {
        let Some(tables) = self.tables() else {
            debug_assert!(false, "unmap_2m before install");
            return;
        };
        // SAFETY: as in `map_2m`; the caller guarantees nothing uses the mapping.
        let cleared = unsafe { tables.unmap_2m(virt) };
        debug_assert!(cleared, "unmap_2m of {virt:#x}, outside the window");
        // SAFETY: a barrier only.
        unsafe {
            // `dsb ishst`: the cleared descriptors are visible to every walker before the
            // caller hands the frame on. No TLB invalidation (see the module documentation).
            // No `nomem`: ordered after the stores above. No stack, flags untouched.
            asm!("dsb ishst", options(nostack, preserves_flags));
        }
    }
}
