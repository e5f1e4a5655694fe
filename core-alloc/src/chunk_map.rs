//! A map from every chunk the allocator holds to what it is, over the whole 64-bit address
//! space (no 48-bit assumption): a radix tree indexed by `address >> 21`, a static root and
//! four levels of 4 KiB nodes allocated from metadata memory as the heap spreads, never
//! freed (a heap in one place needs four: 16 KiB, zeroed before its first allocation).
//!
//! It answers "is this pointer ours, and what is it" without touching the pointed-to memory:
//! huge frees (whose first chunk has no header) and checked builds use it. The fast paths
//! for small and large blocks never do.
//!
//! Concurrency: entries and node pointers are atomics. Writers hold the central heap lock
//! (so node creation never races); readers take no lock and load with acquire ordering.
//!
//! Shortcuts: the first `HOT_LEAVES` leaves made are also reachable in one step, by the
//! address bits above a leaf's span (a process's chunks usually lie in one or two GiB), so
//! that most lookups (every free of the C library checks its pointer here) load two words
//! instead of walking five dependent levels. Each shortcut is written once, its leaf
//! pointer before its key (release), and never changed; a reader that sees the key (acquire)
//! sees the leaf.

use crate::sync::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use core::ptr::{self, NonNull};

use crate::config::CHUNK_SHIFT;

/// Bits of chunk index resolved by each interior level and by the leaves.
pub(crate) const LEVEL_BITS: u32 = 9;
/// Levels of nodes below the root: three interior levels and the leaves.
pub(crate) const NODE_LEVELS: u32 = 4;
/// Entries in a node.
const FANOUT: usize = 1 << LEVEL_BITS;
/// Bits of chunk index resolved by the root (64 - 21 - 4 * 9 = 7).
const ROOT_BITS: u32 = usize::BITS - CHUNK_SHIFT - NODE_LEVELS * LEVEL_BITS;
/// Bytes in an interior node or a leaf.
pub(crate) const NODE_BYTES: usize = FANOUT * 8;

/// What a chunk is: the low 8 bits of an entry (the rest hold a count); 0 for a chunk that
/// is not ours.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(transparent)]
pub(crate) struct ChunkKind(u8);

/// A slab chunk (a header, slabs and large runs); the count is 0.
pub(crate) const KIND_SLAB: ChunkKind = ChunkKind(1);
/// The first chunk of a huge allocation; the count is its number of chunks.
pub(crate) const KIND_HUGE: ChunkKind = ChunkKind(2);
/// A later chunk of a huge allocation; the count is its distance from the first.
pub(crate) const KIND_HUGE_TAIL: ChunkKind = ChunkKind(3);

/// Packs an entry.
pub(crate) const fn entry(kind: ChunkKind, count: usize) -> u64 {
    kind.0 as u64 | (count as u64) << 8
}
/// The kind of an entry (kind 0: not ours).
pub(crate) const fn kind_of(entry: u64) -> ChunkKind {
    ChunkKind(entry as u8)
}
/// The count of an entry.
pub(crate) const fn count_of(entry: u64) -> usize {
    (entry >> 8) as usize
}

type Interior = [AtomicPtr<()>; FANOUT];
type Leaf = [AtomicU64; FANOUT];

/// Leaves reachable through a shortcut (see the module documentation).
const HOT_LEAVES: usize = 2;
/// Address bits below those that pick a leaf.
const LEAF_SHIFT: u32 = CHUNK_SHIFT + LEVEL_BITS;

/// A shortcut to a leaf: its key is `(address >> LEAF_SHIFT) + 1` for the addresses it
/// covers (0 while unset).
struct HotLeaf {
    key: AtomicUsize,
    leaf: AtomicPtr<()>,
}

/// The radix tree; see the module documentation.
pub(crate) struct ChunkMap {
    hot: [HotLeaf; HOT_LEAVES],
    root: [AtomicPtr<()>; 1 << ROOT_BITS],
}

impl ChunkMap {
    pub(crate) const fn new() -> Self {
        Self {
            hot: [const { HotLeaf { key: AtomicUsize::new(0), leaf: AtomicPtr::new(ptr::null_mut()) } };
                HOT_LEAVES],
            root: [const { AtomicPtr::new(ptr::null_mut()) }; 1 << ROOT_BITS],
        }
    }

