//! Per-CPU records reached through the GS base, the CPU index as the allocator's slot, and
//! the cache-line size.
//!
//! Each CPU reaches its own [`CpuRecord`] (a static array entry) through `IA32_GS_BASE`,
//! set once by [`init_cpu`]. Only the owning CPU reads or writes its record after that, with
//! single instructions or with interrupts masked, so no field needs a lock or an atomic
//! read-modify-write. The fields are atomics only because the records are a shared static
//! that Rust code (`init_cpu`) and `gs:`-relative assembly both access.
//!
//! A CPU that never ran `init_cpu` must fail loudly, not fault at address 0x8, and the fast
//! path must not pay for the check. So every access is RIP-relative to [`UNINITIALIZED`], a
//! record of its own: `gs:[rip + UNINITIALIZED + field]` reads `GS base + &UNINITIALIZED +
//! field` (in 64-bit mode the GS base is added to the RIP-relative address), and `init_cpu`
//! sets the GS base to `&RECORDS[i] - &UNINITIALIZED`, so an initialised CPU reaches its
//! record. A CPU whose GS base is still 0 (as at reset, and as boot loaders leave it) reaches
//! `UNINITIALIZED` itself, whose index is `usize::MAX`: [`KernelPlatform`] already checks the
//! index against [`MAX_CPUS`] and panics saying that `init_cpu` was not called, and
//! [`current_cpu_racy`] returns `usize::MAX`. Its guard depth starts near `2^62`, so guards
//! on such a CPU mask interrupts and never unmask them, whatever other uninitialised CPUs
//! do to the shared count. Same instructions as absolute `gs:` offsets, same length.

use core::arch::asm;
use core::sync::atomic::{AtomicUsize, Ordering};

use super::interrupts::InterruptGuard;
use crate::{MAX_SLOTS, Platform};

/// The most CPUs the kernel platform supports; CPU indices are below it.
pub const MAX_CPUS: usize = 64;
const _: () = assert!(MAX_CPUS <= MAX_SLOTS);

/// `IA32_GS_BASE`: the base address `gs:`-relative accesses add to their offset.
const IA32_GS_BASE: u32 = 0xC000_0101;

/// One CPU's record. The layout is fixed (`repr(C)`): assembly in this module and in
/// [`super::interrupts`] addresses the fields by offset.
#[repr(C, align(64))]
pub(super) struct CpuRecord {
    /// Offset 0: the dense CPU index.
    index: AtomicUsize,
    /// Offset 8: how many [`InterruptGuard`]s are alive on this CPU.
    pub(super) mask_depth: AtomicUsize,
    /// Offset 16: RFLAGS as it was when the outermost live guard was created.
    pub(super) saved_flags: AtomicUsize,
}

/// `gs:` offset of [`CpuRecord::index`].
pub(super) const INDEX_OFFSET: usize = core::mem::offset_of!(CpuRecord, index);
/// `gs:` offset of [`CpuRecord::mask_depth`].
pub(super) const DEPTH_OFFSET: usize = core::mem::offset_of!(CpuRecord, mask_depth);
/// `gs:` offset of [`CpuRecord::saved_flags`].
pub(super) const FLAGS_OFFSET: usize = core::mem::offset_of!(CpuRecord, saved_flags);

/// The record a CPU with GS base 0 reaches: index `usize::MAX`, and a guard depth no
/// number of guards brings to 0 (see the module documentation).
pub(super) static UNINITIALIZED: CpuRecord = CpuRecord {
    index: AtomicUsize::new(usize::MAX),
    mask_depth: AtomicUsize::new(1 << 62),
    saved_flags: AtomicUsize::new(0),
};

static RECORDS: [CpuRecord; MAX_CPUS] = [const {
    CpuRecord {
        index: AtomicUsize::new(0),
        mask_depth: AtomicUsize::new(0),
        saved_flags: AtomicUsize::new(0),
    }
}; MAX_CPUS];

/// Makes `index` the calling CPU's index: sets `IA32_GS_BASE` so that the CPU reaches its
/// record (the record's address minus that of the uninitialised record; see the module
/// documentation).
///
/// # Panics
///
/// If `index` is not below [`MAX_CPUS`].
///
/// # Safety
///
/// - Called once on each CPU, before that CPU uses [`KernelPlatform`], [`InterruptGuard`]
///   or [`current_cpu_racy`], with interrupts masked and no guard alive;
/// - every CPU gets a different index, and the boot CPU gets 0;
/// - nothing else writes `IA32_GS_BASE` (or swaps it with `swapgs`) afterwards.
pub unsafe fn init_cpu(index: usize) {
    assert!(index < MAX_CPUS, "CPU index {index} not below MAX_CPUS ({MAX_CPUS})");
    let record = &RECORDS[index];
    record.index.store(index, Ordering::Relaxed);
    record.mask_depth.store(0, Ordering::Relaxed);
    record.saved_flags.store(0, Ordering::Relaxed);
    let base = (record as *const CpuRecord as u64).wrapping_sub(&raw const UNINITIALIZED as u64);
    // SAFETY: the caller runs this once per CPU before any `gs:` access of this module and
    // nobody else owns the GS base; the record is a static, so the base stays valid. The
    // base is the distance between two statics of the image, a small value of either sign,
    // so it is canonical as `wrmsr` requires.
    // `wrmsr` writes the MSR in ecx from edx:eax; it touches no memory Rust knows of
    // (nomem), not the stack (nostack), and no status flags (preserves_flags).
    unsafe {
        asm!(
            "wrmsr",
            in("ecx") IA32_GS_BASE,
            in("eax") base as u32,
            in("edx") (base >> 32) as u32,
            options(nomem, nostack, preserves_flags),
        );
    }
}

