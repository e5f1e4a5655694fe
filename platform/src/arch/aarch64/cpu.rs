//! Each CPU's record (its slot word: the CPU index and its open slot closures) found through
//! TPIDR_EL1, each CPU's count of live interrupt guards, the [`KernelPlatform`] (slots by
//! nesting level, no masking on the fast path) and [`MaskingPlatform`] built on them, and
//! the cache-line size read from CTR_EL0.
//!
//! TPIDR_EL1 holds the byte offset of the CPU's record in `RECORDS`, whose entry 0 is no
//! CPU's: a CPU that never ran [`init_cpu`] (TPIDR_EL1 is 0 at reset under QEMU, and 0 is
//! what a kernel should leave there) reaches a record whose slot word is past every level,
//! and so the masked path, where the platform refuses it with a message. The offset is
//! masked to the table, so garbage left by firmware reads a record of the table too (a
//! never-initialised one for half of all values), never memory outside it. The fast path
//! reads TPIDR_EL1, masks it and loads the slot word: the slot itself, no index arithmetic.
//!
//! Concurrency: TPIDR_EL1 is private to each CPU and written once at bring-up; a CPU's
//! guard count is touched only by that CPU with interrupts masked, and its slot word only by
//! that CPU, in strictly nested closures; so the fast path takes no lock and does no atomic
//! read-modify-write.

use core::arch::asm;
use core::sync::atomic::{AtomicUsize, Ordering};

use super::InterruptGuard;
use crate::arch::nesting::MaskDepth;
use crate::{Platform, SlotExit};

/// CPUs a [`KernelPlatform`] can index: every index given to [`init_cpu`] is below it.
pub const MAX_CPUS: usize = 64;
const _: () = assert!(MAX_CPUS <= crate::MAX_SLOTS);

/// Each CPU's count of live [`InterruptGuard`]s, by CPU index; the last entry serves a CPU
/// that has no index yet (the boot CPU before [`init_cpu`]).
static MASK_DEPTHS: [MaskDepth; MAX_CPUS + 1] = [const { MaskDepth::new() }; MAX_CPUS + 1];

/// The calling CPU's guard count. Called with interrupts masked, so that the CPU (and the
/// index read) cannot change before the count is used.
#[inline(always)]
pub(super) fn current_mask_depth() -> &'static MaskDepth {
    &MASK_DEPTHS[current_cpu_racy().min(MAX_CPUS)]
}

/// Records `index` as the calling CPU's dense index (its record, which TPIDR_EL1 leads to),
/// and starts its count of live interrupt guards at 0.
///
/// # Safety
///
/// Every CPU that runs code using a [`KernelPlatform`] or an [`InterruptGuard`] calls this
/// once at bring-up, before that code, with no guard alive, each CPU with a different
/// `index` below [`MAX_CPUS`] (0 for the boot CPU), and nothing else writes TPIDR_EL1
/// afterwards. The platform's promise of exclusive slots and the guards' nesting rest on
/// this. The one exception: the boot CPU may use guards before calling it (their counts go
/// to the count kept for a CPU without an index, if its TPIDR_EL1 is 0 as at reset under
/// QEMU; write 0 there first where firmware may leave anything) while no other CPU runs. With the
/// `outline-atomics` feature, `init_cpu(0)` runs before any other CPU starts, and if the
/// boot CPU implements LSE every CPU does (as on every system built so far; a later CPU
/// without it is refused here, but may have faulted in the kernel's own atomics before).
///
/// # Panics
///
/// If `index` is not below [`MAX_CPUS`]; if the kernel is built with inline LSE atomics
/// (`-C target-feature=+lse`) and this CPU lacks them; or, with the `outline-atomics`
/// feature, if the boot CPU turned LSE on and this CPU lacks it. See [`atomics`].
pub unsafe fn init_cpu(index: usize) {
    assert!(index < MAX_CPUS, "CPU index {index} is not below MAX_CPUS ({MAX_CPUS})");
    check_atomics(index);
    MASK_DEPTHS[index].reset();
    RECORDS[index + 1].slot.store(index, core::sync::atomic::Ordering::Relaxed);
    let offset = (index + 1) * core::mem::size_of::<Record>();
    // SAFETY: TPIDR_EL1 is a software-only register that the caller hands over to us.
    unsafe {
        // A system register write: no memory, no stack, flags untouched.
        asm!("msr tpidr_el1, {offset}", offset = in(reg) offset, options(nomem, nostack, preserves_flags));
    }
}

