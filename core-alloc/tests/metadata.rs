//! Metadata (arenas, chunk-map nodes) in runs of slab chunks rather than a chunk of its own
//! (`core-alloc/src/heap/meta.rs`): a heap of one chunk holds its metadata and its blocks
//! there; the metadata of many arenas gathers in one chunk, whose room other runs take only
//! when the provider has no chunk left. (A chunk obtained for metadata while a record is
//! being made: `allocator.rs`, `a_chunk_obtained_for_metadata_during_a_record_is_recorded_too`.)

use std::ptr::NonNull;

use core_alloc::Allocator;
use core_alloc::config::{CHUNK_SIZE, PAGE};
use core_alloc::testkit::{LIVE_BITS_CHUNKS, SimProvider, TEST_SLOTS, TestPlatform, USABLE_PAGES};

type Heap = Allocator<SimProvider, TestPlatform>;

fn heap(chunks: usize) -> Heap {
    Allocator::new(SimProvider::new(chunks + LIVE_BITS_CHUNKS), TestPlatform::new())
}

fn free_all(heap: &Heap, blocks: Vec<(NonNull<u8>, usize)>) {
    for (block, size) in blocks {
        // SAFETY: each block is live with this size and freed once.
        unsafe { heap.deallocate(block, size, 8) };
    }
}

/// The heap's chunks kept for good: a heap of one chunk (a kernel's smallest chunk-mode heap,
/// a bounded region's last chunk) used to need a second one for its metadata; now the
/// metadata takes a run of it and blocks take the rest.
#[test]
fn a_heap_of_one_chunk_keeps_its_metadata_and_its_blocks_there() {
    let heap = heap(1);
    TestPlatform::enter(0);
    let mut blocks = Vec::new();
    let mut size = 8;
    while let Some(block) = heap.allocate(size, 8) {
        // SAFETY: a live block of `size` bytes.
        unsafe { block.as_ptr().write_bytes(0x5A, size) };
        blocks.push((block, size));
        size = if size >= 4096 { 8 } else { size * 2 };
    }
    let stats = heap.stats();
    assert_eq!((stats.heap.slab_chunks, stats.heap.meta_chunks), (1, 1 + LIVE_BITS_CHUNKS), "{stats}");
    // The metadata is a run (the arena and the chunk's map nodes), not the chunk.
    assert!(stats.heap.meta_bytes <= 64 * 1024, "{stats}");
    let used = stats.heap.slab_bytes + stats.heap.meta_bytes;
    assert!(used >= (USABLE_PAGES - 16) * PAGE, "only {used} bytes of the chunk in use: {stats}");
    assert!(stats.live_bytes() as usize >= CHUNK_SIZE * 3 / 4, "{stats}");
    free_all(&heap, blocks);
    heap.collect();
    let stats = heap.stats();
    assert!(stats.holds_nothing_but_metadata(), "{stats}");
    assert_eq!(heap.provider().outstanding(), 1 + LIVE_BITS_CHUNKS);
    heap.check_invariants().unwrap();
}

/// Every slot's arena is metadata; with the provider's chunks to spare, other runs leave the
/// chunk that holds it alone, so the next arena finds room there: all of it in one chunk,
/// however many chunks the blocks take.
#[test]
fn the_metadata_of_many_arenas_gathers_in_one_chunk() {
    let heap = heap(64);
    let mut blocks = Vec::new();
    for slot in 0..TEST_SLOTS {
        TestPlatform::enter(slot);
        // Two chunks' worth of slabs and large runs per slot.
        for index in 0..2_000 {
            let size = if index % 10 == 0 { 40 * 1024 } else { 8 + index % 2000 };
            blocks.push((heap.allocate(size, 8).expect("the provider has chunks"), size));
        }
    }
    let stats = heap.stats();
    assert_eq!(stats.arenas, TEST_SLOTS);
    assert!(stats.heap.slab_chunks >= 8, "{stats}");
    assert_eq!(stats.heap.meta_chunks, 1 + LIVE_BITS_CHUNKS, "metadata spread over chunks: {stats}");
    for slot in 0..TEST_SLOTS {
        TestPlatform::enter(slot);
        heap.collect();
    }
    TestPlatform::enter(0);
    free_all(&heap, blocks);
    for slot in 0..TEST_SLOTS {
        TestPlatform::enter(slot);
        heap.collect();
    }
    let stats = heap.stats();
    assert!(stats.holds_nothing_but_metadata(), "{stats}");
    assert_eq!(stats.heap.slab_chunks, 1, "{stats}");
    heap.check_invariants().unwrap();
}

/// The room of the chunk holding metadata is the last resort: runs go to other chunks while
/// the provider has any (a heap of three chunks fills the two others first), then there.
#[test]
fn the_chunk_holding_metadata_takes_other_runs_only_when_the_provider_has_no_chunk_left() {
    const RUN: usize = 64 * 1024; // 16 pages
    let heap = heap(3);
    TestPlatform::enter(0);
    let first = heap.allocate(RUN, 8).unwrap();
    let mut blocks = vec![(first, RUN)];
    let stats = heap.stats();
    assert_eq!((stats.heap.slab_chunks, stats.heap.meta_chunks), (2, 1 + LIVE_BITS_CHUNKS), "{stats}");
    let runs_per_chunk = USABLE_PAGES / (RUN / PAGE);
    // The run's chunk and the chunk after it fill before the metadata's chunk takes a run.
    let chunk_of = |block: NonNull<u8>| block.as_ptr() as usize & !(CHUNK_SIZE - 1);
    let mut chunks = vec![chunk_of(first)];
    while let Some(block) = heap.allocate(RUN, 8) {
        blocks.push((block, RUN));
        if !chunks.contains(&chunk_of(block)) {
            chunks.push(chunk_of(block));
        }
        if chunks.len() == 3 {
            break;
        }
    }
    assert_eq!(chunks.len(), 3, "the metadata's chunk took no run when nothing else had room");
    assert_eq!(blocks.len(), 2 * runs_per_chunk + 1, "the metadata's chunk took a run too early");
    while let Some(block) = heap.allocate(RUN, 8) {
        blocks.push((block, RUN));
    }
    let stats = heap.stats();
    assert!(stats.heap.slab_chunks == 3 && stats.heap.provider_refusals > 0, "{stats}");
    assert!(blocks.len() >= 3 * runs_per_chunk - 2, "{} runs in three chunks: {stats}", blocks.len());
    free_all(&heap, blocks);
    heap.collect();
    assert!(heap.stats().holds_nothing_but_metadata());
    heap.check_invariants().unwrap();
}
