//! From QEMU's PVH entry to Rust: the ELF note, the 32-bit entry that builds the boot page
//! tables and enters long mode, the GDT every CPU uses, and identity mappings added later.
//!
//! The PVH entry runs in 32-bit protected mode with paging off and `ebx` holding the
//! physical address of `hvm_start_info`. It clears `.bss`, identity-maps the low memory and
//! the image (from 4 KiB to `__kernel_end` rounded up to 2 MiB; 4 KiB pages in the first
//! 2 MiB so that page 0 stays unmapped, 2 MiB pages above), enables PAE, long mode and
//! (when the CPU has it) no-execute, turns paging on, loads the GDT and jumps to 64-bit
//! code, which calls `kernel_main(start_info)` on the boot stack.
//!
//! The boot page tables are Rust statics (atomics: the boot CPU adds entries while other
//! CPUs walk the tables). Below 4 GiB, four page directories are ready, so
//! [`identity_map`] can map firmware tables and device registers later by writing one
//! entry per 2 MiB. [`map_physical_memory`] maps all RAM at [`PHYS_OFFSET`] (as a
//! bootloader would), which is how `platform`'s `HeapMapper` reaches the tables it builds for
//! the heap window.
//!
//! The kernel's `global_asm!` blocks (here, in `interrupts` and in `smp`) use AT&T syntax,
//! their only option: they switch between `.code16`, `.code32` and `.code64` and use far
//! jumps, which GNU syntax spells unambiguously. Module-level assembly has no operands to
//! constrain beyond `sym` and `const`.

use core::arch::global_asm;
use core::sync::atomic::{AtomicU64, Ordering};

/// A 4 KiB paging structure of 512 entries.
#[repr(C, align(4096))]
pub(crate) struct PageTable(pub(crate) [AtomicU64; 512]);

impl PageTable {
    const fn new() -> Self {
        Self([const { AtomicU64::new(0) }; 512])
    }
}

/// The top-level table (CR3 on every CPU).
pub(crate) static BOOT_PML4: PageTable = PageTable::new();
/// Maps the low 512 GiB; entries 0 to 3 point at [`BOOT_DIRECTORIES`].
static BOOT_PDPT: PageTable = PageTable::new();
/// One page directory per GiB below 4 GiB, for identity mappings.
static BOOT_DIRECTORIES: [PageTable; 4] = [const { PageTable::new() }; 4];
/// 4 KiB pages for the first 2 MiB, all but page 0: a null pointer access faults.
static BOOT_FIRST_TABLE: PageTable = PageTable::new();

/// Present, writable, 2 MiB page.
const LARGE_PAGE: u64 = 0x83;
/// Page-level write-through and cache disable: uncached (device registers).
const UNCACHED: u64 = 0x18;
const TWO_MIB: u64 = 2 << 20;

/// Where the kernel maps all of physical memory, as bootloaders do: physical address `p` at
/// virtual `PHYS_OFFSET + p` (PML4 entry 256, 1 GiB pages). Page-table code reaches tables
/// through it (`platform`'s `HeapMapper`, the `x86_64` crate's `OffsetPageTable`).
pub(crate) const PHYS_OFFSET: usize = 0xFFFF_8000_0000_0000;
/// The PDPT of the physical-memory map: entry `i` maps GiB `i` with a 1 GiB page.
static PHYS_MAP_PDPT: PageTable = PageTable::new();
const ONE_GIB: u64 = 1 << 30;