    /// The leaf a shortcut gives for `address`, or null.
    #[inline]
    fn hot_leaf(&self, address: usize) -> *mut () {
        let key = (address >> LEAF_SHIFT) + 1;
        for hot in &self.hot {
            // Acquire: the leaf pointer, written before the key, is visible.
            if hot.key.load(Ordering::Acquire) == key {
                return hot.leaf.load(Ordering::Relaxed);
            }
        }
        ptr::null_mut()
    }

    /// The path through the tree for `address`: root, three interior and one leaf index.
    fn path(address: usize) -> [usize; 5] {
        let index = address >> CHUNK_SHIFT;
        let mask = FANOUT - 1;
        [
            index >> (4 * LEVEL_BITS),
            (index >> (3 * LEVEL_BITS)) & mask,
            (index >> (2 * LEVEL_BITS)) & mask,
            (index >> LEVEL_BITS) & mask,
            index & mask,
        ]
    }

    /// The entry of the chunk containing `address`, 0 if the chunk is not ours.
    #[inline]
    pub(crate) fn get(&self, address: usize) -> u64 {
        let [a, b, c, d, e] = Self::path(address);
        let hot = self.hot_leaf(address);
        if !hot.is_null() {
            // SAFETY: a shortcut's leaf is a leaf of this map, never freed.
            return unsafe { (*hot.cast::<Leaf>())[e].load(Ordering::Acquire) };
        }
        let mut node = self.root[a].load(Ordering::Acquire);
        for index in [b, c, d] {
            if node.is_null() {
                return 0;
            }
            // SAFETY: non-null interior pointers point at initialised interior nodes, which
            // are never freed.
            node = unsafe { (*node.cast::<Interior>())[index].load(Ordering::Acquire) };
        }
        if node.is_null() {
            return 0;
        }
        // SAFETY: the last interior level holds pointers to leaves, never freed.
        unsafe { (*node.cast::<Leaf>())[e].load(Ordering::Acquire) }
    }

    /// The nodes a [`set`](Self::set) of the entry of `address` would make: the levels of
    /// its path not made yet.
    pub(crate) fn nodes_missing(&self, address: usize) -> usize {
        if !self.hot_leaf(address).is_null() {
            return 0;
        }
        let [a, b, c, d, _] = Self::path(address);
        let mut node = self.root[a].load(Ordering::Acquire);
        for (level, index) in [b, c, d].into_iter().enumerate() {
            if node.is_null() {
                return NODE_LEVELS as usize - level;
            }
            // SAFETY: as in `get`.
            node = unsafe { (*node.cast::<Interior>())[index].load(Ordering::Acquire) };
        }
        usize::from(node.is_null())
    }

