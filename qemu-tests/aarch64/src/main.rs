//! The AArch64 test kernel for `qemu-system-aarch64 -M virt`: boots every CPU, installs the
//! allocator as `#[global_allocator]` over RAM from the device tree, runs the shared suite
//! (`qemu_suite::run`) and exits QEMU through semihosting with 0 if every test passed, 1
//! otherwise (a panic or a fault also exits with 1).
//!
//! Boot order on CPU 0: `boot` (EL2 -> EL1, FP/SIMD, stack, .bss, vectors) -> [`boot_main`]:
//! device tree, MMU, RAM into the frame provider (the allocator takes chunks from it on
//! demand), GIC and timer, secondary CPUs, suite.
//!
//! With the feature `readme-heap` the global allocator is the README's kernel snippet
//! instead (`readme_heap`: a 2 MiB heap the kernel maps in the upper range, in compact
//! mode), the second heap is left out (its RAM backs the README heap), and the suite runs
//! its small-heap set.
#![no_std]
#![no_main]

extern crate alloc;

mod boot;
mod console;
mod dtb;
mod exceptions;
mod gic;
#[cfg(not(feature = "readme-heap"))]
mod heap;
mod machine;
mod mmu;
mod paged;
#[cfg(feature = "readme-heap")]
mod readme_heap;
mod semihosting;
mod smp;
mod timer;

use page_provider::bare_metal::FrameProvider;
use page_provider::{CHUNK_SIZE, PageProvider};
use platform::arch::aarch64::{Granule, HeapMapper};

use crate::console::println;

/// Where RAM starts on `-M virt`: frame 0 of the provider.
const RAM_BASE: u64 = 0x4000_0000;

/// Where the heap sees RAM: frame `phys` maps at `phys + HEAP_OFFSET` (256 GiB up, half-way
/// into the 512 GiB of TTBR0; any 2 MiB-aligned offset the kernel chooses works).
const HEAP_OFFSET: usize = 0x40_0000_0000;

/// RAM of the heap, in 2 MiB frames mapped at `physical + HEAP_OFFSET`.
static FRAMES: FrameProvider<HeapMapper> =
    FrameProvider::new(HeapMapper::new(HEAP_OFFSET), RAM_BASE, HEAP_OFFSET);

/// The boot CPU's Rust entry, called by `_start` with the MMU off and interrupts masked.
extern "C" fn boot_main() -> ! {
    let info = dtb::parse();
    smp::set_conduit(info.psci);
    timer::set_emulated(info.qemu_virt);
    // SAFETY: the device tree names the console PL011; `mmu` maps it as Device memory.
    unsafe { console::set_base(info.uart.start as usize) };
    let granule = Granule::from_size(info.granule).expect("dtb::parse accepts only granule sizes");
    // SAFETY: first thing after parsing, on the boot CPU, MMU off, no other CPU running; the
    // table pool after the image is RAM nothing else uses (the heap does not get it, see
    // below).
    let upper = unsafe { mmu::init_boot_cpu(&info, granule, FRAMES.mapper()) };
    // SAFETY: the boot CPU is index 0 and nothing else writes TPIDR_EL1.
    #[cfg(not(feature = "readme-heap"))]
    unsafe {
        platform::arch::aarch64::init_cpu(0)
    };
    // SAFETY: as above; the heap is mapped below, before the first allocation.
    #[cfg(feature = "readme-heap")]
    let heap = unsafe { readme_heap::init_heap_cpu(0) };

    let image = mmu::kernel_image();
    let tables = mmu::table_pool();
    let second_heap = paged::frames_region(&info);
    #[cfg(not(feature = "readme-heap"))]
    paged::init(upper, second_heap);
    #[cfg(feature = "readme-heap")]
    readme_heap::map_heap(upper, second_heap);
    let mut exclude = [(0u64, 0u64); 4 + dtb::MAX_REGIONS];
    exclude[0] = (image.start, image.len);
    exclude[1] = (info.dtb.start, info.dtb.len);
    exclude[2] = (tables.start, tables.len);
    exclude[3] = (second_heap.start, second_heap.len);
    for (slot, region) in exclude[4..].iter_mut().zip(info.reserved.as_slice()) {
        *slot = (region.start, region.len);
    }
    let mut frames = 0;
    for region in info.memory.as_slice() {
        // SAFETY: the device tree calls this RAM; the image (with its boot stack), the table
        // pool, the second heap's RAM, the tree and the reserved ranges are left out; QEMU RAM is not known to be
        // zero after loading, so it is not claimed to be.
        frames += unsafe { FRAMES.add_ram(region.start, region.len, &exclude, false) };
    }
    let checked = check_heap_window();
    println!(
        "aarch64: boot: {} MiB of RAM in {frames} frames ({} MiB mapped and unmapped, {} KiB granule), \
         allocator {}, cache line {} bytes, PSCI {:?}",
        info.memory.as_slice().iter().map(|region| region.len).sum::<u64>() >> 20,
        checked >> 20,
        granule.size() >> 10,
        heap_name(),
        platform::arch::aarch64::cache_line_size(),
        info.psci,
    );
    println!(
        "aarch64: boot: atomics: {} (the CPU {} LSE)",
        platform::arch::aarch64::atomics(),
        if platform::arch::aarch64::cpu_has_lse() { "has" } else { "lacks" }
    );

    gic::init(&info);
    gic::init_cpu();
    let cpus = smp::start_secondaries(&info);
    println!(
        "aarch64: boot: {cpus} of {} CPUs online, GICv{}",
        info.cpu_count + info.cpus_dropped,
        gic::version()
    );

    let machine = machine::VirtMachine::new();
    #[cfg(not(feature = "readme-heap"))]
    let summary = {
        let free_frames = || FRAMES.free_frames();
        let under_test = qemu_suite::HeapUnderTest { allocator: &heap::HEAP, free_frames: &free_frames };
        qemu_suite::run_with(&machine, &under_test, |test| {
            test("second_heap_over_aarch64_paging", paged::test(&machine, second_heap));
            test("a_cpu_without_init_cpu_is_detected", smp::uninitialized_cpu_is_detected());
        })
    };
    // The set that fits a 2 MiB heap; the second heap's tests keep hundreds of MiB in flight
    // (and their bookkeeping would not fit the global heap).
    #[cfg(feature = "readme-heap")]
    let summary = qemu_suite::run_small_global_with(&machine, heap, |test| {
        test("a_cpu_without_init_cpu_is_detected", smp::uninitialized_cpu_is_detected());
    });
    semihosting::exit(if summary.failed == 0 { 0 } else { 1 })
}

