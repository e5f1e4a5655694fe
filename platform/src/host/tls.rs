//! This thread's slot word: read on every allocation and free, so its access is the fast
//! path's first instruction.
//!
//! A `std::thread_local!` compiles to one load in an executable (the linker relaxes the
//! access), but in a shared library, such as the C library `libcorealloc.so`, to a call of
//! `__tls_get_addr` on every use (the general-dynamic model): stable Rust offers no way to
//! ask for another model. On Linux x86-64 and AArch64 the word is therefore defined and
//! reached in assembly with the initial-exec model: its offset from the thread pointer is
//! one load from the GOT, and the word one load through the thread pointer, in executables
//! and shared libraries alike. The price is the one every preloadable malloc pays: a shared
//! library holding it takes static TLS space (8 bytes), which a library loaded at startup
//! (`LD_PRELOAD`, a link-time dependency) always gets, and one loaded later with `dlopen`
//! gets from glibc's reserve for this. Elsewhere (other targets, Miri, the model checker) the
//! word is a `std::thread_local!`.
//!
//! The word is memory no Rust code touches (only these three assembly blocks do), so the
//! blocks are `nomem`: the compiler may move Rust loads and stores across them (a closure's
//! captures need not be stored before the slot is read, as they must be across an access
//! that may read memory). `get` and `set` are not `pure`: as operations with side effects
//! they stay in program order with each other and with calls, so a `get` always sees the
//! thread's last `set` and is never hoisted out of a loop that calls into the slow path.
//!
//! The symbol is global and hidden (every crate that inlines an access resolves it at link
//! time, and nothing outside the linked object sees it) and names the crate version, so that
//! two semver-incompatible copies of this crate in one program keep words of their own.

#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64"),
    not(miri),
    not(feature = "shuttle")
))]
mod imp {
    /// The word's symbol (initial value `usize::MAX`: `UNCLAIMED`).
    macro_rules! word {
        () => {
            "core_alloc_platform_0_1_thread_slot"
        };
    }

    core::arch::global_asm!(
        ".pushsection .tdata,\"awT\",%progbits",
        ".balign 8",
        concat!(".globl ", word!()),
        concat!(".hidden ", word!()),
        concat!(".type ", word!(), ", %object"),
        concat!(".size ", word!(), ", 8"),
        concat!(word!(), ":"),
        ".quad -1",
        ".popsection",
    );

    /// This thread's word.
    #[inline(always)]
    pub(in crate::host) fn get() -> usize {
        let value: usize;
        // SAFETY: reads this thread's own TLS word (defined above, 8 bytes, 8-aligned)
        // through the thread pointer and its initial-exec offset; nothing else is touched.
        unsafe {
            #[cfg(target_arch = "x86_64")]
            core::arch::asm!(
                concat!("mov {value}, qword ptr [rip + ", word!(), "@GOTTPOFF]"),
                "mov {value}, qword ptr fs:[{value}]",
                value = out(reg) value,
                options(nostack, nomem, preserves_flags),
            );
            #[cfg(target_arch = "aarch64")]
            core::arch::asm!(
                "mrs {thread}, tpidr_el0",
                concat!("adrp {value}, :gottprel:", word!()),
                concat!("ldr {value}, [{value}, :gottprel_lo12:", word!(), "]"),
                "ldr {value}, [{thread}, {value}]",
                thread = out(reg) _,
                value = out(reg) value,
                options(nostack, nomem, preserves_flags),
            );
        }
        value
    }

    /// Sets this thread's word.
    #[inline(always)]
    pub(in crate::host) fn set(value: usize) {
        // SAFETY: writes this thread's own TLS word, as `get` reads it.
        unsafe {
            #[cfg(target_arch = "x86_64")]
            core::arch::asm!(
                concat!("mov {offset}, qword ptr [rip + ", word!(), "@GOTTPOFF]"),
                "mov qword ptr fs:[{offset}], {value}",
                offset = out(reg) _,
                value = in(reg) value,
                options(nostack, nomem, preserves_flags),
            );
            #[cfg(target_arch = "aarch64")]
            core::arch::asm!(
                "mrs {thread}, tpidr_el0",
                concat!("adrp {offset}, :gottprel:", word!()),
                concat!("ldr {offset}, [{offset}, :gottprel_lo12:", word!(), "]"),
                "str {value}, [{thread}, {offset}]",
                thread = out(reg) _,
                offset = out(reg) _,
                value = in(reg) value,
                options(nostack, nomem, preserves_flags),
            );
        }
    }

    /// The word's address (different in every thread).
    pub(in crate::host) fn address() -> usize {
        let address: usize;
        // SAFETY: computes the address of this thread's TLS word; reads only the thread
        // pointer and the GOT.
        unsafe {
            #[cfg(target_arch = "x86_64")]
            core::arch::asm!(
                "mov {address}, qword ptr fs:0",
                concat!("add {address}, qword ptr [rip + ", word!(), "@GOTTPOFF]"),
                address = out(reg) address,
                options(nostack, nomem, pure),
            );
            #[cfg(target_arch = "aarch64")]
            core::arch::asm!(
                "mrs {address}, tpidr_el0",
                concat!("adrp {offset}, :gottprel:", word!()),
                concat!("ldr {offset}, [{offset}, :gottprel_lo12:", word!(), "]"),
                "add {address}, {address}, {offset}",
                address = out(reg) address,
                offset = out(reg) _,
                options(nostack, nomem, preserves_flags),
            );
        }
        address
    }
}

#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64"),
    not(miri),
    not(feature = "shuttle")
)))]
mod imp {
    use core::cell::Cell;

    std::thread_local! {
        static THREAD_SLOT: Cell<usize> = const { Cell::new(usize::MAX) };
    }

    /// This thread's word.
    #[inline(always)]
    pub(in crate::host) fn get() -> usize {
        THREAD_SLOT.with(Cell::get)
    }

    /// Sets this thread's word.
    #[inline(always)]
    pub(in crate::host) fn set(value: usize) {
        THREAD_SLOT.with(|word| word.set(value));
    }

    /// The word's address (different in every thread).
    pub(in crate::host) fn address() -> usize {
        THREAD_SLOT.with(|word| word as *const Cell<usize> as usize)
    }
}

pub(super) use imp::{address, get, set};
