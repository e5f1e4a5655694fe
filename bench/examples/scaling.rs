//! Experiment: where does two-thread scaling go? Times the replacement phase only.
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Barrier;
use std::time::Instant;
use core_alloc::host::HostAlloc;

struct Rng(u64);
impl Rng { fn next(&mut self) -> u64 { self.0 ^= self.0 >> 12; self.0 ^= self.0 << 25; self.0 ^= self.0 >> 27; self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) } }

fn run<A: GlobalAlloc + Sync>(heap: &A, threads: usize, live: usize, reps: usize, max_shift: u64) -> f64 {
    let barrier = Barrier::new(threads);
    let times: Vec<f64> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads).map(|t| { let barrier = &barrier; s.spawn(move || unsafe {
            let mut rng = Rng(t as u64 + 7);
            let mut size = || { let sh = 3 + rng.next() % max_shift; ((1u64 << sh) + rng.next() % (1 << sh)) as usize };
            let mut slots: Vec<(*mut u8, Layout)> = (0..live).map(|_| { let l = Layout::from_size_align_unchecked(size(), 8); let b = heap.alloc(l); *b = 1; (b, l) }).collect();
            let mut pick = Rng(t as u64 + 99);
            barrier.wait();
            let start = Instant::now();
            for _ in 0..reps { let i = (pick.next() % live as u64) as usize; let (b, l) = slots[i]; heap.dealloc(b, l); let l = Layout::from_size_align_unchecked(size(), 8); let b = heap.alloc(l); *b = 1; slots[i] = (b, l); }
            let e = start.elapsed().as_secs_f64();
            for (b, l) in slots { heap.dealloc(b, l); }
            e
        })}).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let worst = times.iter().cloned().fold(0.0, f64::max);
    (threads * reps) as f64 / worst / 1e6
}

fn main() {
    for (live, shift) in [(100_000, 9u64), (1000, 9), (100_000, 4)] {
        for (name, one, two) in [
            ("core-alloc", run(&HostAlloc, 1, live, 2_000_000, shift), run(&HostAlloc, 2, live, 2_000_000, shift)),
            ("glibc", run(&System, 1, live, 2_000_000, shift), run(&System, 2, live, 2_000_000, shift)),
        ] {
            println!("live {live:>6} sizes 8..{:>5}: {name:<11} 1t {one:6.2} Mops/s  2t {two:6.2} Mops/s  scaling {:.2}", 16u64 << (shift - 1), two / one);
        }
    }
}
