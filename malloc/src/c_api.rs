//! The C allocation API, exported unmangled so that `LD_PRELOAD=libcorealloc.so` (or
//! linking with `-lcorealloc`) replaces glibc's `malloc` in every library of the process:
//! the functions glibc's manual lists for replacing `malloc`, plus `reallocarray` and
//! `malloc_trim`.
//!
//! C semantics, as glibc gives them:
//! - failure returns null with `errno = ENOMEM` (`posix_memalign` returns the error
//!   instead and leaves `errno` as it was); bad alignments give `EINVAL`;
//! - `calloc` and `reallocarray` check `count * size` for overflow; sizes above
//!   `PTRDIFF_MAX` fail;
//! - `malloc(0)` returns a unique pointer to free like any other; `free(NULL)` does
//!   nothing; `realloc(NULL, n)` is `malloc(n)`; `realloc(p, 0)` frees `p` and returns null;
//! - blocks of 16 bytes or more are aligned to `alignof(max_align_t)` (16 on x86-64 and
//!   AArch64), smaller ones to 8;
//! - a pointer passed to `free`, `realloc` or `malloc_usable_size` that lies in no chunk of
//!   this allocator is reported on standard error and the process aborts, without the
//!   pointer being followed.

use core::ffi::{c_int, c_void};
use core::ptr::{self, NonNull};

use crate::process::HEAP;
use crate::report::{abort_with, errno, set_errno};

/// What `malloc` aligns blocks of at least this many bytes to: `alignof(max_align_t)`.
const MAX_ALIGN: usize = align_of::<libc::max_align_t>();
/// What smaller blocks are aligned to at least (the core's 20- and 28-byte classes are
/// only 4-aligned, so the alignment is always asked for).
const MIN_ALIGN: usize = 8;

/// The alignment C needs for a block of `size` bytes without an explicit alignment.
#[inline(always)]
fn natural_align(size: usize) -> usize {
    if size >= MAX_ALIGN { MAX_ALIGN } else { MIN_ALIGN }
}

/// A block of `size` bytes with C's natural alignment, through `allocate` (`zeroed` false)
/// or `allocate_zeroed`.
///
/// Sizes from `MAX_ALIGN` up are rounded up to a multiple of it first. That changes no
/// block (a 20-byte request aligned to 16 gets a 32-byte block either way), but the core
/// then finds a 16-aligned class at once instead of stepping past the 20-, 24- and 28-byte
/// ones. A size that cannot be rounded fails as too big.
#[inline(always)]
fn allocate_natural(size: usize, zeroed: bool) -> Option<NonNull<u8>> {
    let (size, align) = natural_request(size);
    if zeroed { HEAP.allocate_zeroed(size, align) } else { HEAP.allocate(size, align) }
}

/// The size and alignment to ask the core for, for `size` bytes at C's natural alignment
/// (see [`allocate_natural`]).
#[inline(always)]
fn natural_request(size: usize) -> (usize, usize) {
    if size >= MAX_ALIGN {
        (size.checked_next_multiple_of(MAX_ALIGN).unwrap_or(usize::MAX), MAX_ALIGN)
    } else {
        (size, MIN_ALIGN)
    }
}

/// A block for the C caller, or null with `errno = ENOMEM`.
#[inline(always)]
fn or_enomem(block: Option<NonNull<u8>>) -> *mut c_void {
    match block {
        Some(block) => block.as_ptr().cast(),
        None => fail(libc::ENOMEM),
    }
}

/// Sets `errno` and returns null.
#[cold]
fn fail(error: c_int) -> *mut c_void {
    set_errno(error);
    ptr::null_mut()
}

/// `ptr` as a block of ours, or a report and abort if it cannot be one: it lies in no chunk
/// of ours, or inside a huge block but not at its start (a lookup in the core's chunk map,
/// which never touches the memory at `ptr`).
#[inline(always)]
fn ours(function: &str, ptr: NonNull<c_void>) -> NonNull<u8> {
    if !HEAP.owns(ptr.as_ptr().cast()) {
        invalid_pointer(function, ptr);
    }
    ptr.cast()
}

#[cold]
#[inline(never)]
fn invalid_pointer(function: &str, ptr: NonNull<c_void>) -> ! {
    abort_with(format_args!(
        "{function}(): invalid pointer {ptr:p}: not allocated by this allocator (no block of it starts there)"
    ))
}

/// Allocates `size` bytes; see the module documentation.
#[unsafe(no_mangle)]
pub extern "C" fn malloc(size: usize) -> *mut c_void {
    or_enomem(allocate_natural(size, false))
}

/// Frees a block from any allocating function here; `free(NULL)` does nothing.
///
/// # Safety
///
/// `ptr` is null or a live block of this allocator that nothing uses any more. A pointer
/// in none of the allocator's chunks is caught (abort); any other violation is undefined
/// behaviour (in builds with the `checked` feature, double frees and pointers that start no
/// block are caught too).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn free(ptr: *mut c_void) {
    let Some(ptr) = NonNull::new(ptr) else { return };
    let block = ours("free", ptr);
    // SAFETY: the block is in a chunk of ours, and the caller promises it is live and done
    // with.
    unsafe { HEAP.free(block) }
}

/// Allocates `count * size` zeroed bytes; null with `ENOMEM` if the product overflows.
#[unsafe(no_mangle)]
pub extern "C" fn calloc(count: usize, size: usize) -> *mut c_void {
    let Some(total) = count.checked_mul(size) else { return fail(libc::ENOMEM) };
    or_enomem(allocate_natural(total, true))
}

