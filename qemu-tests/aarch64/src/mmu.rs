//! The kernel's translation tables and MMU start-up: an identity map, in 2 MiB blocks (or
//! runs of 16 KiB or 64 KiB pages with the contiguous bit), of what the kernel touches (its
//! image, its table pool, the device tree, the UART, the GIC), plus the heap window of
//! [`HeapMapper`], all under one top-level table that every CPU's TTBR0 uses. The upper range
//! (TTBR1, always with the 4 KiB granule) holds an `aarch64-paging` [`Mapping`], as a kernel
//! built on that crate keeps its tables; the second heap (`paged`) maps its chunks there.
//!
//! The granule is chosen at boot (`granule=` in the boot arguments). Every table, the top
//! level included, comes from a pool of RAM right after the kernel image
//! ([`table_pool`]), identity-mapped, which the heap does not get. Built once by the boot CPU
//! with its MMU off; secondary CPUs load the same register values (see [`MmuSettings`]) in
//! their entry code. The descriptors and register values come from
//! `platform::arch::aarch64::paging`, whose table code also writes the heap window, so the
//! two cannot disagree.

use core::arch::asm;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use aarch64_paging::Mapping;
use aarch64_paging::descriptor::{El1Attributes, PhysicalAddress};
use aarch64_paging::paging::{El1And0, PageTable, Translation, VaRange};

use platform::arch::aarch64::paging::{
    self, Granule, MAIR_VALUE, Memory, PhysMap, Regime, Tables, TablesError,
};

use crate::dtb::{BootInfo, Region};

/// Bits of virtual address TTBR0 translates: 512 GiB, walks from level 1 (4 KiB and 16 KiB
/// granules) or level 2 (64 KiB).
const VA_BITS: u32 = 39;
/// Bytes of the table pool: enough for the identity map and a heap window over 8 GiB of RAM
/// with any granule (16 KiB: a level-3 table per 32 MiB, 4 MiB in all).
const TABLE_POOL_BYTES: u64 = 6 << 20;
/// 2 MiB: the unit of every mapping here.
const BLOCK: u64 = 2 << 20;

/// The next free byte of the table pool, and its end.
static POOL_NEXT: AtomicU64 = AtomicU64::new(0);
static POOL_END: AtomicU64 = AtomicU64::new(0);
/// The top-level tables of TTBR0 and TTBR1, and TCR_EL1, set by [`init_boot_cpu`].
static ROOT: AtomicU64 = AtomicU64::new(0);
static UPPER_ROOT: AtomicU64 = AtomicU64::new(0);
static TCR: AtomicU64 = AtomicU64::new(0);

/// TCR_EL1 bits that turn on TTBR1 walks with T1SZ = 25 (as TTBR0's) and the 4 KiB granule,
/// through inner shareable write-back memory: IRGN1 and ORGN1 write-back, SH1 inner
/// shareable; EPD1 (bit 23) is cleared. `tcr_value` already sets T1SZ and TG1 = 4 KiB.
const TCR_TTBR1_WALKS: u64 = 0b01 << 24 | 0b01 << 26 | 0b11 << 28;
const TCR_EPD1: u64 = 1 << 23;

/// `aarch64-paging`'s view of the table pool: 4 KiB tables from the pool, reached at their
/// physical addresses (the pool is identity-mapped). The pool is sized for them; running
/// out panics, as the trait cannot fail.
#[derive(Debug)]
pub(crate) struct PoolTables;

impl Translation<El1Attributes> for PoolTables {
    fn allocate_table(&mut self) -> (NonNull<PageTable<El1Attributes>>, PhysicalAddress) {
        let frame = table_frame(Granule::Size4KiB).expect("the table pool ran out (aarch64-paging tables)");
        for offset in (0..4096).step_by(8) {
            // SAFETY: a fresh pool frame, identity-mapped (or the MMU is off), used by nothing
            // else; a table must start zeroed.
            unsafe { ((frame + offset) as *mut u64).write_volatile(0) };
        }
        (self.physical_to_virtual(PhysicalAddress(frame as usize)), PhysicalAddress(frame as usize))
    }

    unsafe fn deallocate_table(&mut self, _table: NonNull<PageTable<El1Attributes>>) {
        // The pool is a bump allocator: tables given back are not reused.
    }

