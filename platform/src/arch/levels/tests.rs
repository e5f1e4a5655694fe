//! The level rule under every placement of up to three interrupts on one simulated CPU:
//! an interrupt may arrive at any load or store of the level word and at points inside a
//! closure (also inside another interrupt's closure), each interrupt handler allocating
//! again; the masked last level takes no interrupt. Every open closure must hold a level no
//! other open closure holds, and the word must be back at 0 at the end.

extern crate std;

use std::cell::{Cell, RefCell};
use std::vec::Vec;

use super::{LevelWord, enter};

const LEVELS: usize = 4;
/// Interrupt arrival points a run can have (more than any run reaches).
const POINTS: usize = 64;

struct Cpu {
    word: Cell<usize>,
    /// Levels held by open closures.
    held: RefCell<[bool; LEVELS]>,
    /// Interrupts masked (the last level's closure).
    masked: Cell<bool>,
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
        let (level, _held) = enter(self, LEVELS, || Masked::new(&self.masked));
        self.hold(level);
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

/// Interrupts masked while alive (the last level's guard).
struct Masked<'a>(&'a Cell<bool>, bool);

impl<'a> Masked<'a> {
    fn new(flag: &'a Cell<bool>) -> Self {
        let before = flag.replace(true);
        Self(flag, before)
    }
}

impl Drop for Masked<'_> {
    fn drop(&mut self) {
        self.0.set(self.1);
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

fn run(fire: &[usize]) -> (usize, [usize; LEVELS]) {
    let cpu = Cpu {
        word: Cell::new(0),
        held: RefCell::new([false; LEVELS]),
        masked: Cell::new(false),
        point: Cell::new(0),
        fire: fire.to_vec(),
        fired: Cell::new(0),
        runs: RefCell::new([0; LEVELS]),
    };
    cpu.allocate();
    assert_eq!(cpu.word.get(), 0, "the level word was not restored (schedule {fire:?})");
    assert!(cpu.point.get() < POINTS, "a run has more arrival points than the schedules cover");
    let runs = *cpu.runs.borrow();
    (cpu.fired.get(), runs)
}

#[test]
#[cfg_attr(miri, ignore = "45,760 schedules take many minutes interpreted; the logic is safe code")]
fn every_placement_of_up_to_three_nested_interrupts_keeps_levels_exclusive() {
    let mut schedules = 0;
    let mut reached = [0usize; LEVELS];
    let mut masked_runs = 0;
    for a in 0..POINTS {
        for b in a..POINTS {
            for c in b..POINTS {
                let fire: Vec<usize> = [a, b, c].into_iter().collect();
                let (fired, runs) = run(&fire);
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

#[test]
fn an_interrupt_between_the_read_and_the_raise_completes_at_the_same_level_first() {
    // Point 0 is the load of the word: the handler's closure takes level 0 and restores 0
    // before the interrupted closure raises the word and takes level 0 in turn.
    let (fired, runs) = run(&[0]);
    assert_eq!(fired, 1);
    assert_eq!(runs, [2, 0, 0, 0]);
    // Inside the closure (after the raise): the handler takes level 1.
    let (_, runs) = run(&[3]);
    assert_eq!(runs, [1, 1, 0, 0]);
}
