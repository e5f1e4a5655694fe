//! Orphan slabs: a slab with live blocks whose arena gave it up (its slot was released or
//! collected) waits on a per-class list until an arena refilling that class adopts it.
//! The lists are doubly linked through `Run::next`/`prev`, each slab tagged `LIST_ORPHAN`.

use core::ptr;

use super::Heap;
use crate::chunk::{LIST_NONE, LIST_ORPHAN, RUN_SLAB, Run};
use crate::slab;

impl Heap {
    /// Files an abandoned slab on the orphan list of its class.
    ///
    /// # Safety
    ///
    /// `run` was just abandoned by a caller who held this lock since before it published
    /// the abandonment, so no free of its last block can have released it yet.
    pub(crate) unsafe fn push_orphan(&mut self, run: *mut Run) {
        // SAFETY: the lock guards orphan lists; the slab is on no other list.
        unsafe {
            let head = ptr::addr_of_mut!(self.orphans[(*run).class as usize]);
            (*run).prev = ptr::null_mut();
            (*run).next = *head;
            if !(*head).is_null() {
                (**head).prev = run;
            }
            *head = run;
            (*run).list = LIST_ORPHAN;
        }
        self.counters.orphan_slabs += 1;
    }

    /// Takes a slab off the orphan list it is on, if it is on one.
    ///
    /// # Safety
    ///
    /// `run` is a live run of this heap.
    pub(crate) unsafe fn unlink_orphan(&mut self, run: *mut Run) {
        // SAFETY: the lock guards orphan lists and their tags; only slabs carry list tags.
        unsafe {
            if (*run).kind != RUN_SLAB || (*run).list != LIST_ORPHAN {
                return;
            }
            let (prev, next) = ((*run).prev, (*run).next);
            if prev.is_null() {
                self.orphans[(*run).class as usize] = next;
            } else {
                (*prev).next = next;
            }
            if !next.is_null() {
                (*next).prev = prev;
            }
            (*run).list = LIST_NONE;
        }
        self.counters.orphan_slabs -= 1;
    }

    /// Adopts an orphan of `class` for `slot`: its free blocks become the slot's to
    /// allocate. Orphans whose last block is being freed are left for their freer.
    ///
    /// # Safety
    ///
    /// The caller holds `slot`.
    pub(crate) unsafe fn adopt_orphan(&mut self, class: usize, slot: usize) -> Option<*mut Run> {
        let mut run = self.orphans[class];
        while !run.is_null() {
            // SAFETY: listed orphans are live slabs kept by the list; the lock is held.
            unsafe {
                if slab::adopt(run, slot) {
                    self.unlink_orphan(run);
                    return Some(run);
                }
                run = (*run).next;
            }
        }
        None
    }
}
