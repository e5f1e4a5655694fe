//! Chunks from anonymous `mmap` on Linux, backed by transparent huge pages.
//!
//! Each request maps its chunks plus one spare chunk of address space and unmaps the
//! unaligned head and tail. Chunks get huge pages when the allocator asks
//! ([`PageProvider::hugify`]): `MADV_HUGEPAGE` (THP is often in `madvise` mode, where memory
//! gets huge pages only if asked), and for chunks in use already `MADV_COLLAPSE` (Linux 6.1
//! on), which backs them with huge pages at once rather than when `khugepaged` gets to them.
//! Purging uses `MADV_DONTNEED` (the
//! range reads as zero afterwards) or, if chosen, `MADV_FREE` (cheaper; the kernel reclaims
//! lazily and the range may keep its old bytes). Page sizes come from the running kernel.
//!
//! Only raw system-call wrappers are used: nothing here allocates, so the provider can sit
//! under a process's `malloc` without recursing into it.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};

use crate::{CHUNK_SIZE, Capabilities, Chunks, PageProvider};

/// How purged memory is given back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurgeMode {
    /// `MADV_DONTNEED`: freed at once; the range reads as zero afterwards.
    DontNeed,
    /// `MADV_FREE`: freed when the kernel needs the memory; cheaper when the range is
    /// reused soon, but it may keep its old bytes. Falls back to `MADV_DONTNEED` on kernels
    /// without it.
    Free,
}

/// What the provider has done so far (cumulative counts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MmapStats {
    /// Chunks mapped by `alloc_chunks`.
    pub chunks_mapped: usize,
    /// Chunks unmapped by `free_chunks`.
    pub chunks_unmapped: usize,
    /// Bytes purged.
    pub bytes_purged: usize,
    /// `mmap` calls that failed (out of memory or address space).
    pub failed_maps: usize,
    /// Chunks the allocator asked to be backed by huge pages.
    pub chunks_hugified: usize,
    /// Of those, chunks in use collapsed into huge pages at once (`MADV_COLLAPSE`).
    pub chunks_collapsed: usize,
}

/// Anonymous-mmap chunks with transparent huge pages; see the module documentation.
#[derive(Debug)]
pub struct MmapProvider {
    purge_mode: PurgeMode,
    /// The base page size, 0 until read.
    page_size: AtomicUsize,
    /// `UNKNOWN` until read, then `NO_THP` or the PMD huge page size when THP is usable.
    huge_page: AtomicUsize,
    chunks_mapped: AtomicUsize,
    chunks_unmapped: AtomicUsize,
    bytes_purged: AtomicUsize,
    failed_maps: AtomicUsize,
    chunks_hugified: AtomicUsize,
    chunks_collapsed: AtomicUsize,
}

const UNKNOWN: usize = 0;
const NO_THP: usize = 1;

impl MmapProvider {
    /// A provider that purges with `MADV_DONTNEED`.
    pub const fn new() -> Self {
        Self::with_purge_mode(PurgeMode::DontNeed)
    }

    /// A provider that purges as `mode` says.
    pub const fn with_purge_mode(mode: PurgeMode) -> Self {
        Self {
            purge_mode: mode,
            page_size: AtomicUsize::new(0),
            huge_page: AtomicUsize::new(UNKNOWN),
            chunks_mapped: AtomicUsize::new(0),
            chunks_unmapped: AtomicUsize::new(0),
            bytes_purged: AtomicUsize::new(0),
            failed_maps: AtomicUsize::new(0),
            chunks_hugified: AtomicUsize::new(0),
            chunks_collapsed: AtomicUsize::new(0),
        }
    }

    /// Counts of what the provider has done.
    pub fn stats(&self) -> MmapStats {
        MmapStats {
            chunks_mapped: self.chunks_mapped.load(Ordering::Relaxed),
            chunks_unmapped: self.chunks_unmapped.load(Ordering::Relaxed),
            bytes_purged: self.bytes_purged.load(Ordering::Relaxed),
            failed_maps: self.failed_maps.load(Ordering::Relaxed),
            chunks_hugified: self.chunks_hugified.load(Ordering::Relaxed),
            chunks_collapsed: self.chunks_collapsed.load(Ordering::Relaxed),
        }
    }

    /// The PMD huge page size if transparent huge pages can back this provider's chunks.
    fn thp_size(&self) -> Option<usize> {
        let mut known = self.huge_page.load(Ordering::Relaxed);
        if known == UNKNOWN {
            known = read_thp_size().unwrap_or(NO_THP);
            self.huge_page.store(known, Ordering::Relaxed);
        }
        (known != NO_THP).then_some(known)
    }
}

