//! Size-class lookups checked against a brute-force search over the class table.

use super::*;

fn all_classes() -> impl Iterator<Item = usize> {
    0..CLASS_COUNT
}

#[test]
fn classes_increase_and_index_round_trips() {
    let mut previous = 0;
    for index in all_classes() {
        let size = class_size(index);
        assert!(size > previous, "class {index} ({size}) not above {previous}");
        assert_eq!(class_index(size), index, "size {size} maps to another class");
        previous = size;
    }
}

#[test]
fn every_size_and_alignment_gets_the_smallest_class_that_fits() {
    for size in 0..=MAX_SMALL {
        for shift in 0..=PAGE_SHIFT {
            let align = 1usize << shift;
            let expected =
                all_classes().find(|&index| class_size(index) >= size.max(1) && class_align(index) >= align);
            assert_eq!(class_for(size, align), expected, "size {size} align {align}");
        }
    }
    assert_eq!(class_for(MAX_SMALL + 1, 8), None);
    assert_eq!(class_for(8, PAGE * 2), None);
}

#[test]
fn waste_stays_under_a_fifth_of_the_block_above_16_bytes() {
    for size in 17..=MAX_SMALL {
        // Natural requests: the alignment of a type of this size is at most the largest
        // power of two dividing it.
        let align = (size & size.wrapping_neg()).min(16);
        let block = class_size(class_for(size, align).unwrap());
        let waste = block - size;
        assert!(waste * 5 < block, "size {size} align {align} gets {block}: waste {waste}");
    }
}

#[test]
fn slabs_hold_their_blocks() {
    for index in all_classes() {
        let pages = slab_pages(index);
        assert!((MIN_SLAB_PAGES..=MAX_SLAB_PAGES).contains(&pages));
        let capacity = slab_capacity(index);
        assert!(capacity * class_size(index) <= pages * PAGE);
        assert!(capacity >= 4);
    }
    assert_eq!(slab_capacity(0), 16 * PAGE / 8);
}
