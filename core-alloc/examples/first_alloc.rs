//! A fresh heap's first allocation over dirty memory (its mode decided, its metadata and
//! first slab formatted), as the kernels' speed test times it: `first_alloc CHUNKS 1` makes
//! a heap over a span of CHUNKS 2 MiB chunks (2: compact mode; 9: on chunks) and allocates
//! once. Count its instructions with
//! `valgrind --tool=callgrind --toggle-collect='first_alloc::first' target/release/examples/first_alloc 9 1`.
use core_alloc::Allocator;
use page_provider::fixed::FixedRegion;
use platform::host::HostPlatform;

fn main() {
    let chunks: usize = std::env::args().nth(1).and_then(|n| n.parse().ok()).unwrap();
    let allocate = std::env::args().nth(2).as_deref() == Some("1");
    let bytes = chunks << 21;
    let span = vec![0xA5u8; bytes + (2 << 20)].leak();
    let base = span.as_mut_ptr() as usize;
    let aligned = base.next_multiple_of(2 << 20);
    // SAFETY: the leaked span is used by this heap alone.
    let heap = Allocator::new(
        unsafe { FixedRegion::<1>::new(aligned as *mut u8, bytes, false) },
        HostPlatform::new(),
    );
    if allocate {
        first(&heap);
    }
    println!("compact {}", heap.is_compact());
}

#[inline(never)]
fn first(heap: &Allocator<FixedRegion<1>, HostPlatform>) {
    std::hint::black_box(heap.allocate(24, 8));
}
