//! A block under test: allocated through the global allocator (the host allocator), its
//! bytes always holding the pattern of (block id, offset), checked before every free and
//! resize and after every resize (the preserved prefix).

use std::alloc::Layout;
use std::cell::Cell;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::report::{COUNTERS, Counters, fail};

/// The pattern word `index` (bytes `8 * index ..`) of block `id`. Distinct ids give
/// distinct words at every index, and a word of one block moved to another offset differs
/// from the word there.
#[inline]
fn word(id: u64, index: usize) -> u64 {
    let base = id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD6E8_FEB8_6659_FD93;
    base ^ (index as u64).wrapping_mul(0xA076_1D64_78BD_642F).rotate_left(17)
}

/// The pattern byte at `offset` of block `id`.
#[inline]
pub(crate) fn pattern_byte(id: u64, offset: usize) -> u8 {
    word(id, offset / 8).to_le_bytes()[offset % 8]
}

/// Writes the pattern of `id` into `bytes[from..]` (`bytes` is the whole block).
pub(crate) fn fill(bytes: &mut [u8], from: usize, id: u64) {
    let head_end = from.next_multiple_of(8).min(bytes.len());
    for (offset, byte) in bytes.iter_mut().enumerate().take(head_end).skip(from) {
        *byte = pattern_byte(id, offset);
    }
    let mut chunks = bytes[head_end..].chunks_exact_mut(8);
    let mut index = head_end / 8;
    for chunk in &mut chunks {
        chunk.copy_from_slice(&word(id, index).to_le_bytes());
        index += 1;
    }
    let tail = chunks.into_remainder();
    let last = word(id, index).to_le_bytes();
    tail.copy_from_slice(&last[..tail.len()]);
    COUNTERS.bytes_checked.fetch_add((bytes.len() - from) as u64, Ordering::Relaxed);
}

/// The first offset below `bytes.len()` whose byte is not the pattern of `id`.
pub(crate) fn first_mismatch(bytes: &[u8], id: u64) -> Option<usize> {
    let mut chunks = bytes.chunks_exact(8);
    let mut bad_word = None;
    for (index, chunk) in (&mut chunks).enumerate() {
        if chunk != word(id, index).to_le_bytes() {
            bad_word = Some(index);
            break;
        }
    }
    let from = bad_word.map_or(bytes.len() / 8 * 8, |index| index * 8);
    (from..bytes.len()).find(|&offset| bytes[offset] != pattern_byte(id, offset))
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);
static NEXT_THREAD: AtomicU32 = AtomicU32::new(1);

thread_local! {
    static THREAD: Cell<u32> = const { Cell::new(0) };
}

/// A number of the current thread, unique in the run.
fn thread_serial() -> u32 {
    THREAD.with(|serial| {
        if serial.get() == 0 {
            serial.set(NEXT_THREAD.fetch_add(1, Ordering::Relaxed));
        }
        serial.get()
    })
}

/// A live block. It owns its memory: nothing else refers to it, so it can move between
/// threads; it must be given back with [`free`](Block::free) (dropping one leaks it).
pub(crate) struct Block {
    pointer: NonNull<u8>,
    layout: Layout,
    id: u64,
    /// The thread that allocated it.
    origin: u32,
    /// Set once the thread that allocated it has been joined.
    owner_exited: bool,
}

// SAFETY: a Block is the only handle to its memory (nothing else keeps the pointer), and the
// global allocator lets any thread free or resize what another allocated.
unsafe impl Send for Block {}

impl Block {
    /// Allocates `size` bytes aligned to `align` (zeroed: checked to be zero) and fills them.
    pub(crate) fn new(size: usize, align: usize, zeroed: bool) -> Block {
        let layout = Layout::from_size_align(size.max(1), align)
            .unwrap_or_else(|_| fail!("bad layout {size} bytes aligned to {align}"));
        // SAFETY: the layout has a non-zero size.
        let raw =
            unsafe { if zeroed { std::alloc::alloc_zeroed(layout) } else { std::alloc::alloc(layout) } };
        let Some(pointer) = NonNull::new(raw) else {
            fail!(
                "alloc{} of {size} bytes aligned to {align} returned null",
                if zeroed { "_zeroed" } else { "" }
            )
        };
        if !(raw as usize).is_multiple_of(align) {
            fail!("alloc of {size} bytes aligned to {align} returned {raw:p}, misaligned");
        }
        Counters::bump(if zeroed { &COUNTERS.alloc_zeroed } else { &COUNTERS.alloc });
        if align >= 4096 {
            Counters::bump(&COUNTERS.big_align);
        }
        let mut block = Block {
            pointer,
            layout,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            origin: thread_serial(),
            owner_exited: false,
        };
        if zeroed && let Some(offset) = block.bytes().iter().position(|&byte| byte != 0) {
            fail!(
                "alloc_zeroed of {size} bytes aligned to {align} at {raw:p}: byte {offset} is {:#04x}, not zero",
                block.bytes()[offset]
            );
        }
        let id = block.id;
        fill(block.bytes_mut(), 0, id);
        block
    }