/// Maps every GiB of physical memory that holds some of the RAM ranges `ram` (`(start,
/// length)` pairs; below 512 GiB) at [`PHYS_OFFSET`], read-write, with 1 GiB pages. GiBs
/// without RAM (the PCI hole) stay unmapped, so device registers get no cacheable alias.
/// Boot CPU, once, before the secondaries run.
///
/// # Panics
///
/// If the CPU has no 1 GiB pages (CPUID 0x80000001 EDX bit 26; QEMU's `-cpu max` has them).
pub(crate) fn map_physical_memory(ram: &[(u64, u64)]) {
    let has_1g_pages = core::arch::x86_64::__cpuid(0x8000_0000).eax >= 0x8000_0001
        && core::arch::x86_64::__cpuid(0x8000_0001).edx & (1 << 26) != 0;
    assert!(has_1g_pages, "the physical-memory map needs 1 GiB pages");
    for &(start, len) in ram {
        let end = start.saturating_add(len).div_ceil(ONE_GIB).min(512);
        for gib in start / ONE_GIB..end {
            PHYS_MAP_PDPT.0[gib as usize].store((gib * ONE_GIB) | LARGE_PAGE, Ordering::Relaxed);
        }
    }
    // The kernel is identity-mapped: the static's address is its physical address. Release:
    // the PDPT's entries are visible before the entry that leads to them. Not present to
    // present: no TLB invalidation.
    let pdpt = &raw const PHYS_MAP_PDPT as u64;
    BOOT_PML4.0[(PHYS_OFFSET >> 39) & 511].store(pdpt | 0x3, Ordering::Release);
}

/// The GDT selector of the 64-bit kernel code segment.
pub(crate) const KERNEL_CODE_SELECTOR: u16 = 0x08;

unsafe extern "C" {
    /// First byte of the loaded image (linker script).
    static __kernel_start: u8;
    /// First byte past the image, `.bss` included (linker script).
    static __kernel_end: u8;
}

/// The physical range of the kernel image: `(start, length)`.
pub(crate) fn kernel_image() -> (u64, u64) {
    let start = &raw const __kernel_start as u64;
    let end = &raw const __kernel_end as u64;
    (start, end - start)
}

/// The end of the identity mapping the boot code made: the image rounded up to 2 MiB.
pub(crate) fn boot_identity_end() -> u64 {
    (&raw const __kernel_end as u64).next_multiple_of(TWO_MIB)
}

/// Identity-maps the 2 MiB pages covering `[phys, phys + len)`, uncached if `uncached`;
/// pages mapped already are left as they are (the first 2 MiB always are, page 0
/// excluded). Returns false (mapping nothing) if the range reaches above 4 GiB.
///
/// Entries only go from not present to present, which needs no TLB invalidation on any
/// CPU.
pub(crate) fn identity_map(phys: u64, len: u64, uncached: bool) -> bool {
    let Some(end) = phys.checked_add(len.max(1)) else { return false };
    if end > 4 << 30 {
        return false;
    }
    let flags = LARGE_PAGE | if uncached { UNCACHED } else { 0 };
    let mut page = phys & !(TWO_MIB - 1);
    while page < end {
        let index = (page / TWO_MIB) as usize;
        let entry = &BOOT_DIRECTORIES[index / 512].0[index % 512];
        let _ = entry.compare_exchange(0, page | flags, Ordering::AcqRel, Ordering::Acquire);
        page += TWO_MIB;
    }
    true
}

/// Runs `f` with page 0 identity-mapped (read-only), for boot data the loader put there
/// (QEMU's PVH loader puts the memory map at about 0x500), and unmaps it again. Boot CPU,
/// before the secondaries run: other CPUs' TLBs need no invalidation then.
pub(crate) fn with_page_zero<R>(f: impl FnOnce() -> R) -> R {
    let entry = &BOOT_FIRST_TABLE.0[0];
    entry.store(0x1, Ordering::Release); // present, read-only, frame 0
    let result = f();
    entry.store(0, Ordering::Release);
    // SAFETY: `invlpg` drops this CPU's cached translation of page 0, so a null access
    // faults again. Not `nomem`: it must stay after the store (a compiler barrier). No
    // stack use, no flags changed.
    unsafe { core::arch::asm!("invlpg [{}]", in(reg) 0usize, options(nostack, preserves_flags)) };
    result
}

// The PVH note (XEN_ELFNOTE_PHYS32_ENTRY = 18): name "Xen", an 8-byte descriptor holding
// the 32-bit entry's physical address. The section is 4-byte aligned (see linker.ld).
global_asm!(
    r#"
    .section .note.pvh, "a", @note
    .balign 4
    .long 4
    .long 8
    .long 18
    .asciz "Xen"
    .balign 4
    .quad pvh_entry32
    "#,
    options(att_syntax)
);

