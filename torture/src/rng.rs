//! The random numbers of the torture: a small seeded generator per thread, and the size and
//! alignment distributions every scenario draws from.
#![forbid(unsafe_code)]

/// The largest size a random request asks for: 8 MiB.
pub(crate) const MAX_SIZE: usize = 8 << 20;

/// SplitMix64: fast, seedable, and good enough to pick operations and sizes.
pub(crate) struct Rng {
    state: u64,
}

impl Rng {
    /// A generator for stream `stream` of the run seeded with `seed` (one stream per thread).
    pub(crate) fn new(seed: u64, stream: u64) -> Self {
        let mut rng = Rng { state: seed ^ stream.wrapping_mul(0xA076_1D64_78BD_642F) };
        rng.next();
        rng
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut mixed = self.state;
        mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        mixed ^ (mixed >> 31)
    }

    /// A number in `0..bound` (`bound` > 0).
    pub(crate) fn below(&mut self, bound: usize) -> usize {
        (((self.next() >> 32) * bound as u64) >> 32) as usize
    }

    /// True `percent` times in a hundred.
    pub(crate) fn percent(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    /// A size from 1 B to 8 MiB, log-uniform within a range that is mostly small: 85% up
    /// to 4 KiB, 13% up to 1 MiB, 2% up to 8 MiB (each power of two of the range equally
    /// likely, sizes uniform within it).
    pub(crate) fn size(&mut self) -> usize {
        let top = match self.below(100) {
            0..85 => 12,
            85..98 => 20,
            _ => 23,
        };
        self.size_up_to(top)
    }

    /// A log-uniform size below `1 << top_exponent` (at least 1).
    pub(crate) fn size_up_to(&mut self, top_exponent: usize) -> usize {
        let exponent = self.below(top_exponent);
        let low = 1usize << exponent;
        (low + self.below(low)).min(MAX_SIZE)
    }

    /// An alignment: mostly 1 to 16 bytes, one time in eight any power of two up to 2 MiB.
    pub(crate) fn align(&mut self) -> usize {
        if self.below(8) == 0 { 1 << self.below(22) } else { 1 << self.below(5) }
    }
}
