//! What the kernel learns from the device tree QEMU leaves at the start of RAM: RAM, reserved
//! ranges, CPUs, the PSCI conduit, the GIC (v2 or v3), the UART and the virtual timer's interrupt.
//!
//! Parsed once on the boot CPU, with the MMU off and before the heap exists, into a plain
//! [`BootInfo`] with fixed-size arrays (nothing here allocates).

use fdt::Fdt;
use fdt::node::FdtNode;
use platform::arch::aarch64::MAX_CPUS;

/// Where QEMU puts the device tree for a bare ELF kernel linked above RAM + 2 MiB.
pub(crate) const DTB_ADDRESS: usize = 0x4000_0000;
/// Memory and reserved ranges kept (more are dropped, with a warning).
pub(crate) const MAX_REGIONS: usize = 16;
/// The EL1 virtual timer's interrupt on `-M virt` (PPI 11), if the tree does not say.
const DEFAULT_TIMER_INTID: u32 = 27;

/// A physical address range.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Region {
    /// The first byte.
    pub(crate) start: u64,
    /// Bytes.
    pub(crate) len: u64,
}

/// A short list of regions.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Regions {
    items: [Region; MAX_REGIONS],
    len: usize,
    /// Regions that did not fit.
    pub(crate) dropped: usize,
}

impl Regions {
    const fn new() -> Self {
        Self { items: [Region { start: 0, len: 0 }; MAX_REGIONS], len: 0, dropped: 0 }
    }

    fn push(&mut self, region: Region) {
        if region.len == 0 {
            return;
        }
        if self.len == MAX_REGIONS {
            self.dropped += 1;
            return;
        }
        self.items[self.len] = region;
        self.len += 1;
    }

    /// The regions.
    pub(crate) fn as_slice(&self) -> &[Region] {
        &self.items[..self.len]
    }
}

/// How PSCI calls reach the firmware: the instruction the `/psci` node's `method` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Conduit {
    /// `hvc #0` (QEMU's PSCI at EL2, the default for `-M virt`).
    Hvc,
    /// `smc #0` (QEMU's PSCI at EL3, used when the kernel itself owns EL2).
    Smc,
}

/// The interrupt controller the device tree describes: a GICv2 (`arm,cortex-a15-gic`,
/// `arm,gic-400`: memory-mapped CPU interface, at most 8 CPUs) or a GICv3 (`arm,gic-v3`: one
/// redistributor per CPU, CPU interface through the ICC_* system registers).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Gic {
    /// 2 or 3.
    pub(crate) version: u32,
    /// Distributor registers (GICD).
    pub(crate) distributor: Region,
    /// GICv2: the CPU interface registers (GICC).
    pub(crate) cpu_interface: Region,
    /// GICv3: the redistributor regions (`#redistributor-regions` of them), each a run of
    /// redistributors.
    pub(crate) redistributors: Regions,
    /// GICv3: bytes from one redistributor to the next (`redistributor-stride`), or 0 when
    /// the tree leaves it to the hardware (GICR_TYPER says).
    pub(crate) redistributor_stride: u64,
}

impl Gic {
    /// The register ranges to map as Device memory.
    pub(crate) fn register_regions(&self) -> impl Iterator<Item = Region> + '_ {
        [self.distributor, self.cpu_interface]
            .into_iter()
            .chain(self.redistributors.as_slice().iter().copied())
            .filter(|region| region.len > 0)
    }
}

