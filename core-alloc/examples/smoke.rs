//! Quick smoke run of the host allocator as the global allocator.
use core_alloc::host::HostAlloc;
#[global_allocator]
static GLOBAL: HostAlloc = HostAlloc;

fn main() {
    let mut v: Vec<Box<[u8]>> = Vec::new();
    for i in 0..200_000usize {
        let size = 1 + (i * 7919) % 5000;
        v.push(vec![(i & 0xff) as u8; size].into_boxed_slice());
        if i % 3 == 0 {
            v.swap_remove(i % v.len());
        }
    }
    let total: usize = v.iter().map(|b| b.len()).sum();
    println!("live {} blocks, {} bytes", v.len(), total);
    let handles: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                let mut m = std::collections::BTreeMap::new();
                for i in 0..100_000 {
                    m.insert(i, format!("{t}-{i}"));
                }
                m.len()
            })
        })
        .collect();
    for h in handles {
        println!("thread map {}", h.join().unwrap());
    }
    drop(v);
    println!("{}", HostAlloc::stats());
    HostAlloc::collect();
    println!("after collect: {}", HostAlloc::stats());
}
