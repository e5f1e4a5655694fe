//! Bad input: impossible sizes and alignments return null, zero-size requests behave as
//! documented, and misuses the allocator can see are reported through its hook rather than
//! corrupting it.

mod common;

use std::alloc::{GlobalAlloc, Layout};
use std::ptr::NonNull;
use std::sync::Mutex;

use core_alloc::{Allocator, Misuse, MisuseReport};
use page_provider::CHUNK_SIZE;
use page_provider::linux::MmapProvider;
use platform::host::HostPlatform;

#[test]
fn impossible_requests_return_none() {
    let heap = common::mmap_heap();
    assert!(heap.allocate(usize::MAX, 8).is_none(), "size overflow");
    assert!(heap.allocate(isize::MAX as usize, 8).is_none(), "size rounds past isize::MAX");
    assert!(heap.allocate(isize::MAX as usize - 4096, 4096).is_none(), "more than any machine has");
    assert!(heap.allocate(16, 3).is_none(), "alignment not a power of two");
    assert!(heap.allocate(16, 0).is_none(), "alignment zero");
    assert!(heap.allocate(1, 1 << 62).is_none(), "alignment beyond isize");
    assert!(heap.allocate_zeroed(usize::MAX / 2, 1 << 20).is_none());
    let block = heap.allocate(64, 8).unwrap();
    // SAFETY: a live block; an impossible new size fails and leaves it alone.
    unsafe {
        assert!(heap.reallocate(block, 8, usize::MAX).is_none());
        assert!(heap.reallocate(block, 8, isize::MAX as usize).is_none());
        heap.free(block);
    }
    // GlobalAlloc: a realloc whose new size cannot be had returns null and keeps the block.
    let layout = Layout::from_size_align(64, 8).unwrap();
    // SAFETY: valid layouts; the realloc size is below isize::MAX rounded to 8.
    unsafe {
        let block = heap.alloc(layout);
        block.write_bytes(7, 64);
        assert!(heap.realloc(block, layout, isize::MAX as usize - 7).is_null());
        assert_eq!(*block.add(63), 7);
        heap.dealloc(block, layout);
    }
    assert_eq!(heap.stats().live_allocations(), 0);
}

#[test]
fn zero_size_requests_get_unique_freeable_blocks() {
    let heap = common::mmap_heap();
    let blocks: Vec<NonNull<u8>> = (0..100).map(|_| heap.allocate(0, 1).unwrap()).collect();
    let mut addresses: Vec<usize> = blocks.iter().map(|block| block.as_ptr() as usize).collect();
    addresses.sort_unstable();
    addresses.dedup();
    assert_eq!(addresses.len(), 100, "zero-size blocks must be distinct");
    let aligned = heap.allocate(0, 4096).unwrap();
    assert_eq!(aligned.as_ptr() as usize % 4096, 0);
    // SAFETY: each block is live; usable size is the smallest class, at least one byte.
    unsafe {
        assert!(heap.usable_size(blocks[0]) >= 1);
        for block in blocks {
            heap.free(block);
        }
        heap.deallocate(aligned, 0, 4096);
    }
    assert_eq!(heap.stats().live_allocations(), 0);
}

static REPORTS: Mutex<Vec<MisuseReport>> = Mutex::new(Vec::new());

fn record(report: &MisuseReport) {
    REPORTS.lock().unwrap().push(*report);
}

