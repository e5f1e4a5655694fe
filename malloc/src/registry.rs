//! Which chunks are ours: the page provider of the C allocator, anonymous mmap with a record
//! of every chunk it has handed out and not taken back.
//!
//! `free`, `realloc` and `malloc_usable_size` look a pointer's chunk up here before the core
//! follows it into a chunk header: a pointer in no chunk of ours (from another allocator, the
//! stack, a static or a mapping of the program's) is reported and never dereferenced.
//!
//! The record is a bit per 2 MiB chunk of the whole 64-bit address space (no 48-bit
//! assumption) in a three-level radix tree: a static root, middle nodes and leaves mapped
//! from the system as the heap spreads and never unmapped. A lookup is three dependent loads
//! and touches nothing but the tree.
//!
//! Concurrency: the core calls the provider under its central lock, so bits change one run
//! at a time; they are still set and cleared with atomic read-modify-writes (bits of a word
//! belong to different chunks) and nodes are installed with a compare-exchange, so the tree
//! is consistent at every instant for lock-free readers. A bit is set before its chunk's
//! memory is handed out and cleared before it is unmapped.

use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

use page_provider::linux::{MmapProvider, MmapStats};
use page_provider::{CHUNK_SHIFT, CHUNK_SIZE, Capabilities, Chunks, PageProvider};

/// Bits of chunk index resolved by a leaf: 2^15 bits, a 4 KiB leaf covering 64 GiB.
const LEAF_BITS: u32 = 15;
/// Bits resolved by a middle node: 2^15 pointers, 256 KiB of address space (pages of it
/// are backed only where touched) covering 2 PiB.
const MIDDLE_BITS: u32 = 15;
/// Bits resolved by the root (64 - 21 - 30 = 13): 8192 pointers, 64 KiB of zeroed static.
const ROOT_BITS: u32 = usize::BITS - CHUNK_SHIFT - MIDDLE_BITS - LEAF_BITS;

const LEAF_WORDS: usize = (1 << LEAF_BITS) / 64;
type Leaf = [AtomicU64; LEAF_WORDS];
type Middle = [AtomicPtr<Leaf>; 1 << MIDDLE_BITS];

/// A set of chunks; see the module documentation.
pub(crate) struct ChunkSet {
    root: [AtomicPtr<Middle>; 1 << ROOT_BITS],
}

/// Where a chunk's bit lives: root index, middle index, leaf word, bit in the word.
fn path(address: usize) -> (usize, usize, usize, u64) {
    let chunk = address >> CHUNK_SHIFT;
    let in_leaf = chunk & ((1 << LEAF_BITS) - 1);
    (
        chunk >> (LEAF_BITS + MIDDLE_BITS),
        (chunk >> LEAF_BITS) & ((1 << MIDDLE_BITS) - 1),
        in_leaf / 64,
        1 << (in_leaf % 64),
    )
}

