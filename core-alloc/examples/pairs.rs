//! N small malloc+free pairs through the host allocator (for callgrind: run with two N and
//! take the difference to get instructions per pair).
use core_alloc::host::HostAlloc;
use std::alloc::{GlobalAlloc, Layout};
fn main() {
    let pairs: usize = std::env::args().nth(1).and_then(|n| n.parse().ok()).unwrap_or(1_000_000);
    let heap = HostAlloc;
    for i in 0..pairs {
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
