//! The kernel's translation tables and MMU start-up: an identity map, in 2 MiB blocks, of
//! what the kernel touches (its image, the device tree, the UART, the GIC), plus the heap
//! window of [`HeapMapper`], all under one level-1 table that every CPU's TTBR0 uses.
//!
//! Built once by the boot CPU with its MMU off; secondary CPUs load the same register values
//! (see [`MmuSettings`]) in their entry code. The layout (4 KiB granule, T0SZ = 25, MAIR
//! attributes) comes from `platform::arch::aarch64::paging`, which also writes the heap
//! window's descriptors, so the two cannot disagree.

use core::arch::asm;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use platform::arch::aarch64::HeapMapper;
use platform::arch::aarch64::paging::{
    self, BLOCK_SIZE, LEVEL1_SPAN, MAIR_VALUE, PageTable, descriptor, device_block, normal_block,
    table_descriptor,
};

use crate::dtb::{BootInfo, Region};

/// Level-2 tables available to the identity map (one per GiB touched).
const IDENTITY_TABLES: usize = 4;

static ROOT: PageTable = PageTable::new();
static IDENTITY: [PageTable; IDENTITY_TABLES] = [const { PageTable::new() }; IDENTITY_TABLES];
static IDENTITY_USED: AtomicUsize = AtomicUsize::new(0);

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

/// What kind of memory an identity block maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Normal memory that may hold code (the kernel image).
    Code,
    /// Normal memory, execute-never.
    Data,
    /// Device-nGnRnE, execute-never.
    Device,
}

/// The register values of a CPU with the kernel's MMU set-up, recorded by the boot CPU.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MmuSettings {
    /// MAIR_EL1.
    pub(crate) mair: u64,
    /// TCR_EL1.
    pub(crate) tcr: u64,
    /// TTBR0_EL1.
    pub(crate) ttbr0: u64,
    /// SCTLR_EL1 with the MMU and caches on.
    pub(crate) sctlr: u64,
}

static SCTLR_ON: AtomicU64 = AtomicU64::new(0);

/// The values every secondary CPU loads; valid after [`init_boot_cpu`].
pub(crate) fn settings() -> MmuSettings {
    MmuSettings {
        mair: MAIR_VALUE,
        tcr: paging::tcr_value(),
        ttbr0: ROOT.address(),
        sctlr: SCTLR_ON.load(Ordering::Relaxed),
    }
}

unsafe extern "C" {
    static __kernel_start: u8;
    static __kernel_end: u8;
}

/// The kernel image, `.bss`, boot stack and page tables included.
pub(crate) fn kernel_image() -> Region {
    // Only the addresses of the linker script's symbols are taken, which needs no unsafe.
    let (start, end) = (&raw const __kernel_start as u64, &raw const __kernel_end as u64);
    Region { start, len: end - start }
}

/// Builds the tables and turns the MMU and caches on for the boot CPU.
///
/// # Safety
///
/// Runs once, on the boot CPU, with the MMU off, before any other CPU is started; `info`
/// describes this machine.
pub(crate) unsafe fn init_boot_cpu(info: &BootInfo) {
    map_identity(kernel_image(), Kind::Code);
    map_identity(info.dtb, Kind::Data);
    map_identity(info.uart, Kind::Device);
    for region in info.gic.register_regions() {
        map_identity(region, Kind::Device);
    }
    // SAFETY: ROOT is the table every CPU's TTBR0 will use, its window entries are unused
    // (the identity map stays below 256 GiB, checked in `map_identity`), the kernel runs
    // identity-mapped, and no MMU uses ROOT yet.
    unsafe { HeapMapper::new().install(&ROOT) };

    // The tables (and everything else written so far) went straight to memory, as the
    // caches are off. Discard any stale lines the image range may hold from earlier boot
    // stages, so that the walker and the data side see memory once caches are on.
    let image = kernel_image();
    let line = dcache_min_line();
    let mut address = image.start & !(line - 1);
    while address < image.start + image.len {
        // SAFETY: invalidating lines of the image loses nothing: with caches off none of
        // them holds data newer than memory.
        unsafe {
            // `dc ivac`: invalidate the data cache line holding `address` to the point of
            // coherency. Operates on cache state only (`nomem` would let the compiler move
            // memory accesses across it, so it is left out); no stack, flags untouched.
            asm!("dc ivac, {address}", address = in(reg) address, options(nostack, preserves_flags));
        }
        address += line;
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
            "isb",
            "tlbi vmalle1",
            "dsb nsh",
            "isb",
            "msr sctlr_el1, {sctlr}",
            "isb",
            mair = in(reg) settings.mair,
            tcr = in(reg) settings.tcr,
            ttbr0 = in(reg) settings.ttbr0,
            sctlr = in(reg) settings.sctlr,
            options(nostack, preserves_flags),
        );
    }
}

/// Identity-maps the 2 MiB blocks that `region` touches.
fn map_identity(region: Region, kind: Kind) {
    if region.len == 0 {
        return;
    }
    let block = BLOCK_SIZE as u64;
    let mut address = region.start & !(block - 1);
    let end = (region.start + region.len).next_multiple_of(block);
    while address < end {
        assert!(
            (address as usize) < HeapMapper::new().window().start,
            "identity map at {address:#x} would run into the heap window"
        );
        let table = level2_for(address);
        let index = (address as usize % LEVEL1_SPAN) / BLOCK_SIZE;
        let wanted = match kind {
            Kind::Code => normal_block(address, true),
            Kind::Data => normal_block(address, false),
            Kind::Device => device_block(address),
        };
        let present = table.entry(index);
        if present == 0 {
            // SAFETY: the MMU is off: no walker uses the tables yet.
            unsafe { table.set_entry(index, wanted) };
        } else {
            // Two regions share a block: they must agree on the memory type (code wins over
            // data: both are normal memory).
            let attributes = |entry: u64| entry & (0b111 << descriptor::ATTR_INDEX_SHIFT);
            assert_eq!(attributes(present), attributes(wanted), "block {address:#x} both device and normal");
            if kind == Kind::Code {
                // SAFETY: as above.
                unsafe { table.set_entry(index, wanted) };
            }
        }
        address += block;
    }
}

/// The identity level-2 table for the GiB holding `address`, linked into the root on first
/// use.
fn level2_for(address: u64) -> &'static PageTable {
    let root_index = address as usize / LEVEL1_SPAN;
    let entry = ROOT.entry(root_index);
    if entry != 0 {
        let table = entry & descriptor::TABLE_ADDRESS;
        return IDENTITY.iter().find(|candidate| candidate.address() == table).expect("a table of ours");
    }
    let next = IDENTITY_USED.fetch_add(1, Ordering::Relaxed);
    let table = IDENTITY.get(next).expect("the identity map touches more GiBs than IDENTITY_TABLES");
    // SAFETY: the MMU is off: no walker uses the root yet.
    unsafe { ROOT.set_entry(root_index, table_descriptor(table.address())) };
    table
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
