//! The machine works: CPUs, clock, timer interrupts, and `alloc` collections on every CPU.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicUsize, Ordering};

use crate::{Machine, Outcome, ensure, say};

pub(crate) fn cpus_online(machine: &dyn Machine) -> Outcome {
    let cpus = machine.cpu_count();
    ensure!(cpus >= 1, "no CPU reported");
    let seen: Vec<AtomicUsize> = (0..cpus).map(|_| AtomicUsize::new(usize::MAX)).collect();
    machine.run_on_cpus(cpus, &|cpu| {
        seen[cpu].store(machine.current_cpu(), Ordering::Relaxed);
    });
    for (cpu, reported) in seen.iter().enumerate() {
        let reported = reported.load(Ordering::Relaxed);
        ensure!(reported == cpu, "work for CPU {cpu} ran on CPU {reported}");
    }
    say(machine, format_args!("{cpus} CPUs online"));
    Ok(())
}

pub(crate) fn clock_advances(machine: &dyn Machine) -> Outcome {
    let start = machine.now_ns();
    let mut spins = 0u64;
    while machine.now_ns() < start + 1_000_000 {
        spins += 1;
        ensure!(spins < 1 << 32, "the clock did not advance by 1 ms");
    }
    Ok(())
}

static TICKS: [AtomicUsize; 64] = [const { AtomicUsize::new(0) }; 64];

fn count_tick(cpu: usize) {
    TICKS[cpu % 64].fetch_add(1, Ordering::Relaxed);
}

/// Waits on every CPU until its timer has fired a few times. No fixed deadline: under
/// emulation with many vCPUs on a busy host a vCPU may take a tick only every few seconds,
/// so a CPU waits as long as ticks keep coming, and gives up (failing the test) only after
/// `STALL_NS` without one or `LIMIT_NS` in all.
pub(crate) fn timer_interrupts_on_every_cpu(machine: &dyn Machine) -> Outcome {
    const WANTED: usize = 3;
    const STALL_NS: u64 = 10_000_000_000;
    const LIMIT_NS: u64 = 60_000_000_000;
    let cpus = machine.cpu_count();
    machine.set_timer_handler(Some(count_tick));
    machine.run_on_cpus(cpus, &|cpu| {
        machine.start_timer(1000);
        let start = machine.now_ns();
        let (mut seen, mut progress_at) = (0, start);
        loop {
            let (ticks, now) = (TICKS[cpu].load(Ordering::Relaxed), machine.now_ns());
            if ticks != seen {
                (seen, progress_at) = (ticks, now);
            }
            if ticks >= WANTED || now - progress_at > STALL_NS || now - start > LIMIT_NS {
                break;
            }
            core::hint::spin_loop();
        }
        machine.stop_timer();
    });
    machine.set_timer_handler(None);
    for (cpu, ticks) in TICKS.iter().enumerate().take(cpus) {
        let ticks = ticks.load(Ordering::Relaxed);
        ensure!(ticks >= WANTED, "CPU {cpu} saw {ticks} timer interrupts at 1 kHz before it gave up waiting");
    }
    Ok(())
}

pub(crate) fn collections_on_every_cpu(machine: &dyn Machine) -> Outcome {
    collections_of(machine, 2000)
}

/// `Vec`, `BTreeMap`, `String` and `Box` on every CPU at once, `items` entries each (at
/// least 300: the text check needs three hundreds; about 100 bytes of heap an item).
pub(crate) fn collections_of(machine: &dyn Machine, items: usize) -> Outcome {
    ensure!(items >= 300, "collections of {items} items: too few for the checks");
    let failures = AtomicUsize::new(0);
    machine.run_on_cpus(machine.cpu_count(), &|cpu| {
        let mut map = BTreeMap::new();
        let mut numbers = Vec::new();
        let mut text = String::new();
        for i in 0..items {
            numbers.push(i * cpu);
            map.insert(i, alloc::format!("cpu {cpu} item {i}"));
            if i % 100 == 0 {
                text.push_str(&alloc::format!("{i},"));
            }
        }
        let boxed = Box::new([cpu as u8; 100]);
        let ok = numbers.iter().enumerate().all(|(i, &n)| n == i * cpu)
            && map
                .get(&(items - 1))
                .is_some_and(|text| text.ends_with(&alloc::format!("item {}", items - 1)))
            && text.starts_with("0,100,200,")
            && boxed.iter().all(|&byte| byte == cpu as u8);
        if !ok {
            failures.fetch_add(1, Ordering::Relaxed);
        }
    });
    ensure!(failures.load(Ordering::Relaxed) == 0, "collections held wrong contents");
    Ok(())
}