/// Records: entry 0 for a CPU without an index, entry `index + 1` for each CPU, the rest
/// never used (a power of two of them, so that masking any offset lands on one).
static RECORDS: [Record; RECORD_COUNT] =
    [const { Record { slot: AtomicUsize::new(usize::MAX) } }; RECORD_COUNT];
const RECORD_COUNT: usize = (MAX_CPUS + 1).next_power_of_two();
/// The bits of an offset into `RECORDS` at a record's start (`and` takes it as an
/// immediate: one run of ones).
const RECORD_OFFSET_MASK: usize = (RECORD_COUNT - 1) * core::mem::size_of::<Record>();

/// A CPU's slot word (`index + level * MAX_CPUS`: the slot its next [`KernelPlatform`]
/// closure takes; `usize::MAX` in records of no CPU), alone on its cache line (128 bytes, the
/// largest line AArch64 systems have): every allocation and free writes it twice. Only the
/// owning CPU reads or writes it: relaxed loads and stores, ordered against the closure's
/// own accesses by compiler fences (interrupts on one CPU see its program order).
#[repr(C, align(128))]
struct Record {
    slot: AtomicUsize,
}

/// The calling CPU's record (entry 0 before `init_cpu`).
#[inline(always)]
fn record() -> &'static Record {
    let offset: usize;
    // SAFETY: reading TPIDR_EL1 has no side effects. A system register read: no memory, no
    // stack, flags untouched. Not `pure`: the value changes when `init_cpu` runs, and reads
    // must not be merged across that.
    unsafe {
        asm!("mrs {offset}, tpidr_el1", offset = out(reg) offset, options(nomem, nostack, preserves_flags));
    }
    // SAFETY: the masked offset is a multiple of the record size below the table's size,
    // so the pointer is at a record of the table.
    unsafe { &*RECORDS.as_ptr().byte_add(offset & RECORD_OFFSET_MASK) }
}

/// Which instructions the atomic operations of this build use on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Atomics {
    /// Exclusive load/store pairs (LL/SC): the Armv8.0 way, on every AArch64 CPU.
    ExclusivePairs,
    /// LSE instructions (`cas`, `ldadd`, `swp`) inline: the kernel is built for Armv8.1 or
    /// later (`-C target-feature=+lse`), and [`init_cpu`] refuses a CPU without them.
    LseInline,
    /// LSE instructions through outline-atomic helpers, enabled by `init_cpu(0)` after it
    /// found them on the boot CPU: a kernel built with `-C target-feature=+outline-atomics`
    /// and this crate's `outline-atomics` feature (on an Armv8.0 CPU the same kernel uses
    /// exclusive pairs: [`Atomics::ExclusivePairs`]).
    LseOutline,
}

impl core::fmt::Display for Atomics {
    fn fmt(&self, formatter: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        formatter.write_str(match self {
            Self::ExclusivePairs => "exclusive pairs (LL/SC)",
            Self::LseInline => "LSE, inline",
            Self::LseOutline => "LSE, through outline-atomic helpers",
        })
    }
}

/// Whether the calling CPU implements the Armv8.1 LSE atomic instructions
/// (ID_AA64ISAR0_EL1.Atomic, bits 23:20, at least 0b0010).
pub fn cpu_has_lse() -> bool {
    let features: u64;
    // SAFETY: reading ID_AA64ISAR0_EL1 has no side effects (EL1 may always read it).
    unsafe {
        // A system register read: no memory, no stack, flags untouched.
        asm!("mrs {features}, id_aa64isar0_el1", features = out(reg) features, options(nomem, nostack, preserves_flags));
    }
    (features >> 20) & 0xF >= 0b0010
}

/// Set once `init_cpu(0)` has switched the outline-atomic helpers to LSE.
static OUTLINE_LSE: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Which instructions this build's atomic operations use (see [`Atomics`]); final once the
/// boot CPU has run [`init_cpu`].
pub fn atomics() -> Atomics {
    if cfg!(target_feature = "lse") {
        Atomics::LseInline
    } else if OUTLINE_LSE.load(core::sync::atomic::Ordering::Relaxed) {
        Atomics::LseOutline
    } else {
        Atomics::ExclusivePairs
    }
}