// The GDT: null, 64-bit code (0x08), data (0x10). The accessed bits are preset so the CPU
// never writes to the table; no TSS, as no stack switch is ever needed.
global_asm!(
    r#"
    .section .rodata.x86k_gdt, "a"
    .balign 16
    .global x86k_gdt
x86k_gdt:
    .quad 0
    .quad 0x00AF9B000000FFFF
    .quad 0x00CF93000000FFFF
x86k_gdt_end:
    .balign 8
x86k_gdt_pointer:
    .word x86k_gdt_end - x86k_gdt - 1
    .quad x86k_gdt

    .section .bss.x86k_boot_stack, "aw", @nobits
    .balign 16
x86k_boot_stack_bottom:
    .skip 65536
x86k_boot_stack_top:
    "#,
    options(att_syntax)
);

// The 32-bit PVH entry and the boot CPU's switch to long mode. Registers: esi keeps the
// start_info address; eax, ebx, ecx, edx, edi are scratch.
global_asm!(
    r#"
    .section .text.boot32, "ax"
    .code32
    .global pvh_entry32
pvh_entry32:
    cli
    cld
    mov %ebx, %esi

    /* Clear .bss (it holds the page tables and the boot stack). */
    mov $__bss_start, %edi
    mov $__bss_end, %ecx
    sub %edi, %ecx
    xor %eax, %eax
    rep stosb

    /* PML4[0] -> PDPT; PDPT[0..4] -> the four page directories below 4 GiB. */
    mov ${pdpt}, %eax
    or $0x3, %eax
    mov %eax, {pml4}
    mov ${directories}, %eax
    or $0x3, %eax
    xor %ecx, %ecx
1:
    mov %eax, {pdpt}(,%ecx,8)
    add $0x1000, %eax
    inc %ecx
    cmp $4, %ecx
    jb 1b

    /* Identity-map [4 KiB, 2 MiB) with 4 KiB pages: page 0 stays unmapped, so null
       pointer accesses fault. */
    mov ${first_table}, %eax
    or $0x3, %eax
    mov %eax, {directories}
    mov $1, %ebx
    mov $0x1003, %eax
5:
    mov %eax, {first_table}(,%ebx,8)
    add $0x1000, %eax
    inc %ebx
    cmp $512, %ebx
    jb 5b

    /* Identity-map [2 MiB, __kernel_end) with 2 MiB pages. */
    mov $__kernel_end, %ecx
    add $0x1fffff, %ecx
    shr $21, %ecx
    mov $1, %ebx
    mov $0x200083, %eax
    cmp %ecx, %ebx
    jae 6f
2:
    mov %eax, {directories}(,%ebx,8)
    add $0x200000, %eax
    inc %ebx
    cmp %ecx, %ebx
    jb 2b
6:

    mov ${pml4}, %eax
    mov %eax, %cr3

    /* CR4.PAE */
    mov %cr4, %eax
    or $0x20, %eax
    mov %eax, %cr4

    /* EFER.LME, and EFER.NXE if CPUID 0x80000001 EDX bit 20 says NX exists. */
    xor %edi, %edi
    mov $0x80000000, %eax
    cpuid
    cmp $0x80000001, %eax
    jb 3f
    mov $0x80000001, %eax
    cpuid
    bt $20, %edx
    jnc 3f
    mov $0x800, %edi
3:
    mov $0xC0000080, %ecx
    rdmsr
    or $0x100, %eax
    or %edi, %eax
    wrmsr

    /* CR0: paging, write protect, protection; caches on (CD and NW clear). */
    mov %cr0, %eax
    and $0x9FFFFFFF, %eax
    or $0x80010001, %eax
    mov %eax, %cr0

    lgdt x86k_gdt_pointer
    ljmp $0x08, $x86k_long_mode_entry

    .code64
x86k_long_mode_entry:
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    xor %eax, %eax
    mov %eax, %fs
    mov %eax, %gs
    lea x86k_boot_stack_top(%rip), %rsp
    xor %ebp, %ebp
    mov %esi, %edi
    call {kernel_main}
4:
    cli
    hlt
    jmp 4b
    "#,
    pml4 = sym BOOT_PML4,
    pdpt = sym BOOT_PDPT,
    directories = sym BOOT_DIRECTORIES,
    first_table = sym BOOT_FIRST_TABLE,
    kernel_main = sym crate::kernel_main,
    options(att_syntax)
);