#[test]
fn misuses_it_can_see_are_reported_and_leave_the_heap_working() {
    let heap: &'static _ = Box::leak(Box::new(
        Allocator::new(MmapProvider::new(), HostPlatform::new()).with_misuse_hook(record),
    ));
    let keep = heap.allocate(100, 8).unwrap();
    // A chunk-aligned pointer the allocator never handed out.
    let foreign = NonNull::new((64 * CHUNK_SIZE) as *mut u8).unwrap();
    // A large run freed twice, and a pointer into the middle of one.
    let large = heap.allocate(200_000, 8).unwrap();
    let other_large = heap.allocate(200_000, 8).unwrap();
    // SAFETY: deliberately wrong frees that the allocator can recognise without touching
    // the memory as a block (the huge path's map lookup, the large run's descriptor).
    unsafe {
        heap.free(foreign);
        heap.free(large);
        heap.free(large);
        heap.free(NonNull::new(other_large.as_ptr().add(8192)).unwrap());
    }
    let kinds: Vec<Misuse> = REPORTS.lock().unwrap().iter().map(|report| report.kind).collect();
    assert_eq!(kinds, [Misuse::ForeignPointer, Misuse::DoubleFree, Misuse::ForeignPointer]);
    // `owns` tells the allocator's memory from anything else without touching it.
    let on_stack = 0u8;
    assert!(heap.owns(keep.as_ptr()) && heap.owns(other_large.as_ptr()));
    assert!(!heap.owns(foreign.as_ptr()) && !heap.owns(&on_stack) && !heap.owns(std::ptr::null()));
    let huge = heap.allocate(5 << 20, 8).unwrap();
    assert!(heap.owns(huge.as_ptr()));
    // Pointers inside a huge block but not at its start were never handed out: freeing one
    // must not read the block's bytes as a chunk header (a chunk-aligned one in a later
    // chunk, and an unaligned one in the first chunk).
    for offset in [4 << 20, 8, 1 << 20] {
        // SAFETY: pointer arithmetic inside a live 5 MiB block.
        let inside = unsafe { huge.as_ptr().add(offset) };
        assert!(!heap.owns(inside), "a pointer {offset:#x} into a huge block counts as a block of ours");
    }
    // SAFETY: a live block of this heap.
    unsafe { heap.free(huge) };
    assert!(!heap.owns(huge.as_ptr()), "a freed huge block is still owned");
    assert_eq!(REPORTS.lock().unwrap()[0].address, foreign.as_ptr() as usize);
    // The heap is intact and still serves requests.
    heap.check_invariants().unwrap();
    let again = heap.allocate(200_000, 8).unwrap();
    // SAFETY: live blocks of this heap.
    unsafe {
        heap.free(again);
        heap.free(other_large);
        heap.free(keep);
    }
    assert_eq!(heap.stats().live_allocations(), 0);
}

#[cfg(feature = "checked")]
static CHECKED_REPORTS: Mutex<Vec<MisuseReport>> = Mutex::new(Vec::new());

#[cfg(feature = "checked")]
fn record_checked(report: &MisuseReport) {
    CHECKED_REPORTS.lock().unwrap().push(*report);
}

/// Checked builds see every misuse of a free: double frees and wrong layouts of small
/// blocks, interior and stack pointers. The heap stays intact and the blocks involved stay
/// live (they are leaked rather than risk corruption).
#[cfg(feature = "checked")]
#[test]
fn checked_builds_report_every_bad_free() {
    let heap: &'static _ = Box::leak(Box::new(
        Allocator::new(MmapProvider::new(), HostPlatform::new()).with_misuse_hook(record_checked),
    ));
    let small = heap.allocate(48, 8).unwrap();
    let other = heap.allocate(48, 8).unwrap();
    let large = heap.allocate(100_000, 8).unwrap();
    let on_stack = 0u64;
    // SAFETY: deliberately wrong frees; checked builds validate before touching anything.
    unsafe {
        heap.deallocate(small, 48, 8);
        heap.deallocate(small, 48, 8);
        heap.deallocate(other, 4000, 8);
        heap.free(NonNull::new(other.as_ptr().add(16)).unwrap());
        heap.free(NonNull::from(&on_stack).cast());
        heap.deallocate(large, 300_000, 8);
    }
    let kinds: Vec<Misuse> = CHECKED_REPORTS.lock().unwrap().iter().map(|report| report.kind).collect();
    assert_eq!(
        kinds,
        [
            Misuse::DoubleFree,
            Misuse::WrongLayout,
            Misuse::ForeignPointer,
            Misuse::ForeignPointer,
            Misuse::WrongLayout
        ]
    );
    heap.check_invariants().unwrap();
    // SAFETY: the blocks whose bad frees were refused are still live.
    unsafe {
        heap.deallocate(other, 48, 8);
        heap.deallocate(large, 100_000, 8);
    }
    assert_eq!(heap.stats().live_allocations(), 0);
    assert_eq!(CHECKED_REPORTS.lock().unwrap().len(), 5, "correct frees were reported");
}