/// Resizes a block, keeping its contents up to the smaller size; `realloc(NULL, n)` is
/// `malloc(n)` and `realloc(p, 0)` frees `p` and returns null (as glibc does). On failure
/// the block is untouched and null is returned with `ENOMEM`.
///
/// # Safety
///
/// As for [`free`]: `ptr` is null or a live block of this allocator, and nothing else uses
/// it during the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn realloc(ptr: *mut c_void, size: usize) -> *mut c_void {
    let Some(ptr) = NonNull::new(ptr) else { return malloc(size) };
    let block = ours("realloc", ptr);
    if size == 0 {
        // SAFETY: as for `free`, by the caller's promise.
        unsafe { HEAP.free(block) };
        return ptr::null_mut();
    }
    let (size, align) = natural_request(size);
    // The core uses the alignment only for the block it returns, which needs C's natural
    // alignment for the new size; a block kept in place keeps its own, larger or equal one.
    // SAFETY: the block is in a chunk of ours, and the caller promises it is live and
    // unshared for the call.
    or_enomem(unsafe { HEAP.reallocate(block, align, size) })
}

/// `realloc(ptr, count * size)`, failing with `ENOMEM` (the block untouched) if the
/// product overflows.
///
/// # Safety
///
/// As for [`realloc`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reallocarray(ptr: *mut c_void, count: usize, size: usize) -> *mut c_void {
    let Some(total) = count.checked_mul(size) else { return fail(libc::ENOMEM) };
    // SAFETY: the caller's promises are realloc's.
    unsafe { realloc(ptr, total) }
}

/// Allocates `size` bytes aligned to `alignment` into `*memptr`. Returns 0, `EINVAL` when
/// `alignment` is not a power of two multiple of `sizeof(void *)`, or `ENOMEM`; `*memptr`
/// is only written on success, and `errno` is left alone.
///
/// # Safety
///
/// `memptr` is valid for writing a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn posix_memalign(memptr: *mut *mut c_void, alignment: usize, size: usize) -> c_int {
    if !alignment.is_power_of_two() || !alignment.is_multiple_of(size_of::<*mut c_void>()) {
        return libc::EINVAL;
    }
    // A refused mmap underneath sets errno; posix_memalign reports through its result.
    let saved_errno = errno();
    match HEAP.allocate(size, alignment.max(natural_align(size))) {
        Some(block) => {
            // SAFETY: the caller promises `memptr` is writable.
            unsafe { memptr.write(block.as_ptr().cast()) };
            0
        }
        None => {
            set_errno(saved_errno);
            libc::ENOMEM
        }
    }
}

/// Allocates `size` bytes aligned to `alignment`; null with `EINVAL` if `alignment` is not
/// a power of two (as glibc 2.38 and later do), with `ENOMEM` when out of memory.
#[unsafe(no_mangle)]
pub extern "C" fn aligned_alloc(alignment: usize, size: usize) -> *mut c_void {
    if !alignment.is_power_of_two() {
        return fail(libc::EINVAL);
    }
    or_enomem(HEAP.allocate(size, alignment.max(natural_align(size))))
}

/// The obsolete `memalign`, as glibc has it: an alignment that is not a power of two is
/// rounded up to the next, and one above `SIZE_MAX / 2 + 1` fails with `EINVAL`. An
/// alignment that `malloc` gives this size anyway is `malloc`'s (blocks under 16 bytes are
/// only 8-aligned there, so `memalign(16, 1)` is not).
#[unsafe(no_mangle)]
pub extern "C" fn memalign(alignment: usize, size: usize) -> *mut c_void {
    if alignment <= natural_align(size) {
        return malloc(size);
    }
    if alignment > usize::MAX / 2 + 1 {
        return fail(libc::EINVAL);
    }
    or_enomem(HEAP.allocate(size, alignment.next_power_of_two()))
}

/// The obsolete `valloc`: `size` bytes aligned to the page size (read at run time).
#[unsafe(no_mangle)]
pub extern "C" fn valloc(size: usize) -> *mut c_void {
    memalign(page_size(), size)
}

/// The obsolete `pvalloc`: `size` rounded up to a whole number of pages (at least one),
/// page-aligned; null with `ENOMEM` if the rounding overflows.
#[unsafe(no_mangle)]
pub extern "C" fn pvalloc(size: usize) -> *mut c_void {
    let page = page_size();
    let Some(rounded) = size.max(1).checked_next_multiple_of(page) else { return fail(libc::ENOMEM) };
    memalign(page, rounded)
}

fn page_size() -> usize {
    use page_provider::PageProvider;
    HEAP.provider().page_size()
}

/// The bytes usable in a block (at least what was asked for); 0 for null.
///
/// # Safety
///
/// `ptr` is null or a live block of this allocator (a pointer that cannot be one, see
/// `ours`, is caught: abort).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn malloc_usable_size(ptr: *mut c_void) -> usize {
    let Some(ptr) = NonNull::new(ptr) else { return 0 };
    let block = ours("malloc_usable_size", ptr);
    // SAFETY: in a chunk of ours, and live by the caller's promise.
    unsafe { HEAP.usable_size(block) }
}

/// Gives back to the system what can be given back now (remote frees and empty slabs of
/// this thread and of exited threads, cached empty chunks). Returns 1 if memory went back
/// to the system, 0 otherwise, as glibc does; `pad` is ignored.
#[unsafe(no_mangle)]
pub extern "C" fn malloc_trim(pad: usize) -> c_int {
    let _ = pad;
    let before = HEAP.provider().stats();
    HEAP.collect();
    let after = HEAP.provider().stats();
    c_int::from(after.chunks_unmapped > before.chunks_unmapped || after.bytes_purged > before.bytes_purged)
}
