//! The provider over an `aarch64-paging` mapping on the host: tables are 4 KiB blocks of host
//! memory reached at their own addresses (as in an identity-mapped kernel), heap frames are
//! made-up physical addresses that nothing dereferences, and every check reads the tables
//! back with `walk_range`.

extern crate std;

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::vec::Vec;

use ::aarch64_paging::paging::{PageTable, VaRange};

use super::*;

/// Tables from the host's allocator, identity "mapped"; counts what it handed out.
#[derive(Default)]
struct HostTables {
    live: usize,
}

impl Translation<El1Attributes> for HostTables {
    fn allocate_table(&mut self) -> (NonNull<PageTable<El1Attributes>>, PhysicalAddress) {
        let layout = Layout::new::<PageTable<El1Attributes>>();
        // SAFETY: a non-zero size; zeroed memory is an empty table.
        let table = NonNull::new(unsafe { alloc_zeroed(layout) }.cast()).expect("host memory");
        self.live += 1;
        (table, PhysicalAddress(table.as_ptr() as usize))
    }

    unsafe fn deallocate_table(&mut self, table: NonNull<PageTable<El1Attributes>>) {
        self.live -= 1;
        // SAFETY: allocated in `allocate_table` with this layout.
        unsafe { dealloc(table.as_ptr().cast(), Layout::new::<PageTable<El1Attributes>>()) };
    }

    fn physical_to_virtual(&self, pa: PhysicalAddress) -> NonNull<PageTable<El1Attributes>> {
        NonNull::new(pa.0 as *mut PageTable<El1Attributes>).expect("a table address")
    }
}

/// A frame allocator with a budget of 2 MiB frames and of 4 KiB frames, from made-up
/// physical addresses.
struct Budget {
    huge: usize,
    small: usize,
    next_huge: u64,
    next_small: u64,
}

impl Budget {
    fn new(huge: usize, small: usize) -> Budget {
        Budget { huge, small, next_huge: 0x1_0000_0000, next_small: 0x8000_0000 }
    }
}

// SAFETY: test frames are never dereferenced; each is returned once.
unsafe impl HeapFrames for Budget {
    fn allocate_2m(&mut self) -> Option<u64> {
        self.huge = self.huge.checked_sub(1)?;
        self.next_huge += CHUNK_SIZE as u64;
        Some(self.next_huge - CHUNK_SIZE as u64)
    }

    fn allocate_4k(&mut self) -> Option<u64> {
        self.small = self.small.checked_sub(1)?;
        self.next_small += PAGE as u64;
        Some(self.next_small - PAGE as u64)
    }
}

const LOWER_BASE: usize = 0x40_0000_0000;
const UPPER_BASE: usize = 0xFFFF_FF80_0000_0000;

fn provider(base: usize, range: VaRange, frames: Budget) -> PagingProvider<HostTables, Budget, 1> {
    let provider = PagingProvider::new(base, 16);
    let mapping = Mapping::with_asid_and_va_range(HostTables::default(), 0, 1, El1And0, range);
    let paging = Paging { mapping, frames, attributes: heap_attributes(1) };
    // SAFETY: host tables that no CPU walks; the window is unmapped.
    assert!(unsafe { provider.init(paging) });
    provider
}

/// Every leaf of `chunk`: (virtual address, physical address, size).
fn leaves(provider: &PagingProvider<HostTables, Budget, 1>, chunk: usize) -> Vec<(usize, usize, usize)> {
    provider
        .with_paging(|paging| {
            let mut found = Vec::new();
            let region = MemoryRegion::new(chunk, chunk + CHUNK_SIZE);
            paging
                .mapping
                .walk_range(&region, &mut |region, descriptor, _| {
                    if descriptor.is_valid() {
                        assert_eq!(descriptor.flags() & heap_attributes(1), heap_attributes(1));
                        found.push((region.start().0, descriptor.output_address().0, region.len()));
                    }
                    Ok(())
                })
                .unwrap();
            found
        })
        .unwrap()
}