/// The atomics part of [`init_cpu`]: a kernel built with inline LSE refuses a CPU without
/// it (with a message, where the alternative is an undefined-instruction exception at its
/// first atomic operation); with the `outline-atomics` feature the boot CPU turns the
/// helpers to LSE when it has the instructions, and a later CPU without them is refused.
fn check_atomics(index: usize) {
    if cfg!(target_feature = "lse") {
        assert!(
            cpu_has_lse(),
            "CPU {index} lacks the LSE atomics this kernel was built for (-C target-feature=+lse): \
             build without it, or with +outline-atomics and the outline-atomics feature, for Armv8.0 CPUs"
        );
        return;
    }
    #[cfg(feature = "outline-atomics")]
    {
        use core::sync::atomic::Ordering::Relaxed;
        if index == 0 && cpu_has_lse() {
            unsafe extern "C" {
                /// The switch of the outline-atomic helpers (compiler-rt's and libgcc's ABI,
                /// which Rust's compiler-builtins ships for this target): non-zero makes
                /// them use LSE instructions instead of exclusive pairs.
                static mut __aarch64_have_lse_atomics: u8;
            }
            // SAFETY: the boot CPU implements LSE (checked just above) and so does every CPU
            // (the caller's promise; each later CPU is checked in its own `init_cpu`). No
            // other CPU runs yet, so nothing reads the byte while it is written; a volatile
            // write, since the helpers read it behind the compiler's back.
            unsafe { core::ptr::addr_of_mut!(__aarch64_have_lse_atomics).write_volatile(1) };
            OUTLINE_LSE.store(true, Relaxed);
        } else if index != 0 {
            assert!(
                !OUTLINE_LSE.load(Relaxed) || cpu_has_lse(),
                "CPU {index} lacks the LSE atomics the boot CPU has and turned on for every CPU"
            );
        }
    }
    let _ = index;
}

/// The calling CPU's index as given to [`init_cpu`], or `usize::MAX` on a CPU that never
/// ran it. Racy in name only for a kernel that never moves running code between CPUs; a
/// kernel that does must read it with interrupts masked for the answer to stay true.
#[inline(always)]
pub fn current_cpu_racy() -> usize {
    let slot = record().slot.load(Ordering::Relaxed);
    if slot < MAX_CPUS * LEVELS { slot % MAX_CPUS } else { usize::MAX }
}

/// Whether the calling CPU ran [`init_cpu`].
#[inline]
pub fn cpu_initialized() -> bool {
    current_cpu_racy() < MAX_CPUS
}

/// Bytes that two CPUs should not both write to avoid false sharing, from CTR_EL0: the larger
/// of the smallest data cache line (DminLine) and the cache write-back granule (CWG, the
/// largest line any cache in the system writes back). When CWG is not reported (0) the
/// architecture allows up to 2 KiB; like Linux we then use at least 128 bytes.
pub fn cache_line_size() -> usize {
    let ctr: u64;
    // SAFETY: reading CTR_EL0 has no side effects (EL1 may always read it).
    unsafe {
        // A system register read: no memory, no stack, flags untouched; the value is fixed
        // for the system, so `pure` lets repeated reads merge.
        asm!("mrs {ctr}, ctr_el0", ctr = out(reg) ctr, options(pure, nomem, nostack, preserves_flags));
    }
    // Both fields are log2 of a number of 4-byte words.
    let dmin_line = 4usize << ((ctr >> 16) & 0xF);
    let write_back_granule = (ctr >> 24) & 0xF;
    if write_back_granule == 0 { dmin_line.max(128) } else { dmin_line.max(4 << write_back_granule) }
}