    fn physical_to_virtual(&self, pa: PhysicalAddress) -> NonNull<PageTable<El1Attributes>> {
        NonNull::new(pa.0 as *mut PageTable<El1Attributes>).expect("pool frames are not at address 0")
    }
}

/// SCTLR_EL1.M: stage-1 translation on.
const SCTLR_M: u64 = 1 << 0;
/// SCTLR_EL1.A: alignment checking (kept off: normal memory tolerates unaligned accesses).
const SCTLR_A: u64 = 1 << 1;
/// SCTLR_EL1.C: data accesses cacheable.
const SCTLR_C: u64 = 1 << 2;
/// SCTLR_EL1.I: instruction fetches cacheable.
const SCTLR_I: u64 = 1 << 12;
/// SCTLR_EL1.WXN: writable implies execute-never (off: the image is mapped RWX in 2 MiB
/// blocks).
const SCTLR_WXN: u64 = 1 << 19;
/// SCTLR_EL1.EE: big-endian at EL1 (off).
const SCTLR_EE: u64 = 1 << 25;

/// The register values of a CPU with the kernel's MMU set-up, recorded by the boot CPU.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MmuSettings {
    /// MAIR_EL1.
    pub(crate) mair: u64,
    /// TCR_EL1.
    pub(crate) tcr: u64,
    /// TTBR0_EL1.
    pub(crate) ttbr0: u64,
    /// TTBR1_EL1.
    pub(crate) ttbr1: u64,
    /// SCTLR_EL1 with the MMU and caches on.
    pub(crate) sctlr: u64,
}

static SCTLR_ON: AtomicU64 = AtomicU64::new(0);

/// The values every secondary CPU loads; valid after [`init_boot_cpu`].
pub(crate) fn settings() -> MmuSettings {
    MmuSettings {
        mair: MAIR_VALUE,
        tcr: TCR.load(Ordering::Relaxed),
        ttbr0: ROOT.load(Ordering::Relaxed),
        ttbr1: UPPER_ROOT.load(Ordering::Relaxed),
        sctlr: SCTLR_ON.load(Ordering::Relaxed),
    }
}

unsafe extern "C" {
    static __kernel_start: u8;
    static __kernel_end: u8;
}

/// The kernel image, `.bss` and boot stack included.
pub(crate) fn kernel_image() -> Region {
    // Only the addresses of the linker script's symbols are taken, which needs no unsafe.
    let (start, end) = (&raw const __kernel_start as u64, &raw const __kernel_end as u64);
    Region { start, len: end - start }
}

/// The RAM the translation tables come from: [`TABLE_POOL_BYTES`] from the first 2 MiB
/// boundary after the kernel image.
pub(crate) fn table_pool() -> Region {
    let image = kernel_image();
    Region { start: (image.start + image.len).next_multiple_of(BLOCK), len: TABLE_POOL_BYTES }
}

/// A frame of the pool for a table of `granule`: the frame source given to the table code.
fn table_frame(granule: Granule) -> Option<u64> {
    let size = granule.size() as u64;
    let mut next = POOL_NEXT.load(Ordering::Relaxed);
    loop {
        let frame = next.next_multiple_of(size);
        if frame + size > POOL_END.load(Ordering::Relaxed) {
            return None;
        }
        match POOL_NEXT.compare_exchange(next, frame + size, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return Some(frame),
            Err(now) => next = now,
        }
    }
}

