//! Huge allocations: whole chunks from the provider, recorded in the chunk map (the first
//! chunk `KIND_HUGE` with the count, the rest `KIND_HUGE_TAIL` with their distance). A
//! single-chunk one may reuse a cached empty chunk, and a freed single-chunk one may become a
//! cached empty chunk. Growth by remapping works outside the lock with chunk-map nodes
//! reserved beforehand ([`NodeReserve`]), so that nobody else can use them meanwhile.

use core::ptr::{self, NonNull};

use page_provider::PageProvider;

use super::{Clock, Heap};
use crate::chunk::ChunkHeader;
use crate::chunk_map::{ChunkMap, KIND_HUGE, KIND_HUGE_TAIL, count_of, entry, kind_of};
use crate::config::{CHUNK_MASK, CHUNK_SIZE};

/// The largest huge allocation grown by remapping rather than copying, in chunks (4 GiB):
/// its records fit in the metadata reserved before the move.
pub(crate) const MAX_REMAP_CHUNKS: usize = 2048;
/// Chunk-map nodes set aside before a remap: a run of up to `MAX_REMAP_CHUNKS` chunks spans
/// at most `MAX_REMAP_CHUNKS / 512 + 1` leaves (512 entries each) and two nodes of each of the
/// three interior levels above them (each covers far more than the run).
pub(crate) const REMAP_NODES: usize = MAX_REMAP_CHUNKS / (1 << crate::chunk_map::LEVEL_BITS) + 1 + 3 * 2;

/// Zeroed chunk-map nodes taken out of the heap for one caller's records, so that nobody
/// else can use them while the caller works without the lock (a remap). What the caller
/// does not use goes back with [`Heap::return_nodes`].
#[must_use]
pub(crate) struct NodeReserve {
    nodes: [*mut u8; REMAP_NODES],
    count: usize,
}

impl NodeReserve {
    /// Hands out one of the reserved nodes.
    fn take(&mut self) -> Option<NonNull<u8>> {
        self.count = self.count.checked_sub(1)?;
        NonNull::new(self.nodes[self.count])
    }
}

/// The chunk-map entry of the chunk at `index` of a huge allocation of `count` chunks.
fn huge_entry(count: usize, index: usize) -> u64 {
    if index == 0 { entry(KIND_HUGE, count) } else { entry(KIND_HUGE_TAIL, index) }
}

/// Records the chunk-map entries of a huge allocation of `count` chunks at `base`, with
/// nodes from `new_node` where the map needs them; returns how many it recorded (all of
/// them, or the first ones until `new_node` had none). Call with the central lock held;
/// `new_node` gives zeroed metadata memory that is never freed.
pub(super) fn record_huge_entries(
    map: &ChunkMap,
    base: usize,
    count: usize,
    new_node: &mut dyn FnMut() -> Option<NonNull<u8>>,
) -> usize {
    (0..count)
        .take_while(|&index| {
            // SAFETY: the caller holds the lock; `new_node` gives zeroed, never-freed nodes.
            unsafe { map.set(base + index * CHUNK_SIZE, huge_entry(count, index), new_node) }
        })
        .count()
}

impl Heap {
    /// Takes [`REMAP_NODES`] zeroed chunk-map nodes out of the heap for a caller that will
    /// record chunks after dropping and retaking the lock; `None` (taking nothing) when the
    /// provider refuses metadata memory.
    pub(crate) fn reserve_nodes<P: PageProvider>(
        &mut self,
        provider: &P,
        map: &ChunkMap,
    ) -> Option<NodeReserve> {
        let mut reserve = NodeReserve { nodes: [ptr::null_mut(); REMAP_NODES], count: 0 };
        while reserve.count < REMAP_NODES {
            let Some(node) = self.new_node(provider, map) else {
                self.return_nodes(reserve);
                return None;
            };
            reserve.nodes[reserve.count] = node.as_ptr();
            reserve.count += 1;
        }
        Some(reserve)
    }

    /// Takes back the nodes of a reserve its holder did not use (still zeroed).
    pub(crate) fn return_nodes(&mut self, mut reserve: NodeReserve) {
        while let Some(node) = reserve.take() {
            // SAFETY: a zeroed node of NODE_BYTES that nobody uses.
            unsafe { self.push_spare_node(node.as_ptr()) };
        }
    }

    /// A single-chunk huge allocation from the empty cache, if it has a chunk.
    pub(crate) fn huge_from_cache<P: PageProvider>(
        &mut self,
        provider: &P,
        map: &ChunkMap,
    ) -> Option<NonNull<u8>> {
        let chunk = self.take_empty()?;
        if !self.record(chunk as usize, entry(KIND_HUGE, 1), provider, map) {
            // SAFETY: it was cached a moment ago and is unchanged.
            unsafe { self.push_empty(chunk, (*chunk).empty_since) };
            return None;
        }
        // SAFETY: an empty cached chunk, out of the cache now.
        unsafe {
            self.detach_live_bits(chunk);
            self.forget_huge_page(chunk);
        }
        self.counters.huge_live += 1;
        self.counters.huge_live_bytes += CHUNK_SIZE;
        NonNull::new(chunk.cast())
    }

    /// Records a huge allocation of `count` chunks at `base`, which the caller got from the
    /// provider (`obtained` chunks in all, `returned` of them already given back). Returns
    /// false, recording nothing, when out of metadata memory: the caller gives it back.
    pub(crate) fn record_huge<P: PageProvider>(
        &mut self,
        base: usize,
        count: usize,
        obtained: usize,
        returned: usize,
        provider: &P,
        map: &ChunkMap,
    ) -> bool {
        self.counters.chunks_obtained += obtained;
        self.counters.chunks_returned += returned;
        let recorded = (0..count)
            .take_while(|&index| {
                self.record(base + index * CHUNK_SIZE, huge_entry(count, index), provider, map)
            })
            .count();
        if recorded < count {
            self.forget_chunks(base, recorded, map);
            self.counters.chunks_returned += count;
            return false;
        }
        self.counters.huge_live += 1;
        self.counters.huge_live_bytes += count * CHUNK_SIZE;
        true
    }

