//! How well does this machine scale pure compute and pure L1 traffic across 2 threads?
use std::time::Instant;
fn work(n: u64) -> u64 { let mut x = 88172645463325252u64; let mut buf = [0u64; 512]; for i in 0..n { x ^= x << 13; x ^= x >> 7; x ^= x << 17; buf[(x & 511) as usize] += i; } x ^ buf.iter().sum::<u64>() }
fn main() {
    for _ in 0..3 {
        let n = 200_000_000;
        let t = Instant::now(); std::hint::black_box(work(n)); let one = t.elapsed().as_secs_f64();
        let t = Instant::now(); std::thread::scope(|s| { for _ in 0..2 { s.spawn(|| std::hint::black_box(work(n))); } }); let two = t.elapsed().as_secs_f64();
        println!("compute scaling: {:.2}", 2.0 * one / two);
    }
}
