//! The nesting rule over a fake interrupt mask register: each test thread is a "CPU" with
//! its own DAIF-like word and its own count.

extern crate std;

use std::cell::Cell;
use std::sync::atomic::AtomicUsize;

use super::*;

/// The AArch64 DAIF I and F bits (IRQ and FIQ masked).
const MASK_BITS: u64 = 1 << 7 | 1 << 6;

/// One count per test thread ("CPU"), handed out in order (statics, so that Miri sees no
/// leak).
static FAKE_DEPTHS: [MaskDepth; 64] = [const { MaskDepth::new() }; 64];
static NEXT_FAKE_CPU: AtomicUsize = AtomicUsize::new(0);

std::thread_local! {
    static FAKE_DAIF: Cell<u64> = const { Cell::new(0) };
    static FAKE_CPU: usize = NEXT_FAKE_CPU.fetch_add(1, Ordering::Relaxed);
}

/// This thread's fake register; behaves as `AArch64`'s `Daif` register does.
struct FakeDaif;

impl MaskRegister for FakeDaif {
    fn save_and_mask() -> u64 {
        FAKE_DAIF.with(|daif| daif.replace(daif.get() | MASK_BITS))
    }

    fn restore(state: u64) {
        FAKE_DAIF.with(|daif| daif.set(daif.get() & !MASK_BITS | state & MASK_BITS));
    }

    fn depth() -> &'static MaskDepth {
        &FAKE_DEPTHS[FAKE_CPU.with(|cpu| *cpu)]
    }
}

type Guard = NestedGuard<FakeDaif>;

fn masked() -> bool {
    FAKE_DAIF.with(Cell::get) & MASK_BITS == MASK_BITS
}

fn unmasked() -> bool {
    FAKE_DAIF.with(Cell::get) & MASK_BITS == 0
}

#[test]
fn guards_dropped_in_reverse_order_restore_at_the_last() {
    assert!(unmasked());
    let outer = Guard::new();
    let inner = Guard::new();
    assert!(masked());
    drop(inner);
    assert!(masked(), "unmasked while the outer guard lives");
    drop(outer);
    assert!(unmasked(), "the last guard did not restore the state");
}

/// Issue 8: the AArch64 guard restored the DAIF it found on every drop, so dropping the
/// outer guard first unmasked interrupts while the inner one was alive.
#[test]
fn dropping_the_outer_guard_first_keeps_interrupts_masked() {
    assert!(unmasked());
    let outer = Guard::new();
    let inner = Guard::new();
    drop(outer);
    assert!(masked(), "dropping the outer guard first unmasked interrupts under the inner one");
    drop(inner);
    assert!(unmasked(), "the last guard did not restore the state");
}

#[test]
fn every_drop_order_of_three_guards_masks_until_the_last() {
    let orders = [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]];
    for order in orders {
        assert!(unmasked());
        let mut guards = [Some(Guard::new()), Some(Guard::new()), Some(Guard::new())];
        for (step, &index) in order.iter().enumerate() {
            guards[index] = None;
            if step < 2 {
                assert!(masked(), "order {order:?}: unmasked after {} drops", step + 1);
            }
        }
        assert!(unmasked(), "order {order:?}: not restored after the last drop");
    }
}

#[test]
fn guards_made_with_interrupts_masked_leave_them_masked() {
    FAKE_DAIF.with(|daif| daif.set(MASK_BITS | 1 << 9));
    let outer = Guard::new();
    let inner = Guard::new();
    drop(outer);
    drop(inner);
    assert!(masked(), "a guard unmasked interrupts that were masked before it");
    assert_eq!(FAKE_DAIF.with(Cell::get), MASK_BITS | 1 << 9, "bits other than I and F changed");
}

/// A handler that runs while a guard lives and uses guards of its own (balanced) leaves the
/// count and saved state as it found them.
#[test]
fn a_balanced_guard_inside_leaves_the_outer_state_alone() {
    let outer = Guard::new();
    {
        let _handler = Guard::new();
    }
    assert!(masked(), "an inner guard's drop unmasked interrupts under the outer one");
    drop(outer);
    assert!(unmasked());
}