    /// The number of chunks of the huge allocation starting at `address`, or `None` if no
    /// huge allocation starts there.
    pub(crate) fn huge_chunks(address: usize, map: &ChunkMap) -> Option<usize> {
        let found = map.get(address);
        (address & CHUNK_MASK == 0 && kind_of(found) == KIND_HUGE).then(|| count_of(found))
    }

    /// Forgets the huge allocation of `count` chunks at `base`. Returns true when the empty
    /// cache wants the (single) chunk: the caller formats it outside the lock and hands it
    /// to [`cache_chunk`](Self::cache_chunk); otherwise the caller gives the chunks back.
    ///
    /// # Safety
    ///
    /// A live huge allocation of `count` chunks starts at `base` and nothing uses it.
    pub(crate) unsafe fn free_huge(&mut self, base: usize, count: usize, map: &ChunkMap) -> bool {
        self.forget_chunks(base, count, map);
        self.counters.huge_live -= 1;
        self.counters.huge_live_bytes -= count * CHUNK_SIZE;
        let keep = count == 1 && self.counters.cached_chunks < self.retain_limit();
        if !keep {
            self.counters.chunks_returned += count;
        }
        keep
    }

    /// Caches an empty chunk formatted by the caller (a freed single-chunk huge allocation).
    /// Returns false when it could not be recorded: the caller gives it back.
    ///
    /// # Safety
    ///
    /// `chunk` is ours, formatted by `ChunkHeader::init`, and known to nobody else.
    pub(crate) unsafe fn cache_chunk<P: PageProvider>(
        &mut self,
        chunk: *mut ChunkHeader,
        provider: &P,
        map: &ChunkMap,
        clock: Option<Clock>,
    ) -> bool {
        // SAFETY: the caller's promise; the lock is held.
        let recorded = unsafe { self.take_in_slab_chunk(chunk, false, provider, map) };
        if recorded {
            // SAFETY: formatted, recorded, in no list.
            unsafe { self.push_empty(chunk, clock.map_or(0, |clock| clock.now)) };
        }
        recorded
    }

    /// Shrinks the records of the huge allocation at `base` from `count` to `keep` chunks
    /// (at least one); the caller gives the spare chunks back.
    ///
    /// # Safety
    ///
    /// A live huge allocation of `count` chunks starts at `base`; its chunks from `keep` on
    /// are not used any more.
    pub(crate) unsafe fn shrink_huge<P: PageProvider>(
        &mut self,
        base: usize,
        count: usize,
        keep: usize,
        provider: &P,
        map: &ChunkMap,
    ) {
        debug_assert!(keep >= 1 && keep < count);
        self.forget_chunks(base + keep * CHUNK_SIZE, count - keep, map);
        // The head entry already has its node: rewriting it cannot fail.
        self.record(base, entry(KIND_HUGE, keep), provider, map);
        self.counters.chunks_returned += count - keep;
        self.counters.huge_live_bytes -= (count - keep) * CHUNK_SIZE;
    }

    /// Forgets the records of the huge allocation of `count` chunks at `base`, which is
    /// about to be moved by the provider (outside the lock). Forgetting comes first, as on
    /// every path that gives address space back: once the provider has moved the pages,
    /// another CPU may be handed the old addresses and record them, and a forget after that
    /// would erase its records. The allocation stays counted as live.
    ///
    /// # Safety
    ///
    /// A live huge allocation of `count` chunks starts at `base`, and its holder is the
    /// caller, who records it again with [`rehome_huge`](Self::rehome_huge).
    pub(crate) unsafe fn unrecord_huge(&mut self, base: usize, count: usize, map: &ChunkMap) {
        self.forget_chunks(base, count, map);
    }

    /// Records a huge allocation taken out of the map by
    /// [`unrecord_huge`](Self::unrecord_huge) again, now `new_count` chunks at `new` (where
    /// the provider moved it, or where it was if the move failed), with nodes from
    /// `reserve` where the map needs new ones. Cannot fail: the reserve holds enough nodes
    /// for any run of up to [`MAX_REMAP_CHUNKS`] chunks.
    ///
    /// # Safety
    ///
    /// The allocation was unrecorded from `old_count` chunks at `old`, and now lives at
    /// `new`; `new_count <= MAX_REMAP_CHUNKS`.
    pub(crate) unsafe fn rehome_huge(
        &mut self,
        (old, old_count): (usize, usize),
        (new, new_count): (usize, usize),
        reserve: &mut NodeReserve,
        map: &ChunkMap,
    ) {
        debug_assert!(new_count <= MAX_REMAP_CHUNKS);
        if (new, new_count) != (old, old_count) {
            self.counters.chunks_returned += old_count;
            self.counters.chunks_obtained += new_count;
            self.counters.huge_live_bytes =
                self.counters.huge_live_bytes - old_count * CHUNK_SIZE + new_count * CHUNK_SIZE;
        }
        let recorded = record_huge_entries(map, new, new_count, &mut || reserve.take());
        // Two leaves and their two interior nodes per level cover any run of at most
        // MAX_REMAP_CHUNKS chunks, so the reserve cannot run out.
        debug_assert_eq!(recorded, new_count, "a node reserve ran out");
    }
}
