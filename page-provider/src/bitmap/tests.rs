//! Bitmap operations checked against a plain array of booleans.

use super::*;

/// xorshift64*: a small deterministic generator for test inputs.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }
}

fn model_find(model: &[bool], count: usize, align: usize, limit: usize) -> Option<usize> {
    (0..limit)
        .step_by(align)
        .find(|&start| start + count <= limit && model[start..start + count].iter().all(|&bit| bit))
}

/// Best fit: the shortest maximal run of set bits (cut at `limit`) holding `count` ones
/// from a multiple of `align`, the lowest on a tie; the first such multiple in it.
fn model_best(model: &[bool], count: usize, align: usize, limit: usize) -> Option<usize> {
    let mut best: Option<(usize, usize)> = None;
    let mut set = 0;
    while set < limit {
        if !model[set] {
            set += 1;
            continue;
        }
        let end = (set..limit).find(|&bit| !model[bit]).unwrap_or(limit);
        let start = set.next_multiple_of(align);
        if start + count <= end && best.is_none_or(|(_, length)| end - set < length) {
            best = Some((start, end - set));
        }
        set = end;
    }
    best.map(|(start, _)| start)
}

#[test]
fn range_updates_and_searches_match_a_model() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut bitmap = Bitmap::<4>::new();
    let mut model = [false; 256];
    for _ in 0..20_000 {
        let start = rng.below(256);
        let count = rng.below(257 - start);
        let value = rng.next() & 1 == 1;
        bitmap.set_range(start, count, value);
        model[start..start + count].iter_mut().for_each(|bit| *bit = value);

        let count = 1 + rng.below(40);
        let align = 1 << rng.below(6);
        let limit = rng.below(257);
        assert_eq!(bitmap.find_set_run(count, align, limit), model_find(&model, count, align, limit));
        assert_eq!(bitmap.find_best_set_run(count, align, limit), model_best(&model, count, align, limit));
        let from = rng.below(256);
        assert_eq!(bitmap.next_set(from), (from..256).find(|&i| model[i]));
        assert_eq!(bitmap.next_clear(from), (from..256).find(|&i| !model[i]));
        assert_eq!(bitmap.count_ones(), model.iter().filter(|&&bit| bit).count());
        let longest = model.split(|&bit| !bit).map(<[bool]>::len).max().unwrap_or(0);
        assert_eq!(bitmap.longest_set_run(), longest);
    }
}

#[test]
fn chunk_bitmap_hands_out_disjoint_runs_and_tracks_cleanliness() {
    let mut chunks = ChunkBitmap::<1>::new();
    chunks.add(0, 64, true);
    let (first, zeroed) = chunks.take(10).unwrap();
    assert!(zeroed);
    let (second, _) = chunks.take(10).unwrap();
    assert!(second >= first + 10 || second + 10 <= first, "runs overlap");
    assert!(chunks.give_back(first, 10));
    assert!(!chunks.give_back(first, 10), "a double give-back was accepted");
    let (again, zeroed) = chunks.take(10).unwrap();
    assert_eq!(again, first);
    assert!(!zeroed, "reused chunks were reported clean");
    assert_eq!(chunks.available(), 44);
    assert!(chunks.take(45).is_none());
    assert!(chunks.take(0).is_none());
}