/// The machine as the device tree describes it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BootInfo {
    /// The device tree blob itself.
    pub(crate) dtb: Region,
    /// RAM, from every `device_type = "memory"` node.
    pub(crate) memory: Regions,
    /// The memory reservation block and `/reserved-memory` children.
    pub(crate) reserved: Regions,
    /// MPIDR affinity of each CPU, the boot CPU first: the index here is the CPU's index.
    pub(crate) cpus: [u64; MAX_CPUS],
    /// CPUs listed (at most `MAX_CPUS`).
    pub(crate) cpu_count: usize,
    /// CPUs listed beyond `MAX_CPUS`, left off.
    pub(crate) cpus_dropped: usize,
    /// The PSCI conduit, if there is a PSCI node.
    pub(crate) psci: Option<Conduit>,
    /// The interrupt controller.
    pub(crate) gic: Gic,
    /// The console PL011's registers.
    pub(crate) uart: Region,
    /// The interrupt ID of the EL1 virtual timer.
    pub(crate) timer_intid: u32,
    /// The machine is QEMU's `virt` board (root compatible `linux,dummy-virt`).
    pub(crate) qemu_virt: bool,
    /// The translation granule asked for with `granule=4k`, `16k` or `64k` in
    /// `/chosen/bootargs` (QEMU's `-append`), in bytes; 4096 when absent.
    pub(crate) granule: usize,
}

/// The MPIDR_EL1 bits that identify a CPU (Aff3, Aff2, Aff1, Aff0), as in a cpu node's reg.
pub(crate) fn own_mpidr() -> u64 {
    let mpidr: u64;
    // SAFETY: reading MPIDR_EL1 has no side effects.
    unsafe {
        // A register read: no memory, no stack, flags untouched.
        core::arch::asm!("mrs {mpidr}, mpidr_el1", mpidr = out(reg) mpidr, options(nomem, nostack, preserves_flags));
    }
    mpidr & 0xFF_00FF_FFFF
}

/// Parses the tree at [`DTB_ADDRESS`].
///
/// # Panics
///
/// If there is no valid tree there, or it lacks a GIC (v2 or v3), which the kernel needs.
pub(crate) fn parse() -> BootInfo {
    // SAFETY: DTB_ADDRESS is RAM on -M virt (readable whether or not the MMU is on: the
    // kernel identity-maps it); `from_ptr` reads the header, then `totalsize` bytes.
    let fdt = unsafe { Fdt::from_ptr(DTB_ADDRESS as *const u8) }.unwrap_or_else(|error| {
        panic!(
            "no device tree at {DTB_ADDRESS:#x} ({error:?}): is the kernel linked at 0x4020_0000 \
             or above, so that QEMU has room to put it there?"
        )
    });
    let mut info = BootInfo {
        dtb: Region { start: DTB_ADDRESS as u64, len: fdt.total_size() as u64 },
        memory: Regions::new(),
        reserved: Regions::new(),
        cpus: [0; MAX_CPUS],
        cpu_count: 0,
        cpus_dropped: 0,
        psci: None,
        gic: Gic {
            version: 0,
            distributor: Region::default(),
            cpu_interface: Region::default(),
            redistributors: Regions::new(),
            redistributor_stride: 0,
        },
        uart: Region { start: crate::console::DEFAULT_UART as u64, len: 0x1000 },
        timer_intid: DEFAULT_TIMER_INTID,
        qemu_virt: false,
        granule: 4096,
    };
    info.qemu_virt = fdt
        .find_node("/")
        .and_then(|root| root.compatible())
        .is_some_and(|compatible| compatible.all().any(|name| name == "linux,dummy-virt"));

    for node in fdt.all_nodes() {
        if node.property("device_type").and_then(|p| p.as_str()) == Some("memory") {
            for region in regions(node) {
                info.memory.push(region);
            }
        }
    }
    for reservation in fdt.memory_reservations() {
        info.reserved.push(Region { start: reservation.address() as u64, len: reservation.size() as u64 });
    }
    if let Some(reserved) = fdt.find_node("/reserved-memory") {
        for child in reserved.children() {
            for region in regions(child) {
                info.reserved.push(region);
            }
        }
    }

    // The boot CPU first, then the others in tree order.
    let boot = own_mpidr();
    info.cpus[0] = boot;
    info.cpu_count = 1;
    if fdt.find_node("/cpus").is_some() {
        for cpu in fdt.cpus() {
            let mpidr = cpu.ids().first() as u64;
            if mpidr == boot {
                continue;
            }
            if info.cpu_count == MAX_CPUS {
                info.cpus_dropped += 1;
                continue;
            }
            info.cpus[info.cpu_count] = mpidr;
            info.cpu_count += 1;
        }
    }

    info.psci =
        fdt.find_node("/psci").and_then(|node| node.property("method")).and_then(|p| p.as_str()).and_then(
            |method| match method {
                "hvc" => Some(Conduit::Hvc),
                "smc" => Some(Conduit::Smc),
                _ => None,
            },
        );

    info.gic = gic(&fdt);

    let bootargs =
        fdt.find_node("/chosen").and_then(|chosen| chosen.property("bootargs")).and_then(|p| p.as_str());
    let bootargs = bootargs.unwrap_or("");
    for argument in bootargs.split_ascii_whitespace() {
        if let Some(value) = argument.strip_prefix("granule=") {
            info.granule = match value {
                "4k" => 4096,
                "16k" => 16384,
                "64k" => 65536,
                _ => panic!("granule={value} in the boot arguments: use 4k, 16k or 64k"),
            };
        }
    }

    if let Some(uart) = stdout(&fdt).or_else(|| fdt.find_compatible(&["arm,pl011"]))
        && let Some(region) = regions(uart).next()
    {
        info.uart = region;
    }

    // The architected timer lists its interrupts as (type, number, flags) triples: secure
    // physical, non-secure physical, virtual, hypervisor. The virtual one is the third; a PPI
    // (type 1) numbered n is interrupt ID 16 + n.
    if let Some(timer) = fdt.find_compatible(&["arm,armv8-timer", "arm,armv7-timer"])
        && let Some(interrupts) = timer.property("interrupts")
    {
        let cell = |index: usize| {
            interrupts
                .value
                .get(index * 4..index * 4 + 4)
                .map(|bytes| u32::from_be_bytes(bytes.try_into().expect("four bytes make a cell")))
        };
        if let (Some(1), Some(number)) = (cell(6), cell(7)) {
            info.timer_intid = 16 + number;
        }
    }
    info
}

