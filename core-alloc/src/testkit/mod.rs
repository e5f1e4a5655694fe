//! The test toolkit: a shadow model of the heap and an interpreter of operation sequences
//! encoded as bytes, shared by the property tests, fuzz targets and Miri runs.
//!
//! [`Interpreter::run`] decodes bytes into allocations, zeroed allocations, frees and
//! reallocations of sizes from 1 byte to several MiB and alignments up to 2 MiB, applies
//! them, and checks after each one that every live block is aligned, disjoint from every
//! other, and still holds the bytes written into it. Any byte string is a valid program, so
//! fuzzers and shrinking property tests can feed it directly.
//!
//! Built with the `testkit` feature (it uses `std`).

use std::collections::BTreeMap;
use std::format;
use std::ptr::NonNull;
use std::string::String;
use std::vec::Vec;

use page_provider::PageProvider;
use platform::Platform;

use crate::Allocator;

mod sim;
pub use sim::{SimProvider, TEST_SLOTS, TestPlatform};

/// Pages of a slab chunk that runs can use (after its header), for tests that fill chunks
/// exactly.
pub const USABLE_PAGES: usize = crate::chunk::USABLE_PAGES;
/// Chunks a heap keeps for checked builds' live-bit tables before its first slab chunk (a
/// table per slab chunk, from chunks of their own): a test heap of N slab chunks needs this
/// many more from its provider.
pub const LIVE_BITS_CHUNKS: usize = if cfg!(feature = "checked") { 1 } else { 0 };

/// The model checker the `shuttle` feature builds the allocator for (`tests/model_check.rs`).
#[cfg(feature = "shuttle")]
pub use shuttle;

/// A live block in the model.
#[derive(Debug, Clone, Copy)]
struct Live {
    address: usize,
    size: usize,
    align: usize,
    /// Seeds the pattern written into the block.
    seed: u8,
}

/// The byte at `offset` of a block filled from `seed`.
fn pattern(seed: u8, offset: usize) -> u8 {
    seed.wrapping_add((offset as u8).wrapping_mul(31)).wrapping_add((offset >> 8) as u8)
}

/// Offsets checked in a block: all of small blocks; ends and one byte a page in big ones.
fn checked_offsets(size: usize) -> impl Iterator<Item = usize> {
    let dense = size.min(4096);
    let sparse = (dense..size).step_by(4093);
    (0..dense).chain(sparse).chain(size.saturating_sub(64).max(dense)..size)
}

/// Reads an operation program and checks the heap against its model.
pub struct Interpreter<'a, P, Pl> {
    heap: &'a Allocator<P, Pl>,
    live: Vec<Live>,
    /// Start -> end of every live block, to check disjointness.
    spans: BTreeMap<usize, usize>,
    next_seed: u8,
    /// Operations that returned no memory (out of memory is allowed, not a failure).
    pub refusals: usize,
    /// Operations applied.
    pub operations: usize,
}

/// Pulls bytes from the program, yielding zeros once it is used up.
struct Program<'b> {
    bytes: &'b [u8],
    position: usize,
}

impl Program<'_> {
    fn byte(&mut self) -> u8 {
        let byte = self.bytes.get(self.position).copied().unwrap_or(0);
        self.position += 1;
        byte
    }

    fn word(&mut self) -> usize {
        usize::from(self.byte()) | usize::from(self.byte()) << 8 | usize::from(self.byte()) << 16
    }

    fn done(&self) -> bool {
        self.position >= self.bytes.len()
    }

    /// A size: mostly small, sometimes large, rarely huge.
    fn size(&mut self) -> usize {
        let word = self.word();
        match self.byte() % 16 {
            0..=8 => 1 + word % 256,
            9..=12 => 1 + word % 32_768,
            13..=14 => 1 + word % (1 << 20),
            _ => 1 + word * 4 % (6 << 20),
        }
    }

    /// An alignment: mostly natural, sometimes up to 2 MiB.
    fn align(&mut self) -> usize {
        let choice = self.byte();
        match choice % 8 {
            0..=5 => 1 << (choice / 8 % 5),
            _ => 1 << (choice / 8 % 22),
        }
    }
}

impl<'a, P: PageProvider, Pl: Platform> Interpreter<'a, P, Pl> {
    /// An interpreter driving `heap`, which should start with nothing live.
    pub fn new(heap: &'a Allocator<P, Pl>) -> Self {
        Self { heap, live: Vec::new(), spans: BTreeMap::new(), next_seed: 1, refusals: 0, operations: 0 }
    }

    /// Runs `bytes` as a program, then frees everything; returns the first failure.
    pub fn run(&mut self, bytes: &[u8]) -> Result<(), String> {
        let mut program = Program { bytes, position: 0 };
        while !program.done() {
            self.step(&mut program)?;
        }
        self.free_all()
    }

    /// Frees every live block, checking each.
    pub fn free_all(&mut self) -> Result<(), String> {
        while !self.live.is_empty() {
            self.free(self.live.len() - 1)?;
        }
        self.heap.check_invariants().map_err(String::from)
    }

