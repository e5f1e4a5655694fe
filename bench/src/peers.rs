//! The allocators under test, and the global allocator of the harness's processes: whichever
//! allocator the `BENCH_ALLOCATOR` environment variable names (glibc when unset), so that a
//! child process measuring one allocator has that allocator serve everything it allocates.
//!
//! Workloads call the allocator's own `GlobalAlloc` implementation directly (monomorphised,
//! no dispatch); the dispatch below serves only the runtime's and the harness's own
//! allocations (thread stacks' bookkeeping, result lines) and `Vec` growth in workload 7.
//!
//! Concurrency: the choice is made once, on the first allocation of the process (the Rust
//! runtime allocates before `main`), with `getenv`, which does not allocate; a race between
//! two first allocations only makes the same choice twice.

use std::alloc::{GlobalAlloc, Layout};
use std::ptr;
use std::sync::atomic::{AtomicU8, Ordering};

use core_alloc::host::HostAlloc;

use crate::fixed::{self, GLOBAL_ARENA, Locked};

/// The environment variable that picks the process's allocator.
pub const ALLOCATOR_VARIABLE: &str = "BENCH_ALLOCATOR";

/// An allocator under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Peer {
    /// This project's allocator, `core_alloc::host::HostAlloc`.
    CoreAlloc,
    /// The C library's malloc.
    Glibc,
    /// jemalloc through tikv-jemallocator.
    Jemalloc,
    /// mimalloc through the mimalloc crate (its default: mimalloc v3).
    Mimalloc,
    /// snmalloc through snmalloc-rs.
    Snmalloc,
    /// talc 5, spin lock, fixed arena.
    Talc,
    /// rlsf, spin lock, fixed arena.
    Rlsf,
    /// buddy_system_allocator, spin lock, fixed arena.
    Buddy,
    /// linked_list_allocator, spin lock, fixed arena.
    LinkedList,
}

impl Peer {
    /// Every allocator, this project's first.
    pub const ALL: [Peer; 9] = [
        Peer::CoreAlloc,
        Peer::Glibc,
        Peer::Jemalloc,
        Peer::Mimalloc,
        Peer::Snmalloc,
        Peer::Talc,
        Peer::Rlsf,
        Peer::Buddy,
        Peer::LinkedList,
    ];