/// The architected generic timer's virtual count in nanoseconds (CNTVCT_EL0 scaled by
/// CNTFRQ_EL0): the platforms' clock for decay (`Platform::now_ns`). EL1 may always read
/// both; the count is monotonic and common to all CPUs. `None` if the frequency register
/// was left 0 by the firmware. A multiply and a shift: the scale (nanoseconds per tick,
/// fixed point) is worked out on the first call.
pub fn now_ns() -> Option<u64> {
    let mut scale = NS_PER_TICK_FIXED.load(core::sync::atomic::Ordering::Relaxed);
    if scale == 0 {
        let frequency: u64;
        // SAFETY: reading CNTFRQ_EL0 has no side effects; no memory, stack or flags.
        unsafe {
            asm!("mrs {f}, cntfrq_el0", f = out(reg) frequency, options(nomem, nostack, preserves_flags))
        };
        if frequency == 0 {
            return None;
        }
        scale = ((1_000_000_000u128 << 32) / u128::from(frequency)) as u64;
        NS_PER_TICK_FIXED.store(scale, core::sync::atomic::Ordering::Relaxed);
    }
    let count: u64;
    // SAFETY: reading CNTVCT_EL0 has no side effects. The `isb` keeps the count from being
    // read early (out of order); no memory, no stack, flags untouched.
    unsafe {
        asm!("isb", "mrs {c}, cntvct_el0", c = out(reg) count, options(nomem, nostack, preserves_flags))
    };
    Some(((u128::from(count) * u128::from(scale)) >> 32) as u64)
}

/// Nanoseconds per generic-timer tick, in 32.32 fixed point (0 until `now_ns` first runs).
static NS_PER_TICK_FIXED: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Slot levels per CPU for [`KernelPlatform`]: code outside interrupt handlers, a handler,
/// a handler interrupting a handler, and a last level taken with interrupts masked.
pub const LEVELS: usize = 4;
const _: () = assert!(MAX_CPUS * LEVELS <= crate::MAX_SLOTS);

/// The calling CPU's open [`KernelPlatform`] slot closures (0 outside the allocator). A
/// kernel that switches tasks from interrupt handlers must not switch away from a task
/// while this is above 0 on its CPU (see [`KernelPlatform`]).
#[inline(always)]
pub fn allocator_depth() -> usize {
    let slot = record().slot.load(Ordering::Relaxed);
    if slot < MAX_CPUS * LEVELS { slot / MAX_CPUS } else { 0 }
}

/// The kernel's [`Platform`], without masking interrupts on the fast path: a CPU has
/// [`LEVELS`] slots, and a slot closure takes the one of its nesting level on its CPU.
///
/// Code outside interrupt handlers allocates on level 0; an IRQ handler that allocates in
/// the middle of that allocation finds level 1 taken by nobody (the interrupted closure
/// holds level 0 and cannot run again until the handler returns), and so on. A closure
/// raises its CPU's level with one store and lowers it with another: an interrupt between
/// reading the level and raising it runs to completion first, on the same level, and leaves
/// it as it found it. Beyond the last level, a closure masks interrupts and takes the last
/// slot. The central lock and provider calls run with IRQs and FIQs masked
/// ([`Platform::enter_critical`]), so a handler never waits for a lock its own CPU holds.
///
/// What it asks of the kernel besides [`init_cpu`]: no task switch on a CPU while a closure
/// is open there ([`allocator_depth`] above 0). Kernels without preemption, and kernels that
/// preempt only where `allocator_depth() == 0`, qualify; others use [`MaskingPlatform`].
/// SError and debug exception handlers must not allocate.
#[derive(Debug, Clone, Copy, Default)]
pub struct KernelPlatform {
    _private: (),
}

impl KernelPlatform {
    /// The platform; every CPU using it must have called [`init_cpu`] first.
    pub const fn new() -> Self {
        Self { _private: () }
    }
}