    fn step(&mut self, program: &mut Program<'_>) -> Result<(), String> {
        self.operations += 1;
        match program.byte() % 8 {
            0..=2 => {
                let (size, align) = (program.size(), program.align());
                let block = self.heap.allocate(size, align);
                self.admit(block, size, align, false)
            }
            3 => {
                let (size, align) = (program.size(), program.align());
                let block = self.heap.allocate_zeroed(size, align);
                self.admit(block, size, align, true)
            }
            4 | 5 if !self.live.is_empty() => {
                let index = program.word() % self.live.len();
                self.free(index)
            }
            6 if !self.live.is_empty() => {
                let index = program.word() % self.live.len();
                let size = program.size();
                self.reallocate(index, size)
            }
            7 => self.heap.check_invariants().map_err(String::from),
            _ => Ok(()),
        }
    }

    /// Checks a new block and records it, filled with its pattern.
    fn admit(
        &mut self,
        block: Option<NonNull<u8>>,
        size: usize,
        align: usize,
        zeroed: bool,
    ) -> Result<(), String> {
        let Some(block) = block else {
            self.refusals += 1;
            return Ok(());
        };
        let address = block.as_ptr() as usize;
        if !address.is_multiple_of(align) {
            return Err(format!("block {address:#x} of {size} bytes is not aligned to {align}"));
        }
        if zeroed {
            for offset in checked_offsets(size) {
                // SAFETY: the block is live with `size` bytes.
                let byte = unsafe { *block.as_ptr().add(offset) };
                if byte != 0 {
                    return Err(format!("zeroed block {address:#x} has {byte:#x} at offset {offset}"));
                }
            }
        }
        self.claim_span(address, size)?;
        let seed = self.next_seed;
        self.next_seed = self.next_seed.wrapping_add(37);
        // SAFETY: the block is live with `size` bytes, ours to write.
        unsafe { fill(block.as_ptr(), size, seed) };
        self.live.push(Live { address, size, align, seed });
        Ok(())
    }

    fn claim_span(&mut self, address: usize, size: usize) -> Result<(), String> {
        let end = address + size;
        if let Some((&start, &other_end)) = self.spans.range(..end).next_back()
            && other_end > address
        {
            return Err(format!(
                "block {address:#x}..{end:#x} overlaps live block {start:#x}..{other_end:#x}"
            ));
        }
        self.spans.insert(address, end);
        Ok(())
    }

    fn verify(&self, live: &Live) -> Result<(), String> {
        self.verify_prefix(live, live.size)
    }

    /// Checks the pattern of `live` (written over its size) in its first `length` bytes.
    fn verify_prefix(&self, live: &Live, length: usize) -> Result<(), String> {
        for offset in checked_offsets(live.size).filter(|&offset| offset < length) {
            // SAFETY: the model's live blocks are live in the heap with `size` bytes.
            let byte = unsafe { *(live.address as *const u8).add(offset) };
            if byte != pattern(live.seed, offset) {
                return Err(format!(
                    "block {:#x} ({} bytes) changed at offset {offset}: {byte:#x}, expected {:#x}",
                    live.address,
                    live.size,
                    pattern(live.seed, offset)
                ));
            }
        }
        Ok(())
    }

    fn free(&mut self, index: usize) -> Result<(), String> {
        let live = self.live.swap_remove(index);
        self.verify(&live)?;
        self.spans.remove(&live.address);
        // SAFETY: a live block of this heap with this size and alignment.
        unsafe {
            self.heap.deallocate(NonNull::new_unchecked(live.address as *mut u8), live.size, live.align)
        };
        Ok(())
    }

    fn reallocate(&mut self, index: usize, new_size: usize) -> Result<(), String> {
        let live = self.live[index];
        self.verify(&live)?;
        // SAFETY: a live block of this heap with this alignment.
        let moved = unsafe {
            self.heap.reallocate(NonNull::new_unchecked(live.address as *mut u8), live.align, new_size)
        };
        let Some(moved) = moved else {
            self.refusals += 1;
            return Ok(());
        };
        self.spans.remove(&live.address);
        let moved_live = Live { address: moved.as_ptr() as usize, ..live };
        self.verify_prefix(&moved_live, new_size)
            .map_err(|why| format!("after realloc to {new_size}: {why}"))?;
        if !moved_live.address.is_multiple_of(live.align) {
            return Err(format!("realloc lost alignment {}", live.align));
        }
        self.claim_span(moved_live.address, new_size)?;
        // SAFETY: the block is live with `new_size` bytes.
        unsafe { fill(moved.as_ptr(), new_size, live.seed) };
        self.live[index] = Live { size: new_size, ..moved_live };
        Ok(())
    }
}

/// Writes the pattern of `seed` over `size` bytes at `block` (checked offsets only, to keep
/// big blocks cheap).
///
/// # Safety
///
/// `block` is valid for `size` bytes of writes.
unsafe fn fill(block: *mut u8, size: usize, seed: u8) {
    for offset in checked_offsets(size) {
        // SAFETY: the caller's promise.
        unsafe { *block.add(offset) = pattern(seed, offset) };
    }
}