    /// The name in tables, the CSV and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Peer::CoreAlloc => "core-alloc",
            Peer::Glibc => "glibc",
            Peer::Jemalloc => "jemalloc",
            Peer::Mimalloc => "mimalloc",
            Peer::Snmalloc => "snmalloc",
            Peer::Talc => "talc",
            Peer::Rlsf => "rlsf",
            Peer::Buddy => "buddy_system_allocator",
            Peer::LinkedList => "linked_list_allocator",
        }
    }

    /// What exactly is measured, for the results' notes.
    pub fn description(self) -> &'static str {
        match self {
            Peer::CoreAlloc => {
                "core_alloc::host::HostAlloc (this repository); preloaded: target/release/libcorealloc.so (malloc/)"
            }
            Peer::Glibc => "the C library's malloc (std::alloc::System); preloaded: nothing",
            Peer::Jemalloc => {
                "jemalloc 5.3 via tikv-jemallocator 0.7; preloaded: Debian's libjemalloc2 build (jemalloc 5.3.0)"
            }
            Peer::Mimalloc => {
                "mimalloc 3.3 via the mimalloc crate 0.1.52 (its default, v3); preloaded: Debian's libmimalloc2.0 build (mimalloc 2.0.9)"
            }
            Peer::Snmalloc => "snmalloc via snmalloc-rs 0.7",
            Peer::Talc => "talc 5.1: TalcLock<spinning_top::RawSpinlock, Claim>, 1 GiB arena",
            Peer::Rlsf => "rlsf 0.2 Tlsf behind a spinning_top spin lock, 1 GiB arena",
            Peer::Buddy => "buddy_system_allocator 0.13 Heap<32> behind a spin lock, 1 GiB arena",
            Peer::LinkedList => "linked_list_allocator 0.10 Heap behind a spin lock, 1 GiB arena",
        }
    }

    /// The allocator of this name.
    pub fn from_name(name: &str) -> Option<Peer> {
        Peer::ALL.into_iter().find(|peer| peer.name() == name)
    }

    /// A heap over a fixed arena (no memory from the system after the arena).
    pub fn is_fixed_arena(self) -> bool {
        matches!(self, Peer::Talc | Peer::Rlsf | Peer::Buddy | Peer::LinkedList)
    }

    /// Cost per operation linear in the number of free blocks (linked_list_allocator walks
    /// its holes): runs a hundredth of the operations in workloads 2 and 3 (the figures are
    /// per operation) and a tenth of workload 6's replacements (a million would take a
    /// quarter of an hour).
    pub fn is_slow(self) -> bool {
        matches!(self, Peer::LinkedList)
    }

    /// Frees in bulk take minutes (buddy_system_allocator scans a free list per free to find
    /// the buddy; linked_list_allocator walks its holes): workload 6, which frees 90,000
    /// scattered blocks, runs once per full run rather than in every run, and not in
    /// `--quick`.
    pub fn has_slow_bulk_frees(self) -> bool {
        matches!(self, Peer::LinkedList | Peer::Buddy)
    }

    fn code(self) -> u8 {
        self as u8 + 1
    }

    fn from_code(code: u8) -> Peer {
        Peer::ALL[usize::from(code - 1)]
    }
}

pub static LINKED_LIST: Locked<fixed::LinkedList, GLOBAL_ARENA> = Locked::new();
pub static BUDDY: Locked<fixed::Buddy, GLOBAL_ARENA> = Locked::new();
pub static RLSF: Locked<fixed::Rlsf, GLOBAL_ARENA> = Locked::new();
pub static TALC: fixed::Talc<GLOBAL_ARENA> = fixed::Talc::new();
pub static JEMALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
pub static MIMALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
pub static SNMALLOC: snmalloc_rs::SnMalloc = snmalloc_rs::SnMalloc;

/// Runs `f` with the allocator `peer` as a concrete type, so that workloads are compiled
/// for each allocator without dispatch.
#[macro_export]
macro_rules! with_peer {
    ($peer:expr, |$heap:ident| $body:expr) => {
        match $peer {
            $crate::peers::Peer::CoreAlloc => {
                let $heap = &core_alloc::host::HostAlloc;
                $body
            }
            $crate::peers::Peer::Glibc => {
                let $heap = &std::alloc::System;
                $body
            }
            $crate::peers::Peer::Jemalloc => {
                let $heap = &$crate::peers::JEMALLOC;
                $body
            }
            $crate::peers::Peer::Mimalloc => {
                let $heap = &$crate::peers::MIMALLOC;
                $body
            }
            $crate::peers::Peer::Snmalloc => {
                let $heap = &$crate::peers::SNMALLOC;
                $body
            }
            $crate::peers::Peer::Talc => {
                let $heap = &$crate::peers::TALC;
                $body
            }
            $crate::peers::Peer::Rlsf => {
                let $heap = &$crate::peers::RLSF;
                $body
            }
            $crate::peers::Peer::Buddy => {
                let $heap = &$crate::peers::BUDDY;
                $body
            }
            $crate::peers::Peer::LinkedList => {
                let $heap = &$crate::peers::LINKED_LIST;
                $body
            }
        }
    };
}

/// The process's allocator: 0 until the first allocation chooses.
static SELECTED: AtomicU8 = AtomicU8::new(0);

/// The allocator serving this process.
pub fn selected() -> Peer {
    match SELECTED.load(Ordering::Relaxed) {
        0 => choose(),
        code => Peer::from_code(code),
    }
}