    /// Sets the entry of the chunk containing `address`; returns false if a node was
    /// needed and `new_node` could not provide one (nothing is changed then).
    ///
    /// # Safety
    ///
    /// The caller holds the central heap lock, and `new_node` returns zeroed, 8-byte aligned
    /// memory of `NODE_BYTES` bytes that lives for as long as the map.
    pub(crate) unsafe fn set(
        &self,
        address: usize,
        value: u64,
        new_node: &mut dyn FnMut() -> Option<NonNull<u8>>,
    ) -> bool {
        let [a, b, c, d, e] = Self::path(address);
        let mut slot = &self.root[a];
        for index in [b, c, d] {
            let mut node = slot.load(Ordering::Acquire);
            if node.is_null() {
                let Some(fresh) = new_node() else { return false };
                node = fresh.as_ptr().cast();
                // Release: the zeroed node is visible to readers who see the pointer.
                slot.store(node, Ordering::Release);
            }
            // SAFETY: `node` is an interior node (made above or earlier), never freed.
            slot = unsafe { &(*node.cast::<Interior>())[index] };
        }
        let mut leaf = slot.load(Ordering::Acquire);
        if leaf.is_null() {
            let Some(fresh) = new_node() else { return false };
            leaf = fresh.as_ptr().cast();
            slot.store(leaf, Ordering::Release);
            if let Some(hot) = self.hot.iter().find(|hot| hot.key.load(Ordering::Relaxed) == 0) {
                // Written once (writers hold the lock): the leaf, then the key (release).
                hot.leaf.store(leaf, Ordering::Relaxed);
                hot.key.store((address >> LEAF_SHIFT) + 1, Ordering::Release);
            }
        }
        // SAFETY: `leaf` is a leaf node, never freed.
        unsafe { (*leaf.cast::<Leaf>())[e].store(value, Ordering::Release) };
        true
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::config::CHUNK_SIZE;
    use std::alloc::{Layout, alloc_zeroed};

    /// A zeroed, leaked node (the model test's too).
    pub(super) fn node() -> Option<NonNull<u8>> {
        // SAFETY: a non-zero-sized layout; the node is leaked, as the map requires.
        NonNull::new(unsafe { alloc_zeroed(Layout::from_size_align(NODE_BYTES, 4096).unwrap()) })
    }

    #[test]
    fn entries_round_trip_across_the_whole_address_space() {
        let map = ChunkMap::new();
        let addresses =
            [0usize, CHUNK_SIZE, 0x7fff_ffe0_0000, 0xffff_8000_0000_0000, usize::MAX & !(CHUNK_SIZE - 1)];
        for (i, &address) in addresses.iter().enumerate() {
            // SAFETY: single-threaded test; `node` gives zeroed, leaked memory.
            assert!(unsafe { map.set(address, entry(KIND_HUGE, i + 1), &mut node) });
        }
        for (i, &address) in addresses.iter().enumerate() {
            assert_eq!(map.get(address + 12345), entry(KIND_HUGE, i + 1), "{address:#x}");
            assert_eq!(count_of(map.get(address)), i + 1);
        }
        assert_eq!(map.get(2 * CHUNK_SIZE), 0);
        assert_eq!(map.get(0x7fff_ffe0_0000 - CHUNK_SIZE), 0);
        let mut refuse = || None;
        // SAFETY: as above; the refusing allocator changes nothing.
        assert!(!unsafe { map.set(0x1234_5600_0000_0000, 7, &mut refuse) });
        assert_eq!(map.get(0x1234_5600_0000_0000), 0);
    }

    /// `nodes_missing` counts exactly the nodes a `set` makes (the metadata stocks that many
    /// before each write).
    #[test]
    fn nodes_missing_counts_the_nodes_a_set_makes() {
        let map = ChunkMap::new();
        let made = core::cell::Cell::new(0);
        let mut counting = || {
            made.set(made.get() + 1);
            node()
        };
        let leaf_span = CHUNK_SIZE << LEVEL_BITS;
        for address in [CHUNK_SIZE, 2 * CHUNK_SIZE, leaf_span, leaf_span << LEVEL_BITS, usize::MAX - 5] {
            let missing = map.nodes_missing(address);
            made.set(0);
            // SAFETY: single-threaded test; the nodes are zeroed and leaked.
            assert!(unsafe { map.set(address, 1, &mut counting) });
            assert_eq!(made.get(), missing, "{address:#x}");
            assert_eq!(map.nodes_missing(address), 0);
        }
        assert_eq!(map.nodes_missing(3 * CHUNK_SIZE), 0);
        assert_eq!(map.nodes_missing(2 * leaf_span), 1);
    }
}

/// The shortcuts under the model checker (`cargo test -p core-alloc --features shuttle --lib
/// chunk_map::model`): a reader racing with the writes that make a leaf and its shortcut
/// finds an entry or nothing, never a stale or half-made one, and the walk and the shortcut
/// agree.
#[cfg(all(test, feature = "shuttle"))]
mod model {
    extern crate std;
    use super::tests::node;
    use super::*;
    use crate::config::CHUNK_SIZE;
    use std::boxed::Box;

    #[test]
    fn readers_racing_with_a_new_leaf_and_its_shortcut() {
        shuttle::check_random(
            || {
                let map: &'static ChunkMap = Box::leak(Box::new(ChunkMap::new()));
                // Three leaves: two get shortcuts, the third is found by the walk.
                let addresses = [5usize << 30, (5 << 30) + CHUNK_SIZE, 9 << 30, 13 << 30];
                let reader = shuttle::thread::spawn(move || {
                    for (index, &address) in addresses.iter().enumerate().rev() {
                        let found = map.get(address);
                        assert!(found == 0 || found == entry(KIND_SLAB, index), "{found:#x} at {address:#x}");
                    }
                });
                for (index, &address) in addresses.iter().enumerate() {
                    // SAFETY: the only writer; nodes are zeroed and leaked.
                    assert!(unsafe { map.set(address, entry(KIND_SLAB, index), &mut node) });
                }
                reader.join().unwrap();
                for (index, &address) in addresses.iter().enumerate() {
                    assert_eq!(map.get(address), entry(KIND_SLAB, index));
                }
                assert_eq!(map.hot_leaf(13 << 30), ptr::null_mut());
                assert!(!map.hot_leaf(9 << 30).is_null());
            },
            2000,
        );
    }
}
