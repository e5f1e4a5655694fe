//! The ready-made host allocator as `#[global_allocator]` under a real std workload:
//! threads, channels, collections, strings and formatting, run to completion with checked
//! results (the test harness itself allocates through it too).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, mpsc};

use core_alloc::host::HostAlloc;

#[global_allocator]
static GLOBAL: HostAlloc = HostAlloc;

#[test]
fn threads_collections_strings_and_formatting_run_to_completion() {
    let shared = Arc::new(Mutex::new(HashMap::<String, Vec<u64>>::new()));
    let (sender, receiver) = mpsc::channel::<(usize, String)>();
    let workers: Vec<_> = (0..8)
        .map(|worker| {
            let shared = Arc::clone(&shared);
            let sender = sender.clone();
            std::thread::spawn(move || {
                let mut tree = BTreeMap::new();
                let mut queue = VecDeque::new();
                let mut text = String::new();
                for i in 0..20_000u64 {
                    tree.insert(format!("key-{worker}-{i:08}"), i * i);
                    queue.push_back(vec![i; (i % 17) as usize]);
                    if queue.len() > 100 {
                        queue.pop_front();
                    }
                    if i % 1000 == 0 {
                        write!(text, "{worker}:{i};").unwrap();
                        // Strings made here are dropped by the receiving thread.
                        sender.send((worker, text.clone())).unwrap();
                    }
                }
                let sum: u64 = tree.values().sum();
                shared.lock().unwrap().entry(format!("worker-{worker}")).or_default().push(sum);
                tree.len()
            })
        })
        .collect();
    drop(sender);
    let mut messages = 0;
    for (worker, text) in receiver {
        assert!(text.starts_with(&format!("{worker}:0;")), "message mangled: {text}");
        messages += 1;
    }
    let sizes: Vec<usize> = workers.into_iter().map(|worker| worker.join().unwrap()).collect();
    assert_eq!(sizes, vec![20_000; 8]);
    assert_eq!(messages, 8 * 20);
    let expected: u64 = (0..20_000u64).map(|i| i * i).sum();
    let shared = shared.lock().unwrap();
    assert_eq!(shared.len(), 8);
    assert!(shared.values().all(|sums| sums == &vec![expected]));
    let report = format!("{}", HostAlloc::stats());
    assert!(report.contains("live:"), "{report}");
}