#[cold]
fn choose() -> Peer {
    // SAFETY: getenv reads the environment without allocating; the name is a C string; the
    // result is read before anything in this process could change the environment.
    let value = unsafe { libc::getenv(c"BENCH_ALLOCATOR".as_ptr()) };
    let peer = if value.is_null() {
        Peer::Glibc
    } else {
        // SAFETY: getenv returned a pointer to a NUL-terminated string.
        let bytes = unsafe { std::ffi::CStr::from_ptr(value) }.to_bytes();
        Peer::ALL.into_iter().find(|peer| peer.name().as_bytes() == bytes).unwrap_or(Peer::Glibc)
    };
    SELECTED.store(peer.code(), Ordering::Relaxed);
    peer
}

/// The global allocator of every process of the harness; see the module documentation.
pub struct Dispatch;

// SAFETY: every call forwards to the one allocator chosen for the whole process, which
// upholds GlobalAlloc's contract; the choice never changes once made, so every block goes
// back to the allocator that made it.
unsafe impl GlobalAlloc for Dispatch {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's GlobalAlloc promises.
        with_peer!(selected(), |heap| unsafe { heap.alloc(layout) })
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's GlobalAlloc promises.
        with_peer!(selected(), |heap| unsafe { heap.alloc_zeroed(layout) })
    }
    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        // SAFETY: the caller's GlobalAlloc promises.
        with_peer!(selected(), |heap| unsafe { heap.dealloc(block, layout) })
    }
    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's GlobalAlloc promises.
        with_peer!(selected(), |heap| unsafe { heap.realloc(block, layout, new_size) })
    }
}

unsafe extern "C" {
    /// mimalloc's explicit collection (in the library the mimalloc crate links).
    fn mi_collect(force: bool);
}

/// Calls `peer`'s own way of giving back memory that stayed unused for a while, where it has
/// one that is not a full collection, and returns its name. core-alloc: `HostAlloc::decay()`,
/// called, then again after its one-second decay period (the first call notes what changed,
/// the second gives back what stayed unused: free pages of mostly free chunks, idle arenas).
pub fn explicit_decay(peer: Peer) -> Option<&'static str> {
    match peer {
        Peer::CoreAlloc => {
            HostAlloc::decay();
            std::thread::sleep(std::time::Duration::from_millis(1100));
            HostAlloc::decay();
            Some("HostAlloc::decay(), twice a decay period apart")
        }
        _ => None,
    }
}

/// Asks the allocator to give back what it can now, where it has a call for it; returns
/// what was called, or `None`.
pub fn explicit_collect(peer: Peer) -> Option<&'static str> {
    match peer {
        Peer::CoreAlloc => {
            HostAlloc::collect();
            Some("HostAlloc::collect()")
        }
        Peer::Glibc => {
            // SAFETY: malloc_trim has no preconditions.
            unsafe { libc::malloc_trim(0) };
            Some("malloc_trim(0)")
        }
        Peer::Jemalloc => {
            // SAFETY: mallctl with void "thread.tcache.flush" and "arena.<all>.purge" (4096 is
            // MALLCTL_ARENAS_ALL): no input or output buffers.
            unsafe {
                for name in [c"thread.tcache.flush", c"arena.4096.purge"] {
                    let (old, length, new) = (ptr::null_mut(), ptr::null_mut(), ptr::null_mut());
                    tikv_jemalloc_sys::mallctl(name.as_ptr(), old, length, new, 0);
                }
            }
            Some("mallctl thread.tcache.flush + arena.<all>.purge")
        }
        Peer::Mimalloc => {
            // SAFETY: mi_collect has no preconditions.
            unsafe { mi_collect(true) };
            Some("mi_collect(true)")
        }
        Peer::Snmalloc | Peer::Talc | Peer::Rlsf | Peer::Buddy | Peer::LinkedList => None,
    }
}
