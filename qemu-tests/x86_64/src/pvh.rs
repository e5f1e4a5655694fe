//! The PVH boot information (`hvm_start_info`), copied out at boot before low memory is
//! reused: the RAM ranges, where the boot data itself lies, and the ACPI RSDP.
//!
//! Layout (Xen's `arch-x86/hvm/start_info.h`): magic at 0x00, version at 0x04, command line
//! address at 0x18, RSDP address at 0x20, and from version 1 the memory map address at
//! 0x28 and its entry count at 0x30. Map entries are `{addr: u64, size: u64, type: u32,
//! reserved: u32}`; type 1 is usable RAM. An address of 0 means absent.

use crate::boot::identity_map;

const MAGIC: u32 = 0x336E_C578;
const START_INFO_SIZE: u64 = 0x38;
const ENTRY_SIZE: u64 = 24;
const TYPE_RAM: u32 = 1;
const MAX_RANGES: usize = 128;
const MAX_CMDLINE: u64 = 4096;

/// A physical range: `(start, length)`.
pub(crate) type Range = (u64, u64);

/// What the kernel keeps from `hvm_start_info`.
pub(crate) struct BootInfo {
    ram: [Range; MAX_RANGES],
    ram_count: usize,
    /// start_info itself, the memory map and the command line: RAM the heap must not use.
    pub(crate) boot_data: [Range; 3],
    /// The ACPI RSDP's physical address, 0 if the loader gave none.
    pub(crate) rsdp: u64,
}

impl BootInfo {
    /// The usable RAM ranges of the memory map.
    pub(crate) fn ram(&self) -> &[Range] {
        &self.ram[..self.ram_count]
    }
}

/// Reads boot data by physical address; made only by `parse`, whose caller vouches the
/// data is intact and stays so while the kernel reads it.
struct BootData(());

impl BootData {
    /// Reads `T` at physical address `phys + offset`, identity-mapping it first.
    fn read<T: Copy>(&self, phys: u64, offset: u64) -> T {
        let address = phys + offset;
        assert!(identity_map(address, size_of::<T>() as u64, false), "boot data at {address:#x} above 4 GiB");
        // SAFETY: identity-mapped just above; a `BootData` exists only while the loader's
        // data is intact and unwritten (`parse`'s contract). Unaligned reads: the format
        // promises no alignment for the loader's buffers.
        unsafe { (address as *const T).read_unaligned() }
    }
}

/// Parses the `hvm_start_info` at physical address `start_info`.
///
/// # Safety
///
/// `start_info` is the address the PVH loader passed in `ebx`, and the boot data it
/// describes (start_info, memory map, command line) is intact and not written meanwhile.
pub(crate) unsafe fn parse(start_info: u64) -> BootInfo {
    let data = BootData(());
    let magic: u32 = data.read(start_info, 0x00);
    assert_eq!(magic, MAGIC, "no PVH start_info at {start_info:#x}");
    let version: u32 = data.read(start_info, 0x04);
    let cmdline: u64 = data.read(start_info, 0x18);
    let rsdp: u64 = data.read(start_info, 0x20);
    assert!(version >= 1, "PVH start_info version {version} has no memory map");
    let memmap: u64 = data.read(start_info, 0x28);
    let entries: u32 = data.read(start_info, 0x30);
    assert!(memmap != 0, "PVH start_info has no memory map");

    let mut info = BootInfo { ram: [(0, 0); MAX_RANGES], ram_count: 0, boot_data: [(0, 0); 3], rsdp };
    for entry in 0..u64::from(entries) {
        let base = memmap + entry * ENTRY_SIZE;
        let (start, size, kind): (u64, u64, u32) =
            (data.read(base, 0), data.read(base, 8), data.read(base, 16));
        if kind == TYPE_RAM && size > 0 && info.ram_count < MAX_RANGES {
            info.ram[info.ram_count] = (start, size);
            info.ram_count += 1;
        }
    }
    let mut cmdline_len = 0;
    if cmdline != 0 {
        while cmdline_len < MAX_CMDLINE && data.read::<u8>(cmdline, cmdline_len) != 0 {
            cmdline_len += 1;
        }
        cmdline_len += 1;
    }
    info.boot_data =
        [(start_info, START_INFO_SIZE), (memmap, u64::from(entries) * ENTRY_SIZE), (cmdline, cmdline_len)];
    info
}
