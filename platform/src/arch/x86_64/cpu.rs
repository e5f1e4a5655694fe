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
//! `UNINITIALIZED` itself, whose index is `usize::MAX` and whose slot word is `usize::MAX`,
//! past the last level: [`KernelPlatform`] then takes its masked path, which checks the index
//! and panics saying that `init_cpu` was not called (the fast path pays nothing for the
//! check), and [`current_cpu_racy`] returns `usize::MAX`. Its guard depth starts near `2^62`, so guards
//! on such a CPU mask interrupts and never unmask them, whatever other uninitialised CPUs
//! do to the shared count. Same instructions as absolute `gs:` offsets, same length.

use core::arch::asm;
use core::sync::atomic::{AtomicUsize, Ordering};

use super::interrupts::InterruptGuard;
use crate::{MAX_SLOTS, Platform, SlotExit};

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
    /// Offset 24: the slot the next [`KernelPlatform`] closure on this CPU takes: the index
    /// plus [`MAX_CPUS`] times the closures open (see `arch/levels.rs`).
    slot: AtomicUsize,
}

/// `gs:` offset of [`CpuRecord::index`].
pub(super) const INDEX_OFFSET: usize = core::mem::offset_of!(CpuRecord, index);
/// `gs:` offset of [`CpuRecord::mask_depth`].
pub(super) const DEPTH_OFFSET: usize = core::mem::offset_of!(CpuRecord, mask_depth);
/// `gs:` offset of [`CpuRecord::saved_flags`].
pub(super) const FLAGS_OFFSET: usize = core::mem::offset_of!(CpuRecord, saved_flags);
/// `gs:` offset of [`CpuRecord::slot`].
const SLOT_OFFSET: usize = core::mem::offset_of!(CpuRecord, slot);

/// The record a CPU with GS base 0 reaches: index `usize::MAX`, a guard depth no number of
/// guards brings to 0 (see the module documentation), and a slot word past the last level,
/// which sends [`KernelPlatform`] to its masked path, where it checks the CPU.
pub(super) static UNINITIALIZED: CpuRecord = CpuRecord {
    index: AtomicUsize::new(usize::MAX),
    mask_depth: AtomicUsize::new(1 << 62),
    saved_flags: AtomicUsize::new(0),
    slot: AtomicUsize::new(usize::MAX),
};

