//! The provider over the `x86_64` crate's `OffsetPageTable`, on simulated physical memory:
//! a boxed array of 4 KiB frames at physical addresses from [`PHYS_BASE`], reached at the
//! box's address. Only page tables are ever touched; the heap's own frames are only mapped,
//! so huge frames can be made-up addresses.

extern crate std;

use std::boxed::Box;
use std::collections::BTreeSet;
use std::vec::Vec;

use x86_64::PhysAddr;
use x86_64::structures::paging::{OffsetPageTable, PageTable, Translate};

use super::*;

const PHYS_BASE: u64 = 0x100_0000;
/// Simulated frames: the PML4, room for tables, and a few chunks' worth of 4 KiB frames.
const FRAMES: usize = 3 * 512 + 64;
/// Where the made-up huge frames start (beyond the simulated memory).
const HUGE_BASE: u64 = 0x1_0000_0000;
/// The heap window: the upper half, not 1 GiB aligned.
const WINDOW: usize = 0xFFFF_C000_0060_0000;

#[repr(C, align(4096))]
struct Frame([u64; 512]);

/// Physical memory and the page tables in it.
struct Memory {
    frames: Box<[Frame]>,
}

impl Memory {
    fn new() -> Self {
        let frames: Vec<Frame> = (0..FRAMES).map(|_| Frame([0; 512])).collect();
        Self { frames: frames.into_boxed_slice() }
    }

    fn offset(&self) -> u64 {
        (self.frames.as_ptr() as u64).wrapping_sub(PHYS_BASE)
    }

    /// The mapper over the PML4 in frame 0.
    fn mapper(&mut self) -> OffsetPageTable<'static> {
        let offset = VirtAddr::new_truncate(self.offset());
        // SAFETY: frame 0 is a zeroed table that lives as long as the test (the box is
        // leaked by `leak`), and `offset` reaches every simulated frame.
        unsafe { OffsetPageTable::new(&mut *(self.frames.as_mut_ptr().cast::<PageTable>()), offset) }
    }
}

/// Hands out simulated frames 1, 2, ... up to `limit`, zeroed (tables must start empty).
struct SmallFrames {
    memory: *mut Frame,
    next: usize,
    limit: usize,
}

// SAFETY: used by one test thread at a time (behind the provider's lock).
unsafe impl Send for SmallFrames {}

// SAFETY: each simulated frame is handed out once.
unsafe impl FrameAllocator<Size4KiB> for SmallFrames {
    fn allocate_frame(&mut self) -> Option<PhysFrame<Size4KiB>> {
        if self.next >= self.limit {
            return None;
        }
        // SAFETY: `next` is below FRAMES, in the simulated memory.
        unsafe { (*self.memory.add(self.next)).0 = [0; 512] };
        self.next += 1;
        Some(PhysFrame::containing_address(PhysAddr::new(PHYS_BASE + (self.next as u64 - 1) * 4096)))
    }
}

/// Hands out `left` made-up 2 MiB frames.
struct HugeFrames {
    next: u64,
    left: usize,
}

// SAFETY: each made-up frame is handed out once.
unsafe impl FrameAllocator<Size2MiB> for HugeFrames {
    fn allocate_frame(&mut self) -> Option<PhysFrame<Size2MiB>> {
        self.left = self.left.checked_sub(1)?;
        self.next += CHUNK_SIZE as u64;
        Some(PhysFrame::containing_address(PhysAddr::new(self.next - CHUNK_SIZE as u64)))
    }
}

type Provider<H> = PagingProvider<OffsetPageTable<'static>, SmallFrames, H, 1>;

/// A provider over fresh memory, with `small` simulated 4 KiB frames (after the PML4) for
/// tables and pages. The memory is leaked: the mapper borrows it for `'static`.
fn provider<H>(chunks: usize, small: usize, huge: H) -> Provider<H>
where
    H: FrameAllocator<Size2MiB> + Send,
{
    let memory = Box::leak(Box::new(Memory::new()));
    let mapper = memory.mapper();
    let frames = SmallFrames { memory: memory.frames.as_mut_ptr(), next: 1, limit: 1 + small };
    let provider = PagingProvider::new(WINDOW, chunks);
    // SAFETY: the simulated tables are nobody else's; the window is empty in them; the
    // frame allocators hand out each frame once.
    unsafe { provider.init(mapper, frames, huge) };
    provider
}

/// The physical frame of every 4 KiB page of the chunk at `base`.
fn frames_of<H>(provider: &Provider<H>, base: NonNull<u8>) -> Vec<u64>
where
    H: FrameAllocator<Size2MiB> + Send,
{
    provider
        .with_paging(|paging| {
            (0..CHUNK_SIZE)
                .step_by(4096)
                .map(|offset| {
                    let virt = VirtAddr::new(base.as_ptr() as u64 + offset as u64 + 8);
                    let phys = paging.mapper.translate_addr(virt).expect("every page of a chunk is mapped");
                    phys.as_u64() - 8
                })
                .collect()
        })
        .unwrap()
}

