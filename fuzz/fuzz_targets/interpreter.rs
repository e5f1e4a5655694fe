//! Feeds the input to the testkit's interpreter, which checks every block against its
//! shadow model (alignment, disjointness, contents kept across frees and reallocations of
//! other blocks) and the heap's invariants; any failure is a crash.
//!
//! The first byte picks the heap:
//! - 0 mod 4: a fresh allocator over a fixed region of 8 chunks (reused memory, not zeroed:
//!   zeroed allocations must zero it), so a crash reproduces from its input alone;
//! - 2 mod 4: a fresh allocator in compact mode over a span of the same memory, of
//!   16 KiB to 4 MiB (the second byte) at a 16-byte offset (the third byte): the fit heap,
//!   one-page slabs and their fallbacks;
//! - odd: one allocator over the simulation provider (16 chunks) that lives as long as the
//!   process, as a real heap does: huge reallocations remap, and each input starts from the
//!   state (cached chunks, partly used slabs) the ones before it left.
#![no_main]

use std::sync::{Mutex, OnceLock};

use core_alloc::Allocator;
use core_alloc::testkit::{Interpreter, SimProvider, TestPlatform};
use libfuzzer_sys::fuzz_target;
use page_provider::CHUNK_SIZE;
use page_provider::fixed::FixedRegion;

const REGION_CHUNKS: usize = 8;
const SIM_CHUNKS: usize = 16;

/// The fixed region's memory: taken once (leaked), lent to one fresh allocator at a time.
struct Region(*mut u8);

// SAFETY: the pointer is only a record of the leaked buffer; the mutex around `Region` lends
// it to one allocator at a time.
unsafe impl Send for Region {}

fn region() -> &'static Mutex<Region> {
    static REGION: OnceLock<Mutex<Region>> = OnceLock::new();
    REGION.get_or_init(|| {
        let bytes = vec![0u8; (REGION_CHUNKS + 1) * CHUNK_SIZE].leak();
        Mutex::new(Region(bytes.as_mut_ptr()))
    })
}

fn sim_heap() -> &'static Allocator<SimProvider, TestPlatform> {
    static HEAP: OnceLock<Allocator<SimProvider, TestPlatform>> = OnceLock::new();
    HEAP.get_or_init(|| Allocator::new(SimProvider::new(SIM_CHUNKS), TestPlatform::new()))
}

fn run<P: page_provider::PageProvider, Pl: platform::Platform>(heap: &Allocator<P, Pl>, program: &[u8]) {
    let mut interpreter = Interpreter::new(heap);
    if let Err(failure) = interpreter.run(program) {
        panic!("the heap broke its model after {} operations: {failure}", interpreter.operations);
    }
    let stats = heap.stats();
    assert_eq!(stats.live_allocations(), 0, "blocks left live after freeing all: {stats}");
    assert_eq!(stats.live_bytes(), 0, "bytes left live after freeing all: {stats}");
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, program)) = data.split_first() else { return };
    if mode % 4 == 2 {
        let [size, offset, program @ ..] = program else { return };
        let region = region().lock().unwrap();
        let len = (usize::from(*size) + 1) * 16 * 1024;
        // SAFETY: as below; the span lies inside the leaked buffer (at most 4 KiB + 4 MiB).
        let provider: FixedRegion =
            unsafe { FixedRegion::new(region.0.add(usize::from(*offset) * 16), len, false) };
        let heap = Box::new(Allocator::new(provider, TestPlatform::new()));
        // The mode is decided by the first allocation, which may fail in a tiny span.
        if let Some(first) = heap.allocate(1, 1) {
            // SAFETY: a live block of this heap, freed once.
            unsafe { heap.free(first) };
        }
        assert!(heap.is_compact(), "a span of {len} bytes did not run in compact mode");
        run(&heap, program);
        heap.collect();
        assert_eq!(heap.check_invariants(), Ok(()));
        drop(heap);
        drop(region);
    } else if mode % 2 == 0 {
        let region = region().lock().unwrap();
        // SAFETY: the leaked buffer is lent to this allocator alone while the lock is held;
        // the allocator (and every block from it) is gone before the lock is dropped. The
        // buffer holds what earlier inputs left, so it is not zeroed.
        let provider: FixedRegion =
            unsafe { FixedRegion::new(region.0, (REGION_CHUNKS + 1) * CHUNK_SIZE, false) };
        let heap = Box::new(Allocator::new(provider, TestPlatform::new()));
        run(&heap, program);
        drop(heap);
        drop(region);
    } else {
        run(sim_heap(), program);
    }
});