impl Default for MmapProvider {
    fn default() -> Self {
        Self::new()
    }
}

/// Maps `len` bytes (a multiple of CHUNK_SIZE) at a CHUNK_SIZE-aligned address with `prot`:
/// one chunk more is mapped and the unaligned head and the tail are unmapped. Returns the
/// aligned start.
fn map_aligned(len: usize, prot: libc::c_int) -> Option<usize> {
    let reserve = len + CHUNK_SIZE;
    let flags = libc::MAP_PRIVATE
        | libc::MAP_ANONYMOUS
        | if prot == libc::PROT_NONE { libc::MAP_NORESERVE } else { 0 };
    // SAFETY: a fresh private anonymous mapping at an address of the kernel's choosing
    // touches no existing memory.
    let mapped = unsafe { libc::mmap(core::ptr::null_mut(), reserve, prot, flags, -1, 0) };
    if mapped == libc::MAP_FAILED {
        return None;
    }
    let start = mapped as usize;
    let base = start.next_multiple_of(CHUNK_SIZE);
    let head = base - start;
    let tail = reserve - head - len;
    // SAFETY: the head and tail are parts of the mapping just made that the run does not
    // include; nothing else knows of them.
    unsafe {
        if head > 0 {
            libc::munmap(mapped, head);
        }
        if tail > 0 {
            libc::munmap((base + len) as *mut libc::c_void, tail);
        }
    }
    Some(base)
}

/// `MADV_COLLAPSE` (Linux 6.1), which the libc crate may not name.
const MADV_COLLAPSE: libc::c_int = 25;

impl MmapProvider {
    /// Asks for transparent huge pages on a range this provider mapped, where THP is usable;
    /// returns whether it asked.
    fn advise_huge(&self, base: usize, len: usize) -> bool {
        if !self.capabilities().contains(Capabilities::HUGE_PAGES) {
            return false;
        }
        // SAFETY: advice on a range this provider mapped; failure only loses huge pages.
        unsafe { libc::madvise(base as *mut libc::c_void, len, libc::MADV_HUGEPAGE) == 0 }
    }
}

/// Reads a small sysfs file into `buffer` with raw system calls; returns the bytes read.
fn read_small_file<'a>(path: &core::ffi::CStr, buffer: &'a mut [u8]) -> Option<&'a [u8]> {
    // SAFETY: `path` is NUL-terminated; the flags ask for a read-only descriptor.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `buffer` is valid for `buffer.len()` bytes of writes; `fd` is open.
    let read = unsafe { libc::read(fd, buffer.as_mut_ptr().cast(), buffer.len()) };
    // SAFETY: `fd` is a descriptor this function opened and nothing else uses.
    unsafe { libc::close(fd) };
    (read > 0).then(|| &buffer[..read as usize])
}

/// The THP size when THP is `always` or `madvise`; `None` when `never` or unknown.
fn read_thp_size() -> Option<usize> {
    let mut buffer = [0u8; 128];
    let mode = read_small_file(c"/sys/kernel/mm/transparent_hugepage/enabled", &mut buffer)?;
    let selected = mode.split(|&byte| byte == b'[').nth(1)?;
    if selected.starts_with(b"never") {
        return None;
    }
    let mut buffer = [0u8; 32];
    let size = read_small_file(c"/sys/kernel/mm/transparent_hugepage/hpage_pmd_size", &mut buffer)
        .and_then(|text| {
            let mut digits = text.iter().take_while(|byte| byte.is_ascii_digit());
            digits
                .try_fold(0usize, |value, &digit| value.checked_mul(10)?.checked_add((digit - b'0') as usize))
        })
        .filter(|&size| size > 0)
        .unwrap_or(CHUNK_SIZE);
    Some(size)
}

// SAFETY: every run is a fresh private anonymous mapping (zero-filled by the kernel),
// trimmed to a 2 MiB-aligned `count * CHUNK_SIZE` bytes, so runs never overlap until
// `munmap` gives them back; purging never unmaps. The page sizes are read once and cached.
unsafe impl PageProvider for MmapProvider {
    fn capabilities(&self) -> Capabilities {
        let mut capabilities = Capabilities::PURGE | Capabilities::RELEASE | Capabilities::REMAP;
        if self.purge_mode == PurgeMode::DontNeed {
            capabilities |= Capabilities::PURGE_ZEROES;
        }
        if self.thp_size().is_some_and(|size| size <= CHUNK_SIZE) {
            capabilities |= Capabilities::HUGE_PAGES;
        }
        capabilities
    }