#[test]
fn small_frames_back_a_chunk_page_by_page_and_chunks_come_back_mapped() {
    let provider = provider(4, 2 * 512 + 16, NoHugeFrames);
    let run = provider.alloc_chunks(2).unwrap();
    assert_eq!(run.base.as_ptr() as usize, WINDOW);
    assert!(!run.zeroed);
    let mut all = BTreeSet::new();
    for chunk in 0..2 {
        // SAFETY: inside the run.
        let base = unsafe { run.base.add(chunk * CHUNK_SIZE) };
        for phys in frames_of(&provider, base) {
            assert!(phys >= PHYS_BASE + 4096 && phys % 4096 == 0);
            assert!(all.insert(phys), "frame {phys:#x} mapped twice");
        }
    }
    assert_eq!(all.len(), 1024);
    assert_eq!(provider.stats(), PagingStats { backed_chunks: 2, huge_chunks: 0, free_chunks: 2 });
    let used = provider.with_paging(|paging| paging.frames.next).unwrap();
    // SAFETY: the run came from this provider and is unused.
    unsafe { provider.free_chunks(run.base, 2) };
    let again = provider.alloc_chunks(1).unwrap();
    assert_eq!(again.base, run.base, "the lowest free chunk again");
    assert_eq!(
        provider.with_paging(|paging| paging.frames.next).unwrap(),
        used,
        "a backed chunk needs no frames"
    );
    assert_eq!(frames_of(&provider, again.base).len(), 512);
}

#[test]
fn huge_frames_back_whole_chunks_until_they_run_out() {
    let provider = provider(4, 512 + 16, HugeFrames { next: HUGE_BASE, left: 2 });
    let run = provider.alloc_chunks(3).unwrap();
    for chunk in 0..3 {
        // SAFETY: inside the run.
        let base = unsafe { run.base.add(chunk * CHUNK_SIZE) };
        let frames = frames_of(&provider, base);
        if chunk < 2 {
            let huge = HUGE_BASE + (chunk * CHUNK_SIZE) as u64;
            let expected: Vec<u64> = (0..512).map(|page| huge + page * 4096).collect();
            assert_eq!(frames, expected, "chunk {chunk} is one 2 MiB page");
        } else {
            assert!(
                frames.iter().all(|&phys| phys < HUGE_BASE),
                "the third chunk falls back to 4 KiB frames"
            );
        }
    }
    assert_eq!(provider.stats(), PagingStats { backed_chunks: 3, huge_chunks: 2, free_chunks: 1 });
}

#[test]
fn out_of_frames_returns_none_and_loses_nothing() {
    // Room for the tables and 300 pages: the first chunk cannot be backed.
    let provider = provider(2, 3 + 300, NoHugeFrames);
    assert!(provider.alloc_chunks(1).is_none());
    assert_eq!(provider.stats().free_chunks, 2, "the failed chunk is free again");
    // The kernel's allocator gets more frames: backing resumes where it stopped.
    provider.with_paging(|paging| paging.frames.limit += 212).unwrap();
    let run = provider.alloc_chunks(1).expect("exactly enough frames now");
    assert_eq!(run.base.as_ptr() as usize, WINDOW);
    let frames: BTreeSet<u64> = frames_of(&provider, run.base).into_iter().collect();
    assert_eq!(frames.len(), 512);
    assert!(provider.alloc_chunks(1).is_none(), "no frame left for the second chunk");
    assert!(provider.alloc_chunks(2).is_none(), "more chunks than the window has free");
    assert!(provider.alloc_chunks(0).is_none());
}

#[test]
fn nothing_before_init_and_the_window_is_its_limit() {
    let provider: Provider<NoHugeFrames> = PagingProvider::new(WINDOW, 2);
    assert!(provider.alloc_chunks(1).is_none());
    assert!(provider.with_paging(|_| ()).is_none());
    let provider = provider_with_window(2);
    assert!(provider.alloc_chunks(3).is_none());
    assert_eq!(provider.window(), WINDOW..WINDOW + 2 * CHUNK_SIZE);
}

fn provider_with_window(chunks: usize) -> Provider<HugeFrames> {
    provider(chunks, 64, HugeFrames { next: HUGE_BASE, left: 8 })
}

#[test]
fn freed_chunks_are_handed_out_again_before_fresh_frames_are_taken() {
    // Frames for two chunks and their tables (a PDPT, a page directory, a page table each).
    let provider = provider(4, 4 + 2 * 512, NoHugeFrames);
    let first = provider.alloc_chunks(1).unwrap();
    let second = provider.alloc_chunks(1).unwrap();
    // SAFETY: the first chunk came from this provider and is unused.
    unsafe { provider.free_chunks(first.base, 1) };
    // A single chunk comes from the backed free one; a run of 2 needs frames there are none
    // of.
    assert_eq!(provider.alloc_chunks(1).unwrap().base, first.base);
    assert!(provider.alloc_chunks(2).is_none());
    // SAFETY: both chunks came from this provider and are unused.
    unsafe {
        provider.free_chunks(first.base, 1);
        provider.free_chunks(second.base, 1);
    }
    let run = provider.alloc_chunks(2).expect("the two backed chunks form a run");
    assert_eq!(run.base, first.base);
    assert_eq!(provider.stats().backed_chunks, 2);
}