#[test]
fn chunks_are_blocks_while_2_mib_frames_last_then_pages() {
    for (base, range) in [(LOWER_BASE, VaRange::Lower), (UPPER_BASE, VaRange::Upper)] {
        let provider = provider(base, range, Budget::new(2, 2 * PAGES_PER_CHUNK));
        let run = provider.alloc_chunks(3).unwrap();
        let start = run.base.as_ptr() as usize;
        assert_eq!(start, base);
        assert!(!run.zeroed);
        // Two blocks, then one chunk of 512 pages.
        for chunk in 0..2 {
            let found = leaves(&provider, start + chunk * CHUNK_SIZE);
            assert_eq!(found.len(), 1, "chunk {chunk} is one block");
            assert_eq!(found[0].2, CHUNK_SIZE);
            assert_eq!(found[0].1 % CHUNK_SIZE, 0);
        }
        let pages = leaves(&provider, start + 2 * CHUNK_SIZE);
        assert_eq!(pages.len(), PAGES_PER_CHUNK);
        assert!(pages.iter().all(|&(_, _, size)| size == PAGE));
        assert_eq!(provider.stats(), PagingStats { backed_chunks: 3, block_chunks: 2, free_chunks: 13 });
        // The third page of the 4 KiB chunk maps the third frame handed out.
        assert_eq!(pages[2], (start + 2 * CHUNK_SIZE + 2 * PAGE, 0x8000_0000 + 2 * PAGE, PAGE));
    }
}

#[test]
fn running_out_mid_chunk_resumes_where_it_stopped_and_backed_chunks_are_reused() {
    let provider = provider(LOWER_BASE, VaRange::Lower, Budget::new(0, PAGES_PER_CHUNK + 100));
    let first = provider.alloc_chunks(1).unwrap();
    assert!(provider.alloc_chunks(1).is_none(), "only 100 pages left for a 512-page chunk");
    assert_eq!(leaves(&provider, LOWER_BASE + CHUNK_SIZE).len(), 100, "the pages mapped so far stay");
    provider.with_paging(|paging| paging.frames.small = PAGES_PER_CHUNK - 100);
    let second = provider.alloc_chunks(1).unwrap();
    assert_eq!(second.base.as_ptr() as usize, LOWER_BASE + CHUNK_SIZE);
    let pages = leaves(&provider, LOWER_BASE + CHUNK_SIZE);
    assert_eq!(pages.len(), PAGES_PER_CHUNK, "the missing pages only were mapped");
    let mut frames: Vec<usize> = pages.iter().map(|&(_, phys, _)| phys).collect();
    frames.sort_unstable();
    frames.dedup();
    assert_eq!(frames.len(), PAGES_PER_CHUNK, "no frame mapped twice");

    // Given back and taken again: the same chunk, no frame taken.
    // SAFETY: both runs came from this provider and are unused.
    unsafe {
        provider.free_chunks(first.base, 1);
        provider.free_chunks(second.base, 1);
    }
    assert_eq!(provider.stats().free_chunks, 16);
    let again = provider.alloc_chunks(2).unwrap();
    assert_eq!(again.base.as_ptr() as usize, LOWER_BASE);
    assert_eq!(provider.with_paging(|paging| paging.frames.small), Some(0));
    assert_eq!(provider.stats().backed_chunks, 2);
}

#[test]
fn bad_requests_and_windows_are_refused() {
    let provider = provider(LOWER_BASE, VaRange::Lower, Budget::new(16, 0));
    assert!(provider.alloc_chunks(0).is_none());
    assert!(provider.alloc_chunks(17).is_none());
    let all = provider.alloc_chunks(16).unwrap();
    assert!(provider.alloc_chunks(1).is_none(), "the window is full");
    // SAFETY: the run came from this provider and is unused.
    unsafe { provider.free_chunks(all.base, 16) };

    // A window beyond the 512 GiB a level-1 root covers, and an upper window for a lower
    // mapping, are refused at init.
    for (base, range) in
        [(1usize << 40, VaRange::Lower), (UPPER_BASE, VaRange::Lower), (LOWER_BASE, VaRange::Upper)]
    {
        let provider: PagingProvider<HostTables, Budget, 1> = PagingProvider::new(base, 4);
        let mapping = Mapping::with_asid_and_va_range(HostTables::default(), 0, 1, El1And0, range);
        let paging = Paging { mapping, frames: Budget::new(4, 0), attributes: heap_attributes(1) };
        // SAFETY: as in `provider`.
        assert!(!unsafe { provider.init(paging) }, "window {base:#x} for {range:?}");
        assert!(provider.alloc_chunks(1).is_none());
    }
}
