//! Fixed-size bitmaps with run searches: the bookkeeping of chunk providers (one bit a
//! chunk) and of the allocator's pages inside a chunk (one bit a page).
#![forbid(unsafe_code)]

/// `WORDS * 64` bits, all clear at first.
#[derive(Clone, PartialEq, Eq)]
pub struct Bitmap<const WORDS: usize> {
    words: [u64; WORDS],
}

impl<const WORDS: usize> core::fmt::Debug for Bitmap<WORDS> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Bitmap({} of {} set)", self.count_ones(), Self::BITS)
    }
}

impl<const WORDS: usize> Default for Bitmap<WORDS> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const WORDS: usize> Bitmap<WORDS> {
    /// The number of bits.
    pub const BITS: usize = WORDS * 64;

    /// All bits clear.
    pub const fn new() -> Self {
        Self { words: [0; WORDS] }
    }

    /// Whether bit `index` is set.
    pub fn get(&self, index: usize) -> bool {
        self.words[index / 64] & (1 << (index % 64)) != 0
    }

    /// Sets or clears `count` bits from `start`.
    pub fn set_range(&mut self, start: usize, count: usize, value: bool) {
        assert!(start <= Self::BITS && count <= Self::BITS - start, "bit range out of bounds");
        let mut index = start;
        let end = start + count;
        while index < end {
            let bit = index % 64;
            let span = (64 - bit).min(end - index);
            let mask = if span == 64 { u64::MAX } else { ((1u64 << span) - 1) << bit };
            if value {
                self.words[index / 64] |= mask;
            } else {
                self.words[index / 64] &= !mask;
            }
            index += span;
        }
    }

    /// Whether all `count` bits from `start` are set (`value` true) or all clear.
    pub fn all_in_range(&self, start: usize, count: usize, value: bool) -> bool {
        let end = start + count;
        let found = if value { self.next_clear(start) } else { self.next_set(start) };
        found.is_none_or(|index| index >= end)
    }

    /// The number of set bits.
    pub fn count_ones(&self) -> usize {
        self.words.iter().map(|word| word.count_ones() as usize).sum()
    }

    /// The number of set bits in `count` bits from `start`.
    pub fn count_in_range(&self, start: usize, count: usize) -> usize {
        (start..start + count).filter(|&index| self.get(index)).count()
    }

    /// The first set bit at or after `from`.
    pub fn next_set(&self, from: usize) -> Option<usize> {
        self.next_matching(from, 0)
    }

    /// The first clear bit at or after `from`.
    pub fn next_clear(&self, from: usize) -> Option<usize> {
        self.next_matching(from, u64::MAX)
    }

    /// The first bit at or after `from` that differs from the bits of `flip`.
    fn next_matching(&self, from: usize, flip: u64) -> Option<usize> {
        if from >= Self::BITS {
            return None;
        }
        let mut word_index = from / 64;
        let mut word = (self.words[word_index] ^ flip) & (u64::MAX << (from % 64));
        loop {
            if word != 0 {
                return Some(word_index * 64 + word.trailing_zeros() as usize);
            }
            word_index += 1;
            if word_index == WORDS {
                return None;
            }
            word = self.words[word_index] ^ flip;
        }
    }

    /// The lowest `start` below `limit - count + 1` that is a multiple of `align` (a power of
    /// two) with bits `start..start + count` all set.
    pub fn find_set_run(&self, count: usize, align: usize, limit: usize) -> Option<usize> {
        debug_assert!(count > 0 && align.is_power_of_two());
        let limit = limit.min(Self::BITS);
        let mut from = 0;
        while from < limit {
            let set = self.next_set(from)?;
            let start = set.next_multiple_of(align);
            if start + count > limit {
                return None;
            }
            let end = self.next_clear(start).unwrap_or(Self::BITS).min(limit);
            if end >= start + count {
                return Some(start);
            }
            from = end.max(set + 1);
        }
        None
    }

    /// Like [`find_set_run`](Self::find_set_run), but in the shortest run of set bits that
    /// holds `count` aligned ones (the lowest such run on a tie): best fit, which keeps long
    /// runs for long requests.
    pub fn find_best_set_run(&self, count: usize, align: usize, limit: usize) -> Option<usize> {
        debug_assert!(count > 0 && align.is_power_of_two());
        let limit = limit.min(Self::BITS);
        let mut best: Option<(usize, usize)> = None;
        let mut from = 0;
        while from < limit {
            let Some(set) = self.next_set(from).filter(|&set| set < limit) else { break };
            let end = self.next_clear(set).unwrap_or(Self::BITS).min(limit);
            let start = set.next_multiple_of(align);
            let length = end - set;
            if start + count <= end && best.is_none_or(|(_, shortest)| length < shortest) {
                best = Some((start, length));
                if length == count {
                    break;
                }
            }
            from = end.max(set + 1);
        }
        best.map(|(start, _)| start)
    }

    /// The length of the longest run of set bits.
    pub fn longest_set_run(&self) -> usize {
        let mut longest = 0;
        let mut from = 0;
        while let Some(start) = self.next_set(from) {
            let end = self.next_clear(start).unwrap_or(Self::BITS);
            longest = longest.max(end - start);
            from = end;
        }
        longest
    }
}

/// Free and dirty bits over a space of chunk indices, for providers that manage their
/// own chunks (a fixed region, RAM frames). A bit is free when the chunk can be handed out;
/// dirty when the chunk may hold non-zero bytes.
#[derive(Debug, Clone)]
pub struct ChunkBitmap<const WORDS: usize> {
    free: Bitmap<WORDS>,
    dirty: Bitmap<WORDS>,
}

impl<const WORDS: usize> Default for ChunkBitmap<WORDS> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const WORDS: usize> ChunkBitmap<WORDS> {
    /// How many chunks can be tracked.
    pub const CAPACITY: usize = Bitmap::<WORDS>::BITS;

    /// No chunk available.
    pub const fn new() -> Self {
        Self { free: Bitmap::new(), dirty: Bitmap::new() }
    }

    /// Makes chunks `index..index + count` available, clean if `zeroed`.
    pub fn add(&mut self, index: usize, count: usize, zeroed: bool) {
        self.free.set_range(index, count, true);
        self.dirty.set_range(index, count, !zeroed);
    }

    /// Takes `count` contiguous available chunks (the lowest run that fits); returns the
    /// first index and whether they are all clean. Handed-out chunks count as dirty.
    pub fn take(&mut self, count: usize) -> Option<(usize, bool)> {
        if count == 0 {
            return None;
        }
        let index = self.free.find_set_run(count, 1, Self::CAPACITY)?;
        let zeroed = self.dirty.all_in_range(index, count, false);
        self.free.set_range(index, count, false);
        self.dirty.set_range(index, count, true);
        Some((index, zeroed))
    }

    /// Makes handed-out chunks available again (dirty). Returns false, changing nothing, if
    /// any of them was already available.
    pub fn give_back(&mut self, index: usize, count: usize) -> bool {
        if index > Self::CAPACITY
            || count > Self::CAPACITY - index
            || !self.free.all_in_range(index, count, false)
        {
            return false;
        }
        self.free.set_range(index, count, true);
        true
    }

    /// The number of available chunks.
    pub fn available(&self) -> usize {
        self.free.count_ones()
    }

    /// Whether chunk `index` is available.
    pub fn is_available(&self, index: usize) -> bool {
        self.free.get(index)
    }
}

#[cfg(test)]
mod tests;
