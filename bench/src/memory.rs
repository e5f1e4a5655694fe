//! Resident memory of this process, from `/proc/self/statm` (cheap, for time series) and
//! `/proc/self/smaps_rollup` (with the transparent huge pages among it).

#![forbid(unsafe_code)]

use std::fs;
use std::sync::OnceLock;

/// Resident bytes now (statm's second field times the page size).
pub fn resident_bytes() -> u64 {
    let statm = fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|field| field.parse().ok()).unwrap_or(0);
    pages * page_size()
}

/// Bytes in transparent huge pages now (`AnonHugePages` of smaps_rollup).
pub fn anon_huge_bytes() -> u64 {
    smaps_rollup_field("AnonHugePages:")
}

fn smaps_rollup_field(name: &str) -> u64 {
    let rollup = fs::read_to_string("/proc/self/smaps_rollup").unwrap_or_default();
    rollup
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// The base page size, in which statm counts (the first mapping's `KernelPageSize` in
/// smaps, read once).
fn page_size() -> u64 {
    static PAGE_SIZE: OnceLock<u64> = OnceLock::new();
    *PAGE_SIZE.get_or_init(|| {
        let smaps = fs::read_to_string("/proc/self/smaps").unwrap_or_default();
        smaps
            .lines()
            .find_map(|line| line.strip_prefix("KernelPageSize:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse::<u64>().ok())
            .map_or(4096, |kib| kib * 1024)
    })
}