/// The interrupt controller: a GICv3 if the tree has one, else a GICv2.
///
/// # Panics
///
/// If the tree has neither, or the node lacks its register ranges.
fn gic(fdt: &Fdt<'_>) -> Gic {
    if let Some(node) = fdt.find_compatible(&["arm,gic-v3"]) {
        // reg: the distributor, then `#redistributor-regions` redistributor regions (1 if
        // absent), then the optional GICv2-compatible CPU interface and virtualization frames.
        let count = node.property("#redistributor-regions").and_then(|p| p.as_usize()).unwrap_or(1);
        let mut ranges = regions(node);
        let distributor = ranges.next().expect("GICv3 without distributor registers");
        let mut redistributors = Regions::new();
        for region in ranges.take(count) {
            redistributors.push(region);
        }
        assert!(!redistributors.as_slice().is_empty(), "GICv3 without redistributor regions");
        let stride = node.property("redistributor-stride").and_then(|p| p.as_usize()).unwrap_or(0) as u64;
        return Gic {
            version: 3,
            distributor,
            cpu_interface: Region::default(),
            redistributors,
            redistributor_stride: stride,
        };
    }
    let node = fdt
        .find_compatible(&["arm,cortex-a15-gic", "arm,gic-400", "arm,cortex-a9-gic"])
        .expect("no GICv2 or GICv3 in the device tree");
    let mut ranges = regions(node);
    let distributor = ranges.next().expect("GIC without distributor registers");
    let cpu_interface = ranges.next().expect("GIC without CPU interface registers");
    Gic { version: 2, distributor, cpu_interface, redistributors: Regions::new(), redistributor_stride: 0 }
}

/// The `reg` ranges of a node.
fn regions<'a>(node: FdtNode<'_, 'a>) -> impl Iterator<Item = Region> + 'a {
    node.reg()
        .into_iter()
        .flatten()
        .map(|region| Region { start: region.starting_address as u64, len: region.size.unwrap_or(0) as u64 })
}

/// The node `/chosen/stdout-path` names (options after a `:` ignored).
fn stdout<'b, 'a>(fdt: &'b Fdt<'a>) -> Option<FdtNode<'b, 'a>> {
    let path = fdt.find_node("/chosen")?.property("stdout-path")?.as_str()?;
    fdt.find_node(path.split(':').next()?)
}