/// A CPU's slot word (see `arch/levels.rs` for the rule).
struct CpuLevel(&'static AtomicUsize);

impl crate::arch::levels::LevelWord for CpuLevel {
    #[inline(always)]
    fn load(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    #[inline(always)]
    fn store(&self, slot: usize) {
        self.0.store(slot, Ordering::Relaxed);
    }
}

/// The last level's guard: interrupts masked, on a CPU that ran `init_cpu` (checked here,
/// off the fast path: a record of no CPU sends every closure here).
#[inline(always)]
fn mask_last_level() -> InterruptGuard {
    if !cpu_initialized() {
        not_initialized();
    }
    InterruptGuard::new()
}

/// The panic of the platforms on a CPU that never ran `init_cpu`, out of the fast path.
#[cold]
#[inline(never)]
fn not_initialized() -> ! {
    panic!(
        "platform::arch::aarch64's platforms used on a CPU that never ran init_cpu: call \
         platform::arch::aarch64::init_cpu(index) on every CPU at bring-up (0 on the boot CPU), \
         before its first allocation"
    )
}

// SAFETY: indices come from `init_cpu`, distinct per CPU and below MAX_CPUS (checked), and
// `init_cpu` starts the CPU's slot word (in its own record, which TPIDR_EL1 leads to) at its
// index; a closure raises the word by MAX_CPUS only while it is below the last level's
// (LEVELS - 1) * MAX_CPUS, so the word is always `index + level * MAX_CPUS` with level
// below LEVELS: one CPU and one level (the record of no CPU holds usize::MAX, which reaches
// the masked path, where the platform refuses it before any slot is used). On one CPU,
// closures nest strictly (a handler returns before the code it interrupted resumes, and
// the kernel does not switch tasks while a closure is open: the type's contract), and each
// open closure holds a different level: a closure reads level L, raises the word to L + 1
// before using slot L (a compiler fence keeps the slot's accesses after the store) and
// restores L when done; a handler that interrupts it before the raise completes entirely
// at level L first and restores L. The last level is taken with IRQs and FIQs masked, so it
// is held by one closure at a time. Other CPUs use other indices. Consecutive closures of
// one slot run on one CPU in program order. Between `enter_critical` and `leave_critical`
// IRQs and FIQs are masked, so no handler on this CPU runs there. `try_with_idle_slot` lends
// only this CPU's levels at or above its depth (held by no open closure), with interrupts
// masked.
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

    /// The exit puts back the slot word read into the record at `word`, or on the masked
    /// path (`word` 0) drops the interrupt guard taken there.
    #[inline(always)]
    fn with_slot_exit<R>(&self, f: impl for<'a> FnOnce(usize, SlotExit<'a, Self>) -> R) -> R {
        let word = &record().slot;
        crate::arch::levels::with_level(
            CpuLevel(word),
            (LEVELS - 1) * MAX_CPUS,
            MAX_CPUS,
            #[inline(always)]
            || core::mem::forget(mask_last_level()),
            #[inline(always)]
            move |slot, masked| {
                let word = if masked { 0 } else { word as *const AtomicUsize as usize };
                // SAFETY: `exit_slot` puts back the slot word read into this CPU's record,
                // or drops the guard forgotten on the masked path: what `with_level`
                // asks of its closure once done.
                let exit = unsafe { SlotExit::new(word, slot) };
                f(slot, exit)
            },
        )
    }

    #[inline(always)]
    unsafe fn exit_slot(word: usize, slot: usize) {
        if word == 0 {
            // SAFETY: the guard `with_slot_exit` forgot for this closure, on this CPU.
            unsafe { InterruptGuard::drop_forgotten() };
        } else {
            // SAFETY: `word` is the address of a CPU's slot word in RECORDS, a static (made
            // by `with_slot_exit`, the caller's promise).
            let word = unsafe { &*(word as *const AtomicUsize) };
            crate::arch::levels::restore(CpuLevel(word), slot);
        }
    }

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

    #[inline(always)]
    fn enter_critical(&self) -> usize {
        super::interrupts::mask_saving() as usize
    }

    #[inline(always)]
    unsafe fn leave_critical(&self, token: usize) {
        super::interrupts::unmask_as_before(token as u64);
    }
}

/// The kernel [`Platform`] that masks IRQs and FIQs for every slot closure: one slot per
/// CPU, nothing to ask of the kernel's scheduler. For kernels that may switch tasks anywhere;
/// slower than [`KernelPlatform`] (DAIF writes and a guard count on every call).
#[derive(Debug, Clone, Copy, Default)]
pub struct MaskingPlatform {
    _private: (),
}

impl MaskingPlatform {
    /// The platform; every CPU using it must have called [`init_cpu`] first.
    pub const fn new() -> Self {
        Self { _private: () }
    }
}

// SAFETY: `init_cpu`'s callers give each CPU a distinct index below MAX_CPUS (`with_slot`
// refuses a CPU that skipped it: its record is no CPU's). A closure for an index runs
// on that index's CPU with IRQs and FIQs masked by an `InterruptGuard`, whose per-CPU count
// keeps them masked until the closure's guard is gone whatever order other guards drop in,
// so no other closure can start with the same index until it returns: not on another CPU
// (the index is that CPU's alone), not in an interrupt handler on this one (masked).
// Consecutive closures for an index run on the same CPU, in program order, which orders
// them. The critical section is inside a closure (masked) or needs nothing beyond it.
unsafe impl Platform for MaskingPlatform {
    fn slot_count(&self) -> usize {
        MAX_CPUS
    }

    #[inline(always)]
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