/// Builds the tables (the identity map, and the heap window over all of RAM through
/// `heap`'s `install`) with `granule`, creates the upper range's `aarch64-paging` mapping
/// (empty, marked active), and turns the MMU and caches on for the boot CPU; returns that
/// mapping.
///
/// # Panics
///
/// If the CPU does not implement `granule`, the pool runs out, or the identity map and the
/// heap window collide.
///
/// # Safety
///
/// Runs once, on the boot CPU, with the MMU off, before any other CPU is started; `info`
/// describes this machine; the table pool is RAM that nothing else uses.
pub(crate) unsafe fn init_boot_cpu(
    info: &BootInfo,
    granule: Granule,
    heap: &platform::arch::aarch64::HeapMapper,
) -> Mapping<PoolTables, El1And0> {
    assert!(
        paging::granule_supported(granule),
        "the CPU does not implement the {} KiB granule (QEMU's -cpu max has all three)",
        granule.size() >> 10
    );
    let pool = table_pool();
    POOL_NEXT.store(pool.start, Ordering::Relaxed);
    POOL_END.store(pool.start + pool.len, Ordering::Relaxed);
    let regime = Regime::new(granule, VA_BITS).expect("a valid regime");
    let root = table_frame(granule).expect("a table pool");
    for offset in (0..granule.size() as u64).step_by(8) {
        // SAFETY: the root frame is pool RAM that nothing else uses; the MMU is off, so the
        // physical address is the address.
        unsafe { ((root + offset) as *mut u64).write_volatile(0) };
    }
    let tables = Tables { root, regime, map: PhysMap { offset: 0 } };
    ROOT.store(root, Ordering::Relaxed);
    TCR.store((paging::tcr_value(regime) & !TCR_EPD1) | TCR_TTBR1_WALKS, Ordering::Relaxed);
    // The upper range: a level-1 root (39 bits with 4 KiB pages), ASID 0 (its mappings are
    // global).
    let upper = Mapping::with_asid_and_va_range(PoolTables, 0, 1, El1And0, VaRange::Upper);
    UPPER_ROOT.store(upper.root_address().0 as u64, Ordering::Relaxed);

    let regions = [
        (kernel_image(), Memory::NormalExecutable),
        (pool, Memory::Normal),
        (info.dtb, Memory::Normal),
        (info.uart, Memory::Device),
    ];
    for (region, memory) in
        regions.into_iter().chain(info.gic.register_regions().map(|region| (region, Memory::Device)))
    {
        map_identity(&tables, region, memory);
    }
    let ram_start = info.memory.as_slice().iter().map(|region| region.start).min().unwrap_or(0);
    let ram_end = info.memory.as_slice().iter().map(|region| region.start + region.len).max().unwrap_or(0);
    // SAFETY: the root is the table every CPU's TTBR0 will use, with this regime; the kernel
    // is identity-mapped and the pool's frames are unused RAM, reached at their physical
    // addresses; no MMU uses the tables yet.
    let taken = unsafe { heap.install(tables, ram_start..ram_end, || table_frame(granule)) };
    if let Err(why) = taken {
        panic!("the heap window over RAM {ram_start:#x}..{ram_end:#x}: {why}");
    }

    // The tables (and everything else written so far) went straight to memory, as the
    // caches are off. Discard any stale lines the image and the pool may hold from earlier
    // boot stages, so that the walker and the data side see memory once caches are on.
    let line = dcache_min_line();
    for region in [kernel_image(), pool] {
        let mut address = region.start & !(line - 1);
        while address < region.start + region.len {
            // SAFETY: invalidating lines of the image or the pool loses nothing: with caches
            // off none of them holds data newer than memory.
            unsafe {
                // `dc ivac`: invalidate the data cache line holding `address` to the point
                // of coherency. Operates on cache state only (`nomem` would let the compiler
                // move memory accesses across it, so it is left out); no stack, flags
                // untouched.
                asm!("dc ivac, {address}", address = in(reg) address, options(nostack, preserves_flags));
            }
            address += line;
        }
    }

    let sctlr_off = sctlr();
    let sctlr_on = (sctlr_off | SCTLR_M | SCTLR_C | SCTLR_I) & !(SCTLR_A | SCTLR_WXN | SCTLR_EE);
    SCTLR_ON.store(sctlr_on, Ordering::Relaxed);
    let settings = settings();
    // SAFETY: the tables identity-map the running code, its stack and data, so the next
    // instruction fetch and every later access translate to the same physical address.
    unsafe {
        // Program attributes, translation control and the table base; `isb` so the MMU
        // sees them; `tlbi vmalle1` + `dsb nsh` drop translations cached from before reset
        // (local: no other CPU runs); `isb`; then SCTLR_EL1 turns translation and caches on
        // and the final `isb` makes later instructions use them. Memory is involved (the
        // table walk), so no `nomem`; no stack use; flags untouched.
        asm!(
            "dsb sy",
            "msr mair_el1, {mair}",
            "msr tcr_el1, {tcr}",
            "msr ttbr0_el1, {ttbr0}",
            "msr ttbr1_el1, {ttbr1}",
            "isb",
            "tlbi vmalle1",
            "dsb nsh",
            "isb",
            "msr sctlr_el1, {sctlr}",
            "isb",
            mair = in(reg) settings.mair,
            tcr = in(reg) settings.tcr,
            ttbr0 = in(reg) settings.ttbr0,
            ttbr1 = in(reg) settings.ttbr1,
            sctlr = in(reg) settings.sctlr,
            options(nostack, preserves_flags),
        );
    }
    // Every CPU loads TTBR1 with this root from now on: changes must keep to the rules for
    // live tables (aarch64-paging then does the barriers and TLB maintenance).
    upper.mark_active();
    upper
}