    pub(crate) fn size(&self) -> usize {
        self.layout.size()
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: the block is live and this Block its only handle: `size` initialised bytes
        // (filled when made), borrowed as long as `self`.
        unsafe { std::slice::from_raw_parts(self.pointer.as_ptr(), self.layout.size()) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, borrowed mutably through `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.pointer.as_ptr(), self.layout.size()) }
    }

    /// Fails unless the first `length` bytes hold the block's pattern.
    fn check_prefix(&self, length: usize, when: &str) {
        let bytes = &self.bytes()[..length];
        COUNTERS.bytes_checked.fetch_add(length as u64, Ordering::Relaxed);
        if let Some(offset) = first_mismatch(bytes, self.id) {
            let differing =
                (offset..length.min(offset + 64)).filter(|&i| bytes[i] != pattern_byte(self.id, i)).count();
            fail!(
                "block {} ({} bytes aligned to {}, at {:p}, from thread {}) corrupted {when}: byte {offset} is {:#04x}, expected {:#04x} ({differing} of the {} bytes from there differ)",
                self.id,
                self.size(),
                self.layout.align(),
                self.pointer,
                self.origin,
                bytes[offset],
                pattern_byte(self.id, offset),
                length.min(offset + 64) - offset,
            );
        }
    }

    /// Fails unless every byte holds the block's pattern.
    pub(crate) fn check(&self, when: &str) {
        self.check_prefix(self.size(), when);
    }

    /// Marks the block as one whose allocating thread has been joined.
    pub(crate) fn owner_exited(&mut self) {
        self.owner_exited = true;
    }

    /// Corrupts one byte (the fault injected to show that the checks catch it).
    pub(crate) fn corrupt(&mut self) {
        let offset = self.size() / 2;
        self.bytes_mut()[offset] ^= 0x5A;
    }

    fn count_handover(&self) {
        if self.origin != thread_serial() {
            Counters::bump(&COUNTERS.cross_thread);
        }
        if self.owner_exited {
            Counters::bump(&COUNTERS.after_owner_exit);
        }
    }

    /// Resizes the block to `new_size` (same alignment): checks it before, checks the
    /// preserved prefix after, and fills the new bytes.
    pub(crate) fn realloc(&mut self, new_size: usize) {
        let new_size = new_size.max(1);
        let old_size = self.size();
        self.check("before realloc");
        self.count_handover();
        let Ok(new_layout) = Layout::from_size_align(new_size, self.layout.align()) else {
            fail!("bad layout {new_size} bytes aligned to {}", self.layout.align())
        };
        let old_pointer = self.pointer;
        // SAFETY: the block is live, allocated with `self.layout`; the new size is non-zero
        // and a valid layout with the same alignment.
        let raw = unsafe { std::alloc::realloc(self.pointer.as_ptr(), self.layout, new_size) };
        let Some(pointer) = NonNull::new(raw) else {
            fail!("realloc of {old_size} bytes at {old_pointer:p} to {new_size} bytes returned null")
        };
        if !(raw as usize).is_multiple_of(self.layout.align()) {
            fail!(
                "realloc to {new_size} bytes aligned to {} returned {raw:p}, misaligned",
                self.layout.align()
            );
        }
        Counters::bump(&COUNTERS.realloc);
        if old_size >= 2 << 20 && new_size >= 2 << 20 {
            Counters::bump(&COUNTERS.huge_realloc);
        }
        self.pointer = pointer;
        self.layout = new_layout;
        self.origin = thread_serial();
        self.owner_exited = false;
        let kept = old_size.min(new_size);
        let when = format!(
            "by realloc from {old_size} bytes at {old_pointer:p} to {new_size} (preserved prefix of {kept} bytes)"
        );
        self.check_prefix(kept, &when);
        let id = self.id;
        fill(self.bytes_mut(), kept, id);
    }

    /// Checks the block and frees it.
    pub(crate) fn free(self) {
        self.check("before free");
        self.count_handover();
        // SAFETY: the block is live, allocated with `self.layout`, and this was its only
        // handle (consumed here).
        unsafe { std::alloc::dealloc(self.pointer.as_ptr(), self.layout) };
        Counters::bump(&COUNTERS.dealloc);
    }
}
