//! Random operation sequences checked against a shadow model of the heap (the testkit's
//! interpreter): proptest generates and shrinks the byte programs; fixed seeds run long
//! programs, over a small fixed region so that out-of-memory paths are exercised too.

mod common;

use core_alloc::testkit::Interpreter;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_programs_keep_every_block_intact(program in proptest::collection::vec(any::<u8>(), 0..3000)) {
        let heap = common::mmap_heap();
        let mut interpreter = Interpreter::new(heap);
        prop_assert_eq!(interpreter.run(&program), Ok(()));
        let stats = heap.stats();
        prop_assert_eq!(stats.live_allocations(), 0);
        prop_assert_eq!(stats.live_bytes(), 0);
    }
}

#[test]
fn long_programs_over_a_small_region_survive_running_out_of_memory() {
    let mut rng = common::Rng(0xC0FF_EE00_1234_5678);
    for _ in 0..4 {
        // 24 chunks (48 MiB): big requests in the programs fill it up.
        let heap = common::region_heap(24);
        let program: Vec<u8> = (0..200_000).map(|_| rng.next() as u8).collect();
        let mut interpreter = Interpreter::new(heap);
        assert_eq!(interpreter.run(&program), Ok(()));
        assert!(interpreter.refusals > 0, "the region never ran out: the test lost its point");
        let stats = heap.stats();
        assert_eq!(stats.live_allocations(), 0, "{stats}");
        assert!(heap.provider().outstanding() <= 24);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// The same programs over compact mode: a span of 64 KiB to 2 MiB at any 16-byte offset, so
    /// the fit heap, slab pages and their fallbacks all run out of room and recover.
    #[test]
    fn random_programs_over_a_compact_span(
        program in proptest::collection::vec(any::<u8>(), 0..3000),
        kib in 64usize..2048,
        offset in 0usize..64,
    ) {
        let heap = common::compact_heap(kib * 1024, offset * 16);
        let mut interpreter = Interpreter::new(heap);
        prop_assert_eq!(interpreter.run(&program), Ok(()));
        // A program may allocate nothing (the empty one): one block decides the mode then.
        let block = heap.allocate(8, 8);
        prop_assert!(heap.is_compact());
        if let Some(block) = block {
            // SAFETY: a live block of this heap.
            unsafe { heap.free(block) };
        }
        heap.collect();
        let stats = heap.stats();
        prop_assert_eq!(stats.live_allocations(), 0);
        prop_assert_eq!(stats.heap.region.slab_pages, 0);
        prop_assert_eq!(heap.check_invariants(), Ok(()));
    }
}

#[test]
fn long_programs_over_a_compact_span_survive_running_out_of_memory() {
    let mut rng = common::Rng(0x5EED_0FC0_4DAC_7000);
    for kib in [64, 256, 1024, 4096] {
        let heap = common::compact_heap(kib * 1024, 48);
        let program: Vec<u8> = (0..200_000).map(|_| rng.next() as u8).collect();
        let mut interpreter = Interpreter::new(heap);
        assert_eq!(interpreter.run(&program), Ok(()));
        assert!(interpreter.refusals > 0, "{kib} KiB never ran out: the test lost its point");
        heap.collect();
        let stats = heap.stats();
        assert_eq!(stats.live_allocations(), 0, "{stats}");
        assert_eq!(heap.check_invariants(), Ok(()));
    }
}
