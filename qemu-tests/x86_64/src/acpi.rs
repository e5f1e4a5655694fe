//! Just enough ACPI to list the CPUs: RSDP -> RSDT or XSDT -> MADT ("APIC") -> the local
//! APIC IDs of the enabled processors, in table order.
//!
//! Tables are read in place through identity mappings added on demand (they sit in
//! firmware-reserved RAM below 4 GiB on QEMU); tables above 4 GiB are not supported.

use platform::arch::x86_64::MAX_CPUS;

use crate::boot::identity_map;

const SDT_HEADER: u64 = 36;

/// Reads firmware tables by physical address. Only made by [`local_apic_ids`], whose
/// reasoning covers every read: ACPI tables live in memory the firmware reserved and
/// nothing writes while the kernel boots.
struct Tables(());

impl Tables {
    /// Reads `T` at `phys + offset`, or `None` if it lies above 4 GiB.
    fn read<T: Copy>(&self, phys: u64, offset: u64) -> Option<T> {
        let address = phys.checked_add(offset)?;
        if !identity_map(address, size_of::<T>() as u64, false) {
            return None;
        }
        // SAFETY: identity-mapped just above; firmware tables and the BIOS area are
        // memory nothing writes during boot (see the type's documentation). Tables have no
        // alignment promise: unaligned reads.
        Some(unsafe { (address as *const T).read_unaligned() })
    }

    /// Whether the `length` bytes at `phys` sum to 0 (mod 256), as ACPI checksums need.
    fn checksum_ok(&self, phys: u64, length: u64) -> bool {
        let mut sum = 0u8;
        for offset in 0..length {
            match self.read::<u8>(phys, offset) {
                Some(byte) => sum = sum.wrapping_add(byte),
                None => return false,
            }
        }
        sum == 0
    }

    /// The RSDP: the loader's, else the first valid one in the BIOS area 0xE0000-0xFFFFF.
    fn find_rsdp(&self, hint: u64) -> Option<u64> {
        let valid =
            |phys: u64| self.read::<[u8; 8]>(phys, 0) == Some(*b"RSD PTR ") && self.checksum_ok(phys, 20);
        if hint != 0 && valid(hint) {
            return Some(hint);
        }
        (0xE_0000..0x10_0000u64).step_by(16).find(|&phys| valid(phys))
    }

    /// The physical address of the table with `signature`, if the root table lists it.
    fn find_table(&self, rsdp: u64, signature: &[u8; 4]) -> Option<u64> {
        let revision: u8 = self.read(rsdp, 15)?;
        let xsdt: u64 = if revision >= 2 { self.read(rsdp, 24)? } else { 0 };
        let (root, entry_size) =
            if xsdt != 0 { (xsdt, 8) } else { (u64::from(self.read::<u32>(rsdp, 16)?), 4) };
        let length = u64::from(self.read::<u32>(root, 4)?);
        let entries = length.checked_sub(SDT_HEADER)? / entry_size;
        (0..entries).find_map(|entry| {
            let offset = SDT_HEADER + entry * entry_size;
            let table = if entry_size == 8 {
                self.read::<u64>(root, offset)?
            } else {
                u64::from(self.read::<u32>(root, offset)?)
            };
            (self.read::<[u8; 4]>(table, 0)? == *signature).then_some(table)
        })
    }
}

/// The local APIC IDs of the enabled processors in the MADT, in table order, written to
/// `ids`; returns how many (at most `MAX_CPUS`), or `None` if no MADT was found.
pub(crate) fn local_apic_ids(rsdp_hint: u64, ids: &mut [u32; MAX_CPUS]) -> Option<usize> {
    let tables = Tables(());
    let rsdp = tables.find_rsdp(rsdp_hint)?;
    let madt = tables.find_table(rsdp, b"APIC")?;
    let length = u64::from(tables.read::<u32>(madt, 4)?);
    if !tables.checksum_ok(madt, length) {
        return None;
    }
    // Interrupt controller structures start after the header, the APIC address and flags.
    let mut offset = SDT_HEADER + 8;
    let mut count = 0;
    while offset + 2 <= length {
        let kind: u8 = tables.read(madt, offset)?;
        let size = u64::from(tables.read::<u8>(madt, offset + 1)?);
        if size < 2 {
            break;
        }
        // Type 0: processor local APIC {uid: u8, apic_id: u8, flags: u32}; bit 0 enabled.
        // Type 9: processor local x2APIC {reserved: u16, x2apic_id: u32, flags: u32, uid}.
        let entry = match kind {
            0 => {
                Some((u32::from(tables.read::<u8>(madt, offset + 3)?), tables.read::<u32>(madt, offset + 4)?))
            }
            9 => Some((tables.read::<u32>(madt, offset + 4)?, tables.read::<u32>(madt, offset + 8)?)),
            _ => None,
        };
        if let Some((apic_id, flags)) = entry
            && flags & 1 != 0
            && apic_id < 0xFF
            && count < MAX_CPUS
        {
            ids[count] = apic_id;
            count += 1;
        }
        offset += size;
    }
    Some(count)
}
