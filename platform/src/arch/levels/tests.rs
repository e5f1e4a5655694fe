//! The level rule under every placement of up to three interrupts on one simulated CPU:
//! an interrupt may arrive at any load or store of the level word and at points inside a
//! closure (also inside another interrupt's closure), each interrupt handler allocating
//! again; the masked last level takes no interrupt. Every open closure must hold a level no
//! other open closure holds, and the word must be back where it started at the end. The
//! word encodes levels as the platforms do: level L at `base + L * step`, with the slot
//! (CPU 3 of 8, the platforms' encoding) and with the bare level (`base` 0, `step` 1). Each
//! closure ends its level itself (restores the word, or unmasks on the masked path) as the
//! platforms' `SlotExit` does.

extern crate std;

use std::cell::{Cell, RefCell};
use std::vec::Vec;

use super::{LevelWord, restore, with_level};

const LEVELS: usize = 4;
/// Word encodings `(base, step)`: level L is `base + L * step`.
const ENCODINGS: [(usize, usize); 2] = [(3, 8), (0, 1)];
/// Interrupt arrival points a run can have (more than any run reaches).
const POINTS: usize = 64;

struct Cpu {
    word: Cell<usize>,
    /// The word's encoding.
    base: usize,
    step: usize,
    /// Levels held by open closures.
    held: RefCell<[bool; LEVELS]>,
    /// Interrupts masked (the last level's closure).
    masked: Cell<bool>,
    /// The mask state the masked path of `with_level` found, for its closure's end.
    mask_before: Cell<Option<bool>>,
    /// The arrival points so far, and where interrupts fire.
    point: Cell<usize>,
    fire: Vec<usize>,
    fired: Cell<usize>,
    /// Closures run, by level.
    runs: RefCell<[usize; LEVELS]>,
}

impl Cpu {
    /// An arrival point: fires an interrupt here if the schedule says so.
    fn arrival(&self) {
        let point = self.point.get();
        self.point.set(point + 1);
        if !self.masked.get() && self.fire.contains(&point) {
            self.fired.set(self.fired.get() + 1);
            self.allocate(); // the handler allocates
        }
    }

    /// One allocation: a slot closure with arrival points inside it.
    fn allocate(&self) {
        let last = self.base + (LEVELS - 1) * self.step;
        with_level(
            self,
            last,
            self.step,
            || {
                let before = self.masked.replace(true);
                assert!(self.mask_before.replace(Some(before)).is_none(), "masked paths nest");
            },
            |value, masked| {
                assert_eq!(value % self.step, self.base % self.step, "word {value} is not this CPU's");
                self.hold((value - self.base) / self.step);
                // The closure's end, as a platform's exit does it.
                if masked {
                    self.masked.set(self.mask_before.take().expect("the masked path saved the mask"));
                } else {
                    restore(self, value);
                }
            },
        );
    }

    fn hold(&self, level: usize) {
        {
            let mut held = self.held.borrow_mut();
            assert!(!held[level], "two open closures hold level {level}");
            held[level] = true;
        }
        self.runs.borrow_mut()[level] += 1;
        self.arrival();
        self.arrival();
        self.held.borrow_mut()[level] = false;
    }
}

impl LevelWord for Cpu {
    fn load(&self) -> usize {
        self.arrival();
        self.word.get()
    }

    fn store(&self, level: usize) {
        self.arrival();
        self.word.set(level);
        self.arrival();
    }
}

fn run(fire: &[usize], (base, step): (usize, usize)) -> (usize, [usize; LEVELS]) {
    let cpu = Cpu {
        mask_before: Cell::new(None),
        word: Cell::new(base),
        base,
        step,
        held: RefCell::new([false; LEVELS]),
        masked: Cell::new(false),
        point: Cell::new(0),
        fire: fire.to_vec(),
        fired: Cell::new(0),
        runs: RefCell::new([0; LEVELS]),
    };
    cpu.allocate();
    assert_eq!(cpu.word.get(), base, "the level word was not restored (schedule {fire:?})");
    assert!(!cpu.masked.get(), "interrupts left masked (schedule {fire:?})");
    assert!(cpu.point.get() < POINTS, "a run has more arrival points than the schedules cover");
    let runs = *cpu.runs.borrow();
    (cpu.fired.get(), runs)
}

#[test]
#[cfg_attr(miri, ignore = "45,760 schedules take many minutes interpreted; the logic is safe code")]
fn every_placement_of_up_to_three_nested_interrupts_keeps_levels_exclusive() {
    for encoding in ENCODINGS {
        let mut schedules = 0;
        let mut reached = [0usize; LEVELS];
        let mut masked_runs = 0;
        for a in 0..POINTS {
            for b in a..POINTS {
                for c in b..POINTS {
                    let fire: Vec<usize> = [a, b, c].into_iter().collect();
                    let (fired, runs) = run(&fire, encoding);
                    schedules += 1;
                    for (level, &count) in runs.iter().enumerate() {
                        reached[level] += usize::from(count > 0);
                    }
                    masked_runs += usize::from(runs[LEVELS - 1] > 0);
                    assert!(fired <= 3);
                }
            }
        }
        // The schedules reach every level, the masked last one included.
        assert!(reached.iter().all(|&count| count > 0), "levels reached: {reached:?}");
        assert!(masked_runs > 0);
        assert!(schedules > 40_000);
    }
}

#[test]
fn an_interrupt_between_the_read_and_the_raise_completes_at_the_same_level_first() {
    // Point 0 is the load of the word: the handler's closure takes level 0 and restores 0
    // before the interrupted closure raises the word and takes level 0 in turn.
    for encoding in ENCODINGS {
        let (fired, runs) = run(&[0], encoding);
        assert_eq!(fired, 1);
        assert_eq!(runs, [2, 0, 0, 0]);
        // Inside the closure (after the raise): the handler takes level 1.
        let (_, runs) = run(&[3], encoding);
        assert_eq!(runs, [1, 1, 0, 0]);
    }
}

#[test]
fn a_word_past_the_last_level_takes_the_masked_path_and_is_left_alone() {
    // A CPU the platform does not know reads usize::MAX: the mask closure (which refuses
    // such a CPU on the platforms) runs, and the word is not raised nor changed.
    let word = Cell::new(usize::MAX);
    struct Word<'a>(&'a Cell<usize>);
    impl LevelWord for Word<'_> {
        fn load(&self) -> usize {
            self.0.get()
        }
        fn store(&self, value: usize) {
            self.0.set(value);
        }
    }
    let masked = Cell::new(false);
    with_level(
        Word(&word),
        3 + (LEVELS - 1) * 8,
        8,
        || masked.set(true),
        |slot, on_masked_path| {
            // Capped at the last level's range: the platform's mask closure refuses such a CPU.
            assert!(on_masked_path && slot < 3 + LEVELS * 8, "slot {slot}");
            assert!(masked.get());
            assert_eq!(word.get(), usize::MAX);
            masked.set(false);
        },
    );
    assert!(!masked.get());
    assert_eq!(word.get(), usize::MAX);
}