/// The calling CPU's index, or `usize::MAX` on a CPU that never ran [`init_cpu`] (whose GS
/// base is still 0).
///
/// Racy in general: code that can move between CPUs may run elsewhere by the time it uses
/// the value. It is exact with interrupts masked, or in a kernel that never moves code
/// between CPUs.
#[inline]
pub fn current_cpu_racy() -> usize {
    let index: usize;
    // SAFETY: the address is this CPU's record index after `init_cpu`, or the uninitialised
    // record's with GS base 0 (the module documentation): a static either way. One load: it
    // reads memory (readonly, no `nomem`), uses no stack and leaves the flags alone.
    unsafe {
        asm!(
            "mov {index}, qword ptr gs:[rip + {record} + {offset}]",
            index = out(reg) index,
            record = sym UNINITIALIZED,
            offset = const INDEX_OFFSET,
            options(nostack, preserves_flags, readonly),
        );
    }
    index
}

/// Whether the calling CPU ran [`init_cpu`] (its GS base was 0 before, as at reset).
#[inline]
pub fn cpu_initialized() -> bool {
    current_cpu_racy() < MAX_CPUS
}

/// The kernel's [`Platform`]: the slot is the dense CPU index, and a slot's closure runs
/// with interrupts masked on its CPU, so nothing else can run with that index meanwhile.
#[derive(Debug, Clone, Copy, Default)]
pub struct KernelPlatform {
    _private: (),
}

impl KernelPlatform {
    /// The platform. Every CPU that calls into it must have run [`init_cpu`].
    pub const fn new() -> Self {
        Self { _private: () }
    }
}

// SAFETY: indices come from `init_cpu`, which gives each CPU a different index below
// MAX_CPUS (checked again below) for good. A closure runs with interrupts masked by an
// `InterruptGuard`, whose depth count keeps them masked until the closure's guard is gone
// whatever order other guards drop in, so neither an interrupt handler nor another CPU can
// run a closure with the same index meanwhile. Consecutive closures for one index run on
// one CPU in program order, which orders them.
unsafe impl Platform for KernelPlatform {
    fn slot_count(&self) -> usize {
        MAX_CPUS
    }

    #[inline]
    fn with_slot<R>(&self, f: impl FnOnce(usize) -> R) -> R {
        let _masked = InterruptGuard::new();
        let index = current_cpu_racy();
        if index >= MAX_CPUS {
            not_initialized();
        }
        f(index)
    }

    fn cache_line_size(&self) -> usize {
        cache_line_size()
    }
}

/// The panic of [`KernelPlatform`] on a CPU that never ran `init_cpu`, out of the fast path.
#[cold]
#[inline(never)]
fn not_initialized() -> ! {
    panic!(
        "platform::arch::x86_64::KernelPlatform used on a CPU that never ran init_cpu: call \
         platform::arch::x86_64::init_cpu(index) on every CPU at bring-up (0 on the boot CPU), \
         before its first allocation"
    )
}

/// The line size the allocator's fallback uses when CPUID reports none.
const FALLBACK_LINE: usize = 64;
/// 0 until the first call has read CPUID.
static LINE_SIZE: AtomicUsize = AtomicUsize::new(0);

/// Bytes in a cache line: CPUID leaf 1, EBX bits 15:8 (the CLFLUSH line size, in units of 8
/// bytes), or 64 when the CPU reports none. Read once and remembered.
pub fn cache_line_size() -> usize {
    let known = LINE_SIZE.load(Ordering::Relaxed);
    if known != 0 {
        return known;
    }
    let max_leaf = core::arch::x86_64::__cpuid(0).eax;
    let reported = if max_leaf >= 1 {
        let leaf1 = core::arch::x86_64::__cpuid(1);
        // The CLFLUSH field is valid only when the CLFSH feature bit (EDX bit 19) is set.
        if leaf1.edx & (1 << 19) != 0 { ((leaf1.ebx >> 8) & 0xFF) as usize * 8 } else { 0 }
    } else {
        0
    };
    let size = if reported.is_power_of_two() { reported } else { FALLBACK_LINE };
    LINE_SIZE.store(size, Ordering::Relaxed);
    size
}
