//! N small malloc+free pairs (for callgrind: run with two N and take the difference to get
//! instructions per pair). The second argument picks the heap: `host` (the default: the
//! host allocator over mmap), `compact` (compact mode over a 1 MiB span) or `region` (a
//! 32 MiB span, run on chunks: the same provider type as `compact`).
use core_alloc::Allocator;
use core_alloc::host::HostAlloc;
use page_provider::fixed::FixedRegion;
use platform::host::HostPlatform;
use std::alloc::{GlobalAlloc, Layout};

fn pairs(heap: &impl GlobalAlloc, count: usize) {
    for i in 0..count {
        let size = 16 + (i * 7) % 113;
        // SAFETY: non-zero sizes; each block is freed with its layout.
        unsafe {
            let layout = Layout::from_size_align_unchecked(size, 8);
            let block = heap.alloc(layout);
            *block = i as u8;
            heap.dealloc(std::hint::black_box(block), layout);
        }
    }
}

fn region_heap(bytes: usize) -> Allocator<FixedRegion, HostPlatform> {
    let span = vec![0u128; bytes / 16].leak();
    // SAFETY: the leaked span is used by this heap alone.
    Allocator::new(unsafe { FixedRegion::new(span.as_mut_ptr().cast(), bytes, true) }, HostPlatform::new())
}

fn main() {
    let count: usize = std::env::args().nth(1).and_then(|n| n.parse().ok()).unwrap_or(1_000_000);
    match std::env::args().nth(2).as_deref() {
        None | Some("host") => pairs(&HostAlloc, count),
        Some("compact") => pairs(&region_heap(1 << 20), count),
        Some("region") => pairs(&region_heap(32 << 20), count),
        Some(other) => panic!("unknown heap {other}: host, compact or region"),
    }
}
