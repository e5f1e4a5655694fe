//! The testkit's shadow-model interpreter over the providers that Miri can run: the
//! simulation provider (which remaps, so huge blocks grow by moving chunks) and a fixed
//! region (which does not, so they grow by copying), both with the test platform. Sized for
//! Miri (`.ci/miri`): under it each program is a few dozen operations on blocks of at most
//! 32 KiB aligned to at most 32 bytes; natively the same tests run longer programs of every
//! size and alignment, huge blocks included.

use core_alloc::Allocator;
use core_alloc::testkit::{Interpreter, SimProvider, TestPlatform};
use page_provider::CHUNK_SIZE;
use page_provider::fixed::FixedRegion;

/// Programs per test and bytes per program: small under Miri (about 1000 times slower).
const PROGRAMS: usize = if cfg!(miri) { 2 } else { 16 };
const PROGRAM_BYTES: usize = if cfg!(miri) { 200 } else { 20_000 };
/// Chunks of memory each heap gets (2 MiB each): room for a few huge blocks, so that big
/// programs also run out of memory.
const CHUNKS: usize = if cfg!(miri) { 8 } else { 16 };

/// xorshift64*: deterministic bytes.
fn random_bytes(seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..PROGRAM_BYTES)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

/// A program in the interpreter's format: operation byte, then a 3-byte word (a size, or
/// which live block), a size selector byte and an alignment byte, as each operation reads
/// them. Size selectors are kept below `selectors` (9: 1 to 256 bytes; 13: up to 32 KiB;
/// 16: every size up to 6 MiB), and alignment bytes below `alignments` (48: up to 32 bytes;
/// 256: up to 2 MiB).
fn program(seed: u64, selectors: u8, alignments: u16) -> Vec<u8> {
    let raw = random_bytes(seed);
    let mut bytes = Vec::with_capacity(raw.len());
    // Live blocks, as the interpreter counts them: a free or a reallocation with nothing
    // live is a one-byte no-op, which would shift the rest of the program.
    let mut live = 0usize;
    for op in raw.chunks_exact(8) {
        let (word, selector, align) =
            ([op[1], op[2], op[3]], op[4] % selectors, (u16::from(op[5]) % alignments) as u8);
        match op[0] % 8 {
            4 | 5 if live > 0 => {
                bytes.extend([4, word[0], word[1], word[2]]);
                live -= 1;
            }
            6 if live > 0 => bytes.extend([6, word[0], word[1], word[2], op[6], op[7], op[1], selector]),
            7 => bytes.push(7),
            kind => {
                bytes.extend([kind % 4, word[0], word[1], word[2], selector, align]);
                live += 1;
            }
        }
    }
    bytes
}

/// Selectors of the mixed programs: every size natively, up to 32 KiB under Miri (where a
/// huge block's pattern checks and copies cost seconds; `miri_threads` grows huge blocks).
const MIXED: u8 = if cfg!(miri) { 13 } else { 16 };
/// Alignment bytes of the mixed programs: up to 2 MiB natively, up to 32 bytes under Miri
/// (where the large-alignment paths take minutes).
const ALIGNMENTS: u16 = if cfg!(miri) { 48 } else { 256 };

#[test]
fn programs_over_the_simulation_provider() {
    for seed in 0..PROGRAMS as u64 {
        let heap = Allocator::new(SimProvider::new(CHUNKS), TestPlatform::new());
        let mut interpreter = Interpreter::new(&heap);
        assert_eq!(
            interpreter.run(&program(0x5EED_0000 + seed, MIXED, ALIGNMENTS)),
            Ok(()),
            "program {seed}"
        );
        let stats = heap.stats();
        assert_eq!(stats.live_allocations(), 0, "program {seed}: {stats}");
        assert_eq!(stats.live_bytes(), 0, "program {seed}: {stats}");
        assert!(heap.provider().outstanding() <= CHUNKS);
    }
}

#[test]
fn programs_over_a_fixed_region() {
    for seed in 0..PROGRAMS as u64 {
        // Leaked, zeroed, one chunk more than the region holds so that it has `CHUNKS`
        // aligned chunks wherever the vector lands.
        let bytes = vec![0u8; (CHUNKS + 1) * CHUNK_SIZE].leak();
        // SAFETY: the leaked, zeroed vector is used by nothing else.
        let region: FixedRegion = unsafe { FixedRegion::new(bytes.as_mut_ptr(), bytes.len(), true) };
        let heap = Allocator::new(region, TestPlatform::new());
        let mut interpreter = Interpreter::new(&heap);
        assert_eq!(
            interpreter.run(&program(0xF1CE_D000 + seed, MIXED, ALIGNMENTS)),
            Ok(()),
            "program {seed}"
        );
        let stats = heap.stats();
        assert_eq!(stats.live_allocations(), 0, "program {seed}: {stats}");
        assert_eq!(stats.live_bytes(), 0, "program {seed}: {stats}");
    }
}

/// Programs of small requests only (1 to 256 bytes): many operations per byte of memory,
/// the slab paths (refills, frees into non-current slabs, empty slabs given back).
#[test]
fn small_block_programs() {
    for seed in 0..PROGRAMS as u64 {
        let heap = Allocator::new(SimProvider::new(4), TestPlatform::new());
        let mut interpreter = Interpreter::new(&heap);
        assert_eq!(interpreter.run(&program(0x5A11_0000 + seed, 9, 48)), Ok(()), "program {seed}");
        assert_eq!(interpreter.refusals, 0, "small requests refused");
        assert_eq!(heap.stats().live_allocations(), 0);
    }
}

/// Compact mode (a span too small for chunks): the fit heap's headers and links, one-page
/// slabs with their descriptors in the page, and the fallbacks when the span is full, under
/// Miri's checks of every pointer the allocator forms.
#[test]
fn programs_over_a_compact_span() {
    let span_bytes = if cfg!(miri) { 64 * 1024 } else { 1 << 20 };
    for seed in 0..PROGRAMS as u64 {
        let span = vec![0u128; span_bytes / 16].leak();
        // SAFETY: the leaked, zeroed vector is used by nothing else.
        let region: FixedRegion = unsafe { FixedRegion::new(span.as_mut_ptr().cast(), span_bytes, true) };
        let heap = Allocator::new(region, TestPlatform::new());
        let mut interpreter = Interpreter::new(&heap);
        assert_eq!(interpreter.run(&program(0xC0C0_0000 + seed, 13, 48)), Ok(()), "program {seed}");
        assert!(heap.is_compact());
        heap.collect();
        assert_eq!(heap.stats().live_allocations(), 0);
        assert_eq!(heap.check_invariants(), Ok(()));
    }
}