/// Maps a zeroed node of `T`'s size straight from the system (never through `malloc`).
fn map_node<T>() -> Option<NonNull<T>> {
    // SAFETY: a fresh private anonymous mapping at an address of the kernel's choosing
    // touches no existing memory.
    let mapped = unsafe {
        libc::mmap(
            ptr::null_mut(),
            size_of::<T>(),
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if mapped == libc::MAP_FAILED { None } else { NonNull::new(mapped.cast()) }
}

/// Unmaps a node that lost the race to be installed.
///
/// # Safety
///
/// `node` came from [`map_node`] with the same `T` and nothing else knows of it.
unsafe fn unmap_node<T>(node: NonNull<T>) {
    // SAFETY: the caller's promise: the whole mapping is ours and unused.
    unsafe { libc::munmap(node.as_ptr().cast(), size_of::<T>()) };
}

/// Loads the child at `slot`, mapping and installing a zeroed one if there is none yet.
fn child_or_install<T>(slot: &AtomicPtr<T>) -> Option<NonNull<T>> {
    if let Some(node) = NonNull::new(slot.load(Ordering::Acquire)) {
        return Some(node);
    }
    let fresh = map_node::<T>()?;
    // Release: a reader that sees the pointer sees the zeroed node behind it.
    match slot.compare_exchange(ptr::null_mut(), fresh.as_ptr(), Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => Some(fresh),
        Err(installed) => {
            // SAFETY: `fresh` was never published.
            unsafe { unmap_node(fresh) };
            NonNull::new(installed)
        }
    }
}

impl ChunkSet {
    pub(crate) const fn new() -> Self {
        Self { root: [const { AtomicPtr::new(ptr::null_mut()) }; 1 << ROOT_BITS] }
    }

    /// Whether the chunk containing `address` is in the set. Takes no lock and reads only
    /// the tree.
    #[inline(always)]
    pub(crate) fn contains(&self, address: usize) -> bool {
        let (root, middle, word, bit) = path(address);
        let middle_node = self.root[root].load(Ordering::Acquire);
        if middle_node.is_null() {
            return false;
        }
        // SAFETY: non-null root entries point at zero-initialised middle nodes, never unmapped.
        let leaf = unsafe { (*middle_node)[middle].load(Ordering::Acquire) };
        if leaf.is_null() {
            return false;
        }
        // Relaxed: a caller holding a live block was ordered after its chunk's insertion by
        // the handing-out of the block; the bit cannot be cleared while the block is live.
        // SAFETY: non-null middle entries point at zero-initialised leaves, never unmapped.
        unsafe { (*leaf)[word].load(Ordering::Relaxed) & bit != 0 }
    }

    /// Adds `count` chunks from `base`; returns false (adding nothing) if a node was needed
    /// and could not be mapped.
    fn insert(&self, base: usize, count: usize) -> bool {
        // Make every node first, so that a failure leaves the set as it was.
        for index in 0..count {
            if self.leaf_for(base + index * CHUNK_SIZE).is_none() {
                return false;
            }
        }
        for index in 0..count {
            self.update(base + index * CHUNK_SIZE, true);
        }
        true
    }

    /// Removes `count` chunks from `base`.
    fn remove(&self, base: usize, count: usize) {
        for index in 0..count {
            self.update(base + index * CHUNK_SIZE, false);
        }
    }

    /// The leaf holding `address`'s bit, made if missing.
    fn leaf_for(&self, address: usize) -> Option<NonNull<Leaf>> {
        let (root, middle, _, _) = path(address);
        let middle_node = child_or_install(&self.root[root])?;
        // SAFETY: installed middle nodes are zero-initialised and never unmapped.
        child_or_install(unsafe { &middle_node.as_ref()[middle] })
    }

    /// The leaf holding `address`'s bit, if it exists.
    fn existing_leaf(&self, address: usize) -> Option<NonNull<Leaf>> {
        let (root, middle, _, _) = path(address);
        let middle_node = NonNull::new(self.root[root].load(Ordering::Acquire))?;
        // SAFETY: installed middle nodes are zero-initialised and never unmapped.
        NonNull::new(unsafe { middle_node.as_ref()[middle].load(Ordering::Acquire) })
    }

    /// Sets or clears `address`'s bit; its leaf exists (made by `insert`) unless the chunk
    /// was never inserted, and then there is nothing to clear.
    fn update(&self, address: usize, present: bool) {
        let (_, _, word, bit) = path(address);
        let Some(leaf) = self.existing_leaf(address) else { return };
        // SAFETY: installed leaves are zero-initialised and never unmapped.
        let word = unsafe { &leaf.as_ref()[word] };
        if present {
            word.fetch_or(bit, Ordering::Release);
        } else {
            word.fetch_and(!bit, Ordering::Release);
        }
    }
}

/// Anonymous-mmap chunks, each recorded in a [`ChunkSet`] while handed out.
pub(crate) struct TrackedMmap {
    mmap: MmapProvider,
    chunks: ChunkSet,
}

impl TrackedMmap {
    pub(crate) const fn new() -> Self {
        Self { mmap: MmapProvider::new(), chunks: ChunkSet::new() }
    }

    /// Whether `address` lies in a chunk handed out and not taken back: the only pointers
    /// the core may follow.
    #[inline(always)]
    pub(crate) fn owns(&self, address: usize) -> bool {
        self.chunks.contains(address)
    }

    /// What the underlying mmap provider has done.
    pub(crate) fn mmap_stats(&self) -> MmapStats {
        self.mmap.stats()
    }
}

// SAFETY: every call is forwarded to `MmapProvider`, which keeps the trait's promises; the
// record of chunks changes nothing about the memory handed out.
unsafe impl PageProvider for TrackedMmap {
    fn capabilities(&self) -> Capabilities {
        self.mmap.capabilities()
    }

    fn page_size(&self) -> usize {
        self.mmap.page_size()
    }

    fn huge_page_size(&self) -> Option<usize> {
        self.mmap.huge_page_size()
    }

    fn alloc_chunks(&self, count: usize) -> Option<Chunks> {
        let run = self.mmap.alloc_chunks(count)?;
        if !self.chunks.insert(run.base.as_ptr() as usize, count) {
            // SAFETY: the run was just mapped and nothing else knows of it.
            unsafe { self.mmap.free_chunks(run.base, count) };
            return None;
        }
        Some(run)
    }

    unsafe fn free_chunks(&self, base: NonNull<u8>, count: usize) {
        self.chunks.remove(base.as_ptr() as usize, count);
        // SAFETY: the caller's promises are the mmap provider's preconditions.
        unsafe { self.mmap.free_chunks(base, count) }
    }

    unsafe fn purge(&self, base: NonNull<u8>, len: usize) -> bool {
        // SAFETY: the caller's promises are the mmap provider's preconditions.
        unsafe { self.mmap.purge(base, len) }
    }
}