/// Maps every free frame through the heap window in one run, writes and reads a word in the
/// first and last chunk and in one chunk of every 256 MiB (touching every chunk would make
/// the host back all of the guest's RAM), checks what those chunks translate to, unmaps them
/// all, then maps one again: exercises `HeapMapper` over all of RAM, beyond the first GiB
/// too, its 2 MiB mappings in the chosen granule, and its TLB invalidation. Returns the
/// bytes mapped.
fn check_heap_window() -> usize {
    let count = FRAMES.free_frames();
    assert!(count > 0, "no whole 2 MiB frame of RAM outside the kernel and the device tree");
    let run = FRAMES.alloc_chunks(count).expect("the free frames are one contiguous run");
    let base = run.base.as_ptr();
    let mapper = FRAMES.mapper();
    let tables = mapper.tables().expect("the mapper is installed");
    let granule = tables.regime.granule;
    // What a kernel with its MMU on would hand to `install`: the registers agree.
    let running = platform::arch::aarch64::paging::current_tables(tables.map);
    assert_eq!(running, Some(tables), "TTBR0_EL1 and TCR_EL1 describe other tables");
    let probes = (0..count).step_by(128).chain([count - 1]);
    for chunk in probes.clone() {
        let virt = base as usize + chunk * CHUNK_SIZE;
        for offset in [0, CHUNK_SIZE / 2 + 8, CHUNK_SIZE - 1] {
            let found = mapper.translate(virt + offset).expect("a heap chunk translates");
            assert_eq!(found.phys as usize, virt + offset - HEAP_OFFSET, "heap chunk at {virt:#x}");
            let contiguous = granule != Granule::Size4KiB;
            assert_eq!(found.contiguous, contiguous, "the contiguous hint with the {granule:?} granule");
            assert_eq!(found.size, if contiguous { granule.size() } else { CHUNK_SIZE });
        }
        let offset = chunk * CHUNK_SIZE + CHUNK_SIZE - 8;
        let value = (base as usize + offset) as u64 ^ 0x5A5A_5A5A;
        // SAFETY: the run is `count` chunks of mapped memory that nothing else uses.
        let read = unsafe {
            let word = base.add(offset).cast::<u64>();
            word.write_volatile(value);
            word.read_volatile()
        };
        assert_eq!(read, value, "heap window memory at {:#x} did not keep a value", base as usize + offset);
    }
    // SAFETY: the run came from FRAMES and is no longer used.
    unsafe { FRAMES.free_chunks(run.base, count) };
    for chunk in probes {
        let virt = base as usize + chunk * CHUNK_SIZE;
        assert_eq!(mapper.translate(virt), None, "heap chunk at {virt:#x} still mapped after unmapping");
    }
    let again = FRAMES.alloc_chunks(1).expect("a frame after giving all back");
    // SAFETY: one mapped chunk that nothing else uses.
    unsafe {
        again.base.as_ptr().cast::<u64>().write_volatile(1);
        FRAMES.free_chunks(again.base, 1);
    }
    count * CHUNK_SIZE
}

/// The global allocator's name, for the boot log.
fn heap_name() -> &'static str {
    #[cfg(not(feature = "readme-heap"))]
    return heap::NAME;
    #[cfg(feature = "readme-heap")]
    return readme_heap::NAME;
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    console::emergency_print(format_args!(
        "aarch64: PANIC on CPU {}: {info}\n",
        platform::arch::aarch64::current_cpu_racy()
    ));
    semihosting::exit(1)
}