static RECORDS: [CpuRecord; MAX_CPUS] = [const {
    CpuRecord {
        index: AtomicUsize::new(0),
        mask_depth: AtomicUsize::new(0),
        saved_flags: AtomicUsize::new(0),
        slot: AtomicUsize::new(0),
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
    record.slot.store(index, Ordering::Relaxed);
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

/// The kernel's clock, registered with [`set_clock`] (null until then).
static CLOCK: core::sync::atomic::AtomicPtr<()> = core::sync::atomic::AtomicPtr::new(core::ptr::null_mut());

/// Gives the platforms the kernel's monotonic clock, in nanoseconds: the allocator then gives
/// empty chunks it keeps for reuse back once they have stayed unused for its decay period
/// (`Platform::now_ns`). x86-64 has no clock the platform could read without calibration
/// (the TSC's frequency comes from the kernel's timer setup), so the kernel passes its own;
/// without one the allocator keeps its count-based cache only. `clock` must be callable on
/// every CPU, from interrupt handlers and with interrupts masked, must not allocate, and
/// must never go backwards.
pub fn set_clock(clock: fn() -> u64) {
    CLOCK.store(clock as *mut (), Ordering::Release);
}

/// The clock given to [`set_clock`], read now; `None` before one was given.
pub fn now_ns() -> Option<u64> {
    let clock = CLOCK.load(Ordering::Acquire);
    if clock.is_null() {
        return None;
    }
    // SAFETY: only `set_clock` stores here, and it stores a `fn() -> u64`.
    let clock: fn() -> u64 = unsafe { core::mem::transmute::<*mut (), fn() -> u64>(clock) };
    Some(clock())
}

/// Slot levels per CPU for [`KernelPlatform`]: code outside interrupt handlers, a handler,
/// a handler interrupting a handler, and a last level taken with interrupts masked.
pub const LEVELS: usize = 4;
const _: () = assert!(MAX_CPUS * LEVELS <= MAX_SLOTS);

/// RFLAGS.IF: maskable interrupts are delivered.
const RFLAGS_IF: usize = 1 << 9;

/// The calling CPU's open [`KernelPlatform`] slot closures (0 outside the allocator, and on
/// a CPU that never ran [`init_cpu`]). A kernel that switches tasks from interrupt handlers
/// must not switch away from a task while this is above 0 on its CPU (see
/// [`KernelPlatform`]).
#[inline]
pub fn allocator_depth() -> usize {
    let slot = next_slot();
    if slot >= MAX_CPUS * LEVELS { 0 } else { slot / MAX_CPUS }
}

/// The slot the calling CPU's next [`KernelPlatform`] closure takes (`usize::MAX` on a CPU
/// that never ran [`init_cpu`]).
#[inline(always)]
fn next_slot() -> usize {
    let slot: usize;
    // SAFETY: this CPU's record field after `init_cpu`, or the uninitialised record's (a
    // static) before; one load, no stack, flags unchanged.
    unsafe {
        asm!(
            "mov {slot}, qword ptr gs:[rip + {record} + {offset}]",
            slot = out(reg) slot,
            record = sym UNINITIALIZED,
            offset = const SLOT_OFFSET,
            options(nostack, preserves_flags, readonly),
        );
    }
    slot
}

/// Sets the slot the calling CPU's next closure takes.
#[inline(always)]
fn set_next_slot(slot: usize) {
    // SAFETY: this CPU's record field: the fast path stores only after reading a slot below
    // the last level, which only an initialised CPU's record holds (the uninitialised
    // record's is `usize::MAX`), and the masked path stores back the value it read, after
    // `not_initialized` refused an uninitialised CPU. One store; not `nomem`, so it is a
    // compiler barrier and the closure's memory accesses stay between the two stores of a
    // slot closure. No stack, no flags.
    unsafe {
        asm!(
            "mov qword ptr gs:[rip + {record} + {offset}], {slot}",
            slot = in(reg) slot,
            record = sym UNINITIALIZED,
            offset = const SLOT_OFFSET,
            options(nostack, preserves_flags),
        );
    }
}

/// The kernel's [`Platform`], without masking interrupts on the fast path: a CPU has
/// [`LEVELS`] slots, and a slot closure takes the one of its nesting level on its CPU.
///
/// Code outside interrupt handlers allocates on level 0; a timer handler that allocates in
/// the middle of that allocation finds level 1 taken by nobody (the interrupted closure
/// holds level 0 and cannot run again until the handler returns), and so on. A closure
/// raises the CPU's level with one store and lowers it with another: an interrupt between
/// reading the level and raising it runs to completion first, on the same level, and leaves
/// it as it found it. Beyond the last level, a closure masks interrupts and takes the last
/// slot (nothing can interrupt it there). The central lock and provider calls run with
/// interrupts masked ([`Platform::enter_critical`]), so a handler never waits for a lock its
/// own CPU holds. No lock, no atomic read-modify-write and no interrupt mask on the fast
/// path: about 5 instructions a closure instead of 16 (`pushfq`, `cli`, the guard count).
///
/// What it asks of the kernel besides [`init_cpu`]: no task switch on a CPU while a closure
/// is open there ([`allocator_depth`] above 0), since a task that moves or waits holding a
/// level breaks the nesting. Kernels without preemption, and kernels that preempt only
/// where they check `allocator_depth() == 0` (or that mask interrupts around allocation
/// calls themselves), qualify; others use [`MaskingPlatform`]. NMI handlers must not
/// allocate.
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

/// The calling CPU's level word, through `gs:` (see `arch/levels.rs` for the rule).
struct GsLevel;

impl crate::arch::levels::LevelWord for GsLevel {
    #[inline(always)]
    fn load(&self) -> usize {
        next_slot()
    }

    #[inline(always)]
    fn store(&self, slot: usize) {
        set_next_slot(slot);
    }
}

/// The last level's guard: interrupts masked, on a CPU that ran `init_cpu` (checked here,
/// off the fast path: an uninitialised CPU's slot word sends every closure here).
#[inline(always)]
fn mask_last_level() -> InterruptGuard {
    if !cpu_initialized() {
        not_initialized();
    }
    InterruptGuard::new()
}

// SAFETY: indices come from `init_cpu`, distinct per CPU and below MAX_CPUS (checked), and
// `init_cpu` starts the CPU's slot word at its index; a closure raises the word by MAX_CPUS
// only while it is below the last level's (LEVELS - 1) * MAX_CPUS, so the word is always
// `index + level * MAX_CPUS` with level below LEVELS: below MAX_CPUS * LEVELS, one CPU and
// one level (an uninitialised CPU's word, usize::MAX, reaches the masked path, which refuses
// it before any slot is used). On one CPU, closures nest strictly (an interrupt handler returns before the code
// it interrupted resumes, and the kernel does not switch tasks while a closure is open: the
// type's contract), and each open closure holds a different level: a closure reads level L,
// raises it to L + 1 before using slot L and restores L when done; a handler that interrupts
// it before the raise completes entirely at level L first and restores L. The last level is
// taken with interrupts masked, so it is held by one closure at a time. Other CPUs use other
// indices. Consecutive closures of one slot run on one CPU in program order. Between
// `enter_critical` and `leave_critical` interrupts are masked, so no handler on this CPU
// runs there. `try_with_idle_slot` lends only this CPU's levels at or above its depth (held
// by no open closure), with interrupts masked so that none opens meanwhile.
unsafe impl Platform for KernelPlatform {
    fn slot_count(&self) -> usize {
        MAX_CPUS * LEVELS
    }

    #[inline(always)]
    fn with_slot<R>(&self, f: impl FnOnce(usize) -> R) -> R {
        self.with_slot_exit(
            #[inline(always)]
            |slot, exit| {
                let result = f(slot);
                exit.leave();
                result
            },
        )
    }

    /// The exit puts back the slot word read, or on the masked path (`word` 1) drops the
    /// interrupt guard taken there.
    #[inline(always)]
    fn with_slot_exit<R>(&self, f: impl for<'a> FnOnce(usize, SlotExit<'a, Self>) -> R) -> R {
        crate::arch::levels::with_level(
            GsLevel,
            (LEVELS - 1) * MAX_CPUS,
            MAX_CPUS,
            #[inline(always)]
            || core::mem::forget(mask_last_level()),
            #[inline(always)]
            // SAFETY: `exit_slot` puts back the word read, or drops the guard forgotten on
            // the masked path: what `with_level` asks of its closure once done.
            |slot, masked| f(slot, unsafe { SlotExit::new(usize::from(masked), slot) }),
        )
    }

    #[inline(always)]
    unsafe fn exit_slot(masked: usize, slot: usize) {
        if masked != 0 {
            // SAFETY: the guard `with_slot_exit` forgot for this closure, on this CPU.
            unsafe { InterruptGuard::drop_forgotten() };
        } else {
            crate::arch::levels::restore(GsLevel, slot);
        }
    }

    /// Lends a slot of this CPU's interrupt levels that no open closure holds (levels at or
    /// above the current depth, never level 0), with interrupts masked so that no handler
    /// takes it meanwhile: `collect()` gives back what interrupt handlers left cached.
    fn try_with_idle_slot<R>(&self, slot: usize, f: impl FnOnce() -> R) -> Option<R> {
        let (cpu, level) = (slot % MAX_CPUS, slot / MAX_CPUS);
        let _masked = InterruptGuard::new();
        let idle = cpu == current_cpu_racy() && level >= allocator_depth().max(1) && level < LEVELS;
        idle.then(f)
    }

    fn cache_line_size(&self) -> usize {
        cache_line_size()
    }

    fn now_ns(&self) -> Option<u64> {
        now_ns()
    }

    #[inline]
    fn enter_critical(&self) -> usize {
        let flags: usize;
        // SAFETY: reads RFLAGS and masks interrupts; ring 0 (a kernel). Not `nomem`: a
        // compiler barrier, so the section's accesses stay after the `cli`. Pushes (no
        // `nostack`); `cli` changes IF only, which Rust does not track.
        unsafe { asm!("pushfq", "pop {flags}", "cli", flags = out(reg) flags, options(preserves_flags)) };
        flags
    }

    #[inline]
    unsafe fn leave_critical(&self, token: usize) {
        if token & RFLAGS_IF != 0 {
            // SAFETY: interrupts were enabled when the section began (the token's RFLAGS)
            // and every section entered inside it was left (the caller's promise). A
            // compiler barrier (not `nomem`); no stack; `sti` changes IF only.
            unsafe { asm!("sti", options(nostack, preserves_flags)) };
        }
    }
}

/// The kernel [`Platform`] that masks interrupts for every slot closure: one slot per CPU,
/// nothing to ask of the kernel's scheduler. For kernels that may switch tasks anywhere
/// (preemption from interrupt handlers without checking [`allocator_depth`]); slower than
/// [`KernelPlatform`] (`pushfq`/`cli`/`sti` and a guard count on every call).
#[derive(Debug, Clone, Copy, Default)]
pub struct MaskingPlatform {
    _private: (),
}

impl MaskingPlatform {
    /// The platform. Every CPU that calls into it must have run [`init_cpu`].
    pub const fn new() -> Self {
        Self { _private: () }
    }
}

// SAFETY: indices come from `init_cpu`, which gives each CPU a different index below
// MAX_CPUS (checked again below) for good. A closure runs with interrupts masked by an
// `InterruptGuard`, whose depth count keeps them masked until the closure's guard is gone
// whatever order other guards drop in, so neither an interrupt handler nor another CPU can
// run a closure with the same index meanwhile, and a task switch cannot happen inside one.
// Consecutive closures for one index run on one CPU in program order, which orders them.
// The critical section is inside a closure (masked) or needs nothing beyond it.
unsafe impl Platform for MaskingPlatform {
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

    fn now_ns(&self) -> Option<u64> {
        now_ns()
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
