//! Small heaps on bare metal (issue 9): a second allocator over a static span of 64 KiB and
//! one over 1 MiB, both in compact mode, sharing the kernel's platform, used from every CPU
//! at once with cross-CPU frees; the share of the 1 MiB span live data fills before the
//! first null, and the reason the allocator gives for it.

use alloc::vec::Vec;
use core::cell::UnsafeCell;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};

use core_alloc::{Allocator, Failure};
use page_provider::PageProvider;
use page_provider::fixed::FixedRegion;
use platform::Platform;

use crate::{HeapUnderTest, Machine, Outcome, Rng, ensure, say};

/// A static span of `N` bytes, 16-aligned, handed to one provider.
#[repr(C, align(16))]
struct Span<const N: usize>(UnsafeCell<[u8; N]>);

// SAFETY: the bytes are only reached through the one provider made over them.
unsafe impl<const N: usize> Sync for Span<N> {}

static SPAN_64_KIB: Span<{ 64 * 1024 }> = Span(UnsafeCell::new([0; 64 * 1024]));
static SPAN_1_MIB: Span<{ 1024 * 1024 }> = Span(UnsafeCell::new([0; 1024 * 1024]));
/// Each span serves one heap, once per boot.
static TAKEN: AtomicUsize = AtomicUsize::new(0);

/// Blocks handed between CPUs: one exchange slot per CPU.
const SLOTS: usize = 64;

pub(crate) fn small_heaps<P: PageProvider, Pl: Platform>(
    machine: &dyn Machine,
    heap: &HeapUnderTest<'_, P, Pl>,
) -> Outcome {
    ensure!(TAKEN.fetch_add(1, Ordering::SeqCst) == 0, "the small-heap test ran twice");
    let platform = heap.allocator.platform();
    // SAFETY: the static spans are used by these providers alone, once (TAKEN), and are
    // zero (in .bss, never written before).
    let (small, medium) = unsafe {
        (
            FixedRegion::<1>::new(SPAN_64_KIB.0.get().cast(), 64 * 1024, true),
            FixedRegion::<1>::new(SPAN_1_MIB.0.get().cast(), 1024 * 1024, true),
        )
    };
    let small = Allocator::new(small, platform);
    let medium = Allocator::new(medium, platform);

    // 64 KiB, every CPU at once: small and bigger blocks, some freed by the next CPU.
    let cpus = machine.cpu_count().min(SLOTS);
    let exchange: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
    let errors = AtomicUsize::new(0);
    machine.run_on_cpus(cpus, &|cpu| {
        let mut rng = Rng(0x5A11_0000 + cpu as u64);
        let mut mine: Vec<(usize, usize, u8)> = Vec::new();
        for round in 0..400 {
            let size = if rng.below(5) == 0 { rng.below(1500) + 257 } else { rng.below(200) + 1 };
            if let Some(block) = small.allocate(size, 8) {
                let tag = (round % 251) as u8;
                // SAFETY: a fresh block of `size` bytes.
                unsafe { block.as_ptr().write_bytes(tag, size) };
                mine.push((block.as_ptr() as usize, size, tag));
            }
            if mine.len() > 6 || (small.stats().heap.failures.last.is_some() && !mine.is_empty()) {
                let (address, size, tag) = mine.swap_remove(rng.below(mine.len()));
                // SAFETY: the block is still this CPU's.
                if !unsafe { check(address, size, tag) } {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                // Hand it to the next CPU, and free whatever was left there before.
                let given = exchange[(cpu + 1) % cpus].swap(address, Ordering::AcqRel);
                if given != 0 {
                    // SAFETY: each block goes through the exchange once and is freed once.
                    unsafe { small.free(NonNull::new_unchecked(given as *mut u8)) };
                }
            }
        }
        for (address, size, tag) in mine {
            // SAFETY: this CPU's live blocks, freed once.
            unsafe {
                if !check(address, size, tag) {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                small.deallocate(NonNull::new_unchecked(address as *mut u8), size, 8);
            }
        }
    });
    for slot in &exchange {
        let left = slot.swap(0, Ordering::AcqRel);
        if left != 0 {
            // SAFETY: a block handed over and never freed.
            unsafe { small.free(NonNull::new_unchecked(left as *mut u8)) };
        }
    }
    for _ in 0..2 {
        machine.run_on_cpus(cpus, &|_| small.collect());
    }
    ensure!(errors.load(Ordering::Relaxed) == 0, "a block of the 64 KiB heap lost its bytes");
    ensure!(small.is_compact(), "a 64 KiB span did not run in compact mode");
    let stats = small.stats();
    ensure!(stats.live_allocations() == 0, "64 KiB heap: blocks left live: {stats}");
    machine.run_on_cpus(cpus, &|_| {
        if small.check_invariants().is_err() {
            errors.fetch_add(1, Ordering::Relaxed);
        }
    });
    ensure!(errors.load(Ordering::Relaxed) == 0, "64 KiB heap: invariants broken");

    // 1 MiB, one CPU: random sizes up to 4 KiB until the first null.
    let mut rng = Rng(0x1_0000_0001);
    let mut live = Vec::with_capacity(1024);
    let mut requested = 0;
    loop {
        let size = rng.below(4096) + 1;
        let Some(block) = medium.allocate(size, 8) else { break };
        live.push(block);
        requested += size;
    }
    let stats = medium.stats();
    let last = stats.heap.failures.last;
    ensure!(
        matches!(last.map(|last| last.reason), Some(Failure::OutOfMemory | Failure::Fragmented)),
        "1 MiB heap: the null came with no reason: {last:?}"
    );
    for block in live {
        // SAFETY: live blocks, freed once.
        unsafe { medium.free(block) };
    }
    medium.collect();
    ensure!(medium.stats().live_allocations() == 0, "1 MiB heap: blocks left live");
    say(
        machine,
        format_args!(
            "bench small heaps: a 1 MiB span held {} KiB of requested bytes before the first null ({:?})",
            requested / 1024,
            last.map(|last| last.reason)
        ),
    );
    ensure!(
        requested * 100 >= 85 * 1024 * 1024,
        "1 MiB heap: only {} KiB of requested bytes",
        requested / 1024
    );
    Ok(())
}

/// Whether `size` bytes at `address` all hold `tag`.
///
/// # Safety
///
/// The block is live and the caller's.
unsafe fn check(address: usize, size: usize, tag: u8) -> bool {
    // SAFETY: the caller's promise.
    unsafe { core::slice::from_raw_parts(address as *const u8, size).iter().all(|&byte| byte == tag) }
}
