//! The x86-64 test kernel: boots under QEMU through PVH, brings up every CPU, puts the heap
//! on RAM from the PVH memory map, runs the shared `qemu-suite` tests and exits through
//! `isa-debug-exit` (status 33 when every test passed, 35 otherwise or on a panic or an
//! exception).
//!
//! Boot order (boot CPU): per-CPU record, console, IDT and PIC, PVH boot data, local APIC
//! and clock calibration, heap window and frames, heap, MADT, secondaries; then the suite.
//!
//! With the feature `readme-heap` the global allocator is the README's kernel snippet
//! instead (`readme_heap`: a 1 MiB heap the kernel maps, in compact mode), the second heap
//! is left out, and the suite runs its small-heap set.
#![no_std]
#![no_main]

extern crate alloc;

mod acpi;
mod apic;
mod boot;
mod console;
mod cpu;
mod frames;
#[cfg(not(feature = "readme-heap"))]
mod heap;
mod interrupts;
mod machine;
mod memory;
#[cfg(not(feature = "readme-heap"))]
mod paged;
mod pvh;
#[cfg(feature = "readme-heap")]
mod readme_heap;
mod smp;
mod time;

use platform::arch::x86_64::{MAX_CPUS, current_cpu_racy};

use crate::console::println;
use crate::cpu::{ExitCode, exit};

/// The boot CPU's Rust entry, called by the boot code in long mode with interrupts masked
/// and `start_info` the PVH `hvm_start_info` physical address.
extern "C" fn kernel_main(start_info: u32) -> ! {
    // SAFETY: first thing on the boot CPU, interrupts masked, index 0.
    #[cfg(not(feature = "readme-heap"))]
    unsafe {
        platform::arch::x86_64::init_cpu(0)
    };
    // SAFETY: as above; the heap is mapped below, before the first allocation.
    #[cfg(feature = "readme-heap")]
    let heap = unsafe { readme_heap::init_heap_cpu(0) };
    console::init();
    interrupts::init();
    interrupts::load();
    println!("x86_64 boot: PVH entry, long mode");

    // SAFETY: `start_info` is what the PVH loader passed, and nothing has written low
    // memory yet.
    let boot = boot::with_page_zero(|| unsafe { pvh::parse(u64::from(start_info)) });
    let (trampoline, trampoline_len) = smp::trampoline_page();
    let trampoline_is_ram = boot
        .ram()
        .iter()
        .any(|&(start, len)| start <= trampoline && trampoline + trampoline_len <= start + len);
    let trampoline_is_free = boot
        .boot_data
        .iter()
        .all(|&(start, len)| len == 0 || start >= trampoline + trampoline_len || start + len <= trampoline);
    assert!(
        trampoline_is_ram && trampoline_is_free,
        "the SMP trampoline page {trampoline:#x} is not free RAM"
    );

    apic::init_boot_cpu();
    time::calibrate();
    // The allocator's clock for decay (x86-64 has none it could read on its own).
    platform::arch::x86_64::set_clock(time::now_ns);
    memory::init(&boot);
    #[cfg(feature = "readme-heap")]
    readme_heap::map_heap();
    #[cfg(not(feature = "readme-heap"))]
    paged::init();
    let (frames, highest) = memory::check_every_frame();
    println!("x86_64 boot: checked {frames} frames through the heap window, highest byte {highest:#x}");
    println!(
        "x86_64 boot: global allocator: {}, cache line {} bytes",
        heap_name(),
        platform::arch::x86_64::cache_line_size()
    );

    let mut apic_ids = [0; MAX_CPUS];
    let cpus = match acpi::local_apic_ids(boot.rsdp, &mut apic_ids) {
        Some(count) if count > 0 => smp::start_secondaries(&apic_ids[..count]),
        _ => {
            println!("x86_64 boot: no MADT found; running on the boot CPU only");
            1
        }
    };
    println!("x86_64 boot: {cpus} CPUs online after {} ms", time::now_ns() / 1_000_000);

    #[cfg(not(feature = "readme-heap"))]
    let summary = {
        let free_frames = || memory::FRAMES.free_frames();
        let under_test = qemu_suite::HeapUnderTest { allocator: &heap::HEAP, free_frames: &free_frames };
        qemu_suite::run_with(&machine::X86Machine, &under_test, |test| {
            test("second_heap_over_x86_64_crate_paging", paged::test(&machine::X86Machine));
            test("a_cpu_without_init_cpu_is_detected", cpu::uninitialized_cpu_is_detected());
        })
    };
    // The set that fits a 1 MiB heap; the second heap's tests keep hundreds of MiB in flight
    // (and their bookkeeping would not fit the global heap).
    #[cfg(feature = "readme-heap")]
    let summary = qemu_suite::run_small_global_with(&machine::X86Machine, heap, |test| {
        test("a_cpu_without_init_cpu_is_detected", cpu::uninitialized_cpu_is_detected());
    });
    exit(if summary.failed == 0 { ExitCode::Success } else { ExitCode::Failure })
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
    cpu::disable_interrupts();
    match info.location() {
        Some(location) => println!(
            "x86_64: PANIC on CPU {} at {}:{}: {}",
            current_cpu_racy(),
            location.file(),
            location.line(),
            info.message()
        ),
        None => println!("x86_64: PANIC on CPU {}: {}", current_cpu_racy(), info.message()),
    }
    exit(ExitCode::Failure)
}