/// Identity-maps the 2 MiB blocks that `region` touches as `memory`. Two regions may share
/// a block if both are normal memory; code wins over data.
fn map_identity(tables: &Tables, region: Region, memory: Memory) {
    if region.len == 0 {
        return;
    }
    let granule = tables.regime.granule;
    let mut address = region.start & !(BLOCK - 1);
    let end = (region.start + region.len).next_multiple_of(BLOCK);
    while address < end {
        let virt = address as usize;
        // SAFETY: the MMU is off: no walker uses the tables yet; they are pool RAM, reached
        // at their physical addresses.
        let present = unsafe { tables.translate(virt) };
        match present.map(|found| found.memory) {
            Some(existing)
                if existing == memory || existing == Memory::NormalExecutable && memory == Memory::Normal => {
            }
            Some(Memory::Normal) if memory == Memory::NormalExecutable => {
                // SAFETY: as above; nothing runs with these tables yet.
                unsafe {
                    assert!(tables.unmap_2m(virt));
                    map_or_panic(tables, virt, memory, granule);
                }
            }
            Some(existing) => panic!("block {address:#x} both {existing:?} and {memory:?}"),
            // SAFETY: as above.
            None => unsafe { map_or_panic(tables, virt, memory, granule) },
        }
        address += BLOCK;
    }
}

/// Identity-maps the 2 MiB at `virt`, with tables from the pool.
///
/// # Safety
///
/// The tables are not in use, and reached at their physical addresses.
unsafe fn map_or_panic(tables: &Tables, virt: usize, memory: Memory, granule: Granule) {
    // SAFETY: the caller's promise; the pool's frames are unused RAM.
    let result: Result<(), TablesError> =
        unsafe { tables.map_2m(virt, virt as u64, memory, Some(&mut || table_frame(granule))) };
    if let Err(why) = result {
        panic!("identity map of {virt:#x}: {why}");
    }
}

/// SCTLR_EL1 now.
fn sctlr() -> u64 {
    let value: u64;
    // SAFETY: reading SCTLR_EL1 has no side effects.
    unsafe {
        // A register read: no memory, no stack, flags untouched.
        asm!("mrs {value}, sctlr_el1", value = out(reg) value, options(nomem, nostack, preserves_flags));
    }
    value
}

/// The smallest data cache line, in bytes (CTR_EL0.DminLine): the stride of by-address
/// cache maintenance.
pub(crate) fn dcache_min_line() -> u64 {
    let ctr: u64;
    // SAFETY: reading CTR_EL0 has no side effects.
    unsafe {
        // A register read: no memory, no stack, flags untouched.
        asm!("mrs {ctr}, ctr_el0", ctr = out(reg) ctr, options(nomem, nostack, preserves_flags));
    }
    4 << ((ctr >> 16) & 0xF)
}

/// Cleans the data cache lines of `[start, start + len)` to the point of coherency, so that a
/// CPU with its MMU (and so its caches) off reads what this CPU wrote.
pub(crate) fn clean_to_poc(start: u64, len: u64) {
    let line = dcache_min_line();
    let mut address = start & !(line - 1);
    while address < start + len {
        // SAFETY: cleaning writes dirty lines back and changes no values.
        unsafe {
            // `dc cvac`: clean the line holding `address` to the point of coherency. Not
            // `nomem`: it must stay after the stores it publishes. No stack, flags untouched.
            asm!("dc cvac, {address}", address = in(reg) address, options(nostack, preserves_flags));
        }
        address += line;
    }
    // SAFETY: a barrier only.
    unsafe {
        // `dsb sy`: the cleans complete before anything later (the PSCI call that starts a
        // CPU). Not `nomem`, for the same ordering reason; no stack, flags untouched.
        asm!("dsb sy", options(nostack, preserves_flags));
    }
}
