//! N rounds of a `Vec` grown by doubling reallocations from 8 bytes to 64 KiB, as the
//! kernels' speed comparison does (for callgrind: run with two N and take the difference to
//! get instructions per round). The second argument picks the heap as in `pairs`: `host`,
//! `compact` (a 4 MiB span) or `region` (a 32 MiB span, run on chunks).
use core_alloc::Allocator;
use core_alloc::host::HostAlloc;
use page_provider::fixed::FixedRegion;
use platform::host::HostPlatform;
use std::alloc::{GlobalAlloc, Layout};

const VEC_MAX: usize = 64 * 1024;

fn growth(heap: &impl GlobalAlloc, rounds: usize) {
    for round in 0..rounds {
        let tag = round as u8;
        // SAFETY: every block is used within its layout, reallocated with the layout it has
        // and freed once.
        unsafe {
            let mut size = 8;
            let mut block = heap.alloc(Layout::from_size_align_unchecked(size, 8));
            assert!(!block.is_null());
            block.write(tag);
            while size < VEC_MAX {
                let grown = heap.realloc(block, Layout::from_size_align_unchecked(size, 8), size * 2);
                assert!(!grown.is_null() && *grown == tag);
                block = grown;
                size *= 2;
                block.add(size - 1).write(tag);
            }
            heap.dealloc(std::hint::black_box(block), Layout::from_size_align_unchecked(size, 8));
        }
    }
}

fn region_heap(bytes: usize) -> Allocator<FixedRegion, HostPlatform> {
    let span = vec![0u128; bytes / 16].leak();
    // SAFETY: the leaked span is used by this heap alone.
    Allocator::new(unsafe { FixedRegion::new(span.as_mut_ptr().cast(), bytes, true) }, HostPlatform::new())
}

/// Runs the rounds on `heap` and prints its chunk traffic (to standard error).
fn report(heap: &Allocator<FixedRegion, HostPlatform>, rounds: usize) {
    growth(heap, rounds);
    let counters = heap.stats().heap;
    eprintln!(
        "chunks obtained {}, returned {}, cached {}",
        counters.chunks_obtained, counters.chunks_returned, counters.cached_chunks
    );
}

fn main() {
    let rounds: usize = std::env::args().nth(1).and_then(|n| n.parse().ok()).unwrap_or(10_000);
    match std::env::args().nth(2).as_deref() {
        None | Some("host") => growth(&HostAlloc, rounds),
        Some("compact") => report(&region_heap(4 << 20), rounds),
        Some("region") => report(&region_heap(32 << 20), rounds),
        Some(other) => panic!("unknown heap {other}: host, compact or region"),
    }
}