    fn page_size(&self) -> usize {
        let mut size = self.page_size.load(Ordering::Relaxed);
        if size == 0 {
            // SAFETY: sysconf has no preconditions.
            let reported = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
            size = if reported > 0 { reported as usize } else { 4096 };
            self.page_size.store(size, Ordering::Relaxed);
        }
        size
    }

    fn huge_page_size(&self) -> Option<usize> {
        self.thp_size()
    }

    fn alloc_chunks(&self, count: usize) -> Option<Chunks> {
        let len = count.checked_mul(CHUNK_SIZE).filter(|&len| count > 0 && len <= isize::MAX as usize / 2)?;
        let Some(base) = map_aligned(len, libc::PROT_READ | libc::PROT_WRITE) else {
            self.failed_maps.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        self.chunks_mapped.fetch_add(count, Ordering::Relaxed);
        Some(Chunks { base: NonNull::new(base as *mut u8)?, zeroed: true })
    }

    unsafe fn hugify(&self, base: NonNull<u8>, len: usize, populated: bool) -> bool {
        let address = base.as_ptr() as usize;
        if !self.advise_huge(address, len) {
            return false;
        }
        self.chunks_hugified.fetch_add(len / CHUNK_SIZE, Ordering::Relaxed);
        // SAFETY: the caller's range is chunks this provider mapped; a collapse keeps their
        // contents (it copies the pages in use into huge pages) and fails harmlessly on
        // kernels without it.
        if populated && unsafe { libc::madvise(address as *mut libc::c_void, len, MADV_COLLAPSE) } == 0 {
            self.chunks_collapsed.fetch_add(len / CHUNK_SIZE, Ordering::Relaxed);
        }
        true
    }

    /// `MADV_NOHUGEPAGE`: khugepaged no longer collapses the range (which it would do with
    /// up to 511 of a huge page's 512 small pages absent, bringing purged pages back).
    unsafe fn unhugify(&self, base: NonNull<u8>, len: usize) {
        if self.capabilities().contains(Capabilities::HUGE_PAGES) {
            // SAFETY: advice on chunks this provider mapped; it changes no contents.
            unsafe { libc::madvise(base.as_ptr().cast(), len, libc::MADV_NOHUGEPAGE) };
        }
    }

    unsafe fn free_chunks(&self, base: NonNull<u8>, count: usize) {
        // SAFETY: the caller gives back chunks this provider mapped and nothing uses them.
        let status = unsafe { libc::munmap(base.as_ptr().cast(), count * CHUNK_SIZE) };
        debug_assert_eq!(status, 0, "munmap of a run this provider mapped failed");
        self.chunks_unmapped.fetch_add(count, Ordering::Relaxed);
    }

    unsafe fn remap(&self, base: NonNull<u8>, old_count: usize, new_count: usize) -> Option<NonNull<u8>> {
        let old_len = old_count.checked_mul(CHUNK_SIZE)?;
        let new_len = new_count.checked_mul(CHUNK_SIZE).filter(|&len| len <= isize::MAX as usize / 2)?;
        let old = base.as_ptr().cast::<libc::c_void>();
        // Grow in place when the address space after the run is free.
        // SAFETY: the caller's run is a mapping of this provider; without MREMAP_MAYMOVE the
        // kernel either extends it where it is or changes nothing.
        let grown = unsafe { libc::mremap(old, old_len, new_len, 0) };
        let target = if grown != libc::MAP_FAILED {
            base.as_ptr() as usize
        } else {
            // Otherwise move the run's pages onto an aligned reservation of the new size.
            let target = map_aligned(new_len, libc::PROT_NONE)?;
            // SAFETY: MREMAP_FIXED replaces exactly our own reservation with the caller's
            // run, moving its page-table entries; on failure the run is untouched and the
            // reservation, which nothing else knows of, is unmapped.
            unsafe {
                let flags = libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED;
                if libc::mremap(old, old_len, new_len, flags, target as *mut libc::c_void) == libc::MAP_FAILED
                {
                    libc::munmap(target as *mut libc::c_void, new_len);
                    return None;
                }
            }
            target
        };
        self.advise_huge(target, new_len);
        self.chunks_mapped.fetch_add(new_count - old_count, Ordering::Relaxed);
        NonNull::new(target as *mut u8)
    }

    unsafe fn purge(&self, base: NonNull<u8>, len: usize) -> bool {
        let address = base.as_ptr().cast::<libc::c_void>();
        let mut status = -1;
        if self.purge_mode == PurgeMode::Free {
            // SAFETY: the caller promises the range is mapped by this provider and unneeded.
            status = unsafe { libc::madvise(address, len, libc::MADV_FREE) };
        }
        if status != 0 {
            // SAFETY: as above.
            status = unsafe { libc::madvise(address, len, libc::MADV_DONTNEED) };
        }
        if status == 0 {
            self.bytes_purged.fetch_add(len, Ordering::Relaxed);
        }
        status == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_aligned_zeroed_writable_and_purge_to_zero() {
        let provider = MmapProvider::new();
        let page = provider.page_size();
        assert!(page.is_power_of_two() && (4096..=CHUNK_SIZE).contains(&page));
        let run = provider.alloc_chunks(3).expect("mmap of 6 MiB failed");
        assert_eq!(run.base.as_ptr() as usize % CHUNK_SIZE, 0);
        assert!(run.zeroed);
        let bytes = run.base.as_ptr();
        // SAFETY: the run is 3 chunks of fresh, writable memory owned by this test.
        unsafe {
            assert_eq!(*bytes.add(3 * CHUNK_SIZE - 1), 0);
            bytes.write_bytes(0xA5, 3 * CHUNK_SIZE);
            assert!(provider.purge(NonNull::new_unchecked(bytes.add(CHUNK_SIZE)), CHUNK_SIZE));
            assert_eq!(*bytes.add(CHUNK_SIZE), 0, "MADV_DONTNEED left old bytes");
            assert_eq!(*bytes.add(CHUNK_SIZE - 1), 0xA5, "purge reached outside its range");
            provider.free_chunks(run.base, 1);
            provider.free_chunks(NonNull::new_unchecked(bytes.add(CHUNK_SIZE)), 2);
        }
        let stats = provider.stats();
        assert_eq!((stats.chunks_mapped, stats.chunks_unmapped), (3, 3));
        assert_eq!(stats.bytes_purged, CHUNK_SIZE);
    }

    #[test]
    fn remap_grows_a_run_keeping_its_bytes_and_alignment() {
        let provider = MmapProvider::new();
        let run = provider.alloc_chunks(2).unwrap();
        // Occupy the address space right after the run, so the growth must move it.
        // SAFETY: fresh memory of this test; mmap with a hint never replaces mappings.
        let blocker = unsafe {
            libc::mmap(
                run.base.as_ptr().add(2 * CHUNK_SIZE).cast(),
                4096,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        // SAFETY: the run is ours; remap's contract is met (new count larger).
        unsafe {
            run.base.as_ptr().write_bytes(0x5A, 2 * CHUNK_SIZE);
            let grown = provider.remap(run.base, 2, 5).expect("mremap failed");
            let bytes = grown.as_ptr();
            assert_eq!(bytes as usize % CHUNK_SIZE, 0, "the grown run lost its alignment");
            assert_eq!(*bytes, 0x5A);
            assert_eq!(*bytes.add(2 * CHUNK_SIZE - 1), 0x5A);
            assert_eq!(*bytes.add(2 * CHUNK_SIZE), 0, "the new part is not zeroed");
            assert_eq!(*bytes.add(5 * CHUNK_SIZE - 1), 0);
            provider.free_chunks(grown, 5);
            libc::munmap(blocker, 4096);
        }
    }

    #[test]
    fn refuses_impossible_sizes_without_panicking() {
        let provider = MmapProvider::new();
        assert!(provider.alloc_chunks(0).is_none());
        assert!(provider.alloc_chunks(usize::MAX / CHUNK_SIZE).is_none());
        assert!(provider.alloc_chunks(1 << 40).is_none(), "2^61 bytes cannot be mapped");
    }

    #[test]
    fn reports_huge_pages_as_the_system_is_configured() {
        let provider = MmapProvider::new();
        let mut buffer = [0u8; 128];
        let mode = read_small_file(c"/sys/kernel/mm/transparent_hugepage/enabled", &mut buffer);
        let enabled = mode.is_some_and(|text| !text.windows(7).any(|w| w == b"[never]"));
        assert_eq!(provider.capabilities().contains(Capabilities::HUGE_PAGES), enabled);
    }
}
